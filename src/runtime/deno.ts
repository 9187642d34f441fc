/**
 * Deno entry: node:http + ws (default) or Deno.serve with a Hono WebSocket
 * helper over Deno.upgradeWebSocket (./deno-ws.ts: why not hono/deno's), node:sqlite
 * (DatabaseSync, the same file format as better-sqlite3 and bun:sqlite) for
 * history, and the heartbeat (ours with ws; Deno's own ping/pong on
 * Deno.serve). The start-up itself is the shared one (./start.ts).
 *
 * By default (DENO_SERVER=node) it serves through node:http and `ws`
 * instead, exactly as on Node (./node-ws.ts): a turn's room frames are built
 * once and written to each client in one write, invalid UTF-8 closes
 * with 1007, and an idle connection costs less memory; docs/benchmarks.md
 * has the numbers. DENO_SERVER=deno keeps Deno.serve, where Deno checks
 * UTF-8 itself and drops the connection without a close frame (the client
 * sees 1006) before the app sees the frame.
 *
 * hono/deno (for serveStatic) is marked deprecated in favour of @hono/deno,
 * but no @hono/deno is published (npm view: 404), so hono 4's it is.
 */
import { fileURLToPath } from "node:url";
import { getConnInfo as nodeConnInfo } from "@hono/node-server/conninfo";
import type { Context } from "hono";
import { getConnInfo, serveStatic } from "hono/deno";
import type { Config } from "../config.ts";
import { nulSafeNodeSqlite } from "../store/node-sqlite.ts";
import type { SqliteDatabase } from "../store/sqlite.ts";
import { openSockets, toSocket, upgradeWebSocket } from "./deno-ws.ts";
import * as nodeWs from "./node-ws.ts";
import { type BuiltChat, type Running, type Served, start } from "./start.ts";

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
    handler: (req: Request, info: unknown) => Response | Promise<Response>,
  ): { shutdown(): Promise<void>; finished: Promise<void> };
};

const STATIC_ROOT = fileURLToPath(new URL("../../static", import.meta.url));

/** Starts the chat on Deno (`deno run -A src/index.ts`); config from the environment. */
export function main(env: Record<string, string | undefined> = Deno.env.toObject()): Promise<Running> {
  // The config checks DENO_SERVER (node, the default, or deno); this only names it.
  const named = env.DENO_SERVER === "deno" ? "Deno.serve" : "node:http + ws";
  return start({
    runtime: `deno ${Deno.version.deno} (${named})`,
    env,
    exit: Deno.exit,
    onSignal: (signal, handler) => Deno.addSignalListener(signal, handler),
    async parts(config) {
      const { DatabaseSync } = (await import("node:sqlite" as string)) as {
        DatabaseSync: new (path: string) => SqliteDatabase;
      };
      return {
        ...(config.denoServer === "node"
          ? {
              upgradeWebSocket: nodeWs.upgradeWebSocket,
              toSocket: nodeWs.toSocket,
              broadcaster: new nodeWs.WsBroadcaster(config.maxBufferedBytes),
              peerAddress: (c: Context) => nodeConnInfo(c).remote.address,
            }
          : {
              peerAddress: (c: Context) => getConnInfo(c).remote.address,
              // Two missed pings: Deno's timeout is the whole window (0 turns it off).
              upgradeWebSocket: upgradeWebSocket((2 * config.heartbeatMs) / 1000),
              toSocket,
            }),
        serveStatic: serveStatic({ root: STATIC_ROOT }),
        openSqlite: (path) => nulSafeNodeSqlite(new DatabaseSync(path)),
        ensureDir: (path) => Deno.mkdirSync(path, { recursive: true }),
      };
    },
    serve: (chat, config, logger) =>
      config.denoServer === "node" ? nodeWs.serveWithWs(chat, config, logger) : serveDeno(chat, config),
  });
}

/** Deno.serve; `info` (the remote address) is the app's env, as hono/deno's getConnInfo expects. */
function serveDeno(chat: BuiltChat, config: Config): Promise<Served> {
  const tls = config.tls;
  return new Promise((resolve) => {
    const server = Deno.serve(
      {
        port: config.port,
        hostname: config.host,
        ...(tls ? { cert: Deno.readTextFileSync(tls.cert), key: Deno.readTextFileSync(tls.key) } : {}),
        onListen: ({ port }) =>
          resolve({
            port,
            // shutdown() stops accepting at once; open WebSockets are closed by the chat.
            stopAccepting: () => void server.shutdown(),
            openSockets,
            closeAll: () => {},
          }),
      },
      (req, info) => chat.app.fetch(req, info),
    );
  });
}
