/**
 * History in Redis (HUB=redis): the HistoryStore contract over a room's log
 * (src/redis/log.ts, which owns the keys, the scripts and the epoch), so
 * `since` and paging answer the same whichever instance a client reconnects
 * to. A resume from before a loss of Redis data answers `complete: false`.
 */
import type { ChatMessage } from "../protocol.ts";
import { type RedisCommands, RedisLog } from "../redis/log.ts";
import type { HistoryStore, ResumeResult } from "./store.ts";

/** Options for {@link RedisStore}. */
export interface RedisStoreOptions {
  /** Messages kept per room (HISTORY_LIMIT). @default 10000 */
  limit?: number;
  /** Age past which messages are pruned (HISTORY_TTL); 0 keeps them. @default 0 */
  ttlMs?: number;
  /** The clock the TTL is measured with. @default Date.now */
  now?: () => number;
  /** Key prefix (REDIS_PREFIX). @default "chat:" */
  prefix?: string;
  /** Quit the client on close. @default false */
  owned?: boolean;
  /** The log to use (the hub's, so both share one); made from the other options when absent. */
  log?: RedisLog;
}

/**
 * The HistoryStore contract over Redis. Every call is one round trip; an
 * append is durable as far as Redis is once it resolves, so `flush` has
 * nothing to wait for. With HUB=redis the hub appends through its broker
 * (which also publishes); `append` here is for a store used alone.
 */
export class RedisStore implements HistoryStore {
  readonly #redis: RedisCommands;
  readonly #owned: boolean;
  readonly log: RedisLog;
  #closed = false;

  /**
   * @param redis a connected client (commands should fail fast while Redis
   *   is down: no offline queue, a command timeout; see redis/client.ts)
   */
  constructor(redis: RedisCommands, options: RedisStoreOptions = {}) {
    this.#redis = redis;
    this.#owned = options.owned ?? false;
    this.log = options.log ?? new RedisLog(redis, options);
  }

  /** Messages kept per room. */
  get limit(): number {
    return this.log.limit;
  }

  async append(message: ChatMessage): Promise<void> {
    if (this.#closed) throw new Error("history store is closed");
    await this.log.append(message);
  }

  latest(room: string, limit: number): Promise<ChatMessage[]> {
    return this.log.latest(room, limit);
  }

  before(room: string, before: string, limit: number): Promise<ChatMessage[]> {
    return this.log.before(room, before, limit);
  }

  after(room: string, after: string, limit: number): Promise<{ messages: ChatMessage[]; more: boolean }> {
    return this.log.after(room, after, limit);
  }

  since(room: string, since: string, limit: number): Promise<ResumeResult> {
    return this.log.since(room, since, limit);
  }

  sinceFirst(room: string, since: string, limit: number, page: number): Promise<ResumeResult & { more: boolean }> {
    return this.log.sinceFirst(room, since, limit, page);
  }

  get(room: string, id: string): Promise<ChatMessage | null> {
    return this.log.get(room, id);
  }

  edit(room: string, id: string, message: string, edited: number): Promise<ChatMessage | null> {
    return this.log.edit(room, id, message, edited);
  }

  delete(room: string, id: string): Promise<boolean> {
    return this.log.delete(room, id);
  }

  ban(room: string, user: string, until: number | null): Promise<void> {
    return this.log.ban(room, user, until);
  }

  unban(room: string, user: string): Promise<void> {
    return this.log.unban(room, user);
  }

  bannedUntil(room: string, user: string, now: number): Promise<number | null> {
    return this.log.bannedUntil(room, user, now);
  }

  lastId(room: string): Promise<string | null> {
    return this.log.lastId(room);
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#owned) await this.#redis.quit().catch(() => this.#redis.disconnect());
  }
}
