import type { ChatMessage } from "../protocol.ts";
import {
  type HistoryStore,
  type PageResult,
  pruneIntervalMs,
  type ResumeResult,
  type RetentionOptions,
} from "./store.ts";

/** One prepared statement; better-sqlite3, bun:sqlite and node:sqlite all fit. */
export interface SqliteStatement {
  run(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
  get(...params: unknown[]): unknown;
}

/**
 * The slice of a synchronous SQLite driver the store needs. Runtime glue
 * passes better-sqlite3 (Node), bun:sqlite (Bun) or node:sqlite (Deno); they
 * share the file format, so one data file moves between runtimes.
 */
export interface SqliteDatabase {
  exec(sql: string): unknown;
  prepare(sql: string): SqliteStatement;
  close(): unknown;
  /**
   * Runs `fn` in one transaction (rolled back when it throws). Only for
   * drivers that refuse BEGIN/COMMIT statements, such as Durable Object
   * storage; without it the store issues them itself. (Not `transaction`:
   * better-sqlite3 and bun:sqlite have a method of that name that only wraps.)
   */
  transactionSync?(fn: () => void): void;
}

interface Row {
  id: string;
  room: string;
  user: string;
  message: string;
  ts: number | bigint;
  edited: number | bigint | null;
}

const toMessage = (r: Row): ChatMessage => {
  const m: ChatMessage = {
    type: "message",
    id: r.id,
    room: r.room,
    user: r.user,
    message: r.message,
    ts: Number(r.ts),
  };
  if (r.edited !== null && r.edited !== undefined) m.edited = Number(r.edited);
  return m;
};

/** SqliteStore's options beside the count limit. */
export interface SqliteStoreOptions extends RetentionOptions {
  /**
   * Prune expired messages (HISTORY_TTL) on an unref'd timer as well as on
   * writes. Durable Objects pass false: a pending timer keeps an object from
   * hibernating, so there they are pruned on writes only (reads never return
   * expired messages either way).
   * @default true
   */
  pruneTimer?: boolean;
}

/**
 * Rooms whose appends-since-prune count is remembered. Bounded so that rooms
 * nobody writes to any more cost nothing (issue 10: 100,000 rooms of one
 * message each kept ~70 bytes of heap per room for the process's life); a
 * room that falls out is pruned on its next append, one cheap indexed DELETE.
 */
const TRACKED_ROOMS = 4096;
/** Expired rows deleted per pass, so one pass never stalls the event loop for long. */
const EXPIRE_CHUNK = 2000;

/**
 * Writes gathered for one commit, and the promise every writer in it waits
 * on: settled once, when the commit succeeds or fails.
 */
export interface WriteBatch<T> {
  items: T[];
  done: Promise<void>;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** An empty {@link WriteBatch} with its promise not yet settled. */
export function openBatch<T>(): WriteBatch<T> {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const done = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { items: [], done, resolve, reject };
}

/**
 * The settings every writer of a chat data file uses (with HISTORY=sqlite the
 * history and the webhook outbox share one file): WAL lets readers run beside the writer;
 * NORMAL syncs at checkpoints, which keeps every commit across a process
 * crash; a 2 s busy timeout lets two connections to one file wait for each
 * other's commits instead of failing.
 */
export function applyWalPragmas(db: SqliteDatabase): void {
  db.exec("PRAGMA journal_mode = WAL");
  db.exec("PRAGMA synchronous = NORMAL");
  db.exec("PRAGMA busy_timeout = 2000");
}

/**
 * Runs `fn` in one transaction, rolled back when it throws: through the
 * driver's `transactionSync` where it has one (Durable Object storage), else
 * with BEGIN/COMMIT statements.
 */
export function inTransaction(db: SqliteDatabase, fn: () => void): void {
  if (db.transactionSync) {
    db.transactionSync(fn);
    return;
  }
  db.exec("BEGIN");
  try {
    fn();
    db.exec("COMMIT");
  } catch (error) {
    db.exec("ROLLBACK");
    throw error;
  }
}

// setImmediate runs after pending I/O, so one flush collects every frame
// that arrived in the same event-loop turn; runtimes without it use a timer.
const schedule: (fn: () => void) => void =
  typeof globalThis.setImmediate === "function" ? (fn) => globalThis.setImmediate(fn) : (fn) => setTimeout(fn, 0);

/**
 * History in an embedded SQLite file (the default). Appends are batched: all
 * messages of one event-loop turn go in one transaction, so a burst costs one
 * commit, and each append's promise settles when its batch is committed.
 */
export class SqliteStore implements HistoryStore {
  readonly #db: SqliteDatabase;
  readonly #insert: SqliteStatement;
  readonly #prune: SqliteStatement;
  readonly #latest: SqliteStatement;
  readonly #before: SqliteStatement;
  readonly #after: SqliteStatement;
  readonly #afterNewest: SqliteStatement;
  readonly #has: SqliteStatement;
  readonly #nthAfter: SqliteStatement;
  readonly #lastId: SqliteStatement;
  readonly #get: SqliteStatement;
  readonly #edit: SqliteStatement;
  readonly #delete: SqliteStatement;
  readonly #expire: SqliteStatement;
  readonly #anyExpired: SqliteStatement;
  readonly #ban: SqliteStatement;
  readonly #unban: SqliteStatement;
  readonly #banned: SqliteStatement;
  readonly #expireBans: SqliteStatement;
  #pending: WriteBatch<ChatMessage> | null = null;
  /**
   * Appends per room since its last prune, for the {@link TRACKED_ROOMS} rooms
   * written most recently (a Map in insertion order is the LRU); rooms not
   * in it are due for one.
   */
  readonly #sincePrune = new Map<string, number>();
  #closed = false;
  readonly #ttlMs: number;
  readonly #now: () => number;
  /** When expired rows and bans were last deleted. */
  #expiredAt = Number.NEGATIVE_INFINITY;
  readonly #expireEveryMs: number;
  #timer: ReturnType<typeof setInterval> | null = null;

  /**
   * @param db an open database (the store owns it and closes it)
   * @param limit messages kept per room @default 10000
   * @param options retention (HISTORY_TTL), clock, prune timer
   */
  constructor(
    db: SqliteDatabase,
    readonly limit = 10000,
    options: SqliteStoreOptions = {},
  ) {
    this.#db = db;
    this.#ttlMs = options.ttlMs ?? 0;
    this.#now = options.now ?? Date.now;
    this.#expireEveryMs = pruneIntervalMs(this.#ttlMs);
    applyWalPragmas(db);
    db.exec(`CREATE TABLE IF NOT EXISTS messages (
      room TEXT NOT NULL,
      id TEXT NOT NULL,
      user TEXT NOT NULL,
      message TEXT NOT NULL,
      ts INTEGER NOT NULL,
      edited INTEGER,
      deleted INTEGER NOT NULL DEFAULT 0,
      PRIMARY KEY (room, id)
    ) WITHOUT ROWID`);
    // Files written before edits and deletes existed get the columns added.
    for (const column of ["edited INTEGER", "deleted INTEGER NOT NULL DEFAULT 0"]) {
      try {
        db.exec(`ALTER TABLE messages ADD COLUMN ${column}`);
      } catch (error) {
        if (!/duplicate column/i.test(String((error as Error)?.message ?? error))) throw error;
      }
    }
    // Only a store with a TTL pays for this index on every insert.
    if (this.#ttlMs > 0) db.exec("CREATE INDEX IF NOT EXISTS messages_ts ON messages (ts)");
    db.exec(`CREATE TABLE IF NOT EXISTS bans (
      room TEXT NOT NULL,
      user TEXT NOT NULL,
      until INTEGER,
      PRIMARY KEY (room, user)
    ) WITHOUT ROWID`);
    // Deleted rows stay as tombstones (text cleared) so `since` still knows the
    // id; every read but `#has` and `#lastId` skips them and expired rows.
    const cols = "id, room, user, message, ts, edited";
    const live = "deleted = 0 AND ts >= ?";
    this.#insert = db.prepare("INSERT OR IGNORE INTO messages (room, id, user, message, ts) VALUES (?, ?, ?, ?, ?)");
    this.#prune = db.prepare(
      "DELETE FROM messages WHERE room = ? AND id < (SELECT id FROM messages WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
    );
    this.#latest = db.prepare(`SELECT ${cols} FROM messages WHERE room = ? AND ${live} ORDER BY id DESC LIMIT ?`);
    this.#before = db.prepare(
      `SELECT ${cols} FROM messages WHERE room = ? AND id < ? AND ${live} ORDER BY id DESC LIMIT ?`,
    );
    this.#after = db.prepare(
      `SELECT ${cols} FROM messages WHERE room = ? AND id > ? AND ${live} ORDER BY id ASC LIMIT ?`,
    );
    this.#afterNewest = db.prepare(
      `SELECT ${cols} FROM messages WHERE room = ? AND id > ? AND ${live} ORDER BY id DESC LIMIT ?`,
    );
    this.#has = db.prepare("SELECT 1 AS found FROM messages WHERE room = ? AND id = ? AND ts >= ?");
    // The id just before the newest N after an id: walks the index, makes no strings of the texts.
    this.#nthAfter = db.prepare(
      `SELECT id FROM messages WHERE room = ? AND id > ? AND ${live} ORDER BY id DESC LIMIT 1 OFFSET ?`,
    );
    this.#lastId = db.prepare("SELECT id FROM messages WHERE room = ? ORDER BY id DESC LIMIT 1");
    this.#get = db.prepare(`SELECT ${cols} FROM messages WHERE room = ? AND id = ? AND ${live}`);
    this.#edit = db.prepare("UPDATE messages SET message = ?, edited = ? WHERE room = ? AND id = ?");
    this.#delete = db.prepare("UPDATE messages SET deleted = 1, message = '', edited = NULL WHERE room = ? AND id = ?");
    this.#expire = db.prepare(
      "DELETE FROM messages WHERE (room, id) IN (SELECT room, id FROM messages WHERE ts < ? LIMIT ?)",
    );
    this.#anyExpired = db.prepare("SELECT 1 AS found FROM messages WHERE ts < ? LIMIT 1");
    this.#ban = db.prepare("INSERT OR REPLACE INTO bans (room, user, until) VALUES (?, ?, ?)");
    this.#unban = db.prepare("DELETE FROM bans WHERE room = ? AND user = ?");
    this.#banned = db.prepare("SELECT until FROM bans WHERE room = ? AND user = ?");
    this.#expireBans = db.prepare("DELETE FROM bans WHERE until IS NOT NULL AND until <= ?");
    if (this.#ttlMs > 0 && options.pruneTimer !== false) {
      this.#timer = setInterval(() => this.prune(), this.#expireEveryMs);
      // Node and Bun: never keep a finished process alive (close() clears it on Deno).
      (this.#timer as { unref?: () => void }).unref?.();
    }
  }

  /** Oldest `ts` a read may return (HISTORY_TTL); 0 when messages never expire. */
  #cutoff(): number {
    return this.#ttlMs > 0 ? this.#now() - this.#ttlMs : 0;
  }

  append(message: ChatMessage): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("history store is closed"));
    if (!this.#pending) {
      this.#pending = openBatch();
      schedule(() => this.#commit());
    }
    this.#pending.items.push(message);
    return this.#pending.done;
  }

  #commit(): void {
    const batch = this.#pending;
    if (!batch) return;
    this.#pending = null;
    const write = () => {
      const touched = new Map<string, number>();
      for (const m of batch.items) {
        this.#insert.run(m.room, m.id, m.user, m.message, m.ts);
        touched.set(m.room, (touched.get(m.room) ?? 0) + 1);
      }
      for (const [room, n] of touched) this.#maybePrune(room, n);
    };
    try {
      inTransaction(this.#db, write);
      batch.resolve();
    } catch (error) {
      batch.reject(error);
    }
    if (this.#now() - this.#expiredAt >= this.#expireEveryMs) this.#pruneSafely();
  }

  #pruneSafely(): void {
    try {
      this.prune();
    } catch {
      // Retention is best effort (the next write or tick retries); reads never
      // return expired rows, so a failed pass loses nothing.
    }
  }

  /**
   * Deletes expired messages (a bounded chunk per call; the next write or
   * tick takes the rest) and expired bans. Called on writes and by the timer.
   */
  prune(): void {
    if (this.#closed) return;
    const now = this.#now();
    this.#expiredAt = now;
    this.#expireBans.run(now);
    if (this.#ttlMs <= 0) return;
    const cutoff = now - this.#ttlMs;
    this.#expire.run(cutoff, EXPIRE_CHUNK);
    // More left over: come back soon rather than after a whole interval.
    if (this.#anyExpired.get(cutoff) != null) this.#expiredAt = Number.NEGATIVE_INFINITY;
  }

  #maybePrune(room: string, added: number): void {
    // Pruning every append would double the write cost; a tenth of the limit
    // of slack keeps the table within 110% of HISTORY_LIMIT per room.
    const due = this.#sincePrune.get(room) ?? Number.POSITIVE_INFINITY;
    // Re-inserted below, so the Map's order is least recently written first.
    this.#sincePrune.delete(room);
    const count = due + added;
    if (count >= Math.max(1, Math.floor(this.limit / 10))) {
      this.#prune.run(room, room, this.limit - 1);
      this.#sincePrune.set(room, 0);
    } else {
      this.#sincePrune.set(room, count);
    }
    if (this.#sincePrune.size > TRACKED_ROOMS) {
      const oldest = this.#sincePrune.keys().next().value as string;
      this.#sincePrune.delete(oldest);
    }
  }

  async latest(room: string, limit: number): Promise<ChatMessage[]> {
    if (limit <= 0) return [];
    return (this.#latest.all(room, this.#cutoff(), Math.min(limit, this.limit)) as Row[]).reverse().map(toMessage);
  }

  async before(room: string, before: string, limit: number): Promise<ChatMessage[]> {
    if (limit <= 0) return [];
    return (this.#before.all(room, before, this.#cutoff(), limit) as Row[]).reverse().map(toMessage);
  }

  async since(room: string, since: string, limit: number): Promise<ResumeResult> {
    const cutoff = this.#cutoff();
    const known = this.#has.get(room, since, cutoff) != null;
    const rows = this.#after.all(room, since, cutoff, limit + 1) as Row[];
    if (rows.length <= limit) return { messages: rows.map(toMessage), complete: known };
    const newest = (this.#afterNewest.all(room, since, cutoff, limit) as Row[]).reverse();
    return { messages: newest.map(toMessage), complete: false };
  }

  async sinceFirst(
    room: string,
    since: string,
    limit: number,
    page: number,
  ): Promise<ResumeResult & { more: boolean }> {
    const cutoff = this.#cutoff();
    const known = this.#has.get(room, since, cutoff) != null;
    // More than `limit` follow: the resume starts after the one just before the newest `limit`.
    const cut = this.#nthAfter.get(room, since, cutoff, limit) as { id: string } | null | undefined;
    const from = cut?.id ?? since;
    const take = Math.max(1, page);
    const rows = this.#after.all(room, from, cutoff, take + 1) as Row[];
    const more = rows.length > take;
    if (more) rows.pop();
    return { messages: rows.map(toMessage), complete: known && !cut, more };
  }

  async after(room: string, after: string, limit: number): Promise<PageResult> {
    if (limit <= 0) return { messages: [], more: false };
    const rows = this.#after.all(room, after, this.#cutoff(), limit + 1) as Row[];
    const more = rows.length > limit;
    if (more) rows.pop();
    return { messages: rows.map(toMessage), more };
  }

  #getRow(room: string, id: string): Row | null {
    return (this.#get.get(room, id, this.#cutoff()) as Row | null | undefined) ?? null;
  }

  async get(room: string, id: string): Promise<ChatMessage | null> {
    const row = this.#getRow(room, id);
    return row ? toMessage(row) : null;
  }

  // Edits and deletes check first, then write: the driver is synchronous, so
  // nothing runs between the two, and "rows changed" reads differently on
  // every driver (better-sqlite3, bun:sqlite, node:sqlite, DO storage).
  async edit(room: string, id: string, message: string, edited: number): Promise<ChatMessage | null> {
    this.#assertOpen();
    const row = this.#getRow(room, id);
    if (!row) return null;
    this.#edit.run(message, edited, room, id);
    return { ...toMessage(row), message, edited };
  }

  async delete(room: string, id: string): Promise<boolean> {
    this.#assertOpen();
    if (!this.#getRow(room, id)) return false;
    this.#delete.run(room, id);
    return true;
  }

  async ban(room: string, user: string, until: number | null): Promise<void> {
    this.#assertOpen();
    this.#ban.run(room, user, until);
  }

  async unban(room: string, user: string): Promise<void> {
    this.#assertOpen();
    this.#unban.run(room, user);
  }

  async bannedUntil(room: string, user: string, now: number): Promise<number | null> {
    const row = this.#banned.get(room, user) as { until: number | bigint | null } | null | undefined;
    if (!row) return null;
    const until = row.until === null ? Number.POSITIVE_INFINITY : Number(row.until);
    return until > now ? until : null;
  }

  #assertOpen(): void {
    if (this.#closed) throw new Error("history store is closed");
  }

  async lastId(room: string): Promise<string | null> {
    const row = this.#lastId.get(room) as { id: string } | null | undefined;
    return row?.id ?? null;
  }

  async flush(): Promise<void> {
    const pending = this.#pending;
    if (!pending) return;
    this.#commit();
    await pending.done.catch(() => {});
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.flush();
    this.#closed = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    this.#db.close();
  }
}
