/**
 * Real Redis for the Redis suites: the shared one at REDIS_URL (started by
 * scripts/test-setup.mjs when missing), a key prefix per test so suites never
 * see each other's keys, and private redis-server processes for fault tests.
 * Never a mock: where no Redis answers, suites skip and say why.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { Redis } from "ioredis";

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

/** True when `redis-server` is on the PATH (fault tests start their own). */
export const haveRedisServer = spawnSync("sh", ["-c", "command -v redis-server"]).status === 0;

let prefixSeq = 0;
/** A key prefix no other test (or run) uses. */
export function uniquePrefix(tag = "t"): string {
  return `test:${tag}:${process.pid}-${Date.now().toString(36)}-${++prefixSeq}:`;
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
