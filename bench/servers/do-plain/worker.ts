/**
 * The Workers floor: a Durable Object broadcast with hibernation and nothing
 * else. A Worker forwards every `?room=` to that room's object; the object
 * accepts WebSockets for hibernation and sends each frame as is to every
 * socket of the room. No validation, no ids, no history, no presence.
 * bench/workers.ts runs it on workerd beside ours under the same load.
 *
 * `FANOUT=docs` lists the sockets with `ctx.getWebSockets()` for every
 * message, as Cloudflare's hibernation example does; the default keeps them
 * in a Set (rebuilt from `getWebSockets()` when the object wakes), which
 * costs less per message: the stronger floor.
 */
import type {
  WebSocket as CfWebSocket,
  WebSocketPair as CfWebSocketPair,
  DurableObjectNamespace,
  DurableObjectState,
} from "@cloudflare/workers-types/index.ts";

interface Env {
  ROOMS: DurableObjectNamespace;
  FANOUT?: string;
}

interface FetchTarget {
  fetch(request: Request): Promise<Response>;
}

export class PlainRoom {
  readonly #ctx: DurableObjectState;
  readonly #sockets: Set<CfWebSocket>;
  readonly #docs: boolean;

  constructor(ctx: DurableObjectState, env: Env) {
    this.#ctx = ctx;
    this.#sockets = new Set(ctx.getWebSockets());
    this.#docs = env.FANOUT === "docs";
    // Once per construction (a new room, or a wake after eviction): the bench counts these.
    console.log("room started");
  }

  fetch(request: Request): Response {
    if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") return new Response("upgrade", { status: 426 });
    const { WebSocketPair } = globalThis as unknown as { WebSocketPair: typeof CfWebSocketPair };
    const [client, server] = Object.values(new WebSocketPair()) as [CfWebSocket, CfWebSocket];
    this.#ctx.acceptWebSocket(server);
    this.#sockets.add(server);
    return new Response(null, { status: 101, webSocket: client } as ResponseInit);
  }

  webSocketMessage(_ws: CfWebSocket, message: string | ArrayBuffer): void {
    for (const socket of this.#docs ? this.#ctx.getWebSockets() : this.#sockets) {
      try {
        socket.send(message);
      } catch {
        // closing: its close event follows
      }
    }
  }

  webSocketClose(ws: CfWebSocket, code: number, reason: string): void {
    this.#sockets.delete(ws);
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {
      // already closed
    }
  }

  webSocketError(ws: CfWebSocket): void {
    this.#sockets.delete(ws);
  }
}

export default {
  fetch(request: Request, env: Env): Response | Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname === "/healthz") return Response.json({ status: "ok" });
    const room = url.searchParams.get("room") ?? "bench";
    return (env.ROOMS.get(env.ROOMS.idFromName(room)) as unknown as FetchTarget).fetch(request);
  },
};
