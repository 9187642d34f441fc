import type { ChatMessage } from "../protocol.ts";

/** What a `since` resume found. */
export interface ResumeResult {
  /** Messages after the `since` id, oldest first. */
  messages: ChatMessage[];
  /**
   * True when `messages` is everything after `since`: the store still holds
   * the `since` message itself and nothing was cut by the limit.
   */
  complete: boolean;
}

/**
 * A room's message history. Every implementation passes the same contract
 * suite (test/unit/store.contract.ts); ids are the hub's, so a store only
 * keeps and orders them.
 */
export interface HistoryStore {
  /**
   * Stores one message. May return a promise that settles once the message is
   * durable (implementations batch writes); a rejection means it was not
   * stored and must not be delivered.
   */
  append(message: ChatMessage): void | Promise<void>;
  /** The last `limit` messages of a room, oldest first. */
  latest(room: string, limit: number): Promise<ChatMessage[]>;
  /** Up to `limit` messages older than `before`, oldest first. */
  before(room: string, before: string, limit: number): Promise<ChatMessage[]>;
  /**
   * Messages after `since`, oldest first. When more than `limit` follow, the
   * newest `limit` are returned and `complete` is false.
   */
  since(room: string, since: string, limit: number): Promise<ResumeResult>;
  /** The room's newest id, or null for an empty room. */
  lastId(room: string): Promise<string | null>;
  /** Resolves once every accepted append is durable. */
  flush(): Promise<void>;
  /** Flushes and releases the store. */
  close(): Promise<void>;
}
