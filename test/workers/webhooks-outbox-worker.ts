/**
 * A test fixture, not shipped: a Worker whose Durable Object hosts
 * `SqliteOutbox` over its own storage (`durableSqlite`, as the chat's room
 * objects keep their webhook outbox), driven over one WebSocket per outbox so
 * the Outbox contract runs against real Durable Object SQL storage from
 * vitest on Node. Calls start in the order they arrive; answers come back as
 * their promises settle (adds batch as inside the chat's object).
 */
import type {
  WebSocketPair as CfWebSocketPair,
  DurableObjectNamespace,
  DurableObjectState,
} from "@cloudflare/workers-types/index.ts";
import { durableSqlite } from "../../src/store/durable.ts";
import type { WebhookEvent } from "../../src/webhooks/events.ts";
import type { RoomRetry } from "../../src/webhooks/outbox.ts";
import { SqliteOutbox } from "../../src/webhooks/sqlite-outbox.ts";

interface Env {
  OUTBOXES: DurableObjectNamespace;
}

/** One call: `gen` names the outbox instance (a reopen makes the next one). */
export interface OutboxCall {
  id: number;
  gen: number;
  method: "add" | "due" | "nextDue" | "head" | "remove" | "failed" | "pending" | "flush" | "close" | "reopen";
  args: unknown[];
}

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
    const { WebSocketPair } = globalThis as unknown as { WebSocketPair: typeof CfWebSocketPair };
    const pair = new WebSocketPair();
    const socket = pair[1];
    socket.accept();
    socket.addEventListener("message", (event) => {
      const call = JSON.parse(String(event.data)) as OutboxCall;
      let result: Promise<unknown>;
      try {
        result = Promise.resolve(this.#call(call));
      } catch (error) {
        result = Promise.reject(error);
      }
      result.then(
        (value) => socket.send(JSON.stringify({ id: call.id, ok: true, value: value ?? null })),
        (error: unknown) => socket.send(JSON.stringify({ id: call.id, ok: false, error: String(error) })),
      );
    });
    return new Response(null, { status: 101, webSocket: pair[0] } as ResponseInit);
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
    const url = new URL(request.url);
    if (url.pathname === "/healthz") return Response.json({ status: "ok" });
    const name = url.searchParams.get("name");
    if (url.pathname !== "/outbox" || !name) return Response.json({ error: "not found" }, { status: 404 });
    const stub = env.OUTBOXES.get(env.OUTBOXES.idFromName(name)) as unknown as { fetch(r: Request): Promise<Response> };
    return stub.fetch(request);
  },
};
