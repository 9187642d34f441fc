/**
 * The store contract over the runtime's own SQLite driver: bun:sqlite under
 * Bun, node:sqlite under Deno; `vitest` is swapped for ./vitest-shim.ts
 * (bun: --preload ./bun-imports.ts, deno: --import-map=deno-imports.json). Plus the file format:
 * CHAT_READ_DB names a file written by better-sqlite3 that must read back
 * exactly; CHAT_WRITE_DB names one to write for better-sqlite3 to read.
 * Started by test/integration/{bun,deno}.test.ts.
 */
import { describe, expect, it } from "vitest";
import { nulSafeNodeSqlite } from "../../src/store/node-sqlite.ts";
import { type SqliteDatabase, SqliteStore } from "../../src/store/sqlite.ts";
import { storeContract } from "../unit/store.contract.ts";
import { fixtureMessages } from "./fixture.ts";

declare const Bun: unknown;

const onBun = typeof Bun !== "undefined";
const driver = onBun ? "bun:sqlite" : "node:sqlite";
const mod = (await import(driver)) as {
  Database?: new (path: string, options?: { create?: boolean }) => SqliteDatabase;
  DatabaseSync?: new (path: string) => SqliteDatabase;
};
/** Opened as the runtime entries open it (src/runtime/bun.ts, deno.ts). */
const open = (path: string): SqliteDatabase =>
  mod.Database ? new mod.Database(path, { create: true }) : nulSafeNodeSqlite(new mod.DatabaseSync!(path));

let seq = 0;
const tempPath = () => `${process.env.CHAT_TMP_DIR ?? "/tmp"}/store-${driver.replace(":", "-")}-${++seq}.db`;

storeContract(`SqliteStore (${driver}, temp file)`, async (options = {}) => {
  const path = tempPath();
  let current = new SqliteStore(open(path), options.limit, options);
  return {
    get store() {
      return current;
    },
    async reopen() {
      await current.close();
      current = new SqliteStore(open(path), options.limit, options);
      return current;
    },
    async cleanup() {
      await current.close();
    },
  };
});

describe(`data file moves between drivers (${driver})`, () => {
  it("reads a file written by better-sqlite3 exactly, and writes one for it", async () => {
    const read = process.env.CHAT_READ_DB;
    const write = process.env.CHAT_WRITE_DB;
    if (!read || !write) throw new Error("CHAT_READ_DB and CHAT_WRITE_DB must name the files");
    const theirs = new SqliteStore(open(read));
    expect(await theirs.latest("from-node", 100)).toEqual(fixtureMessages("from-node"));
    expect(await theirs.lastId("from-node")).toBe(fixtureMessages("from-node").at(-1)!.id);
    await theirs.close();
    const ours = new SqliteStore(open(write));
    for (const m of fixtureMessages(driver)) await ours.append(m);
    await ours.close();
  });
});
