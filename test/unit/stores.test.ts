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
  const store = new MemoryStore(options.limit, options);
  return { store, cleanup: () => store.close() };
});

storeContract("SqliteStore (better-sqlite3, temp file)", async (options = {}) => {
  const dir = mkdtempSync(join(tmpdir(), "chat-store-"));
  const path = join(dir, "chat.db");
  let current: HistoryStore = new SqliteStore(new Database(path), options.limit, options);
  return {
    get store() {
      return current;
    },
    async reopen() {
      await current.close();
      current = new SqliteStore(new Database(path), options.limit, options);
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

  it("upgrades a file written before edits and deletes existed", async () => {
    const dir = mkdtempSync(join(tmpdir(), "chat-store-"));
    const path = join(dir, "old.db");
    const old = new Database(path);
    // The schema as released before edit/delete/ban.
    old.exec(`CREATE TABLE messages (room TEXT NOT NULL, id TEXT NOT NULL, user TEXT NOT NULL,
      message TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (room, id)) WITHOUT ROWID`);
    old.prepare("INSERT INTO messages VALUES ('r', '0000000000001-000000', 'u', 'kept', 1)").run();
    old.close();
    const store = new SqliteStore(new Database(path));
    expect((await store.latest("r", 10)).map((m) => m.message)).toEqual(["kept"]);
    expect(await store.edit("r", "0000000000001-000000", "new", 5)).toMatchObject({ message: "new", edited: 5 });
    expect(await store.delete("r", "0000000000001-000000")).toBe(true);
    await store.ban("r", "u", null);
    await store.close();
    const again = new SqliteStore(new Database(path)); // and opens the upgraded file again
    expect(await again.latest("r", 10)).toEqual([]);
    expect(await again.bannedUntil("r", "u", 0)).toBe(Number.POSITIVE_INFINITY);
    await again.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("HISTORY_TTL: writes delete expired rows and bans from the file, a bounded chunk at a time", async () => {
    const db = new Database(":memory:");
    let clock = 1_000_000;
    const store = new SqliteStore(db, 10000, { ttlMs: 60_000, now: () => clock, pruneTimer: false });
    const count = () => (db.prepare("SELECT count(*) AS n FROM messages").get() as { n: number }).n;
    const bans = () => (db.prepare("SELECT count(*) AS n FROM bans").get() as { n: number }).n;
    const m = (room: string, ts: number, seq = 0) => ({
      type: "message" as const,
      id: `${String(ts).padStart(13, "0")}-${String(seq).padStart(6, "0")}`,
      room,
      user: "u",
      message: "x",
      ts,
    });
    // 5000 rooms of one message each, written at the start.
    await Promise.all(Array.from({ length: 5000 }, (_, i) => store.append(m(`room-${i}`, clock, i))));
    await store.ban("r", "short", clock + 1000);
    await store.ban("r", "forever", null);
    expect(count()).toBe(5000);
    clock += 120_000;
    // Each write deletes up to 2000 expired rows; a few writes clear them all.
    const rounds: number[] = [];
    for (let i = 0; i < 10 && count() > i; i++) {
      await store.append(m("live", clock + i, i));
      rounds.push(count());
    }
    expect(rounds[0]).toBe(5000 - 2000 + 1);
    expect(count()).toBe(rounds.length); // only the live room's messages are left
    expect(bans()).toBe(1); // the expired ban is gone, the one until lifted stays
    expect(await store.bannedUntil("r", "forever", clock)).toBe(Number.POSITIVE_INFINITY);
    await store.close();
  });

  it("remembers prune counts for a bounded number of rooms; a room that fell out is pruned on its next append", async () => {
    const db = new Database(":memory:");
    const store = new SqliteStore(db, 100);
    const count = (room: string) =>
      (db.prepare("SELECT count(*) AS n FROM messages WHERE room = ?").get(room) as { n: number }).n;
    const m = (room: string, i: number) => ({
      type: "message" as const,
      id: `${String(1_000_000 + i).padStart(13, "0")}-000000`,
      room,
      user: "u",
      message: "x",
      ts: 1_000_000 + i,
    });
    // 105 in room a: pruned every tenth append, so between 100 and 110 are kept.
    for (let i = 0; i < 105; i++) await store.append(m("a", i));
    expect(count("a")).toBeGreaterThan(100);
    // 5000 other rooms push room a out of the remembered ones (4096)...
    await Promise.all(Array.from({ length: 5000 }, (_, k) => store.append(m(`other-${k}`, 200 + k))));
    // ...so its next append finds it due and prunes it back to the limit.
    await store.append(m("a", 10_000));
    expect(count("a")).toBe(100);
    await store.close();
  });
});
