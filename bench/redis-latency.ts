/**
 * Cross-instance latency with HUB=redis, against one instance.
 *
 * Starts real servers (Node): two instances sharing Redis, and one with the
 * default memory hub. For each case one sender sends N messages at a steady
 * pace and one receiver (another connection) measures send -> receive time;
 * both run in this process, so one clock times both ends.
 *
 *   memory, same instance      HUB=memory: the single-process baseline
 *   redis, same instance       HUB=redis, sender and receiver on instance A
 *   redis, across instances    HUB=redis, sender on A, receiver on B
 *
 * Usage: `node --import tsx bench/redis-latency.ts [messages=2000] [intervalMs=2]`
 * (REDIS_URL, default redis://127.0.0.1:6379). Bounded: every wait has a
 * timeout, and the servers and Redis keys are removed at the end.
 */
import type { ChildProcess } from "node:child_process";
import { Redis } from "ioredis";
import { deleteRedisKeys, openRoom, startListening } from "./harness.ts";

const N = Math.min(Number(process.argv[2] ?? 2000), 20_000);
const INTERVAL_MS = Math.max(0, Number(process.argv[3] ?? 2));
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const PREFIX = `bench:latency:${process.pid}-${Date.now().toString(36)}:`;

interface Server {
  child: ChildProcess;
  port: number;
}

/** Every spawned server, killed at the end whatever happens. */
const children: ChildProcess[] = [];

const start = (env: Record<string, string>): Promise<Server> => startListening(env, children);
const open = (port: number, room: string) => openRoom(port, room, 5000);

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;

/** One sender, one receiver: per-message latency in ms (sub-ms resolution). */
async function measure(senderPort: number, receiverPort: number, room: string) {
  const receiver = await open(receiverPort, room);
  const sender = await open(senderPort, room);
  // Let both joins (and the Redis subscriptions) settle before timing.
  await new Promise((r) => setTimeout(r, 300));
  const sentAt = new Float64Array(N);
  const latencies: number[] = [];
  const done = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 10_000 + N * INTERVAL_MS);
    receiver.on("message", (data) => {
      const now = performance.now();
      const frame = JSON.parse(String(data)) as { message?: string };
      const seq = Number(frame.message?.slice(1));
      if (frame.message?.startsWith("#") && Number.isInteger(seq)) latencies.push(now - (sentAt[seq] ?? now));
      if (latencies.length === N) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  for (let i = 0; i < N; i++) {
    sentAt[i] = performance.now();
    sender.send(JSON.stringify({ user: "bench", message: `#${i}` }));
    if (INTERVAL_MS > 0) await new Promise((r) => setTimeout(r, INTERVAL_MS));
  }
  await done;
  sender.close();
  receiver.close();
  const sorted = latencies.sort((a, b) => a - b);
  const round = (v: number) => Math.round(v * 100) / 100;
  return {
    received: latencies.length,
    p50: round(percentile(sorted, 50)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted.at(-1) ?? Number.NaN),
  };
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    for (const c of children) c.kill("SIGKILL");
    process.exit(1);
  });
}

try {
  const redisEnv = { HUB: "redis", REDIS_URL, REDIS_PREFIX: PREFIX };
  const [memory, a, b] = await Promise.all([
    start({ HUB: "memory", HISTORY: "memory" }),
    start(redisEnv),
    start(redisEnv),
  ]);
  const results = {
    "memory, same instance": await measure(memory.port, memory.port, "bench1"),
    "redis, same instance": await measure(a.port, a.port, "bench2"),
    "redis, across instances": await measure(a.port, b.port, "bench3"),
  };
  console.log(`messages: ${N}, one every ${INTERVAL_MS} ms; latency in ms (send -> receive)`);
  console.table(results);
} finally {
  for (const c of children) c.kill("SIGKILL");
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  await deleteRedisKeys(redis, PREFIX);
  redis.disconnect();
}
