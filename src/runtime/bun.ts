/**
 * Bun entry: Bun.serve with hono/bun's upgrade helper, bun:sqlite for
 * history, the contract's limits set on Bun's own WebSocket options, and
 * room fan-out through Bun's topic publish (one framing per message).
 *
 * hono/bun is marked deprecated in favour of @hono/bun, but no @hono/bun is
 * published (npm view: 404), so the helper that ships with hono 4 it is.
 */
import { mkdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { serveStatic, upgradeWebSocket, websocket } from "hono/bun";
import type { WSContext } from "hono/ws";
import { type Config, ConfigError, loadConfig } from "../config.ts";
import type { Broadcaster, ChatSocket } from "../hub/hub.ts";
import { createLogger } from "../observability/pino.ts";
import { PrometheusMetrics } from "../observability/prometheus.ts";
import { selectSubprotocol } from "../protocol.ts";
import { buildServer } from "../server.ts";
import type { SqliteDatabase } from "../store/sqlite.ts";

/** The slice of Bun's ServerWebSocket used here. */
interface BunSocket {
  readonly readyState: number;
  send(data: string): number;
  close(code?: number, reason?: string): void;
  terminate(): void;
  ping(): number;
  getBufferedAmount(): number;
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  /** To every subscriber but this socket. */
  publish(topic: string, data: string): number;
}
interface BunServer {
  readonly port: number;
  upgrade(req: Request, options: { data?: { protocol?: string }; headers?: Record<string, string> }): boolean;
  /** Returns bytes sent, 0 when dropped, -1 when some subscriber has backpressure. */
  publish(topic: string, data: string): number;
  stop(closeActiveConnections?: boolean): Promise<void>;
}
declare const Bun: {
  version: string;
  serve(options: Record<string, unknown>): BunServer;
};

const STATIC_ROOT = fileURLToPath(new URL("../../static", import.meta.url));

/** Bun's socket behind each ChatSocket, for the broadcaster. */
const rawOf = new WeakMap<ChatSocket, BunSocket>();

function toSocket(ws: WSContext, id: string): ChatSocket {
  // ws is a fresh WSContext per event; raw is Bun's socket, stable per connection.
  const raw = ws.raw as BunSocket;
  const socket: ChatSocket = {
    id,
    send: (text) => void raw.send(text),
    close: (code, reason) => raw.close(code, reason),
    bufferedAmount: () => raw.getBufferedAmount(),
  };
  rawOf.set(socket, raw);
  return socket;
}

/** Bun's topics: uWS frames a published message once for all subscribers. */
function topicBroadcaster(server: () => BunServer): Broadcaster {
  return {
    subscribe: (socket, channel) => rawOf.get(socket)?.subscribe(channel),
    unsubscribe: (socket, channel) => rawOf.get(socket)?.unsubscribe(channel),
    publish(channel, text, except) {
      const raw = except ? rawOf.get(except) : undefined;
      // A closing socket's own publish sends nothing at all; then the
      // server publishes (the closing socket discards its copy).
      const sent = raw && raw.readyState === 1 ? raw.publish(channel, text) : server().publish(channel, text);
      return sent <= 0; // -1: some subscriber has backpressure (0: dropped)
    },
  };
}

/** Starts the chat on Bun (`bun run src/index.ts`); config from the environment. */
export async function main(env: Record<string, string | undefined> = process.env): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      process.exit(1);
    }
    throw error;
  }
  const logger = createLogger(config);
  // The broadcaster needs the server, which needs the app: filled in below.
  let server: BunServer | null = null;
  const { Database } = (await import("bun:sqlite" as string)) as {
    Database: new (path: string, options?: { create?: boolean }) => SqliteDatabase;
  };
  const chat = await buildServer({
    config,
    logger,
    metrics: new PrometheusMetrics(),
    runtime: `bun ${Bun.version}`,
    upgradeWebSocket,
    toSocket,
    serveStatic: serveStatic({ root: STATIC_ROOT }),
    openSqlite: (path) => new Database(path, { create: true }),
    ensureDir: (path) => mkdirSync(path, { recursive: true }),
    ...(config.bunTopics ? { broadcaster: topicBroadcaster(() => server!) } : {}),
  });

  // hono/bun echoes the first offered protocol; the contract selects chat.v1
  // wherever it is offered, and otherwise none (an empty header sends none).
  const upgrader = (bun: BunServer) => ({
    upgrade: (req: Request, options: { data: { protocol?: string } }) => {
      const protocol = selectSubprotocol(req.headers.get("sec-websocket-protocol")) ?? "";
      return bun.upgrade(req, {
        ...options,
        data: { ...options.data, protocol },
        headers: { "Sec-WebSocket-Protocol": protocol },
      });
    },
  });

  const sockets = new Set<BunSocket>();
  const lastPong = new WeakMap<BunSocket, number>();
  const tls = config.tls;
  const bun = Bun.serve({
    port: config.port,
    hostname: config.host,
    ...(tls ? { tls: { cert: readFileSync(tls.cert, "utf8"), key: readFileSync(tls.key, "utf8") } } : {}),
    fetch: (req: Request, self: BunServer) => chat.app.fetch(req, { server: upgrader(self) }),
    websocket: {
      ...websocket,
      // Bun closes with 1009 past this, before buffering the frame.
      maxPayloadLength: config.maxFrameBytes,
      perMessageDeflate: config.wsCompression,
      // Member closes a reader past MAX_BUFFERED_BYTES with 1013 right after
      // the send (or publish) that crossed it, so no `drain` handler is
      // needed (hono/bun forwards none); Bun's own limit, which drops frames
      // silently, sits well above so it never acts first.
      backpressureLimit: Math.max(16 * 1024 * 1024, 4 * config.maxBufferedBytes),
      closeOnBackpressureLimit: false,
      // Our heartbeat below keeps HEARTBEAT_MS exactly (Bun's is in seconds).
      idleTimeout: 0,
      sendPings: false,
      open(ws: BunSocket) {
        sockets.add(ws);
        lastPong.set(ws, Date.now());
        websocket.open(ws as never);
      },
      close(ws: BunSocket, code?: number, reason?: string) {
        sockets.delete(ws);
        websocket.close(ws as never, code, reason);
      },
      pong(ws: BunSocket) {
        lastPong.set(ws, Date.now());
      },
    },
  });
  server = bun;
  const scheme = tls ? "https" : "http";
  logger.info({ url: `${scheme}://${config.host}:${bun.port}`, port: bun.port }, "listening");

  // Server pings every HEARTBEAT_MS; no pong for two intervals: terminated.
  const heartbeat =
    config.heartbeatMs > 0
      ? setInterval(() => {
          const now = Date.now();
          for (const ws of sockets) {
            if (now - (lastPong.get(ws) ?? now) > 2 * config.heartbeatMs) ws.terminate();
            else ws.ping();
          }
        }, config.heartbeatMs)
      : undefined;

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, connections: chat.sessions.size }, "shutting down");
    setTimeout(() => {
      logger.warn({}, "shutdown timed out; exiting");
      process.exit(0);
    }, config.shutdownTimeoutMs).unref();
    clearInterval(heartbeat);
    void bun.stop(false); // no new connections; open ones are closed below
    try {
      await chat.shutdown();
    } catch (error) {
      logger.error({ err: String(error) }, "shutdown failed");
    }
    // Give the 1001 close frames a moment to reach the clients.
    const deadline = Date.now() + 1000;
    while (sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await bun.stop(true);
    logger.info({}, "stopped");
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}
