/**
 * A Durable Object's SQLite storage (`ctx.storage.sql`) as the synchronous
 * driver {@link SqliteStore} speaks to, so history on Workers uses the same
 * schema, queries, pruning and batching as the embedded SQLite file on Node,
 * Bun and Deno: `new SqliteStore(durableSqlite(ctx.storage), limit)`.
 *
 * Types only from workers-types (its module form), so no Workers globals leak
 * into the rest of the project's type check.
 */
import type { DurableObjectStorage, SqlStorageValue } from "@cloudflare/workers-types/index.ts";
import type { SqliteDatabase, SqliteStatement } from "./sqlite.ts";

const PRAGMA = /^\s*PRAGMA\b/i;

/**
 * Adapts Durable Object storage to {@link SqliteDatabase}.
 *
 * - PRAGMA statements are skipped: DO storage refuses them, and the store's
 *   PRAGMAs (WAL, synchronous, busy_timeout) only tune a file it would own;
 *   the platform owns journaling and durability here.
 * - BEGIN/COMMIT are refused by DO storage too, so the store's batches go
 *   through `transactionSync` (the {@link SqliteDatabase.transactionSync} hook),
 *   which commits or rolls back the whole batch.
 * - `close` does nothing: the storage lives as long as the object.
 *
 * Durability: a batch is committed when its append promise resolves, and the
 * object's output gate holds every frame sent after it (the hub fans out only
 * then) until the write is confirmed, so no client sees a message that a
 * crash could lose.
 */
export function durableSqlite(storage: DurableObjectStorage): SqliteDatabase {
  const sql = storage.sql;
  const run = (query: string, params: unknown[]) =>
    sql.exec<Record<string, SqlStorageValue>>(query, ...(params as SqlStorageValue[]));
  return {
    exec(query: string) {
      if (PRAGMA.test(query)) return;
      run(query, []);
    },
    prepare(query: string): SqliteStatement {
      return {
        run: (...params) => run(query, params).rowsWritten,
        all: (...params) => run(query, params).toArray(),
        get: (...params) => run(query, params).next().value,
      };
    },
    transactionSync(fn: () => void) {
      storage.transactionSync(fn);
    },
    close() {},
  };
}
