/**
 * Per-room memory a history store keeps: writes one message into each of
 * N rooms (default 100,000) and reports the JS heap the store holds
 * afterwards, per room (issue 10: "no per-room state kept for rooms that are
 * gone"). With HISTORY_TTL the messages then expire and the heap is measured
 * again after the store's own prune.
 *
 *   node --expose-gc --import tsx bench/rooms-memory.ts [rooms] [sqlite|memory] [module]
 *
 * `module` swaps in another SqliteStore build (e.g. an older version saved
 * with `git show REV:src/store/sqlite.ts > /tmp/x/sqlite.ts`) to compare.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { formatMessageId } from "../src/protocol.ts";
import { MemoryStore } from "../src/store/memory.ts";
import type { SqliteDatabase } from "../src/store/sqlite.ts";
import type { HistoryStore } from "../src/store/store.ts";

const rooms = Number(process.argv[2] ?? 100_000);
const kind = process.argv[3] ?? "sqlite";
const modulePath = process.argv[4] ? resolve(process.argv[4]) : "../src/store/sqlite.ts";
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with node --expose-gc");

function heap(): number {
  for (let i = 0; i < 3; i++) gc!();
  return process.memoryUsage().heapUsed;
}

const dir = mkdtempSync(join(tmpdir(), "rooms-memory-"));
let clock = Date.now();
const now = () => clock;
const TTL = 60_000;
let store: HistoryStore;
if (kind === "memory") {
  store = new MemoryStore(10000, { ttlMs: TTL, now });
} else {
  const { SqliteStore } = (await import(modulePath)) as typeof import("../src/store/sqlite.ts");
  store = new SqliteStore(new Database(join(dir, "chat.db")) as unknown as SqliteDatabase, 10000, {
    ttlMs: TTL,
    now,
  } as never);
}

const before = heap();
const BATCH = 1000;
for (let r = 0; r < rooms; r += BATCH) {
  const writes: (void | Promise<void>)[] = [];
  for (let k = r; k < Math.min(rooms, r + BATCH); k++) {
    const ts = clock + k;
    writes.push(
      store.append({ type: "message", id: formatMessageId(ts, 0), room: `room-${k}`, user: "u", message: "hi", ts }),
    );
  }
  await Promise.all(writes);
}
const written = heap();
const perRoom = (written - before) / rooms;
console.log(
  `${kind === "memory" ? "memory" : `sqlite ${modulePath}`}: ${rooms} rooms x 1 message: heap +${((written - before) / 1e6).toFixed(2)} MB`,
);
console.log(`  = ${perRoom.toFixed(1)} bytes per room`);

// Everything expires; one more write (and the store's own prune) must let go of the rest.
clock += 2 * TTL + 120_000;
(store as { prune?: () => void }).prune?.();
await store.append({
  type: "message",
  id: formatMessageId(clock, 0),
  room: "after",
  user: "u",
  message: "x",
  ts: clock,
});
await store.flush();
const expired = heap();
console.log(`  after HISTORY_TTL expiry: heap +${((expired - before) / 1e6).toFixed(2)} MB over the start`);
console.log(`  latest(room-0): ${(await store.latest("room-0", 10)).length} messages`);
await store.close();
rmSync(dir, { recursive: true, force: true });
