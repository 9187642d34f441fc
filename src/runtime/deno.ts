/**
 * Deno entry: Deno.serve with a Hono WebSocket helper over
 * Deno.upgradeWebSocket (./deno-ws.ts: why not hono/deno's), node:sqlite
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
import { loadConfigOrExit } from "../config.ts";
import { createLogger } from "../observability/pino.ts";
import { PrometheusMetrics } from "../observability/prometheus.ts";
import { buildServer, gracefulShutdown } from "../server.ts";
import { nulSafeNodeSqlite } from "../store/node-sqlite.ts";
import type { SqliteDatabase } from "../store/sqlite.ts";
import { toSocket, upgradeWebSocket } from "./deno-ws.ts";

/** The slice of the Deno namespace used here. */
declare const Deno: {
  version: { deno: string };
  env: { toObject(): Record<string, string> };
  mkdirSync(path: string, options: { recursive: boolean }): void;
  readTextFileSync(path: string): string;
  addSignalListener(signal: "SIGTERM" | "SIGINT", handler: () => void): void;
  exit(code: number): never;
  serve(
    options: Record<string, unknown> & { onListen?: (addr: { port: number }) => void },
    handler: (req: Request) => Response | Promise<Response>,
  ): { shutdown(): Promise<void>; finished: Promise<void> };
};

const STATIC_ROOT = fileURLToPath(new URL("../../static", import.meta.url));

/** Starts the chat on Deno (`deno run -A src/index.ts`); config from the environment. */
export async function main(env: Record<string, string | undefined> = Deno.env.toObject()): Promise<void> {
  const config = loadConfigOrExit(env, Deno.exit);
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

  let closed: Promise<void> = Promise.resolve();
  const stop = gracefulShutdown(chat, config, logger, {
    // shutdown() stops accepting at once and settles when every request,
    // the closed WebSockets included, is done.
    stopAccepting() {
      closed = server.shutdown();
    },
    drained: (ms) => Promise.race([closed, new Promise<void>((r) => setTimeout(r, ms))]),
    exit: Deno.exit,
  });
  Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
}
