/**
 * Real Redis for the Redis suites: the shared one at REDIS_URL (started by
 * scripts/test-setup.mjs when missing), a key prefix per test so suites never
 * see each other's keys, and private redis-server processes for fault tests.
 * Never a mock: where no Redis answers, suites skip and say why.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll } from "vitest";
import type { ChatMessage } from "../../src/protocol.ts";
import { createRedisClient, waitReady } from "../../src/redis/client.ts";
import {
  type AppendPublish,
  type EpochCheck,
  type RedisCommands,
  RedisLog,
  type RedisLogOptions,
} from "../../src/redis/log.ts";
import { RedisStore } from "../../src/store/redis.ts";
import type { HistoryStore } from "../../src/store/store.ts";
import { trackForFile } from "./cleanup.ts";
import { FailingStore } from "./failing-store.ts";
import { freePort } from "./server.ts";

/** The Redis the suites use. @default "redis://127.0.0.1:6379" */
export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

async function ping(url: string, timeoutMs = 1500): Promise<string | null> {
  const client = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: timeoutMs,
  });
  client.on("error", () => {});
  try {
    await client.connect();
    await client.ping();
    return null;
  } catch (error) {
    return String(error);
  } finally {
    client.disconnect();
  }
}

const pingError = await ping(REDIS_URL);
/** Why the Redis suites are skipped, or null when Redis answers. */
export const redisSkipReason: string | null =
  pingError === null ? null : `no Redis answers at ${REDIS_URL} (${pingError}); run the suite with npm test`;

/** ` (skipped: why)` for a describe title when Redis does not answer, else "". */
export const redisSkipNote = redisSkipReason ? ` (skipped: ${redisSkipReason})` : "";

/** True when `redis-server` is on the PATH (fault tests start their own). */
export const haveRedisServer = spawnSync("sh", ["-c", "command -v redis-server"]).status === 0;

let prefixSeq = 0;
/** A key prefix no other test (or run) uses. */
export function uniquePrefix(tag = "t"): string {
  return `test:${tag}:${process.pid}-${Date.now().toString(36)}-${++prefixSeq}:`;
}

/**
 * Call once at a file's top level: returns a maker of {@link uniquePrefix}es
 * whose keys on the shared Redis are deleted when the file ends.
 */
export function prefixesDeletedAfterAll(): (tag?: string) => string {
  const prefixes: string[] = [];
  afterAll(async () => {
    if (redisSkipReason === null) for (const p of prefixes) await deleteKeys(REDIS_URL, p);
  });
  return (tag) => {
    const prefix = uniquePrefix(tag);
    prefixes.push(prefix);
    return prefix;
  };
}

/**
 * A client to `url` once it is ready (or after 3 s: the client fails fast
 * instead of queueing, so a test's first command would otherwise race the
 * connection). Its error events are swallowed: commands still reject.
 */
export async function readyClient(url = REDIS_URL): Promise<Redis> {
  const client = createRedisClient(url);
  client.on("error", () => {});
  await waitReady(client, 3000);
  return client;
}

/**
 * A log whose appends fail while the hub contract's FailingStore says so:
 * with HUB=redis the hub appends through the log (which also publishes), so
 * that is where the contract's "the store fails" has to bite.
 */
export class GatedLog extends RedisLog {
  constructor(
    redis: RedisCommands,
    options: RedisLogOptions,
    readonly gate: FailingStore,
  ) {
    super(redis, options);
  }

  override append(message: ChatMessage, check?: EpochCheck, publish?: AppendPublish): Promise<boolean> {
    if (this.gate.failAppends === "throw") throw new Error("store unavailable (test)");
    if (this.gate.failAppends === "reject") return Promise.reject(new Error("store unavailable (test)"));
    return super.append(message, check, publish);
  }
}

/**
 * The log and store a Redis hub is built with in the hub contract: the store
 * wrapped by the contract's `wrapStore` when given, and the log gated by it
 * when the wrapper is a FailingStore. `base` is the unwrapped store.
 */
export function hubLogAndStore(
  redis: RedisCommands,
  prefix: string,
  wrapStore?: (store: HistoryStore) => HistoryStore,
): { log: RedisLog; store: HistoryStore; base: RedisStore } {
  let log = new RedisLog(redis, { prefix });
  const base = new RedisStore(redis, { log });
  const store = wrapStore ? wrapStore(base) : base;
  if (store instanceof FailingStore) log = new GatedLog(redis, { prefix }, store);
  return { log, store, base };
}

/** Deletes every key under `prefix` (SCAN, never KEYS or FLUSH on the shared Redis). */
export async function deleteKeys(url: string, prefix: string): Promise<void> {
  const client = new Redis(url, { maxRetriesPerRequest: 1, retryStrategy: () => null });
  client.on("error", () => {});
  try {
    let cursor = "0";
    // Bounded: a prefix of one test holds few keys.
    for (let i = 0; i < 1000; i++) {
      const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      if (keys.length > 0) await client.del(...keys);
      cursor = next;
      if (cursor === "0") break;
    }
  } finally {
    client.disconnect();
  }
}

/**
 * A private redis-server, killed and restarted by a fault test. It saves
 * nothing by itself; {@link save} writes a snapshot into `dir` (a temp
 * folder), which the next start loads, as a Redis with persistence would.
 */
export class PrivateRedis {
  #child: ChildProcess | null = null;

  constructor(
    readonly port: number,
    readonly dir: string,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts redis-server and resolves once it answers (within 5 s). */
  async start(): Promise<void> {
    if (this.#child) return;
    const child = spawn(
      "redis-server",
      ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir],
      { stdio: "ignore" },
    );
    this.#child = child;
    for (let i = 0; i < 50; i++) {
      if ((await ping(this.url, 500)) === null) return;
      if (child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await this.stop();
    throw new Error(`redis-server on port ${this.port} did not start`);
  }

  /** Writes a snapshot (SAVE) that the next start loads. */
  async save(): Promise<void> {
    const client = new Redis(this.url, { maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on("error", () => {});
    try {
      await client.save();
    } finally {
      client.disconnect();
    }
  }

  /** SIGKILLs the server (as a crash would) and waits for its exit. */
  async stop(): Promise<void> {
    const child = this.#child;
    this.#child = null;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
  }
}

/**
 * A started {@link PrivateRedis} on a free port with its own temp folder
 * (named after `tag`); stopped and the folder removed when the file ends.
 */
export async function startPrivateRedis(tag: string): Promise<PrivateRedis> {
  const dir = mkdtempSync(join(tmpdir(), `chat-${tag}-`));
  trackForFile(() => rmSync(dir, { recursive: true, force: true }));
  const redis = new PrivateRedis(await freePort(), dir);
  trackForFile(() => redis.stop());
  await redis.start();
  return redis;
}
