/**
 * Server CPU per delivery of a room's fan-out, HUB=memory against HUB=redis,
 * side by side in one run (the machine is shared: compare the ratio, not the
 * absolute numbers).
 *
 * For each case: R receivers (seed mode) in one room on one Node instance,
 * one sender sending N messages at a steady rate; the server's CPU (user +
 * sys from /proc) and, for HUB=redis, Redis' own CPU (INFO cpu) are read
 * before and after, and divided by the deliveries (N x R, all counted at the
 * receivers: zero loss is checked). The load generator is this process: its
 * own CPU is printed too, to show it is not the limit.
 *
 * Usage: `node --import tsx bench/redis-fanout.ts [receivers=200] [messages=1000] [rounds=3]`
 * (REDIS_URL, default redis://127.0.0.1:6379). Linux only (/proc). Bounded:
 * every wait has a timeout; servers and keys are removed at the end.
 */
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { Redis } from "ioredis";
import { deleteRedisKeys, openRoom, startListening } from "./harness.ts";

const RECEIVERS = Math.min(Number(process.argv[2] ?? 200), 2000);
const N = Math.min(Number(process.argv[3] ?? 1000), 20_000);
const ROUNDS = Math.min(Number(process.argv[4] ?? 3), 10);
const RATE = 500; // messages per second
/** Messages the sender writes back to back before it pauses (BENCH_BURST): 10 lets a server read several in one turn. */
const BURST = Math.max(1, Math.min(Number(process.env.BENCH_BURST ?? 10), 100));
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const PREFIX = `bench:fanout:${process.pid}-${Date.now().toString(36)}:`;
const children: ChildProcess[] = [];

/** BENCH_CPU_PROF=dir: the HUB=redis server writes a CPU profile there (read with Chrome's DevTools). */
const PROFILE_DIR = process.env.BENCH_CPU_PROF;

function start(env: Record<string, string>, profile = false): Promise<{ child: ChildProcess; port: number }> {
  const nodeArgs = profile && PROFILE_DIR ? ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`] : [];
  return startListening(env, children, { nodeArgs, timeoutMs: 60_000 });
}

const open = (port: number, room: string) => openRoom(port, room, 10_000);

/** CPU seconds (user + sys) of a process, from /proc. */
function cpuOf(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

async function redisCpu(redis: Redis): Promise<number> {
  const info = await redis.info("cpu");
  const get = (k: string) => Number(new RegExp(`${k}:([\\d.]+)`).exec(info)?.[1] ?? 0);
  return get("used_cpu_user") + get("used_cpu_sys");
}

async function run(port: number, pid: number, room: string, redis: Redis | null) {
  const receivers = await Promise.all(Array.from({ length: RECEIVERS }, () => open(port, room)));
  const sender = await open(port, room);
  await new Promise((r) => setTimeout(r, 500));
  let got = 0;
  const expected = N * (RECEIVERS + 1);
  const done = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 20_000 + (N / RATE) * 1000);
    const count = () => {
      if (++got === expected) {
        clearTimeout(timer);
        resolve();
      }
    };
    for (const ws of [...receivers, sender]) ws.on("message", count);
  });
  const cpu0 = cpuOf(pid);
  const self0 = process.cpuUsage();
  const r0 = redis ? await redisCpu(redis) : 0;
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    sender.send(JSON.stringify({ user: "bench", message: `m${i}` }));
    if (i % BURST === BURST - 1) await new Promise((r) => setTimeout(r, (BURST / RATE) * 1000));
  }
  await done;
  const wall = (performance.now() - t0) / 1000;
  const server = cpuOf(pid) - cpu0;
  const self = process.cpuUsage(self0);
  const r = redis ? (await redisCpu(redis)) - r0 : 0;
  for (const ws of [...receivers, sender]) ws.terminate();
  const per = (s: number) => Math.round((s / got) * 1e6 * 1000) / 1000; // µs per delivery
  return {
    deliveries: got,
    lost: expected - got,
    "server µs/delivery": per(server),
    "redis µs/delivery": per(r),
    "loadgen CPU %": Math.round(((self.user + self.system) / 1e6 / wall) * 100),
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    for (const c of children) c.kill("SIGKILL");
    process.exit(1);
  });
}

const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
try {
  const memory = await start({ HUB: "memory", HISTORY: "memory" });
  const viaRedis = await start({ HUB: "redis", REDIS_URL, REDIS_PREFIX: PREFIX }, true);
  const results: Record<string, Record<string, number>[]> = { memory: [], redis: [] };
  for (let round = 0; round < ROUNDS; round++) {
    // Alternating, so a load change on the shared machine hits both alike.
    results.memory!.push(await run(memory.port, memory.child.pid!, `m${round}`, null));
    results.redis!.push(await run(viaRedis.port, viaRedis.child.pid!, `r${round}`, redis));
  }
  const table: Record<string, Record<string, number>> = {};
  for (const [name, rows] of Object.entries(results)) {
    const keys = Object.keys(rows[0] ?? {});
    table[name] = Object.fromEntries(keys.map((k) => [k, median(rows.map((r) => r[k] ?? Number.NaN))]));
  }
  const ratio = (table.redis!["server µs/delivery"] ?? 0) / (table.memory!["server µs/delivery"] || 1);
  console.log(
    `${RECEIVERS} receivers + 1 sender, ${N} messages at ${RATE}/s in bursts of ${BURST}, medians of ${ROUNDS} rounds`,
  );
  console.table(table);
  console.log(`server CPU per delivery, redis / memory: ${ratio.toFixed(2)}x`);
  console.log(
    `load (1-min average): ${readFileSync("/proc/loadavg", "utf8").split(" ")[0]} on ${(await import("node:os")).cpus().length} cores`,
  );
  if (PROFILE_DIR) {
    // A graceful stop writes the profile.
    const exited = new Promise((r) => viaRedis.child.once("exit", r));
    viaRedis.child.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
  }
} finally {
  for (const c of children) c.kill("SIGKILL");
  await deleteRedisKeys(redis, PREFIX);
  redis.disconnect();
}
