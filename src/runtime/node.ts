/**
 * Node entry: @hono/node-server v2 for HTTP, our `ws` server for the
 * WebSockets (./node-ws.ts: frame limit, subprotocol rule, compression,
 * the rooms' broadcaster, heartbeat) and better-sqlite3 for history. The
 * start-up itself is the shared one (./start.ts).
 */
import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { getConnInfo } from "@hono/node-server/conninfo";
import { serveStatic } from "@hono/node-server/serve-static";
import Database from "better-sqlite3";
import { serveWithWs, toSocket, upgradeWebSocket, WsBroadcaster } from "./node-ws.ts";
import { type Running, start } from "./start.ts";

const STATIC_ROOT = fileURLToPath(new URL("../../static", import.meta.url));

/** Starts the chat on Node (`node --import tsx src/index.ts`); config from the environment. */
export function main(env: Record<string, string | undefined> = process.env): Promise<Running> {
  return start({
    runtime: `node ${process.version}`,
    env,
    exit: process.exit,
    onSignal: (signal, handler) => process.on(signal, handler),
    parts: async (config) => ({
      upgradeWebSocket,
      toSocket,
      broadcaster: new WsBroadcaster(config.maxBufferedBytes),
      peerAddress: (c) => getConnInfo(c).remote.address,
      serveStatic: serveStatic({ root: STATIC_ROOT }),
      openSqlite: (path) => new Database(path),
      ensureDir: (path) => mkdirSync(path, { recursive: true }),
    }),
    serve: serveWithWs,
  });
}
