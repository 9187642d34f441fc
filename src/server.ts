import { type AppDeps, type Chat, createChat } from "./app.ts";
import type { Config } from "./config.ts";
import type { Broadcaster, Hub } from "./hub/hub.ts";
import { MemoryHub } from "./hub/memory.ts";
import type { Logger } from "./observability/logger.ts";
import type { Metrics } from "./observability/metrics.ts";
import { MemoryStore } from "./store/memory.ts";
import type { SqliteDatabase } from "./store/sqlite.ts";
import { SqliteStore } from "./store/sqlite.ts";
import type { HistoryStore } from "./store/store.ts";
import { startWebhooks, type Webhooks } from "./webhooks/start.ts";

/** What a runtime entry (Node, Bun, Deno) brings; the rest is chosen from the config. */
export interface ServerParts
  extends Pick<AppDeps, "upgradeWebSocket" | "toSocket" | "serveStatic" | "runtime" | "peerAddress"> {
  config: Config;
  logger: Logger;
  metrics: Metrics;
  /** Opens the SQLite file with the runtime's own driver. */
  openSqlite: (path: string) => SqliteDatabase;
  /** Creates the folder that holds the SQLite file. */
  ensureDir: (path: string) => void;
  /** The runtime's room fan-out (WsBroadcaster, BunBroadcaster), used by the hubs. @default none */
  broadcaster?: Broadcaster;
}

function dirOf(path: string): string {
  const i = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  return i > 0 ? path.slice(0, i) : ".";
}

/** Picks the store and hub the config names and builds the chat. */
export async function buildServer(parts: ServerParts): Promise<Chat & { hub: Hub; store: HistoryStore }> {
  const { config, logger } = parts;
  let store: HistoryStore;
  let hub: Hub;
  let webhooks: Webhooks | null;
  if (config.hub === "redis") {
    // Loaded only when asked for, so the default start needs no Redis client.
    const { createRedisParts } = await import("./hub/redis.ts");
    const local = config.history === "redis" ? null : await localStore();
    webhooks = await startWebhooks(config, parts);
    ({ store, hub } = await createRedisParts(config, logger, local, webhooks?.sink ?? null, parts.broadcaster ?? null));
  } else {
    store = await localStore();
    webhooks = await startWebhooks(config, parts);
    hub = new MemoryHub(store, logger, parts.broadcaster ?? null, webhooks?.sink ?? null, config.presenceIntervalMs);
  }

  async function localStore(): Promise<HistoryStore> {
    const retention = { ttlMs: config.historyTtlMs };
    if (config.history === "memory") return new MemoryStore(config.historyLimit, retention);
    if (config.historyPath !== ":memory:") parts.ensureDir(dirOf(config.historyPath));
    return new SqliteStore(parts.openSqlite(config.historyPath), config.historyLimit, retention);
  }

  const chat = createChat({ ...parts, hub, store });
  logger.info(
    {
      runtime: parts.runtime,
      hub: config.hub,
      history: config.history,
      path: config.history === "sqlite" ? config.historyPath : undefined,
    },
    "chat ready",
  );
  if (!webhooks) return { ...chat, hub, store };
  const wh = webhooks;
  return {
    ...chat,
    hub,
    store,
    // After the chat: members leave as their close handshakes end (their member.left events are
    // stored), then the loop stops and the outbox is flushed. The wait is bounded (1 s).
    async shutdown() {
      try {
        await chat.shutdown();
        for (let i = 0; i < 50 && chat.sessions.size > 0; i++) await new Promise((r) => setTimeout(r, 20));
      } finally {
        await wh.stop();
      }
    },
  };
}

/** The runtime's own ways to stop: each serves and tracks sockets its way. */
export interface RuntimeStop {
  /** Stops accepting connections (and the heartbeat); open ones are closed by the chat. */
  stopAccepting(): void;
  /** Waits at most `ms` for the WebSockets to finish closing, then ends what is left. */
  drained(ms: number): Promise<void>;
  exit(code: number): void;
}

/**
 * The contract's graceful shutdown, the same on every runtime: stop
 * accepting, close every connection with 1001, flush the store, exit 0 —
 * within SHUTDOWN_TIMEOUT_MS whatever hangs. Returns the signal handler.
 */
export function gracefulShutdown(
  chat: Chat,
  config: Config,
  logger: Logger,
  runtime: RuntimeStop,
): (signal: string) => Promise<void> {
  let stopping = false;
  return async (signal) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, connections: chat.sessions.size }, "shutting down");
    const timer = setTimeout(() => {
      logger.warn({}, "shutdown timed out; exiting");
      runtime.exit(0);
    }, config.shutdownTimeoutMs) as { unref?(): void };
    timer.unref?.();
    runtime.stopAccepting();
    try {
      await chat.shutdown();
    } catch (error) {
      logger.error({ err: error }, "shutdown failed");
    }
    // Give the 1001 close frames a moment to reach the clients.
    await runtime.drained(1000);
    logger.info({}, "stopped");
    runtime.exit(0);
  };
}
