/**
 * The webhook Outbox contract against real Durable Object SQL storage:
 * `SqliteOutbox` over `durableSqlite(ctx.storage)`, as the chat's room objects
 * keep pending events, hosted by the fixture Worker in
 * test/workers/webhooks-outbox-worker.ts under `wrangler dev`, driven over one
 * WebSocket per outbox (calls start in the order they are made).
 */
import { beforeAll } from "vitest";
import WebSocket from "ws";
import type { WebhookEvent } from "../../src/webhooks/events.ts";
import type { Outbox, PendingEvent, RoomRetry } from "../../src/webhooks/outbox.ts";
import { track } from "../helpers/cleanup.ts";
import type { RunningServer } from "../helpers/server.ts";
import { wranglerTarget } from "../helpers/workerd.ts";
import { outboxContract } from "../unit/webhooks-outbox.contract.ts";
import type { OutboxCall } from "../workers/webhooks-outbox-worker.ts";

const target = wranglerTarget("workerd outbox fixture", "test/workers/webhooks-outbox.wrangler.jsonc");
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

/** One socket to one outbox's object; every call is answered by id. */
class OutboxLine {
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
      for (const w of this.#waiting.values()) w.reject(new Error("outbox socket closed"));
      this.#waiting.clear();
    });
  }

  static async open(name: string): Promise<OutboxLine> {
    const ws = new WebSocket(`${server.wsUrl.replace("/websocket", "/outbox")}?name=${name}`);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    return new OutboxLine(ws);
  }

  call(gen: number, method: OutboxCall["method"], args: unknown[] = []): Promise<unknown> {
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
      this.ws.send(JSON.stringify({ id, gen, method, args } satisfies OutboxCall));
    });
  }
}

function remoteOutbox(line: OutboxLine, gen: number): Outbox {
  return {
    add: (e: WebhookEvent) => line.call(gen, "add", [e]).then(() => {}),
    due: (now, limit) => line.call(gen, "due", [now, limit]) as Promise<string[]>,
    nextDue: () => line.call(gen, "nextDue") as Promise<number | null>,
    head: (room, limit, after) =>
      line.call(gen, "head", [room, limit, after]) as Promise<{ events: PendingEvent[]; retry: RoomRetry }>,
    remove: (room, key, retry) => line.call(gen, "remove", [room, key, retry]).then(() => {}),
    failed: (room, retry) => line.call(gen, "failed", [room, retry]).then(() => {}),
    pending: () => line.call(gen, "pending") as Promise<number>,
    flush: () => line.call(gen, "flush").then(() => {}),
    close: () => line.call(gen, "close").then(() => {}),
  };
}

let seq = 0;
outboxContract("SqliteOutbox over Durable Object storage (workerd)", async () => {
  // A fresh object per outbox: its own, empty storage.
  const line = await OutboxLine.open(`outbox-${process.pid}-${++seq}`);
  track(() => line.ws.close());
  let gen = 0;
  let current = remoteOutbox(line, gen);
  return {
    get outbox() {
      return current;
    },
    async reopen() {
      gen = (await line.call(gen, "reopen")) as number;
      current = remoteOutbox(line, gen);
      return current;
    },
    cleanup: () => current.close(),
  };
});
