/**
 * Bun entry: Bun.serve with our WebSocket helper (./bun-ws.ts), bun:sqlite
 * for history, the contract's limits on Bun's own WebSocket options, and room
 * fan-out through BunBroadcaster (a turn's frames, one corked write per
 * client). The
 * start-up itself is the shared one (./start.ts).
 *
 * hono/bun (for serveStatic) is marked deprecated in favour of @hono/bun,
 * but no @hono/bun is published (npm view: 404), so hono 4's it is.
 */
import { mkdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { getConnInfo, serveStatic } from "hono/bun";
import type { SqliteDatabase } from "../store/sqlite.ts";
import {
  BunBroadcaster,
  type BunServer,
  directUpgrade,
  toSocket,
  upgradeWebSocket,
  websocketOptions,
} from "./bun-ws.ts";
import { type Running, start } from "./start.ts";

declare const Bun: {
  version: string;
  serve(options: Record<string, unknown>): BunServer;
};

const STATIC_ROOT = fileURLToPath(new URL("../../static", import.meta.url));

/** Starts the chat on Bun (`bun run src/index.ts`); config from the environment. */
export function main(env: Record<string, string | undefined> = process.env): Promise<Running> {
  return start({
    runtime: `bun ${Bun.version}`,
    env,
    exit: process.exit,
    onSignal: (signal, handler) => process.on(signal, handler),
    async parts(config) {
      const { Database } = (await import("bun:sqlite" as string)) as {
        Database: new (path: string, options?: { create?: boolean }) => SqliteDatabase;
      };
      return {
        upgradeWebSocket,
        toSocket,
        peerAddress: (c) => getConnInfo(c).remote.address,
        serveStatic: serveStatic({ root: STATIC_ROOT }),
        openSqlite: (path) => new Database(path, { create: true }),
        ensureDir: (path) => mkdirSync(path, { recursive: true }),
        ...(config.bunTopics ? { broadcaster: new BunBroadcaster(config.maxBufferedBytes) } : {}),
      };
    },
    async serve(chat, config) {
      const direct = chat.direct;
      const ws = websocketOptions(config, direct);
      const tls = config.tls;
      const bun = Bun.serve({
        port: config.port,
        hostname: config.host,
        ...(tls ? { tls: { cert: readFileSync(tls.cert, "utf8"), key: readFileSync(tls.key, "utf8") } } : {}),
        // GET /websocket without Hono (as on Node); the rest, and every
        // upgrade before the app knows its security headers, through it.
        // `{ server }`: what our upgrade helper and hono/bun's getConnInfo read.
        fetch(req: Request, self: Parameters<typeof directUpgrade>[2]) {
          // null: not the direct route's (undefined: upgraded, as Bun wants it).
          const answered = direct ? directUpgrade(direct, req, self) : null;
          return answered !== null ? answered : chat.app.fetch(req, { server: self });
        },
        websocket: ws.options,
      });
      return {
        port: bun.port,
        stopAccepting() {
          ws.stopHeartbeat();
          void bun.stop(false); // no new connections; open ones are closed by the chat
        },
        openSockets: () => ws.sockets.size,
        closeAll: () => bun.stop(true),
      };
    },
  });
}
