/**
 * Multi-instance scenario (`npm run bench -- multi`): 1, 2 and 3 instances on
 * this machine behind no proxy, ours with `HUB=redis` (history in Redis too)
 * side by side with Socket.IO 4 + `@socket.io/redis-adapter`
 * (bench/servers/socketio.ts), on the same private Redis and the same load:
 * the same rooms, clients spread evenly over the instances, senders on every
 * instance, the same message size, saturation with the same window per sender.
 *
 * The Redis is a `redis-server` this scenario starts on a free port (no
 * persistence), so its CPU can be read from /proc and no one else's traffic
 * lands on it; it is flushed between runs and stopped by pid at the end.
 * Servers and Redis run on core 0, the load generator (bench/socketio-load.ts)
 * on core 1 (when there are two cores and taskset works). Rounds interleave
 * ours and Socket.IO (order flipped every round) so a change of load on the
 * shared machine hits both; the report gives medians and per-round ratios.
 *
 * Options: --instances 1,2,3  --rooms 10  --clients 1000 (in all)
 * --senders 3 (per room)  --window 8  --duration-ms 5000  --padding 0
 * --quick (1 and 2 instances, 40 clients, 1.5 s: the smoke test).
 */
import type { ChildProcess } from "node:child_process";
import { loadavg } from "node:os";
import { Redis } from "ioredis";
import {
  fmt,
  freePort,
  median,
  NODE_TS,
  OURS_ENV,
  runPinnedJson,
  type ScenarioContext,
  type ScenarioReport,
  type Started,
  spawnPinned,
  startServer,
  stopServer,
  twoCores,
} from "./harness.ts";
import type { MultiLoadResult, MultiLoadSpec } from "./socketio-load.ts";

type Protocol = MultiLoadSpec["protocol"];

interface Options {
  instances: number[];
  rooms: number;
  clients: number;
  senders: number;
  window: number;
  warmupMs: number;
  durationMs: number;
  drainMs: number;
  padding: number;
}

function options(ctx: ScenarioContext): Options {
  const o: Options = ctx.quick
    ? {
        instances: [1, 2],
        rooms: 2,
        clients: 40,
        senders: 2,
        window: 4,
        warmupMs: 300,
        durationMs: 1500,
        drainMs: 5000,
        padding: 0,
      }
    : {
        instances: [1, 2, 3],
        rooms: 10,
        clients: 1000,
        senders: 3,
        window: 8,
        warmupMs: 2000,
        durationMs: 5000,
        drainMs: 8000,
        padding: 0,
      };
  const a = ctx.args;
  const numeric: Record<string, "rooms" | "clients" | "senders" | "window" | "durationMs" | "padding"> = {
    "--rooms": "rooms",
    "--clients": "clients",
    "--senders": "senders",
    "--window": "window",
    "--duration-ms": "durationMs",
    "--padding": "padding",
  };
  for (let i = 0; i < a.length; i++) {
    const flag = a[i]!;
    const value = a[++i];
    const key = numeric[flag];
    if (flag === "--instances") o.instances = String(value).split(",").map(Number);
    else if (key && Number.isFinite(Number(value))) o[key] = Number(value);
    else throw new Error(`multi: unknown option or bad value: ${flag} ${value ?? ""}`);
  }
  o.instances = o.instances.filter((x) => Number.isInteger(x) && x >= 1 && x <= 8);
  o.rooms = Math.max(1, Math.min(o.rooms, 1000));
  o.clients = Math.max(o.rooms, Math.min(o.clients, 20_000));
  o.senders = Math.max(1, Math.min(o.senders, Math.floor(o.clients / o.rooms)));
  return o;
}

/** A private redis-server (no persistence) on a free port, on the servers' core. */
async function startRedis(): Promise<{ child: ChildProcess; url: string; client: Redis }> {
  const port = await freePort();
  const child = spawnPinned(
    ["redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    0,
    {},
  );
  child.stdout?.resume();
  child.stderr?.resume();
  const url = `redis://127.0.0.1:${port}`;
  const client = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true, retryStrategy: () => null });
  client.on("error", () => {}); // refused while it starts: the loop below retries
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      await client.connect();
      await client.ping();
      return { child, url, client };
    } catch (error) {
      if (Date.now() > deadline || child.exitCode !== null) {
        child.kill("SIGKILL");
        throw new Error(`redis-server did not start: ${String(error)}`);
      }
      client.disconnect();
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

function runLoad(spec: MultiLoadSpec): Promise<MultiLoadResult> {
  return runPinnedJson<MultiLoadResult>(
    [...NODE_TS, "bench/socketio-load.ts", JSON.stringify(spec)],
    180_000 + (spec.warmupMs ?? 0) + (spec.durationMs ?? 0) + (spec.drainMs ?? 0),
    "load generator",
  );
}

interface Row {
  round: number;
  instances: number;
  protocol: Protocol;
  result?: MultiLoadResult;
  error?: string;
}

export async function run(ctx: ScenarioContext): Promise<ScenarioReport> {
  const o = options(ctx);
  const redis = await startRedis();
  const rows: Row[] = [];
  const load0 = loadavg()[0]!;
  try {
    for (let round = 0; round < ctx.runs; round++) {
      for (const n of o.instances) {
        const order: Protocol[] = round % 2 === 0 ? ["ours", "socketio"] : ["socketio", "ours"];
        for (const protocol of order) {
          await redis.client.flushall();
          const env =
            protocol === "ours"
              ? { ...OURS_ENV, HUB: "redis", HISTORY: "redis", REDIS_URL: redis.url }
              : { REDIS_URL: redis.url };
          const script = protocol === "ours" ? "src/index.ts" : "bench/servers/socketio.ts";
          const servers: Started[] = [];
          try {
            const started = await Promise.allSettled(
              Array.from({ length: n }, () => startServer({ command: [...NODE_TS, script], env, cpu: 0 })),
            );
            for (const s of started) if (s.status === "fulfilled") servers.push(s.value);
            const failed = started.find((s) => s.status === "rejected");
            if (failed) throw (failed as PromiseRejectedResult).reason;
            const result = await runLoad({
              protocol,
              urls: servers.map((s) => `ws://127.0.0.1:${s.port}`),
              rooms: o.rooms,
              clientsPerRoom: Math.floor(o.clients / o.rooms),
              sendersPerRoom: o.senders,
              window: o.window,
              warmupMs: o.warmupMs,
              durationMs: o.durationMs,
              drainMs: o.drainMs,
              padding: o.padding,
              serverPids: servers.map((s) => s.child.pid!),
              redisPid: redis.child.pid,
            });
            rows.push({ round, instances: n, protocol, result });
            ctx.log(
              `round ${round + 1} x${n} ${protocol}: ${fmt(result.deliveriesPerSec)} deliveries/s, cross p99 ${result.crossLatency.p99} ms, lost ${result.lost}, out of order ${result.outOfOrder}, ${result.cpuMicrosPerDelivery} µs CPU/delivery, loadgen ${result.loadgenCpuPercent}%${result.errors.length ? `, ${result.errors.join("; ")}` : ""}`,
            );
          } catch (error) {
            const why = error instanceof Error ? error.message : String(error);
            rows.push({ round, instances: n, protocol, error: why });
            ctx.log(`round ${round + 1} x${n} ${protocol}: failed (${why})`);
          } finally {
            await Promise.all(servers.map((s) => stopServer(s)));
          }
        }
      }
    }
  } finally {
    redis.client.disconnect();
    const exited = new Promise<void>((r) => redis.child.once("exit", () => r()));
    redis.child.kill("SIGTERM");
    const t = setTimeout(() => redis.child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(t);
  }
  return { markdown: report(rows, o, ctx.runs, load0), data: { options: o, rows } };
}

type Num = (r: MultiLoadResult) => number;

function report(rows: Row[], o: Options, runs: number, load0: number): string {
  const ok = (n: number, p: Protocol) =>
    rows.filter((r) => r.instances === n && r.protocol === p && r.result).map((r) => r.result!);
  const med = (n: number, p: Protocol, f: Num) => median(ok(n, p).map(f));
  const worst = (n: number, p: Protocol, f: Num) => Math.max(0, ...ok(n, p).map(f));
  /** Median over rounds of (ours / socketio) of the same round. */
  const roundRatio = (n: number, f: Num) => {
    const xs: number[] = [];
    for (let round = 0; round < runs; round++) {
      const a = rows.find((r) => r.round === round && r.instances === n && r.protocol === "ours")?.result;
      const b = rows.find((r) => r.round === round && r.instances === n && r.protocol === "socketio")?.result;
      if (a && b && f(b) > 0) xs.push(f(a) / f(b));
    }
    return median(xs);
  };
  const lat = (r: MultiLoadResult) => (r.instances > 1 ? r.crossLatency : r.allLatency);
  const out: string[] = [];
  out.push(
    `${o.clients} clients in ${o.rooms} rooms, ${o.senders} senders per room (instance k % n), window ${o.window} per sender, ${o.warmupMs} ms warm-up then ${o.durationMs} ms measured, ${runs} round(s), medians. Servers + private Redis ${twoCores ? "on core 0, load generator on core 1" : "unpinned"}. Load average at start ${load0.toFixed(2)}, at end ${loadavg()[0]!.toFixed(2)}.`,
  );
  out.push("");
  out.push(
    "| instances | server | deliveries/s | p50 ms | p99 ms | lost | dup/reorder | closed | CPU µs/delivery (servers + Redis) | of which Redis | load gen CPU % | failed runs |",
  );
  out.push("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const n of o.instances) {
    for (const p of ["ours", "socketio"] as const) {
      const failed = rows.filter((r) => r.instances === n && r.protocol === p && r.error).length;
      out.push(
        `| ${n} | ${p === "ours" ? "ours HUB=redis" : "Socket.IO + redis-adapter"} | ${fmt(med(n, p, (r) => r.deliveriesPerSec))} | ${fmt(
          med(n, p, (r) => lat(r).p50),
          1,
        )} | ${fmt(
          med(n, p, (r) => lat(r).p99),
          1,
        )} | ${worst(n, p, (r) => r.lost)} | ${worst(n, p, (r) => r.outOfOrder)} | ${worst(n, p, (r) => r.closedEarly)} | ${fmt(
          med(n, p, (r) => r.cpuMicrosPerDelivery),
          2,
        )} | ${fmt(
          med(n, p, (r) => r.redisCpuMicrosPerDelivery),
          2,
        )} | ${fmt(med(n, p, (r) => r.loadgenCpuPercent))} | ${failed} |`,
      );
    }
  }
  out.push("");
  out.push(
    "| instances | deliveries/s ours / Socket.IO | p99 ours / Socket.IO | CPU per delivery Socket.IO / ours | goal (>= 2x, p99 no worse, zero loss) |",
  );
  out.push("| --- | ---: | ---: | ---: | --- |");
  for (const n of o.instances) {
    const thr = roundRatio(n, (r) => r.deliveriesPerSec);
    const p99 = roundRatio(n, (r) => lat(r).p99);
    const cpu = 1 / roundRatio(n, (r) => r.cpuMicrosPerDelivery);
    const zero = worst(n, "ours", (r) => r.lost + r.outOfOrder + r.closedEarly) === 0 && ok(n, "ours").length > 0;
    const met = n >= 2 ? (thr >= 2 && p99 <= 1 && zero ? "met" : "not met") : "(1 instance: not part of the goal)";
    out.push(`| ${n} | ${fmt(thr, 2)}x | ${fmt(p99, 2)}x | ${fmt(cpu, 2)}x | ${met} |`);
  }
  out.push("");
  out.push(
    "Latency: sender -> receiver on another instance (with one instance: every delivery). Lost, dup/reorder, closed: worst round. Ratios: median over rounds of the same round's ratio.",
  );
  return out.join("\n");
}
