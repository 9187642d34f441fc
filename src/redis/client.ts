/**
 * The Redis clients of HUB=redis: they fail fast while Redis is away instead
 * of queueing, so a message is either stored now or its sender hears
 * `unavailable` now.
 */
import { Redis } from "ioredis";

/** Options for {@link createRedisClient}. */
export interface RedisClientOptions {
  /** Longest wait for one command (and for a connection) before it fails (REDIS_COMMAND_TIMEOUT_MS). @default 2000 */
  commandTimeoutMs?: number;
  /** Shown in CLIENT LIST. @default none */
  name?: string;
}

/** The client settings shared by a single Redis and a cluster's node connections. */
export function clientOptions(options: RedisClientOptions = {}) {
  const timeout = options.commandTimeoutMs ?? 2000;
  return {
    enableOfflineQueue: false,
    // Commands in flight when the connection drops fail at once...
    maxRetriesPerRequest: 0,
    // ...and are not sent again after the reconnect: the first try may have
    // run, and a second would store the message twice.
    autoResendUnfulfilledCommands: false,
    // The broker resubscribes itself, so it knows when to read what it missed.
    autoResubscribe: false,
    commandTimeout: timeout,
    connectTimeout: timeout,
    retryStrategy: (attempt: number) => Math.min(attempt * 100, 1000),
    ...(options.name ? { connectionName: options.name } : {}),
  };
}

/** A client to one Redis that reconnects by itself every 100 ms to 1 s. */
export function createRedisClient(url: string, options: RedisClientOptions = {}): Redis {
  return new Redis(url, clientOptions(options));
}

/** Anything with ioredis' connection status and events (a Redis or a Cluster). */
interface Connection {
  status: string;
  on(event: "ready", listener: () => void): unknown;
  off(event: "ready", listener: () => void): unknown;
}

/** Resolves true once the client is ready, false after `ms` without. */
export function waitReady(redis: Connection, ms: number): Promise<boolean> {
  if (redis.status === "ready") return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      redis.off("ready", onReady);
      resolve(ok);
    };
    const onReady = () => done(true);
    const timer = setTimeout(() => done(false), ms);
    redis.on("ready", onReady);
  });
}
