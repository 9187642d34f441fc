/**
 * Hono's WebSocket helper for Node over our own `ws` server.
 *
 * @hono/node-server ships one, but its per-connection closure keeps the
 * upgrade's Hono Context, Request, Headers, URLs and the IncomingMessage
 * alive for the connection's whole life: about 10 KiB of heap per idle
 * connection, more than ws itself needs (docs/benchmarks.md, idle memory).
 * Here the app's middleware only marks the request as accepted; the
 * `upgrade` listener then lets ws finish the handshake and keeps nothing of
 * the request but the app's event handlers.
 */
import type { IncomingMessage, Server } from "node:http";
import { STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import { defineWebSocketHelper, type SendOptions, WSContext, type WSContextInit, type WSEvents } from "hono/ws";
import type { WebSocket, WebSocketServer } from "ws";

/** Upgrades the app accepted, until the `upgrade` listener picks them up. */
const accepted = new WeakMap<IncomingMessage, WSEvents<WebSocket>>();

/**
 * The helper the app's `/websocket` route uses (`upgradeWebSocket((c) =>
 * events)`); it needs {@link handleUpgrades} on the server to do anything.
 */
export const upgradeWebSocket = defineWebSocketHelper<WebSocket>(async (c, events) => {
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (!incoming) return new Response(JSON.stringify({ error: "not a Node upgrade" }), { status: 500 });
  accepted.set(incoming, events);
  // Never sent: the upgrade listener answers with ws's 101 instead.
  return new Response(null, { status: 200 });
});

type Fetch = (req: Request, env: { incoming: IncomingMessage }) => Response | Promise<Response>;

const ignore = () => {};

/** The Fetch API request for an upgrade request (headers only; upgrades have no body). */
function toRequest(req: IncomingMessage): Request {
  const encrypted = (req.socket as { encrypted?: boolean }).encrypted === true;
  const url = new URL(req.url ?? "/", `${encrypted ? "https" : "http"}://${req.headers.host ?? "localhost"}`);
  const headers = new Headers();
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
  return new Request(url, { headers });
}

/**
 * Writes the app's answer to a refused upgrade, body included (the contract
 * wants the JSON error, not just the status), and closes the socket.
 */
async function refuse(socket: Duplex, res: Response): Promise<void> {
  const body = Buffer.from(await res.arrayBuffer());
  const head = [
    `HTTP/1.1 ${res.status} ${STATUS_CODES[res.status] ?? "Error"}`,
    "Connection: close",
    `Content-Length: ${body.length}`,
  ];
  res.headers.forEach((value, key) => {
    if (key !== "content-length" && key !== "connection") head.push(`${key}: ${value}`);
  });
  if (socket.destroyed) return;
  await new Promise<void>((resolve) => {
    socket.once("error", () => resolve());
    socket.write(Buffer.concat([Buffer.from(`${head.join("\r\n")}\r\n\r\n`), body]), () => resolve());
  });
  socket.destroy();
}

/**
 * What the WSContext reads from: the ws socket only. A class, so a
 * connection costs one small object rather than a set of closures.
 */
class WsContextInit implements WSContextInit<WebSocket> {
  constructor(readonly raw: WebSocket) {}

  get protocol(): string {
    return this.raw.protocol;
  }

  get readyState(): 0 | 1 | 2 | 3 {
    return this.raw.readyState as 0 | 1 | 2 | 3;
  }

  send(data: string | ArrayBuffer | Uint8Array, options: SendOptions): void {
    this.raw.send(data, { compress: options.compress ?? false });
  }

  close(code?: number, reason?: string): void {
    this.raw.close(code, reason);
  }
}

type Handler = ((event: never, ws: WSContext<WebSocket>) => void) | undefined;

/** Calls an app handler; one that throws must not take the process down with it. */
function dispatch(handler: Handler, event: unknown, ctx: WSContext<WebSocket>): void {
  try {
    handler?.(event as never, ctx);
  } catch (error) {
    console.error(error);
  }
}

/** Hands one connection's ws events to the app's handlers. */
function attach(ws: WebSocket, events: WSEvents<WebSocket>): void {
  const ctx = new WSContext<WebSocket>(new WsContextInit(ws));
  dispatch(events.onOpen, new Event("open"), ctx);
  ws.on("message", (data: Buffer, isBinary: boolean) => {
    const payload = isBinary
      ? (data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer)
      : data.toString("utf8");
    dispatch(events.onMessage, new MessageEvent("message", { data: payload }), ctx);
  });
  ws.on("close", (code: number, reason: Buffer) => {
    // Node 20 has no global CloseEvent; the app reads `code` only.
    dispatch(events.onClose, { type: "close", code, reason: reason.toString(), wasClean: true }, ctx);
  });
  ws.on("error", (error: Error) => {
    dispatch(events.onError, { type: "error", error, message: error.message }, ctx);
  });
}

/**
 * Answers every `upgrade` request of `server` through the app (`fetch`):
 * accepted ones are completed by `wss`, the rest get the app's response.
 */
export function handleUpgrades(server: Server, wss: WebSocketServer, fetch: Fetch): void {
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // A client that resets mid-handshake must not crash the process.
    socket.on("error", ignore);
    void (async () => {
      let res: Response;
      try {
        res = await fetch(toRequest(req), { incoming: req });
      } catch {
        res = new Response(JSON.stringify({ error: "bad request" }), {
          status: 400,
          headers: { "content-type": "application/json" },
        });
      }
      const events = accepted.get(req);
      accepted.delete(req);
      if (socket.destroyed) return;
      if (!events) {
        await refuse(socket, res);
        return;
      }
      // The app's response headers (security headers) go on the 101 too.
      const addHeaders = (headers: string[]) => {
        res.headers.forEach((value, key) => {
          if (key !== "content-length" && key !== "content-type") headers.push(`${key}: ${value}`);
        });
      };
      wss.on("headers", addHeaders);
      try {
        wss.handleUpgrade(req, socket, head, (ws) => {
          socket.off("error", ignore);
          attach(ws, events);
          wss.emit("connection", ws, req);
        });
      } finally {
        wss.off("headers", addHeaders);
      }
    })();
  });
}
