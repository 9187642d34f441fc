import type { SqliteDatabase, SqliteStatement } from "./sqlite.ts";

/** SqliteStore's column list, and the same with its free-text columns read as bytes. */
const COLUMNS = "id, room, user, message, ts, edited";
const AS_BYTES = "id, room, CAST(user AS BLOB) AS user, CAST(message AS BLOB) AS message, ts, edited";

const decoder = new TextDecoder();

function decodeRow(row: unknown): unknown {
  if (row === null || typeof row !== "object") return row;
  const r = row as Record<string, unknown>;
  for (const k of ["user", "message"]) {
    const v = r[k];
    if (v instanceof Uint8Array) r[k] = decoder.decode(v);
  }
  return r;
}

/**
 * node:sqlite as Deno ships it cuts a TEXT value at its first NUL when
 * reading (the bytes are stored whole), and a chat message may hold one.
 * This reads SqliteStore's `user` and `message` columns as BLOBs and decodes
 * the UTF-8 here. It keys on the store's column list: if that changes, the
 * store contract run under node:sqlite (its NUL round-trip) fails.
 */
export function nulSafeNodeSqlite(db: SqliteDatabase): SqliteDatabase {
  return {
    exec: (sql) => db.exec(sql),
    close: () => db.close(),
    prepare(sql): SqliteStatement {
      const stmt = db.prepare(sql.replaceAll(COLUMNS, AS_BYTES));
      return {
        run: (...params) => stmt.run(...params),
        get: (...params) => decodeRow(stmt.get(...params)),
        all: (...params) => stmt.all(...params).map(decodeRow),
      };
    },
  };
}
