/**
 * The side-by-side benchmark (`npm run bench`): starts every server itself,
 * one at a time on a free port, runs the load generator against it in a
 * separate process (server and load pinned to different cores with
 * `taskset` when there are two), stops it by pid, and repeats the whole
 * round `--runs` times so each row's median comes from interleaved runs.
 *
 * Prints a markdown table and writes every raw result plus the medians to
 * bench/results/<time>.json (git-ignored).
 *
 * Options: --quick (a few seconds, for the smoke test), --runs N,
 * --targets a,b --scenarios fanout,saturation,idle, --loadgen bun|node,
 * --out DIR, --fanout-ms / --saturation-ms N, --idle-clients N, --compare DIR
 * (adds our Node rows run from another checkout, for before/after).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { availableParallelism, freemem, loadavg, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import type { LoadResult, LoadSpec } from "./loadgen.ts";

const ROOT = resolve(import.meta.dirname, "..");
const BUN = join(ROOT, "node_modules/.bin/bun");
const DENO = join(ROOT, "node_modules/.bin/deno");
const NODE_TS = ["node", "--import", "tsx"];

/** A server the bench can start. `kind` says which baselines its ratios use. */
interface Target {
  name: string;
  runtime: "node" | "bun" | "deno";
  /** ours or a baseline */
  role: "ours" | "floor" | "ceiling";
  command: string[];
  env?: Record<string, string>;
  /** Where the command runs. @default the repo root */
  cwd?: string;
  /** WebSocket path and query. */
  path: string;
}

/** Ours gets what a production start would, minus rate limit and per-connection info logs. */
const OURS_ENV = { RATE_LIMIT: "0", LOG_LEVEL: "warn", HEARTBEAT_MS: "30000", HOST: "127.0.0.1" };
const OURS_PATH = "/websocket?room=bench";

const TARGETS: Target[] = [
  {
    name: "ws plain loop",
    runtime: "node",
    role: "floor",
    command: [...NODE_TS, "bench/servers/ws-plain.ts"],
    path: "/",
  },
  {
    name: "ws pre-framed",
    runtime: "node",
    role: "ceiling",
    command: [...NODE_TS, "bench/servers/ws-preframed.ts"],
    path: "/",
  },
  { name: "ours node sqlite", runtime: "node", role: "ours", command: [...NODE_TS, "src/index.ts"], path: OURS_PATH },
  {
    name: "ours node memory",
    runtime: "node",
    role: "ours",
    command: [...NODE_TS, "src/index.ts"],
    env: { HISTORY: "memory" },
    path: OURS_PATH,
  },
  {
    name: "Bun.serve publish",
    runtime: "bun",
    role: "ceiling",
    command: [BUN, "bench/servers/bun-publish.ts"],
    path: "/",
  },
  { name: "ours bun sqlite", runtime: "bun", role: "ours", command: [BUN, "run", "src/index.ts"], path: OURS_PATH },
  {
    name: "ours bun memory",
    runtime: "bun",
    role: "ours",
    command: [BUN, "run", "src/index.ts"],
    env: { HISTORY: "memory" },
    path: OURS_PATH,
  },
  {
    name: "ours deno sqlite",
    runtime: "deno",
    role: "ours",
    command: [DENO, "run", "-A", "src/index.ts"],
    path: OURS_PATH,
  },
];

type Scenario = LoadSpec["scenario"];

interface Options {
  quick: boolean;
  runs: number;
  targets: string[] | null;
  scenarios: Scenario[];
  loadgen: "bun" | "node";
  out: string;
  fanoutMs: number;
  saturationMs: number;
  idleClients: number;
  /** Another checkout of this repo (e.g. `git archive` of an older commit) to run beside ours. */
  compare: string | null;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    quick: false,
    runs: 3,
    targets: null,
    scenarios: ["fanout", "saturation", "idle"],
    loadgen: "bun",
    out: join(ROOT, "bench/results"),
    fanoutMs: 8000,
    saturationMs: 5000,
    idleClients: 10_000,
    compare: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      const value = argv[++i];
      if (value === undefined) throw new Error(`${a} needs a value`);
      return value;
    };
    if (a === "--quick") o.quick = true;
    else if (a === "--runs") o.runs = Number(v());
    else if (a === "--targets") o.targets = v().split(",");
    else if (a === "--scenarios") o.scenarios = v().split(",") as Scenario[];
    else if (a === "--loadgen") o.loadgen = v() === "node" ? "node" : "bun";
    else if (a === "--out") o.out = resolve(v());
    else if (a === "--fanout-ms") o.fanoutMs = Number(v());
    else if (a === "--saturation-ms") o.saturationMs = Number(v());
    else if (a === "--idle-clients") o.idleClients = Number(v());
    else if (a === "--compare") o.compare = resolve(v());
    else throw new Error(`unknown option ${a}`);
  }
  if (o.quick) {
    o.runs = Math.min(o.runs, 1);
    o.targets ??= ["ws plain loop", "ours node sqlite"];
  }
  return o;
}

/** The load each scenario puts on a server. */
function specFor(s: Scenario, o: Options): Omit<LoadSpec, "url" | "serverPid"> {
  if (o.quick) {
    if (s === "fanout") return { scenario: s, clients: 20, senders: 2, rate: 20, durationMs: 500, drainMs: 2000 };
    if (s === "saturation") return { scenario: s, clients: 20, senders: 2, window: 4, durationMs: 500, drainMs: 2000 };
    return { scenario: s, clients: 50, holdMs: 300 };
  }
  if (s === "fanout")
    return { scenario: s, clients: 1000, senders: 10, rate: 10, durationMs: o.fanoutMs, drainMs: 5000 };
  if (s === "saturation")
    return { scenario: s, clients: 200, senders: 10, window: 16, durationMs: o.saturationMs, drainMs: 5000 };
  return { scenario: s, clients: o.idleClients, holdMs: 2000, connectConcurrency: 100 };
}

const twoCores = availableParallelism() >= 2 && hasTaskset();

function hasTaskset(): boolean {
  try {
    execFileSync("taskset", ["-c", "0", "true"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs `command` pinned to `cpu` (when taskset works) with the file limit
 * raised to the hard limit: 10,000 sockets need more than the usual 1024.
 */
function spawnPinned(command: string[], cpu: number, env: Record<string, string>, cwd = ROOT): ChildProcess {
  const pin = twoCores ? ["taskset", "-c", String(cpu)] : [];
  const script = 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"';
  return spawn("sh", ["-c", script, "sh", ...pin, ...command], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => res(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = createConnection({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      res(true);
    });
    s.once("error", () => res(false));
  });
}

interface Started {
  child: ChildProcess;
  port: number;
  output: () => string;
}

/** Starts a target on a free port and waits (at most 30 s) until it accepts TCP. */
async function startTarget(t: Target): Promise<Started> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "chat-bench-"));
  const env: Record<string, string> = {
    PORT: String(port),
    HISTORY_PATH: join(dir, "chat.db"),
    ...(t.role === "ours" ? OURS_ENV : {}),
    ...t.env,
  };
  const child = spawnPinned(t.command, 0, env, t.cwd);
  let out = "";
  const keep = (c: Buffer) => {
    out = (out + c.toString()).slice(-20_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  let exited = false;
  child.once("exit", () => {
    exited = true;
    rmSync(dir, { recursive: true, force: true });
  });
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !exited) {
    if (await canConnect(port)) return { child, port, output: () => out };
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill("SIGKILL");
  throw new Error(
    `${exited ? "exited" : "did not listen within 30 s"}: ${out.trim().split("\n").slice(-3).join(" | ")}`,
  );
}

/** Stops a started server by its pid: SIGTERM, SIGKILL after 5 s. */
async function stopTarget(s: Started): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  const exited = new Promise<void>((r) => s.child.once("exit", () => r()));
  s.child.kill("SIGTERM");
  const timer = setTimeout(() => s.child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

/** Runs the load generator in its own process, bounded in time. */
function runLoadgen(spec: LoadSpec, o: Options): Promise<LoadResult> {
  const command = o.loadgen === "bun" ? [BUN, "bench/loadgen.ts"] : [...NODE_TS, "bench/loadgen.ts"];
  const child = spawnPinned([...command, JSON.stringify(spec)], 1, {});
  let out = "";
  let err = "";
  child.stdout?.on("data", (c: Buffer) => {
    out += c.toString();
  });
  child.stderr?.on("data", (c: Buffer) => {
    err = (err + c.toString()).slice(-4000);
  });
  const bound =
    (spec.connectTimeoutMs ?? 60_000) + (spec.durationMs ?? 5000) + (spec.drainMs ?? 5000) + (spec.holdMs ?? 2000);
  return new Promise((res, rej) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), bound + 30_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      const line = out.trim().split("\n").at(-1) ?? "";
      try {
        res(JSON.parse(line) as LoadResult);
      } catch {
        rej(new Error(`loadgen exited ${code}: ${err.trim().slice(-500)}`));
      }
    });
  });
}

interface Row {
  target: string;
  scenario: Scenario;
  run: number;
  result?: LoadResult;
  error?: string;
}

const median = (xs: number[]): number => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** Median of each numeric field a table shows, per target and scenario. */
interface Summary {
  target: string;
  scenario: Scenario;
  runs: number;
  failed: number;
  error?: string;
  deliveriesPerSec: number;
  deliveriesMin: number;
  deliveriesMax: number;
  lost: number;
  duplicates: number;
  reordered: number;
  closedEarly: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  connected: number;
  connectMs: number;
  connectP99: number;
  rssPerConnKiB: number;
  rssAfterKiB: number;
  cpuMicrosPerDelivery: number;
}

function summarize(rows: Row[], target: string, scenario: Scenario): Summary {
  const mine = rows.filter((r) => r.target === target && r.scenario === scenario);
  const ok = mine.map((r) => r.result).filter((r): r is LoadResult => r !== undefined);
  const med = (f: (r: LoadResult) => number | null) => median(ok.map(f).filter((x): x is number => x !== null));
  const sum = (f: (r: LoadResult) => number) => ok.reduce((a, r) => a + f(r), 0);
  const dps = ok.map((r) => r.deliveriesPerSec);
  return {
    target,
    scenario,
    runs: ok.length,
    failed: mine.length - ok.length,
    ...(mine.find((r) => r.error) ? { error: mine.find((r) => r.error)?.error } : {}),
    deliveriesPerSec: med((r) => r.deliveriesPerSec),
    deliveriesMin: Math.min(...dps),
    deliveriesMax: Math.max(...dps),
    // Correctness counts are summed over runs: one lost message anywhere shows.
    lost: sum((r) => r.lost),
    duplicates: sum((r) => r.duplicates),
    reordered: sum((r) => r.reordered),
    closedEarly: sum((r) => r.closedEarly),
    p50: med((r) => r.latency.p50),
    p90: med((r) => r.latency.p90),
    p99: med((r) => r.latency.p99),
    max: med((r) => r.latency.max),
    connected: med((r) => r.connected),
    connectMs: med((r) => r.connectMs),
    connectP99: med((r) => r.connectLatency.p99),
    rssPerConnKiB: med((r) => r.rssPerConnKiB),
    rssAfterKiB: med((r) => r.rssAfterKiB),
    cpuMicrosPerDelivery: med((r) => r.serverCpuMicrosPerDelivery),
  };
}

/** The baselines a row of ours is compared with: its runtime's, the Node floor for Deno. */
function baselinesOf(t: Target): { floor?: string; ceiling?: string } {
  if (t.runtime === "node") return { floor: "ws plain loop", ceiling: "ws pre-framed" };
  if (t.runtime === "bun") return { ceiling: "Bun.serve publish" };
  return { floor: "ws plain loop" };
}

const fmt = (n: number, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : "-";
const ratio = (a: number, b: number | undefined) => (b && Number.isFinite(a) && b > 0 ? `${fmt(a / b, 2)}x` : "");

function table(summaries: Summary[], targets: Target[], scenarios: Scenario[], o: Options): string {
  const get = (name: string | undefined, s: Scenario) =>
    name === undefined ? undefined : summaries.find((x) => x.target === name && x.scenario === s && x.runs > 0);
  const out: string[] = [];
  const na = (x: Summary) => `| ${x.target} | not available: ${(x.error ?? "no successful run").slice(0, 100)} |`;
  for (const s of scenarios) {
    const rows = targets.map((t) => summaries.find((x) => x.target === t.name && x.scenario === s)!);
    if (s === "fanout") {
      const f = specFor(s, o);
      out.push(`### Fan-out (${f.clients} clients, ${f.senders} senders x ${f.rate} msg/s for ${f.durationMs} ms)`, "");
      out.push(
        "| server | deliveries/s | lost / dup / reordered | p50 ms | p90 ms | p99 ms | max ms | p99 vs floor | server CPU µs/delivery |",
      );
      out.push("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
      for (const [i, x] of rows.entries()) {
        if (x.runs === 0) {
          out.push(na(x));
          continue;
        }
        const floor = get(baselinesOf(targets[i]!).floor, s);
        const vs = targets[i]!.role === "ours" ? ratio(x.p99, floor?.p99) : "";
        out.push(
          `| ${x.target} | ${fmt(x.deliveriesPerSec)} | ${x.lost} / ${x.duplicates} / ${x.reordered}${x.closedEarly ? ` (${x.closedEarly} closed)` : ""} | ${fmt(x.p50, 2)} | ${fmt(x.p90, 2)} | ${fmt(x.p99, 2)} | ${fmt(x.max, 1)} | ${vs} | ${fmt(x.cpuMicrosPerDelivery, 2)} |`,
        );
      }
    } else if (s === "saturation") {
      const f = specFor(s, o);
      out.push(
        `### Saturation (${f.clients} clients, ${f.senders} senders, window ${f.window}, ${f.durationMs} ms)`,
        "",
      );
      out.push(
        "| server | deliveries/s (median) | min - max | vs floor | vs ceiling | lost / dup / reordered | p99 ms | server CPU µs/delivery |",
      );
      out.push("| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |");
      for (const [i, x] of rows.entries()) {
        if (x.runs === 0) {
          out.push(na(x));
          continue;
        }
        const b = baselinesOf(targets[i]!);
        const ours = targets[i]!.role === "ours";
        out.push(
          `| ${x.target} | ${fmt(x.deliveriesPerSec)} | ${fmt(x.deliveriesMin)} - ${fmt(x.deliveriesMax)} | ${ours ? ratio(x.deliveriesPerSec, get(b.floor, s)?.deliveriesPerSec) : ""} | ${ours ? ratio(x.deliveriesPerSec, get(b.ceiling, s)?.deliveriesPerSec) : ""} | ${x.lost} / ${x.duplicates} / ${x.reordered} | ${fmt(x.p99, 1)} | ${fmt(x.cpuMicrosPerDelivery, 2)} |`,
        );
      }
    } else {
      out.push(`### Idle connections (${specFor(s, o).clients})`, "");
      out.push(
        "| server | connected | closed while held | connect all (ms) | handshake p99 ms | RSS at end (MiB) | RSS per connection (KiB) |",
      );
      out.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
      for (const x of rows) {
        if (x.runs === 0) {
          out.push(na(x));
          continue;
        }
        out.push(
          `| ${x.target} | ${fmt(x.connected)} | ${x.closedEarly} | ${fmt(x.connectMs)} | ${fmt(x.connectP99, 1)} | ${fmt(x.rssAfterKiB / 1024, 1)} | ${fmt(x.rssPerConnKiB, 2)} |`,
        );
      }
    }
    out.push("");
  }
  return out.join("\n");
}

/** What code and which runtimes the numbers belong to. */
function versions(): Record<string, string> {
  const run = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    } catch {
      return "unavailable";
    }
  };
  const dirty = run("git", ["status", "--porcelain", "--", "src", "bench"]);
  return {
    commit: `${run("git", ["rev-parse", "--short", "HEAD"])}${dirty && dirty !== "unavailable" ? " (+ uncommitted changes)" : ""}`,
    node: process.version,
    bun: run(BUN, ["--version"]),
    deno: run(DENO, ["--version"]).split("\n")[0] ?? "",
  };
}

function machine(): Record<string, unknown> {
  let cpu = "";
  try {
    cpu = /model name\s*:\s*(.*)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "";
  } catch {}
  return {
    cpus: availableParallelism(),
    cpu,
    memMiB: Math.round(totalmem() / 2 ** 20),
    freeMiB: Math.round(freemem() / 2 ** 20),
    loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
    pinned: twoCores,
  };
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const all = [...TARGETS];
  if (o.compare) {
    // The same Node rows from the other checkout, for before/after measurements.
    for (const t of TARGETS.filter((x) => x.role === "ours" && x.runtime === "node")) {
      all.push({ ...t, name: `${t.name} (compare)`, cwd: o.compare });
    }
  }
  const targets = o.targets ? all.filter((t) => o.targets?.some((n) => t.name.startsWith(n))) : all;
  if (targets.length === 0) throw new Error(`no target matches; known: ${TARGETS.map((t) => t.name).join(", ")}`);
  const before = machine();
  const started = new Date().toISOString();
  const rows: Row[] = [];
  const unavailable = new Map<string, string>();
  for (let run = 1; run <= o.runs; run++) {
    for (const scenario of o.scenarios) {
      for (const t of targets) {
        if (unavailable.has(t.name)) {
          rows.push({ target: t.name, scenario, run, error: unavailable.get(t.name)! });
          continue;
        }
        let server: Started;
        try {
          server = await startTarget(t);
        } catch (error) {
          const why = error instanceof Error ? error.message : String(error);
          unavailable.set(t.name, why);
          rows.push({ target: t.name, scenario, run, error: why });
          console.error(`[bench] ${t.name}: not available (${why})`);
          continue;
        }
        const spec: LoadSpec = {
          ...specFor(scenario, o),
          url: `ws://127.0.0.1:${server.port}${t.path}`,
          ...(server.child.pid !== undefined ? { serverPid: server.child.pid } : {}),
        };
        try {
          const result = await runLoadgen(spec, o);
          rows.push({ target: t.name, scenario, run, result });
          console.error(
            `[bench] run ${run} ${scenario} ${t.name}: ${fmt(result.deliveriesPerSec)} deliveries/s, p99 ${result.latency.p99} ms, lost ${result.lost}, connected ${result.connected}${result.errors.length ? `, ${result.errors.join("; ")}` : ""}`,
          );
        } catch (error) {
          const why = error instanceof Error ? error.message : String(error);
          rows.push({ target: t.name, scenario, run, error: why });
          console.error(`[bench] run ${run} ${scenario} ${t.name}: failed (${why})`);
        } finally {
          await stopTarget(server);
        }
      }
    }
  }
  const summaries = o.scenarios.flatMap((s) => targets.map((t) => summarize(rows, t.name, s)));
  const markdown = table(summaries, targets, o.scenarios, o);
  const report = {
    started,
    finished: new Date().toISOString(),
    command: `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim(),
    options: o,
    loadgen: o.loadgen,
    versions: versions(),
    machine: { before, after: machine() },
    specs: Object.fromEntries(o.scenarios.map((s) => [s, specFor(s, o)])),
    summaries,
    rows,
    markdown,
  };
  mkdirSync(o.out, { recursive: true });
  const file = join(o.out, `${started.replace(/[:.]/g, "-")}.json`);
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  console.log(markdown);
  console.log(
    `machine: ${before.cpus} cpus, ${before.memMiB} MiB, load ${JSON.stringify(before.loadavg)} -> ${JSON.stringify(report.machine.after.loadavg)}; pinned: ${twoCores}; loadgen: ${o.loadgen}`,
  );
  console.log(`code: ${JSON.stringify(report.versions)}`);
  console.log(`results: ${file}`);
}

await main();
