/**
 * The HistoryStore contract against real Durable Object SQL storage:
 * `SqliteStore` over `durableSqlite(ctx.storage)`, as the chat's rooms keep
 * history, hosted by the fixture Worker in test/workers/ under `wrangler dev`
 * and driven over one WebSocket per store (calls start in the order they are
 * made, as in-process).
 */
import { beforeAll } from "vitest";
import WebSocket from "ws";
import type { ChatMessage } from "../../src/protocol.ts";
import type { HistoryStore, PageResult, ResumeResult } from "../../src/store/store.ts";
import { track } from "../helpers/cleanup.ts";
import type { RunningServer } from "../helpers/server.ts";
import { wranglerTarget } from "../helpers/workerd.ts";
import { storeContract } from "../unit/store.contract.ts";
import type { StoreCall } from "../workers/store-worker.ts";

const target = wranglerTarget("workerd store fixture", "test/workers/wrangler.jsonc");
const CALL_TIMEOUT_MS = 5000;

let server: RunningServer;
beforeAll(async () => {
  server = await target.start();
});

interface Reply {
  id: number;
  ok: boolean;
  value?: unknown;
  error?: string;
}

/** One socket to one store's object; every call is answered by id. */
class StoreLine {
  #next = 0;
  readonly #waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data) => {
      const reply = JSON.parse(data.toString()) as Reply;
      const w = this.#waiting.get(reply.id);
      this.#waiting.delete(reply.id);
      if (reply.ok) w?.resolve(reply.value);
      else w?.reject(new Error(reply.error));
    });
    ws.on("close", () => {
      for (const w of this.#waiting.values()) w.reject(new Error("store socket closed"));
      this.#waiting.clear();
    });
  }

  static async open(name: string, limit: number, ttlMs: number): Promise<StoreLine> {
    const base = server.wsUrl.replace("/websocket", "/store");
    const ws = new WebSocket(`${base}?name=${name}&limit=${limit}&ttlMs=${ttlMs}`);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    return new StoreLine(ws);
  }

  call(gen: number, method: StoreCall["method"], args: unknown[] = []): Promise<unknown> {
    const id = ++this.#next;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${method} not answered in ${CALL_TIMEOUT_MS} ms`)),
        CALL_TIMEOUT_MS,
      );
      this.#waiting.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.ws.send(JSON.stringify({ id, gen, method, args } satisfies StoreCall));
    });
  }
}

/** A HistoryStore whose every call runs on one generation of the store in the object. */
function remoteStore(line: StoreLine, gen: number): HistoryStore {
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
  const line = await StoreLine.open(`store-${process.pid}-${++storeSeq}`, options.limit ?? 10000, options.ttlMs ?? 0);
  let gen = 0;
  let current = remoteStore(line, gen);
  track(() => line.ws.close());
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
