/**
 * Bun entry: Bun.serve with hono/bun's upgrade helper, bun:sqlite for
 * history, the contract's limits set on Bun's own WebSocket options, and
 * room fan-out through Bun's topic publish (one framing per message); the
 * WebSocket parts are in ./bun-ws.ts.
 *
 * hono/bun is marked deprecated in favour of @hono/bun, but no @hono/bun is
 * published (npm view: 404), so the helper that ships with hono 4 it is.
 */
import { mkdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { serveStatic, upgradeWebSocket } from "hono/bun";
import { loadConfigOrExit } from "../config.ts";
import { createLogger } from "../observability/pino.ts";
import { PrometheusMetrics } from "../observability/prometheus.ts";
import { buildServer, gracefulShutdown } from "../server.ts";
import type { SqliteDatabase } from "../store/sqlite.ts";
import { type BunServer, contractUpgrader, topicBroadcaster, toSocket, websocketOptions } from "./bun-ws.ts";

declare const Bun: {
  version: string;
  serve(options: Record<string, unknown>): BunServer;
};

const STATIC_ROOT = fileURLToPath(new URL("../../static", import.meta.url));

/** Starts the chat on Bun (`bun run src/index.ts`); config from the environment. */
export async function main(env: Record<string, string | undefined> = process.env): Promise<void> {
  const config = loadConfigOrExit(env, process.exit);
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

  const ws = websocketOptions(config);
  const tls = config.tls;
  const bun = Bun.serve({
    port: config.port,
    hostname: config.host,
    ...(tls ? { tls: { cert: readFileSync(tls.cert, "utf8"), key: readFileSync(tls.key, "utf8") } } : {}),
    fetch: (req: Request, self: BunServer) => chat.app.fetch(req, { server: contractUpgrader(self) }),
    websocket: ws.options,
  });
  server = bun;
  const scheme = tls ? "https" : "http";
  logger.info({ url: `${scheme}://${config.host}:${bun.port}`, port: bun.port }, "listening");

  const stop = gracefulShutdown(chat, config, logger, {
    stopAccepting() {
      ws.stopHeartbeat();
      void bun.stop(false); // no new connections; open ones are closed by the chat
    },
    async drained(ms) {
      const deadline = Date.now() + ms;
      while (ws.sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      await bun.stop(true);
    },
    exit: process.exit,
  });
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}
