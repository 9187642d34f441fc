/**
 * Node entry: @hono/node-server v2 with its built-in WebSocket support over
 * a `ws` server we configure ourselves (frame limit, subprotocol rule,
 * compression), better-sqlite3 for history, and the heartbeat.
 */
import { mkdirSync, readFileSync } from "node:fs";
import type { Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { fileURLToPath } from "node:url";
import { serve } from "@hono/node-server";
import { serveStatic } from "@hono/node-server/serve-static";
import Database from "better-sqlite3";
import type { WSContext } from "hono/ws";
import * as wsModule from "ws";
import { type WebSocket, WebSocketServer } from "ws";
import { type Config, loadConfigOrExit } from "../config.ts";
import type { ChatSocket, SharedFrame } from "../hub/hub.ts";
import { createLogger } from "../observability/pino.ts";
import { PrometheusMetrics } from "../observability/prometheus.ts";
import { selectSubprotocol } from "../protocol.ts";
import { buildServer, gracefulShutdown } from "../server.ts";
import { handleUpgrades, upgradeWebSocket } from "./node-ws.ts";

const STATIC_ROOT = fileURLToPath(new URL("../../static", import.meta.url));

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

/**
 * Server pings every `intervalMs`; a connection that answered none of the
 * last two is terminated (browsers answer pings by themselves).
 */
function startHeartbeat(wss: WebSocketServer, intervalMs: number): () => void {
  if (intervalMs <= 0) return () => {};
  const lastPong = new WeakMap<WebSocket, number>();
  wss.on("connection", (ws) => {
    lastPong.set(ws, Date.now());
    ws.on("pong", () => lastPong.set(ws, Date.now()));
  });
  const timer = setInterval(() => {
    const now = Date.now();
    for (const ws of wss.clients) {
      if (now - (lastPong.get(ws) ?? now) > 2 * intervalMs) ws.terminate();
      else ws.ping();
    }
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

export async function main(env: Record<string, string | undefined> = process.env): Promise<void> {
  const config = loadConfigOrExit(env, process.exit);
  const logger = createLogger(config);
  const chat = await buildServer({
    config,
    logger,
    metrics: new PrometheusMetrics(),
    runtime: `node ${process.version}`,
    upgradeWebSocket,
    toSocket,
    serveStatic: serveStatic({ root: STATIC_ROOT }),
    openSqlite: (path) => new Database(path),
    ensureDir: (path) => mkdirSync(path, { recursive: true }),
  });

  const wss = createWsServer(config);
  const tls = config.tls;
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
    (info) => {
      const scheme = tls ? "https" : "http";
      logger.info({ url: `${scheme}://${config.host}:${info.port}`, port: info.port }, "listening");
    },
  ) as Server;
  // Our own upgrade handling (./node-ws.ts), not the adapter's `websocket`
  // option: it keeps nothing of the request alive per connection.
  handleUpgrades(server, wss, chat.app.fetch);
  server.on("error", (error) => {
    logger.error({ err: String(error) }, "server error");
    process.exit(1);
  });
  const stopHeartbeat = startHeartbeat(wss, config.heartbeatMs);

  const stop = gracefulShutdown(chat, config, logger, {
    stopAccepting() {
      stopHeartbeat();
      server.close(); // no new connections; open ones are closed by the chat
    },
    async drained(ms) {
      const deadline = Date.now() + ms;
      while (wss.clients.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      for (const ws of wss.clients) ws.terminate();
      server.closeAllConnections?.();
    },
    exit: process.exit,
  });
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}
