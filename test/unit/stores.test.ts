import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { MemoryStore } from "../../src/store/memory.ts";
import { SqliteStore } from "../../src/store/sqlite.ts";
import type { HistoryStore } from "../../src/store/store.ts";
import { storeContract } from "./store.contract.ts";

storeContract("MemoryStore", async (options = {}) => {
  const store = new MemoryStore(options.limit);
  return { store, cleanup: () => store.close() };
});

storeContract("SqliteStore (better-sqlite3, temp file)", async (options = {}) => {
  const dir = mkdtempSync(join(tmpdir(), "chat-store-"));
  const path = join(dir, "chat.db");
  let current: HistoryStore = new SqliteStore(new Database(path), options.limit);
  return {
    get store() {
      return current;
    },
    async reopen() {
      await current.close();
      current = new SqliteStore(new Database(path), options.limit);
      return current;
    },
    async cleanup() {
      await current.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

describe("SqliteStore", () => {
  it("append after close rejects instead of losing the message silently", async () => {
    const store = new SqliteStore(new Database(":memory:"));
    await store.close();
    await expect(
      store.append({ type: "message", id: "0000000000001-000000", room: "r", user: "u", message: "x", ts: 1 }),
    ).rejects.toThrow(/closed/);
  });

  it("a failed batch rejects every append of that batch and keeps the store usable", async () => {
    const db = new Database(":memory:");
    const store = new SqliteStore(db);
    db.exec(
      "CREATE TRIGGER no_boom BEFORE INSERT ON messages WHEN NEW.message = 'boom' BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
    );
    const m = (i: number, message: string) => ({
      type: "message" as const,
      id: `000000000000${i}-000000`,
      room: "r",
      user: "u",
      message,
      ts: i,
    });
    const a = store.append(m(1, "fine"));
    const b = store.append(m(2, "boom"));
    await expect(a).rejects.toThrow(/boom refused/);
    await expect(b).rejects.toThrow(/boom refused/);
    expect(await store.latest("r", 10)).toEqual([]);
    await store.append(m(3, "later"));
    expect((await store.latest("r", 10)).map((x) => x.message)).toEqual(["later"]);
    await store.close();
  });
});
