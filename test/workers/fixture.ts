/**
 * Plumbing shared by the test fixture Workers (not shipped): each routes
 * `/<path>?name=N` to the Durable Object named N, which serves one WebSocket
 * of calls (`FixtureCall`) and answers each by id. Calls start in the order
 * they arrive; answers come back as their promises settle, so batching inside
 * the object behaves as it does in the chat's own objects.
 */
import type { WebSocketPair as CfWebSocketPair, DurableObjectNamespace } from "@cloudflare/workers-types/index.ts";

/** One call: `gen` names the instance under test (a reopen makes the next one). */
export interface FixtureCall<M extends string = string> {
  id: number;
  gen: number;
  method: M;
  args: unknown[];
}

/**
 * Accepts the object's WebSocket and answers every call with what `handle`
 * returns or throws (`{id, ok, value}` / `{id, ok:false, error}`).
 */
export function serveCalls<C extends FixtureCall>(handle: (call: C) => unknown): Response {
  const { WebSocketPair } = globalThis as unknown as { WebSocketPair: typeof CfWebSocketPair };
  const pair = new WebSocketPair();
  const socket = pair[1];
  socket.accept();
  socket.addEventListener("message", (event) => {
    const call = JSON.parse(String(event.data)) as C;
    let result: Promise<unknown>;
    try {
      result = Promise.resolve(handle(call));
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

/** The Worker's fetch: /healthz, and `/<path>?name=N` handed to the object named N in `ns`. */
export function routeToObject(
  request: Request,
  ns: DurableObjectNamespace,
  path: string,
): Promise<Response> | Response {
  const url = new URL(request.url);
  if (url.pathname === "/healthz") return Response.json({ status: "ok" });
  const name = url.searchParams.get("name");
  if (url.pathname !== path || !name) return Response.json({ error: "not found" }, { status: 404 });
  const stub = ns.get(ns.idFromName(name)) as unknown as { fetch(r: Request): Promise<Response> };
  return stub.fetch(request);
}
