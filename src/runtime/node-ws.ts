/**
 * Node's WebSocket side, for src/runtime/node.ts (and Deno's node:http mode):
 * the `ws` server configured for the contract, our sockets over it (framed
 * once per room message, corked per turn), Hono's WebSocket helper over it,
 * and serving the app through @hono/node-server with it.
 *
 * The helper is our own rather than @hono/node-server's:
 * its per-connection closure keeps the
 * upgrade's Hono Context, Request, Headers, URLs and the IncomingMessage
 * alive for the connection's whole life: about 10 KiB of heap per idle
 * connection, more than ws itself needs (docs/benchmarks.md, idle memory).
 * Here the app's middleware only marks the request as accepted; the
 * `upgrade` listener then lets ws finish the handshake and keeps nothing of
 * the request but the app's event handlers.
 */
import { readFileSync } from "node:fs";
import type { IncomingMessage, Server } from "node:http";
import { STATUS_CODES } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Duplex } from "node:stream";
import { serve } from "@hono/node-server";
import { defineWebSocketHelper, type SendOptions, WSContext, type WSContextInit, type WSEvents } from "hono/ws";
import * as wsModule from "ws";
import { type WebSocket, WebSocketServer } from "ws";
import type { Config } from "../config.ts";
import type { ChatSocket, SharedFrame } from "../hub/hub.ts";
import type { Logger } from "../observability/logger.ts";
import { selectSubprotocol } from "../protocol.ts";
import { type BuiltChat, Heartbeat, type Served } from "./start.ts";

/**
 * How long a server-side close waits for the client's close frame before the
 * TCP connection is destroyed. ws waits 30 s by default; a client closed with
 * 1013 for not reading would keep its MAX_BUFFERED_BYTES (and more) in memory
 * all that time. A client that reads within this window still sees the
 * 1013; one that does not sees the connection drop (1006).
 */
export const CLOSE_TIMEOUT_MS = 3000;

/** The `ws` server, configured for the contract rather than ws's defaults. */
export function createWsServer(config: Config): WebSocketServer {
  // `closeTimeout` exists since ws 8.18; @types/ws does not list it yet.
  const options: ConstructorParameters<typeof WebSocketServer>[0] & { closeTimeout: number } = {
    closeTimeout: CLOSE_TIMEOUT_MS,
    noServer: true,
    // ws closes with 1009 past this, before buffering the frame.
    maxPayload: config.maxFrameBytes,
    perMessageDeflate: config.wsCompression,
    // ws would select the first offered protocol; the contract selects
    // chat.v1 only, and otherwise none (seed mode).
    handleProtocols: (offered) => selectSubprotocol([...offered].join(",")) ?? false,
    clientTracking: true,
  };
  return new WebSocketServer(options);
}

/**
 * The part of a `ws` WebSocket that is not public: its TCP socket. ws 8
 * writes every frame there (Sender#sendFrame), and `bufferedAmount` counts
 * what waits in it, so bytes we write there ourselves keep the slow-consumer
 * rule working. ws is pinned (package.json) and
 * test/unit/node-shared-frame.test.ts fails if this changes.
 */
interface WsInternals {
  _socket: { write(data: Buffer): boolean; cork(): void; uncork(): void };
}

/**
 * Sockets corked since the last flush. Fan-outs that run in the same
 * event-loop turn (every message of one SQLite batch, every frame read in one
 * poll phase) then reach each client in one writev instead of one write
 * syscall per message, which is most of a delivery's cost. The flush is a
 * setImmediate: it runs once the poll phase has read what had arrived, so
 * the batch grows with the load by itself (one message per turn when idle).
 * process.nextTick flushed after each read instead: HISTORY=memory fan-out
 * cost 8.2 µs of server CPU per delivery against 2.6 (docs/benchmarks.md).
 */
const corked: WsFramedSocket[] = [];

/** Most bytes a socket holds corked before it writes them out within the turn. */
const FLUSH_BYTES = 64 * 1024;

function flushCorked(): void {
  // Uncorking can run callbacks that fan out again; those cork anew.
  const list = corked.splice(0);
  for (const socket of list) socket.uncork();
}

/** `Sender.frame` is a public static of ws (Socket.IO's engine uses it) but @types/ws lacks it. */
const { Sender } = wsModule as unknown as {
  Sender: { frame(data: Buffer, options: Record<string, unknown>): Buffer[] };
};
const TEXT_FRAME = { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false };

/** A server-to-client text frame (unmasked), header and payload in one Buffer. */
export function frameText(text: string): Buffer {
  const parts = Sender.frame(Buffer.from(text), TEXT_FRAME);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/**
 * Our socket on `ws` directly: Hono's WSContext adds nothing on the send
 * path. A class rather than an object of closures: one of these lives per
 * connection, and methods on a prototype cost nothing per connection (tsx's
 * keepNames gives every named closure its own property dictionary, ~250 B).
 */
class WsSocket implements ChatSocket {
  constructor(
    readonly id: string,
    readonly raw: WebSocket,
  ) {}

  send(text: string): void {
    this.raw.send(text);
  }

  close(code: number, reason: string): void {
    this.raw.close(code, reason);
  }

  bufferedAmount(): number {
    return this.raw.bufferedAmount;
  }
}

/**
 * A connection without permessage-deflate: a message for a whole room is
 * framed once ({@link frameText}) and the same Buffer is written to every
 * socket, instead of ws encoding and framing the text again per recipient.
 * (Compressed connections need their own deflated frame: plain WsSocket.)
 */
class WsFramedSocket extends WsSocket {
  readonly #tcp: WsInternals["_socket"];
  #corked = false;
  /**
   * Bytes written since the cork. Past FLUSH_BYTES the socket is uncorked
   * (one writev) and corked again: the kernel takes what a reading client
   * can take, and only what it refuses stays in the socket's buffer, where
   * bufferedAmount counts it. Without this, a burst of one turn would sit
   * corked in full and a client that reads would be closed with 1013
   * (test/integration/node.test.ts, "a burst larger than ...").
   */
  #corkedBytes = 0;

  constructor(id: string, raw: WebSocket) {
    super(id, raw);
    this.#tcp = (raw as unknown as WsInternals)._socket;
  }

  sendShared(frame: SharedFrame): void {
    // ws.send drops frames once closing starts; so do we.
    if (this.raw.readyState !== 1) return;
    let bytes = frame.framed as Buffer | undefined;
    if (bytes === undefined) {
      bytes = frameText(frame.text);
      frame.framed = bytes;
    }
    const tcp = this.#tcp;
    if (!this.#corked) {
      this.#corked = true;
      tcp.cork();
      if (corked.push(this) === 1) setImmediate(flushCorked);
    }
    tcp.write(bytes);
    this.#corkedBytes += bytes.length;
    if (this.#corkedBytes >= FLUSH_BYTES) {
      this.#corkedBytes = 0;
      tcp.uncork();
      tcp.cork();
    }
  }

  /** Ends this turn's cork: what was written goes out in one writev. */
  uncork(): void {
    this.#corked = false;
    this.#corkedBytes = 0;
    this.#tcp.uncork();
  }
}

/** Our socket for a ws connection: pre-framed room sends unless it is compressed. */
export function toSocket(ws: WSContext, id: string): ChatSocket {
  const raw = ws.raw as WebSocket;
  return raw.extensions === "" ? new WsFramedSocket(id, raw) : new WsSocket(id, raw);
}

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

/**
 * Serves the app with @hono/node-server (HTTP) and our `ws` server
 * (upgrades, heartbeat): Node's server, and Deno's with DENO_SERVER=node.
 */
export function serveWithWs(chat: BuiltChat, config: Config, logger: Logger): Promise<Served> {
  const wss = createWsServer(config);
  const tls = config.tls;
  return new Promise((resolve) => {
    const server = serve(
      {
        fetch: chat.app.fetch,
        port: config.port,
        hostname: config.host,
        ...(tls
          ? {
              createServer: createHttpsServer,
              serverOptions: { cert: readFileSync(tls.cert), key: readFileSync(tls.key) },
            }
          : {}),
      },
      (info) => resolve(served(info.port)),
    ) as Server;
    // Our own upgrade handling, not the adapter's `websocket` option: it
    // keeps nothing of the request alive per connection.
    handleUpgrades(server, wss, chat.app.fetch);
    server.on("error", (error) => {
      logger.error({ err: error }, "server error");
      process.exit(1);
    });
    const heartbeat = new Heartbeat(() => wss.clients, config.heartbeatMs);
    if (config.heartbeatMs > 0) {
      wss.on("connection", (ws: WebSocket) => {
        heartbeat.opened(ws);
        ws.on("pong", () => heartbeat.ponged(ws));
      });
    }
    const served = (port: number): Served => ({
      port,
      stopAccepting() {
        heartbeat.stop();
        server.close(); // no new connections; open ones are closed by the chat
      },
      openSockets: () => wss.clients.size,
      closeAll() {
        for (const ws of wss.clients) ws.terminate();
        server.closeAllConnections?.();
      },
    });
  });
}
