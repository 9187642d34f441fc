/**
 * The webhook Outbox contract against real Durable Object SQL storage:
 * `SqliteOutbox` over `durableSqlite(ctx.storage)`, as the chat's room objects
 * keep pending events, hosted by the fixture Worker in
 * test/workers/webhooks-outbox-worker.ts under `wrangler dev`, driven over one
 * WebSocket per outbox (calls start in the order they are made).
 */
import { beforeAll } from "vitest";
import type { WebhookEvent } from "../../src/webhooks/events.ts";
import type { Outbox, PendingEvent, RoomRetry } from "../../src/webhooks/outbox.ts";
import type { RunningServer } from "../helpers/server.ts";
import { FixtureLine, wranglerTarget } from "../helpers/workerd.ts";
import { outboxContract } from "../unit/webhooks-outbox.contract.ts";
import type { OutboxCall } from "../workers/webhooks-outbox-worker.ts";

const target = wranglerTarget("workerd outbox fixture", "test/workers/webhooks-outbox.wrangler.jsonc");

let server: RunningServer;
beforeAll(async () => {
  server = await target.start();
});

function remoteOutbox(line: FixtureLine<OutboxCall["method"]>, gen: number): Outbox {
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
  const url = `${server.wsUrl.replace("/websocket", "/outbox")}?name=outbox-${process.pid}-${++seq}`;
  const line = await FixtureLine.open<OutboxCall["method"]>(url);
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
