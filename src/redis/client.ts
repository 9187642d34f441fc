/**
 * The Redis clients of HUB=redis: they fail fast while Redis is away instead
 * of queueing, so a message is either stored now or its sender hears
 * `unavailable` now.
 */
import { Cluster, Redis } from "ioredis";

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

/**
 * A client to a Redis Cluster (REDIS_CLUSTER): `url` names any node, the
 * client learns the others (CLUSTER SLOTS) and follows failovers itself.
 *
 * Sharded pub/sub is ioredis' own (`shardedSubscribers`): one subscriber
 * connection per master, SSUBSCRIBE routed by slot, and after a topology
 * change (a failover) the channels are subscribed again on the new masters,
 * after which it emits `subscribersReady` (the broker then reads what was
 * published meanwhile from the streams). One client serves commands and
 * subscriptions: the subscriber connections are separate inside it.
 */
export function createRedisCluster(url: string, options: RedisClientOptions = {}): Cluster {
  const u = new URL(url);
  const node = clientOptions(options);
  return new Cluster([{ host: u.hostname, port: Number(u.port || 6379) }], {
    shardedSubscribers: true,
    // As for one Redis: fail at once while the cluster is not ready.
    enableOfflineQueue: false,
    clusterRetryStrategy: (attempt: number) => Math.min(attempt * 100, 1000),
    // MOVED/ASK/TRYAGAIN/CLUSTERDOWN replies mean the command did not run: those are retried.
    retryDelayOnFailover: 100,
    retryDelayOnClusterDown: 100,
    retryDelayOnTryAgain: 100,
    maxRedirections: 16,
    slotsRefreshTimeout: options.commandTimeoutMs ?? 2000,
    redisOptions: {
      ...node,
      ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
      ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
      ...(u.protocol === "rediss:" ? { tls: {} } : {}),
    },
  });
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
