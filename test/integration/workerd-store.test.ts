/**
 * The HistoryStore contract against real Durable Object SQL storage:
 * `SqliteStore` over `durableSqlite(ctx.storage)`, as the chat's rooms keep
 * history, hosted by the fixture Worker in test/workers/ under `wrangler dev`
 * and driven over one WebSocket per store (calls start in the order they are
 * made, as in-process).
 */
import { beforeAll } from "vitest";
import type { ChatMessage } from "../../src/protocol.ts";
import type { HistoryStore, PageResult, ResumeResult } from "../../src/store/store.ts";
import type { RunningServer } from "../helpers/server.ts";
import { FixtureLine, wranglerTarget } from "../helpers/workerd.ts";
import { storeContract } from "../unit/store.contract.ts";
import type { StoreCall } from "../workers/store-worker.ts";

const target = wranglerTarget("workerd store fixture", "test/workers/wrangler.jsonc");

let server: RunningServer;
beforeAll(async () => {
  server = await target.start();
});

/** A HistoryStore whose every call runs on one generation of the store in the object. */
function remoteStore(line: FixtureLine<StoreCall["method"]>, gen: number): HistoryStore {
  return {
    append: (m: ChatMessage) => line.call(gen, "append", [m]).then(() => {}),
    latest: (room, limit) => line.call(gen, "latest", [room, limit]) as Promise<ChatMessage[]>,
    before: (room, before, limit) => line.call(gen, "before", [room, before, limit]) as Promise<ChatMessage[]>,
    since: (room, since, limit) => line.call(gen, "since", [room, since, limit]) as Promise<ResumeResult>,
    sinceFirst: (room, since, limit, page) =>
      line.call(gen, "sinceFirst", [room, since, limit, page]) as Promise<ResumeResult & { more: boolean }>,
    after: (room, after, limit) => line.call(gen, "after", [room, after, limit]) as Promise<PageResult>,
    get: (room, id) => line.call(gen, "get", [room, id]) as Promise<ChatMessage | null>,
    edit: (room, id, message, edited) =>
      line.call(gen, "edit", [room, id, message, edited]) as Promise<ChatMessage | null>,
    delete: (room, id) => line.call(gen, "delete", [room, id]) as Promise<boolean>,
    ban: (room, user, until) => line.call(gen, "ban", [room, user, until]).then(() => {}),
    unban: (room, user) => line.call(gen, "unban", [room, user]).then(() => {}),
    bannedUntil: (room, user, now) =>
      line
        .call(gen, "bannedUntil", [room, user, now])
        .then((v) => (v === "Infinity" ? Infinity : (v as number | null))),
    lastId: (room) => line.call(gen, "lastId", [room]) as Promise<string | null>,
    flush: () => line.call(gen, "flush").then(() => {}),
    close: () => line.call(gen, "close").then(() => {}),
  };
}

let storeSeq = 0;

storeContract("SqliteStore over Durable Object storage (workerd)", async (options = {}) => {
  // A fresh object per store: its own, empty storage.
  const name = `store-${process.pid}-${++storeSeq}`;
  const query = `name=${name}&limit=${options.limit ?? 10000}&ttlMs=${options.ttlMs ?? 0}`;
  const line = await FixtureLine.open<StoreCall["method"]>(`${server.wsUrl.replace("/websocket", "/store")}?${query}`);
  let gen = 0;
  let current = remoteStore(line, gen);
  return {
    get store() {
      return current;
    },
    async reopen() {
      gen = (await line.call(gen, "reopen")) as number;
      current = remoteStore(line, gen);
      return current;
    },
    // The object cannot be handed the contract's clock function: it is set by call.
    setNow: (ms) => line.call(gen, "now", [ms]).then(() => {}),
    cleanup: () => current.close(),
  };
});
