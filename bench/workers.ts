/**
 * Cloudflare Workers on local workerd (`npm run bench -- workers`): ours
 * (the bundle `wrangler deploy` would upload) beside the floor, a minimal
 * Durable Object broadcast (bench/servers/do-plain/), under the same load.
 *
 * Each server runs in its own `workerd serve` process, pinned to core 0,
 * with a generated config that mirrors wrangler.jsonc (one SQLite-backed
 * object per room, storage on a temp disk): `wrangler dev` would put a second
 * workerd (its proxy) in front and wrangler itself beside, so neither the
 * CPU nor the memory read from /proc would be the Worker's alone. What
 * wrangler adds to a start is measured separately (the cold start table).
 *
 * Per round, for each server: the bundle's size (raw and gzip), the cold
 * start (process start to the first answered request; first WebSocket open
 * and welcome in a fresh room's object, then in a second fresh room), the
 * saturation load of bench/loadgen.ts (deliveries/s, workerd CPU per
 * delivery, loss), and the memory of N rooms while active, after their
 * objects were evicted (hibernated sockets), and after waking them again.
 *
 * Options: --before DIR (also run the bundle built from another checkout, for
 * before/after), --rooms N (memory rooms, 200), --clients N (saturation
 * clients, 200), --saturation-ms N (5000), --idle-ms N (wait for eviction,
 * 15000), --no-wrangler (skip the `wrangler dev` start measurement),
 * --parts cold,load,memory (which measurements run; all by default).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";
import WebSocket from "ws";
import {
  fmt,
  freePort,
  median,
  ROOT,
  runLoadgen,
  type ScenarioContext,
  type ScenarioReport,
  spawnPinned,
} from "./harness.ts";
import type { LoadResult, LoadSpec } from "./loadgen.ts";

const WORKERD = join(ROOT, "node_modules/workerd/bin/workerd");
const COMPAT_DATE = /"compatibility_date":\s*"([^"]+)"/.exec(readFileSync(join(ROOT, "wrangler.jsonc"), "utf8"))![1]!;

/** The Durable Object bindings of a checkout's wrangler.jsonc (`{ "name": ..., "class_name": ... }` entries). */
function wranglerObjects(dir: string): { binding: string; className: string }[] {
  const text = readFileSync(join(dir, "wrangler.jsonc"), "utf8");
  const found = [...text.matchAll(/\{\s*"name":\s*"(\w+)",\s*"class_name":\s*"(\w+)"\s*\}/g)];
  return found.map((m) => ({ binding: m[1]!, className: m[2]! }));
}

/** The `compatibility_flags` of a checkout's wrangler.jsonc, so workerd runs ours as wrangler would. */
function wranglerFlags(dir: string): string[] {
  const list = /"compatibility_flags":\s*\[([^\]]*)\]/.exec(readFileSync(join(dir, "wrangler.jsonc"), "utf8"))?.[1];
  return list ? [...list.matchAll(/"([^"]+)"/g)].map((m) => m[1]!) : [];
}

/** What ours gets: as the other runtimes' bench (no message or address limits), plus quiet logs. */
const OURS_VARS: Record<string, string> = {
  RATE_LIMIT: "0",
  RATE_LIMIT_IP: "0",
  MAX_CONNECTIONS_PER_IP: "0",
  LOG_LEVEL: "warn",
};

export interface Bundle {
  /** ES module, ready for workerd. */
  file: string;
  bytes: number;
  gzipBytes: number;
  /** Largest contributors (package or source file), bytes in the output. */
  top: [string, number][];
}

/** A Worker bench/workers.ts can run on workerd. */
export interface WorkerTarget {
  name: string;
  role: "ours" | "floor" | "docs" | "before";
  bundle: Bundle;
  /** Durable Object bindings and their classes (ours: wrangler.jsonc's). */
  objects: { binding: string; className: string }[];
  /** Compatibility flags (ours: wrangler.jsonc's). */
  flags: string[];
  vars: Record<string, string>;
  /** Path of the WebSocket endpoint (the room is added as `room=`). */
  wsPath: string;
  /** A log line the object prints each time it is constructed (a wake-up), with LOG_LEVEL=info. */
  wakeLine: string;
  /** Ours answers a welcome; the floor sends nothing until someone talks. */
  welcome: boolean;
}

interface Options {
  before?: string;
  rooms: number;
  clients: number;
  saturationMs: number;
  idleMs: number;
  wrangler: boolean;
  /** Which measurements run (`--parts cold,load,memory`). @default all three */
  parts: Set<string>;
}

function parseOptions(ctx: ScenarioContext): Options {
  const o: Options = {
    rooms: ctx.quick ? 4 : 200,
    clients: ctx.quick ? 10 : 200,
    saturationMs: ctx.quick ? 400 : 5000,
    idleMs: 15_000,
    wrangler: !ctx.quick,
    parts: new Set(["cold", "load", "memory"]),
  };
  const a = ctx.args;
  for (let i = 0; i < a.length; i++) {
    const v = () => {
      const value = a[++i];
      if (value === undefined) throw new Error(`${a[i - 1]} needs a value`);
      return value;
    };
    if (a[i] === "--before") o.before = resolve(v());
    else if (a[i] === "--rooms") o.rooms = Number(v());
    else if (a[i] === "--clients") o.clients = Number(v());
    else if (a[i] === "--saturation-ms") o.saturationMs = Number(v());
    else if (a[i] === "--idle-ms") o.idleMs = Number(v());
    else if (a[i] === "--no-wrangler") o.wrangler = false;
    else if (a[i] === "--parts") o.parts = new Set(v().split(","));
    else throw new Error(`unknown option ${a[i]}`);
  }
  return o;
}

/** Groups a metafile's inputs by package (or source file) and sorts by bytes in the output. */
function topInputs(metafile: string): [string, number][] {
  const meta = JSON.parse(readFileSync(metafile, "utf8")) as {
    outputs: Record<string, { inputs: Record<string, { bytesInOutput: number }> }>;
  };
  const out = Object.entries(meta.outputs).find(([k]) => k.endsWith(".js"))?.[1];
  const sums = new Map<string, number>();
  for (const [path, { bytesInOutput }] of Object.entries(out?.inputs ?? {})) {
    const i = path.lastIndexOf("node_modules/");
    let key = path.replace(/^(\.\.\/)+/, "");
    if (i >= 0) {
      const parts = path.slice(i + 13).split("/");
      key = parts.slice(0, parts[0]!.startsWith("@") ? 2 : 1).join("/");
    }
    sums.set(key, (sums.get(key) ?? 0) + bytesInOutput);
  }
  return [...sums].sort((x, y) => y[1] - x[1]).slice(0, 8);
}

/** What `wrangler deploy` would upload from the checkout `dir` (its own wrangler.jsonc and scripts/wrangler.sh). */
export function wranglerBundle(dir: string, work: string): Bundle {
  const outdir = join(work, "out");
  const metafile = join(work, "meta.json");
  execFileSync("sh", ["scripts/wrangler.sh", "deploy", "--dry-run", "--outdir", outdir, "--metafile", metafile], {
    cwd: dir,
    env: { ...process.env, CI: "1" },
    stdio: ["ignore", "ignore", "pipe"],
    timeout: 120_000,
  });
  const file = join(outdir, "worker.js");
  const code = readFileSync(file);
  return { file, bytes: code.length, gzipBytes: gzipSync(code, { level: 9 }).length, top: topInputs(metafile) };
}

/** The floor, bundled the way wrangler bundles ours (esbuild, minified, ES module). */
async function floorBundle(work: string): Promise<Bundle> {
  const file = join(work, "do-plain.js");
  const result = await build({
    entryPoints: [join(ROOT, "bench/servers/do-plain/worker.ts")],
    bundle: true,
    format: "esm",
    minify: true,
    outfile: file,
    metafile: true,
    logLevel: "warning",
  });
  writeFileSync(join(work, "do-plain.meta.json"), JSON.stringify(result.metafile));
  const code = readFileSync(file);
  return {
    file,
    bytes: code.length,
    gzipBytes: gzipSync(code, { level: 9 }).length,
    top: topInputs(join(work, "do-plain.meta.json")),
  };
}

/** Ours as `wrangler deploy` would ship it from this checkout (bundle and compatibility flags), built in `work`. */
export function oursTarget(work: string, vars: Record<string, string> = OURS_VARS): WorkerTarget {
  return {
    name: "ours",
    role: "ours",
    bundle: wranglerBundle(ROOT, work),
    objects: wranglerObjects(ROOT),
    flags: wranglerFlags(ROOT),
    vars,
    wsPath: "/websocket",
    wakeLine: "room rebuilt after hibernation",
    welcome: true,
  };
}

/** A workerd config equivalent to wrangler.jsonc's, for one Worker and its object class. */
function capnpConfig(t: WorkerTarget, port: number, disk: string, vars: Record<string, string>): string {
  const text = (s: string) => JSON.stringify(s);
  const bindings = [
    ...t.objects.map((o) => `(name = ${text(o.binding)}, durableObjectNamespace = ${text(o.className)})`),
    `(name = "ASSETS", service = "assets")`,
    ...Object.entries(vars).map(([k, v]) => `(name = ${text(k)}, text = ${text(v)})`),
  ];
  const namespaces = [...new Set(t.objects.map((o) => o.className))]
    .map((c) => `(className = ${text(c)}, uniqueKey = "bench-${c}", enableSql = true)`)
    .join(", ");
  return `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = .main),
    (name = "assets", worker = .assets),
    (name = "disk", disk = (path = ${text(disk)}, writable = true)),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:${port}", http = (), service = "main") ],
);
const main :Workerd.Worker = (
  modules = [ (name = "worker.js", esModule = embed "worker.js") ],
  compatibilityDate = ${text(COMPAT_DATE)},
  compatibilityFlags = [ ${t.flags.map(text).join(", ")} ],
  bindings = [ ${bindings.join(", ")} ],
  durableObjectNamespaces = [ ${namespaces} ],
  durableObjectStorage = (localDisk = "disk"),
);
const assets :Workerd.Worker = (
  modules = [ (name = "assets.js", esModule = "export default { fetch() { return new Response('not found', { status: 404 }); } };") ],
  compatibilityDate = ${text(COMPAT_DATE)},
);
`;
}

export interface RunningWorkerd {
  child: ChildProcess;
  port: number;
  /** The V8 inspector's port, when started with `inspect`. */
  inspector: number | null;
  /** Process start to the first 200 from /healthz. */
  readyMs: number;
  /** Times `wakeLine` has been printed so far. */
  wakes(): number;
  output(): string;
  stop(): Promise<void>;
}

/**
 * Runs `t` alone in `workerd serve` (pinned to core 0 when taskset works) on
 * a free port with its own temp storage, and waits for /healthz.
 */
export async function startWorkerd(
  t: WorkerTarget,
  extraVars: Record<string, string> = {},
  inspect = false,
): Promise<RunningWorkerd> {
  const port = await freePort();
  const inspector = inspect ? await freePort() : null;
  const dir = mkdtempSync(join(tmpdir(), "chat-bench-workerd-"));
  mkdirSync(join(dir, "disk"));
  copyFileSync(t.bundle.file, join(dir, "worker.js"));
  writeFileSync(join(dir, "config.capnp"), capnpConfig(t, port, join(dir, "disk"), { ...t.vars, ...extraVars }));
  const started = performance.now();
  const args = [WORKERD, "serve", join(dir, "config.capnp")];
  if (inspector !== null) args.push(`--inspector-addr=127.0.0.1:${inspector}`);
  const child = spawnPinned(args, 0, {});
  let out = "";
  let wakes = 0;
  let tail = "";
  const keep = (c: Buffer) => {
    const s = c.toString();
    out = (out + s).slice(-20_000);
    // Count across chunk boundaries: the tail keeps a line cut in two.
    const joined = tail + s;
    wakes += joined.split(t.wakeLine).length - 1;
    const last = joined.lastIndexOf("\n");
    tail = last >= 0 ? joined.slice(last + 1) : joined;
    if (tail.includes(t.wakeLine)) tail = "";
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = started + 30_000;
  while (performance.now() < deadline && child.exitCode === null) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) });
      if (r.status === 200) {
        const readyMs = performance.now() - started;
        return { child, port, inspector, readyMs, wakes: () => wakes, output: () => out, stop };
      }
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  await stop();
  throw new Error(`workerd (${t.name}) did not answer within 30 s: ${out.slice(-2000)}`);
}

/** Opens a WebSocket and resolves with the time to open and (when `welcome`) to the first frame, in ms. */
function firstContact(url: string, welcome: boolean): Promise<{ openMs: number; welcomeMs: number | null }> {
  return new Promise((res, rej) => {
    const t0 = performance.now();
    // Ours welcomes in v1; the floor speaks no subprotocol.
    const ws = welcome ? new WebSocket(url, "chat.v1") : new WebSocket(url);
    let openMs = 0;
    const timer = setTimeout(() => {
      ws.terminate();
      rej(new Error(`no ${welcome ? "welcome" : "open"} from ${url} within 10 s`));
    }, 10_000);
    const done = (welcomeMs: number | null) => {
      clearTimeout(timer);
      ws.close();
      res({ openMs, welcomeMs });
    };
    ws.once("open", () => {
      openMs = performance.now() - t0;
      if (!welcome) done(null);
    });
    ws.once("message", () => done(performance.now() - t0));
    ws.once("error", (e) => {
      clearTimeout(timer);
      rej(e);
    });
  });
}

interface ColdStart {
  readyMs: number;
  firstOpenMs: number;
  firstWelcomeMs: number | null;
  secondOpenMs: number;
  secondWelcomeMs: number | null;
}

async function coldStart(t: WorkerTarget): Promise<ColdStart> {
  const w = await startWorkerd(t);
  try {
    const base = `ws://127.0.0.1:${w.port}${t.wsPath}`;
    const first = await firstContact(`${base}?room=cold-1&user=ann`, t.welcome);
    const second = await firstContact(`${base}?room=cold-2&user=ann`, t.welcome);
    return {
      readyMs: w.readyMs,
      firstOpenMs: first.openMs,
      firstWelcomeMs: first.welcomeMs,
      secondOpenMs: second.openMs,
      secondWelcomeMs: second.welcomeMs,
    };
  } finally {
    await w.stop();
  }
}

/** `wrangler dev` (scripts/wrangler.sh) on the repo: start to "Ready on", to /healthz, to a fresh room's welcome. */
async function wranglerStart(): Promise<{ readyLineMs: number; healthzMs: number; welcomeMs: number }> {
  const [port, inspector] = [await freePort(), await freePort()];
  const state = mkdtempSync(join(tmpdir(), "chat-bench-wrangler-"));
  const args = ["scripts/wrangler.sh", "dev", "--ip", "127.0.0.1", "--port", String(port)];
  args.push("--inspector-port", String(inspector), "--persist-to", state, "--env-file", "/dev/null");
  args.push("--show-interactive-dev-session=false");
  const t0 = performance.now();
  // Its own process group: wrangler runs two workerd children, stopped with it.
  const child = spawn("sh", args, { cwd: ROOT, env: { ...process.env, CI: "1" }, stdio: "pipe", detached: true });
  let out = "";
  let readyLineMs = Number.NaN;
  const keep = (c: Buffer) => {
    out = (out + c.toString()).slice(-8000);
    if (Number.isNaN(readyLineMs) && out.includes(`Ready on http://127.0.0.1:${port}`)) {
      readyLineMs = performance.now() - t0;
    }
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  try {
    const deadline = t0 + 60_000;
    let healthzMs = Number.NaN;
    while (performance.now() < deadline && child.exitCode === null && Number.isNaN(healthzMs)) {
      try {
        const r = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) });
        if (r.status === 200) healthzMs = performance.now() - t0;
      } catch {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    if (Number.isNaN(healthzMs)) throw new Error(`wrangler dev did not answer within 60 s: ${out.slice(-2000)}`);
    await firstContact(`ws://127.0.0.1:${port}/websocket?room=cold&user=ann`, true);
    return { readyLineMs, healthzMs, welcomeMs: performance.now() - t0 };
  } finally {
    if (child.pid && child.exitCode === null) {
      process.kill(-child.pid, "SIGTERM");
      const timer = setTimeout(() => child.pid && process.kill(-child.pid, "SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(state, { recursive: true, force: true });
  }
}

async function saturation(t: WorkerTarget, o: Options): Promise<LoadResult> {
  const w = await startWorkerd(t);
  try {
    const spec: LoadSpec = {
      url: `ws://127.0.0.1:${w.port}${t.wsPath}?room=bench`,
      scenario: "saturation",
      clients: o.clients,
      senders: Math.max(1, Math.round(o.clients / 20)),
      window: 16,
      durationMs: o.saturationMs,
      // Long enough for a backlog to drain on a busy machine: what arrives late is slow, not lost.
      drainMs: 15_000,
      serverPid: w.child.pid,
    };
    return await runLoadgen(spec, "raw");
  } finally {
    await w.stop();
  }
}

function rssKiB(pid: number | undefined): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : Number.NaN;
}

/**
 * The Worker's V8 heap in KiB after a full garbage collection, through
 * workerd's inspector: a heap snapshot collects garbage first (workerd's
 * inspector has no `collectGarbage`), then `Runtime.getHeapUsage` reads the
 * live size. Every Durable Object of the Worker lives in that one isolate.
 */
function liveHeapKiB(inspector: number | null): Promise<number | null> {
  if (inspector === null) return Promise.resolve(null);
  return new Promise((res) => {
    const ws = new WebSocket(`ws://127.0.0.1:${inspector}/main`, { maxPayload: 1 << 30 });
    const timer = setTimeout(() => {
      ws.terminate();
      res(null);
    }, 60_000);
    let id = 0;
    const send = (method: string, params: object = {}) => ws.send(JSON.stringify({ id: ++id, method, params }));
    ws.on("message", (data) => {
      const m = JSON.parse(String(data)) as { id?: number; result?: { usedSize?: number } };
      if (m.id === 1) send("Runtime.getHeapUsage");
      else if (m.id === 2) {
        clearTimeout(timer);
        ws.close();
        res(m.result?.usedSize === undefined ? null : m.result.usedSize / 1024);
      }
    });
    ws.once("open", () => send("HeapProfiler.takeHeapSnapshot", { reportProgress: false }));
    ws.once("error", () => {
      clearTimeout(timer);
      res(null);
    });
  });
}

interface Memory {
  rooms: number;
  baseKiB: number;
  activeKiB: number;
  /** Null when the idle wait was skipped (--quick). */
  hibernatedKiB: number | null;
  wokenKiB: number | null;
  /** Objects constructed again by the wake-up messages: rooms that had really been evicted. */
  rebuilt: number | null;
  /** The isolate's live V8 heap (after a full GC) at the same four points. */
  heap: { base: number | null; active: number | null; hibernated: number | null; woken: number | null };
}

/**
 * N rooms of two sockets each: one message per room, RSS; then no traffic
 * until workerd evicts the objects (their sockets stay open, hibernated),
 * RSS; then one message per room wakes them all, RSS. With `inspect`, the V8
 * heap after a full GC is read at the same points too.
 */
async function memory(t: WorkerTarget, o: Options, quick: boolean, inspect: boolean): Promise<Memory> {
  const w = await startWorkerd(t, { LOG_LEVEL: "info" }, inspect);
  const sockets: WebSocket[] = [];
  try {
    const baseKiB = rssKiB(w.child.pid);
    const heap: Memory["heap"] = { base: await liveHeapKiB(w.inspector), active: null, hibernated: null, woken: null };
    const rooms: { a: WebSocket; b: WebSocket; got: string[] }[] = [];
    const open = (room: number, user: string) =>
      new Promise<WebSocket>((res, rej) => {
        const ws = new WebSocket(`ws://127.0.0.1:${w.port}${t.wsPath}?room=mem-${room}&user=${user}`);
        sockets.push(ws);
        ws.once("open", () => res(ws));
        ws.once("error", rej);
      });
    for (let i = 0; i < o.rooms; i += 20) {
      const batch = [];
      for (let r = i; r < Math.min(o.rooms, i + 20); r++) {
        batch.push(
          Promise.all([open(r, "a"), open(r, "b")]).then(([a, b]) => {
            const room = { a, b, got: [] as string[] };
            b.on("message", (d) => room.got.push(String(d)));
            rooms.push(room);
          }),
        );
      }
      await Promise.all(batch);
    }
    const round = async (text: string) => {
      for (const r of rooms) r.a.send(JSON.stringify({ user: "a", message: text }));
      const deadline = performance.now() + 30_000;
      while (rooms.some((r) => !r.got.some((g) => g.includes(text))) && performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      const missing = rooms.filter((r) => !r.got.some((g) => g.includes(text))).length;
      if (missing > 0) throw new Error(`${missing} rooms did not deliver "${text}"`);
    };
    await round("first");
    await new Promise((r) => setTimeout(r, 500));
    const activeKiB = rssKiB(w.child.pid);
    heap.active = await liveHeapKiB(w.inspector);
    if (quick) return { rooms: o.rooms, baseKiB, activeKiB, hibernatedKiB: null, wokenKiB: null, rebuilt: null, heap };
    const wakesBefore = w.wakes();
    // The snapshot above was the rooms' last event: the idle time counts from here.
    await new Promise((r) => setTimeout(r, o.idleMs));
    const hibernatedKiB = rssKiB(w.child.pid);
    heap.hibernated = await liveHeapKiB(w.inspector);
    await round("again");
    await new Promise((r) => setTimeout(r, 500));
    const wokenKiB = rssKiB(w.child.pid);
    heap.woken = await liveHeapKiB(w.inspector);
    return { rooms: o.rooms, baseKiB, activeKiB, hibernatedKiB, wokenKiB, rebuilt: w.wakes() - wakesBefore, heap };
  } finally {
    for (const s of sockets) s.terminate();
    await w.stop();
  }
}

const kib = (n: number) => `${fmt(n / 1024, 1)} KiB`;

export async function run(ctx: ScenarioContext): Promise<ScenarioReport> {
  const o = parseOptions(ctx);
  const work = mkdtempSync(join(tmpdir(), "chat-bench-workers-"));
  try {
    ctx.log("bundling (wrangler deploy --dry-run)");
    mkdirSync(join(work, "ours"));
    const floor = await floorBundle(work);
    const targets: WorkerTarget[] = [
      {
        name: "DO plain, socket set (floor)",
        role: "floor",
        bundle: floor,
        objects: [{ binding: "ROOMS", className: "PlainRoom" }],
        flags: [],
        vars: {},
        wsPath: "/websocket",
        wakeLine: "room started",
        welcome: false,
      },
      {
        name: "DO plain, getWebSockets() per message",
        role: "docs",
        bundle: floor,
        objects: [{ binding: "ROOMS", className: "PlainRoom" }],
        flags: [],
        vars: { FANOUT: "docs" },
        wsPath: "/websocket",
        wakeLine: "room started",
        welcome: false,
      },
      oursTarget(join(work, "ours")),
    ];
    // --quick proves the scenario runs: the floor and ours are enough.
    const docsVariant = targets.findIndex((t) => t.role === "docs");
    if (ctx.quick) targets.splice(docsVariant, 1);
    if (o.before) {
      mkdirSync(join(work, "before"));
      targets.push({
        ...targets.find((t) => t.role === "ours")!,
        name: "ours before",
        role: "before",
        flags: wranglerFlags(o.before),
        objects: wranglerObjects(o.before),
        bundle: wranglerBundle(o.before, join(work, "before")),
      });
    }

    const cold = new Map<string, ColdStart[]>();
    const load = new Map<string, LoadResult[]>();
    const wrangler: Awaited<ReturnType<typeof wranglerStart>>[] = [];
    for (let round = 1; round <= ctx.runs; round++) {
      for (const t of targets) {
        if (o.parts.has("cold")) {
          ctx.log(`round ${round}/${ctx.runs}: ${t.name}: cold start`);
          cold.set(t.name, [...(cold.get(t.name) ?? []), await coldStart(t)]);
        }
        if (o.parts.has("load")) {
          ctx.log(`round ${round}/${ctx.runs}: ${t.name}: saturation, ${o.clients} clients`);
          const r = await saturation(t, o);
          if (r.errors.length > 0) ctx.log(`  ${t.name}: ${r.errors.join("; ")}`);
          load.set(t.name, [...(load.get(t.name) ?? []), r]);
        }
      }
      if (o.wrangler && o.parts.has("cold")) {
        ctx.log(`round ${round}/${ctx.runs}: wrangler dev start`);
        wrangler.push(await wranglerStart());
      }
    }
    const mem = new Map<string, Memory>();
    for (const t of targets.filter((x) => o.parts.has("memory") && (x.role === "ours" || x.role === "floor"))) {
      ctx.log(`memory: ${t.name}, ${o.rooms} rooms${ctx.quick ? "" : `, ${o.idleMs} ms idle`}`);
      // Twice: RSS without the inspector, the heap with it (a heap snapshot's
      // own allocations stay in the process and would inflate later RSS readings).
      // (--quick: one run with the inspector, to prove both readings work.)
      const rss = await memory(t, o, ctx.quick, ctx.quick);
      const { heap } = ctx.quick ? rss : await memory(t, o, ctx.quick, true);
      mem.set(t.name, { ...rss, heap });
    }
    return {
      markdown: report(targets, cold, load, wrangler, mem, o, ctx),
      data: { options: o, cold: [...cold], load: [...load], wrangler, memory: [...mem] },
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function report(
  targets: WorkerTarget[],
  cold: Map<string, ColdStart[]>,
  load: Map<string, LoadResult[]>,
  wrangler: Awaited<ReturnType<typeof wranglerStart>>[],
  mem: Map<string, Memory>,
  o: Options,
  ctx: ScenarioContext,
): string {
  const out: string[] = [];
  const med = (xs: (number | null)[]) => median(xs.filter((x): x is number => x !== null && Number.isFinite(x)));
  out.push(`### Bundle (what \`wrangler deploy\` uploads)`, "");
  out.push("| worker | raw | gzip | largest parts |", "| --- | ---: | ---: | --- |");
  for (const t of targets) {
    const parts = t.bundle.top.map(([k, v]) => `${k} ${fmt(v / 1024, 1)}K`).join(", ");
    out.push(`| ${t.name} | ${kib(t.bundle.bytes)} | ${kib(t.bundle.gzipBytes)} | ${parts} |`);
  }
  out.push("", `### Cold start on workerd (medians of ${ctx.runs}, ms)`, "");
  out.push(
    "| worker | start → /healthz | fresh room: open | fresh room: welcome | 2nd room: open | 2nd room: welcome |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const t of targets) {
    const c = cold.get(t.name) ?? [];
    const cell = (f: (x: ColdStart) => number | null) => fmt(med(c.map(f)), 1);
    out.push(
      `| ${t.name} | ${cell((x) => x.readyMs)} | ${cell((x) => x.firstOpenMs)} | ${t.welcome ? cell((x) => x.firstWelcomeMs) : "-"} | ${cell((x) => x.secondOpenMs)} | ${t.welcome ? cell((x) => x.secondWelcomeMs) : "-"} |`,
    );
  }
  if (wrangler.length > 0) {
    out.push(
      "",
      `\`wrangler dev\` (bundling, its proxy workerd and ours), ms from start: "Ready on" line ${fmt(med(wrangler.map((w) => w.readyLineMs)))}, first /healthz ${fmt(med(wrangler.map((w) => w.healthzMs)))}, first welcome in a fresh room ${fmt(med(wrangler.map((w) => w.welcomeMs)))} (medians of ${wrangler.length}).`,
    );
  }
  const floor = targets.find((t) => t.role === "floor")!;
  const floorRuns = load.get(floor.name) ?? [];
  out.push(
    "",
    `### Saturation on workerd: ${o.clients} clients in one room, ${Math.max(1, Math.round(o.clients / 20))} senders, window 16 (medians of ${ctx.runs})`,
    "",
  );
  out.push(
    "| worker | deliveries/s | vs floor (median of per-round ratios) | workerd CPU µs/delivery | vs floor | workerd CPU % | loadgen CPU % | lost / dup / reordered | p50 / p99 ms |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
  );
  for (const t of targets) {
    const rs = load.get(t.name) ?? [];
    const perRound = (f: (r: LoadResult) => number | null, inverse = false) =>
      med(
        rs.map((r, i) => {
          const a = f(r);
          const b = floorRuns[i] ? f(floorRuns[i]!) : null;
          if (a === null || b === null || !a || !b) return null;
          return inverse ? b / a : a / b;
        }),
      );
    const sum = (f: (r: LoadResult) => number) => rs.reduce((s, r) => s + f(r), 0);
    out.push(
      `| ${t.name} | ${fmt(med(rs.map((r) => r.deliveriesPerSec)))} | ${
        t === floor
          ? "1.00x"
          : `${fmt(
              perRound((r) => r.deliveriesPerSec),
              2,
            )}x`
      } | ${fmt(med(rs.map((r) => r.serverCpuMicrosPerDelivery)), 2)} | ${
        t === floor
          ? "1.00x"
          : `${fmt(
              perRound((r) => r.serverCpuMicrosPerDelivery, true),
              2,
            )}x`
      } | ${fmt(med(rs.map((r) => r.serverCpuPercent)))} | ${fmt(med(rs.map((r) => r.loadgenCpuPercent)))} | ${sum((r) => r.lost)} / ${sum((r) => r.duplicates)} / ${sum((r) => r.reordered)} | ${fmt(med(rs.map((r) => r.latency.p50)), 1)} / ${fmt(med(rs.map((r) => r.latency.p99)), 1)} |`,
    );
  }
  out.push(
    "",
    '"vs floor" by CPU is the floor\'s CPU per delivery over ours (above 1 = ours cheaper).',
    "",
    `### Memory of idle rooms on workerd (${o.rooms} rooms x 2 sockets; the workerd process's RSS, and its V8 heap after a full GC through the inspector)`,
    "",
  );
  out.push(
    "| worker | measure | at start | rooms active | per active room | objects evicted (sockets hibernated) | per hibernated room | woken again | rooms rebuilt on wake |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const [name, m] of mem) {
    const mib = (x: number | null) => (x === null ? "-" : `${fmt(x / 1024, 1)} MiB`);
    const rows: [string, number | null, number | null, number | null, number | null][] = [
      ["process RSS", m.baseKiB, m.activeKiB, m.hibernatedKiB, m.wokenKiB],
      ["V8 heap after GC", m.heap.base, m.heap.active, m.heap.hibernated, m.heap.woken],
    ];
    for (const [what, base, active, hibernated, woken] of rows) {
      const per = (x: number | null) => (x === null || base === null ? "-" : `${fmt((x - base) / m.rooms, 1)} KiB`);
      out.push(
        `| ${name} | ${what} | ${mib(base)} | ${mib(active)} | ${per(active)} | ${mib(hibernated)} | ${per(hibernated)} | ${mib(woken)} | ${m.rebuilt ?? "-"} |`,
      );
    }
  }
  return out.join("\n");
}
