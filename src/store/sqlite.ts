import type { ChatMessage } from "../protocol.ts";
import type { HistoryStore, ResumeResult } from "./store.ts";

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
}

const toMessage = (r: Row): ChatMessage => ({
  type: "message",
  id: r.id,
  room: r.room,
  user: r.user,
  message: r.message,
  ts: Number(r.ts),
});

interface Pending {
  messages: ChatMessage[];
  done: Promise<void>;
  resolve: () => void;
  reject: (error: unknown) => void;
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
  readonly #lastId: SqliteStatement;
  #pending: Pending | null = null;
  /** Appends per room since its last prune; rooms start due for one. */
  readonly #sincePrune = new Map<string, number>();
  #closed = false;

  /**
   * @param db an open database (the store owns it and closes it)
   * @param limit messages kept per room @default 10000
   */
  constructor(
    db: SqliteDatabase,
    readonly limit = 10000,
  ) {
    this.#db = db;
    // WAL lets readers run beside the writer; NORMAL syncs at checkpoints,
    // which keeps every committed message across a process crash.
    db.exec("PRAGMA journal_mode = WAL");
    db.exec("PRAGMA synchronous = NORMAL");
    db.exec("PRAGMA busy_timeout = 2000");
    db.exec(`CREATE TABLE IF NOT EXISTS messages (
      room TEXT NOT NULL,
      id TEXT NOT NULL,
      user TEXT NOT NULL,
      message TEXT NOT NULL,
      ts INTEGER NOT NULL,
      PRIMARY KEY (room, id)
    ) WITHOUT ROWID`);
    const cols = "id, room, user, message, ts";
    this.#insert = db.prepare("INSERT OR IGNORE INTO messages (room, id, user, message, ts) VALUES (?, ?, ?, ?, ?)");
    this.#prune = db.prepare(
      "DELETE FROM messages WHERE room = ? AND id < (SELECT id FROM messages WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
    );
    this.#latest = db.prepare(`SELECT ${cols} FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?`);
    this.#before = db.prepare(`SELECT ${cols} FROM messages WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?`);
    this.#after = db.prepare(`SELECT ${cols} FROM messages WHERE room = ? AND id > ? ORDER BY id ASC LIMIT ?`);
    this.#afterNewest = db.prepare(`SELECT ${cols} FROM messages WHERE room = ? AND id > ? ORDER BY id DESC LIMIT ?`);
    this.#has = db.prepare("SELECT 1 AS found FROM messages WHERE room = ? AND id = ?");
    this.#lastId = db.prepare("SELECT id FROM messages WHERE room = ? ORDER BY id DESC LIMIT 1");
  }

  append(message: ChatMessage): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("history store is closed"));
    if (!this.#pending) {
      let resolve!: () => void;
      let reject!: (error: unknown) => void;
      const done = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.#pending = { messages: [], done, resolve, reject };
      schedule(() => this.#commit());
    }
    this.#pending.messages.push(message);
    return this.#pending.done;
  }

  #commit(): void {
    const batch = this.#pending;
    if (!batch) return;
    this.#pending = null;
    const write = () => {
      const touched = new Map<string, number>();
      for (const m of batch.messages) {
        this.#insert.run(m.room, m.id, m.user, m.message, m.ts);
        touched.set(m.room, (touched.get(m.room) ?? 0) + 1);
      }
      for (const [room, n] of touched) this.#maybePrune(room, n);
    };
    try {
      if (this.#db.transactionSync) {
        this.#db.transactionSync(write);
      } else {
        this.#db.exec("BEGIN");
        try {
          write();
          this.#db.exec("COMMIT");
        } catch (error) {
          this.#db.exec("ROLLBACK");
          throw error;
        }
      }
      batch.resolve();
    } catch (error) {
      batch.reject(error);
    }
  }

  #maybePrune(room: string, added: number): void {
    // Pruning every append would double the write cost; a tenth of the limit
    // of slack keeps the table within 110% of HISTORY_LIMIT per room.
    const due = this.#sincePrune.get(room) ?? Number.POSITIVE_INFINITY;
    const count = due + added;
    if (count >= Math.max(1, Math.floor(this.limit / 10))) {
      this.#prune.run(room, room, this.limit - 1);
      this.#sincePrune.set(room, 0);
    } else {
      this.#sincePrune.set(room, count);
    }
  }

  async latest(room: string, limit: number): Promise<ChatMessage[]> {
    if (limit <= 0) return [];
    return (this.#latest.all(room, Math.min(limit, this.limit)) as Row[]).reverse().map(toMessage);
  }

  async before(room: string, before: string, limit: number): Promise<ChatMessage[]> {
    return (this.#before.all(room, before, limit) as Row[]).reverse().map(toMessage);
  }

  async since(room: string, since: string, limit: number): Promise<ResumeResult> {
    const known = this.#has.get(room, since) != null;
    const rows = this.#after.all(room, since, limit + 1) as Row[];
    if (rows.length <= limit) return { messages: rows.map(toMessage), complete: known };
    const newest = (this.#afterNewest.all(room, since, limit) as Row[]).reverse();
    return { messages: newest.map(toMessage), complete: false };
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
    this.#db.close();
  }
}
