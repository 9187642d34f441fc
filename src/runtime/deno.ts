/**
 * Deno entry: Deno.serve with a Hono WebSocket helper over
 * Deno.upgradeWebSocket (see below why not hono/deno's), node:sqlite
 * (DatabaseSync, the same file format as better-sqlite3 and bun:sqlite) for
 * history, and Deno's own ping/pong for the heartbeat.
 *
 * One rule bends here: Deno checks UTF-8 itself and drops the connection on
 * an invalid text frame without a close frame, before the app sees it, so the
 * client gets 1006 where the contract says 1007. Serving through node:http +
 * ws under Deno would send 1007, but gives up Deno.serve, the point of this
 * entry; the suite records the gap (utf8Close: false).
 *
 * hono/deno (for serveStatic) is marked deprecated in favour of @hono/deno,
 * but no @hono/deno is published (npm view: 404), so hono 4's it is.
 */
import { fileURLToPath } from "node:url";
import { serveStatic } from "hono/deno";
import { defineWebSocketHelper, type UpgradeWebSocket, WSContext, type WSReadyState } from "hono/ws";
import { type Config, ConfigError, loadConfig } from "../config.ts";
import type { ChatSocket } from "../hub/hub.ts";
import { createLogger } from "../observability/pino.ts";
import { PrometheusMetrics } from "../observability/prometheus.ts";
import { selectSubprotocol } from "../protocol.ts";
import { buildServer } from "../server.ts";
import { nulSafeNodeSqlite } from "../store/node-sqlite.ts";
import type { SqliteDatabase } from "../store/sqlite.ts";

/** The slice of the Deno namespace used here. */
declare const Deno: {
  version: { deno: string };
  env: { toObject(): Record<string, string> };
  mkdirSync(path: string, options: { recursive: boolean }): void;
  readTextFileSync(path: string): string;
  addSignalListener(signal: "SIGTERM" | "SIGINT", handler: () => void): void;
  exit(code: number): never;
  upgradeWebSocket(req: Request, options: { idleTimeout: number }): { response: Response; socket: WebSocket };
  serve(
    options: Record<string, unknown> & { onListen?: (addr: { port: number }) => void },
    handler: (req: Request) => Response | Promise<Response>,
  ): { shutdown(): Promise<void>; finished: Promise<void> };
};

const STATIC_ROOT = fileURLToPath(new URL("../../static", import.meta.url));

/**
 * Deno's upgrade as a Hono WebSocket helper, built the way hono/deno builds
 * its own (defineWebSocketHelper), because that one bends four rules: it
 * echoes the first offered protocol; it hands that to Deno.upgradeWebSocket,
 * which throws unless the header lists it with ", " (`ws` sends "a,b"); it
 * compares `Upgrade` case-sensitively (404 for "WebSocket"); and Deno's
 * TypeError on a malformed handshake becomes a 500.
 * @param idleTimeout seconds; Deno pings at half of it and closes (1001)
 *   when no pong came; 0 turns it off
 */
function upgradeWebSocket(idleTimeout: number): UpgradeWebSocket {
  return defineWebSocketHelper(async (c, events) => {
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") return;
    const protocol = selectSubprotocol(c.req.header("sec-websocket-protocol"));
    let upgraded: { response: Response; socket: WebSocket };
    try {
      upgraded = Deno.upgradeWebSocket(c.req.raw, { idleTimeout });
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
      return c.json({ error: `not a valid WebSocket handshake: ${error.message}` }, 400);
    }
    const { response, socket } = upgraded;
    // Named on the 101 ourselves (its headers may be set), not through Deno.
    if (protocol) response.headers.set("sec-websocket-protocol", protocol);
    const ws = new WSContext({
      send: (data) => socket.send(data),
      close: (code, reason) => socket.close(code, reason),
      raw: socket,
      get readyState() {
        return socket.readyState as WSReadyState;
      },
      url: null,
      protocol,
    });
    socket.onopen = (e) => events.onOpen?.(e, ws);
    socket.onmessage = (e) => events.onMessage?.(e, ws);
    socket.onclose = (e) => events.onClose?.(e, ws);
    socket.onerror = (e) => events.onError?.(e, ws);
    return response;
  });
}

/** Counts event-loop turns, lazily: one timer however many sockets send. */
let turn = 0;
let turnPending = false;
function currentTurn(): number {
  if (!turnPending) {
    turnPending = true;
    setTimeout(() => {
      turn++;
      turnPending = false;
    }, 0);
  }
  return turn;
}

/**
 * Deno counts a frame in `bufferedAmount` until its asynchronous write
 * completes, even for a client that reads: a burst fanned out in one turn
 * would look like a slow consumer. What is still queued from earlier turns
 * is what the client has not taken, so only that counts.
 */
function toSocket(ws: WSContext, id: string): ChatSocket {
  const raw = ws.raw as WebSocket;
  let at = -1;
  let fresh = 0;
  return {
    id,
    send(text) {
      const now = currentTurn();
      if (now !== at) {
        at = now;
        fresh = 0;
      }
      const before = raw.bufferedAmount;
      raw.send(text);
      fresh += raw.bufferedAmount - before;
    },
    close: (code, reason) => raw.close(code, reason),
    bufferedAmount: () => raw.bufferedAmount - (at === turn ? fresh : 0),
  };
}

/** Starts the chat on Deno (`deno run -A src/index.ts`); config from the environment. */
export async function main(env: Record<string, string | undefined> = Deno.env.toObject()): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      Deno.exit(1);
    }
    throw error;
  }
  const logger = createLogger(config);
  const { DatabaseSync } = (await import("node:sqlite" as string)) as {
    DatabaseSync: new (path: string) => SqliteDatabase;
  };
  const chat = await buildServer({
    config,
    logger,
    metrics: new PrometheusMetrics(),
    runtime: `deno ${Deno.version.deno}`,
    // Two missed pings: Deno's timeout is the whole window (0 turns it off).
    upgradeWebSocket: upgradeWebSocket((2 * config.heartbeatMs) / 1000),
    toSocket,
    serveStatic: serveStatic({ root: STATIC_ROOT }),
    openSqlite: (path) => nulSafeNodeSqlite(new DatabaseSync(path)),
    ensureDir: (path) => Deno.mkdirSync(path, { recursive: true }),
  });

  const tls = config.tls;
  const server = Deno.serve(
    {
      port: config.port,
      hostname: config.host,
      ...(tls ? { cert: Deno.readTextFileSync(tls.cert), key: Deno.readTextFileSync(tls.key) } : {}),
      onListen: ({ port }) => {
        const scheme = tls ? "https" : "http";
        logger.info({ url: `${scheme}://${config.host}:${port}`, port }, "listening");
      },
    },
    (req) => chat.app.fetch(req),
  );

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, connections: chat.sessions.size }, "shutting down");
    setTimeout(() => {
      logger.warn({}, "shutdown timed out; exiting");
      Deno.exit(0);
    }, config.shutdownTimeoutMs);
    // shutdown() stops accepting at once and settles when every request,
    // the closed WebSockets included, is done.
    const closed = server.shutdown();
    try {
      await chat.shutdown();
    } catch (error) {
      logger.error({ err: String(error) }, "shutdown failed");
    }
    await Promise.race([closed, new Promise((r) => setTimeout(r, 1000))]);
    logger.info({}, "stopped");
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
}
