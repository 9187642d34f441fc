/**
 * A test fixture, not shipped: a Worker whose Durable Object hosts
 * `SqliteOutbox` over its own storage (`durableSqlite`, as the chat's room
 * objects keep their webhook outbox), driven over one WebSocket per outbox so
 * the Outbox contract runs against real Durable Object SQL storage from
 * vitest on Node. Calls start in the order they arrive; answers come back as
 * their promises settle (adds batch as inside the chat's object).
 */
import type { DurableObjectNamespace, DurableObjectState } from "@cloudflare/workers-types/index.ts";
import { durableSqlite } from "../../src/store/durable.ts";
import type { WebhookEvent } from "../../src/webhooks/events.ts";
import type { RoomRetry } from "../../src/webhooks/outbox.ts";
import { SqliteOutbox } from "../../src/webhooks/sqlite-outbox.ts";
import { type FixtureCall, routeToObject, serveCalls } from "./fixture.ts";

interface Env {
  OUTBOXES: DurableObjectNamespace;
}

/** One call: `gen` names the outbox instance (a reopen makes the next one). */
export type OutboxCall = FixtureCall<
  "add" | "due" | "nextDue" | "head" | "remove" | "failed" | "pending" | "flush" | "close" | "reopen"
>;

export class OutboxHost {
  readonly #ctx: DurableObjectState;
  readonly #outboxes = new Map<number, SqliteOutbox>();

  constructor(ctx: DurableObjectState) {
    this.#ctx = ctx;
  }

  #open(): SqliteOutbox {
    return new SqliteOutbox(durableSqlite(this.#ctx.storage), false);
  }

  fetch(): Response {
    this.#outboxes.set(0, this.#open());
    return serveCalls<OutboxCall>((call) => this.#call(call));
  }

  #call(call: OutboxCall): unknown {
    const outbox = this.#outboxes.get(call.gen);
    if (!outbox) throw new Error(`no outbox generation ${call.gen}`);
    const [a, b, c] = call.args;
    switch (call.method) {
      case "add":
        return outbox.add(a as WebhookEvent);
      case "due":
        return outbox.due(a as number, b as number);
      case "nextDue":
        return outbox.nextDue();
      case "head":
        return outbox.head(a as string, b as number, (c ?? undefined) as string | undefined);
      case "remove":
        return outbox.remove(a as string, b as string, c as RoomRetry);
      case "failed":
        return outbox.failed(a as string, b as RoomRetry);
      case "pending":
        return outbox.pending();
      case "flush":
        return outbox.flush();
      case "close":
        return outbox.close();
      case "reopen":
        return outbox.close().then(() => {
          const gen = call.gen + 1;
          this.#outboxes.set(gen, this.#open());
          return gen;
        });
    }
  }
}

export default {
  fetch(request: Request, env: Env): Response | Promise<Response> {
    return routeToObject(request, env.OUTBOXES, "/outbox");
  },
};
