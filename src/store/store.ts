import type { ChatMessage } from "../protocol.ts";

/** What a `since` resume found. */
export interface ResumeResult {
  /** Messages after the `since` id, oldest first. */
  messages: ChatMessage[];
  /**
   * True when `messages` is everything after `since`: the store still holds
   * the `since` message itself (a deleted one counts: it was seen) and
   * nothing was cut by the limit.
   */
  complete: boolean;
}

/** A page read forward from an id. */
export interface PageResult {
  /** Messages after the id, oldest first. */
  messages: ChatMessage[];
  /** True when more messages follow the last one returned. */
  more: boolean;
}

/** Options every store takes besides its count limit. */
export interface RetentionOptions {
  /**
   * HISTORY_TTL in milliseconds: messages whose `ts` is older than this are
   * pruned by the store itself (on its own unref'd timer or on writes, as
   * each implementation documents). 0 keeps messages by count only.
   * @default 0
   */
  ttlMs?: number;
  /** The clock the store prunes and expires bans by (tests pass a fake). @default Date.now */
  now?: () => number;
}

/**
 * How often a store's retention pass runs (timer or writes): a tenth of the
 * TTL, between 1 s and 1 min, so expired messages go within ~10% of the TTL.
 */
export function pruneIntervalMs(ttlMs: number): number {
  return Math.min(60_000, Math.max(1000, Math.floor(ttlMs / 10)));
}

/**
 * A room's message history, and the room's bans (they live where the history
 * does, so they survive restarts the same way). Every implementation passes
 * the same contract suite (test/unit/store.contract.ts); ids are the hub's,
 * so a store only keeps and orders them.
 *
 * Deleted messages leave every read (latest, before, since, after, get) but
 * keep their place: `since` still knows a deleted id as a resume point, and
 * `lastId` still counts it, so ids keep growing across a restart.
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
  /**
   * Optional: the oldest `page` messages of what `since(room, since, limit)`
   * returns, and its `complete`, without reading the rest (`more`: the rest
   * is then read with `after`). A store whose `since` must read every message
   * (SQLite: a resume of 1000 messages of 8 KB is 8 MB of strings made in one
   * synchronous call) implements it; without it a resume calls `since`.
   */
  sinceFirst?(room: string, since: string, limit: number, page: number): Promise<ResumeResult & { more: boolean }>;
  /** Up to `limit` messages after `after` (exclusive), OLDEST first; `more` when others follow. */
  after(room: string, after: string, limit: number): Promise<PageResult>;
  /** One message, or null (unknown, deleted or pruned). */
  get(room: string, id: string): Promise<ChatMessage | null>;
  /** Replaces the text, sets `edited`; resolves the updated message, or null when unknown. */
  edit(room: string, id: string, message: string, edited: number): Promise<ChatMessage | null>;
  /** Removes it from every history read; false when unknown (or already deleted). */
  delete(room: string, id: string): Promise<boolean>;
  /** Bans `user` from `room` until `until` (ms since epoch) or forever (null). Durable. */
  ban(room: string, user: string, until: number | null): Promise<void>;
  /** Lifts a ban (nothing happens when there is none). */
  unban(room: string, user: string): Promise<void>;
  /** The ban's end (ms, or Infinity for forever) if `user` is banned at `now`, else null. */
  bannedUntil(room: string, user: string, now: number): Promise<number | null>;
  /** The room's newest id (deleted messages included), or null for an empty room. */
  lastId(room: string): Promise<string | null>;
  /** Resolves once every accepted append is durable. */
  flush(): Promise<void>;
  /** Flushes and releases the store. */
  close(): Promise<void>;
}
