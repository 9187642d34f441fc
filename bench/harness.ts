/**
 * What every bench scenario shares: starting a server pinned to its core,
 * stopping it by pid, running the load generator in its own process, the
 * machine and code the numbers belong to, and medians. `bench/run.ts` uses
 * it for the built-in scenarios; a named scenario (`npm run bench -- <name>`,
 * registered in run.ts's SCENARIOS) gets it as its {@link ScenarioContext}.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { availableParallelism, freemem, loadavg, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import type { Redis } from "ioredis";
import WebSocket from "ws";
import type { LoadResult, LoadSpec } from "./loadgen.ts";

export const ROOT = resolve(import.meta.dirname, "..");
export const BUN = join(ROOT, "node_modules/.bin/bun");
export const DENO = join(ROOT, "node_modules/.bin/deno");
export const NODE_TS = ["node", "--import", "tsx"];

/**
 * What ours gets in every bench: a production start minus the message rate
 * limit, the per-address connection cap (every load connection comes from
 * 127.0.0.x) and the per-connection info logs.
 */
export const OURS_ENV: Record<string, string> = {
  RATE_LIMIT: "0",
  MAX_CONNECTIONS_PER_IP: "0",
  LOG_LEVEL: "warn",
  HEARTBEAT_MS: "30000",
  HOST: "127.0.0.1",
};

function hasTaskset(): boolean {
  try {
    execFileSync("taskset", ["-c", "0", "true"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** Server on core 0, load on core 1, when there are two cores and taskset works. */
export const twoCores = availableParallelism() >= 2 && hasTaskset();

/**
 * Runs `command` pinned to `cpu` (when taskset works) with the file limit
 * raised to the hard limit: thousands of sockets need more than the usual 1024.
 */
export function spawnPinned(command: string[], cpu: number, env: Record<string, string>, cwd = ROOT): ChildProcess {
  const pin = twoCores ? ["taskset", "-c", String(cpu)] : [];
  const script = 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"';
  return spawn("sh", ["-c", script, "sh", ...pin, ...command], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

export function freePort(): Promise<number> {
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

/** A server to start: a command, its environment, where it runs. */
export interface ServerSpec {
  command: string[];
  /** Added to PORT and HISTORY_PATH (a fresh temporary file). */
  env?: Record<string, string>;
  /** @default the repo root */
  cwd?: string;
  /** @default 0 */
  cpu?: number;
}

export interface Started {
  child: ChildProcess;
  port: number;
  output: () => string;
}

/** Starts a server on a free port and waits (at most 30 s) until it accepts TCP. */
export async function startServer(s: ServerSpec): Promise<Started> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "chat-bench-"));
  const env: Record<string, string> = { PORT: String(port), HISTORY_PATH: join(dir, "chat.db"), ...s.env };
  const child = spawnPinned(s.command, s.cpu ?? 0, env, s.cwd);
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
export async function stopServer(s: Started): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  const exited = new Promise<void>((r) => s.child.once("exit", () => r()));
  s.child.kill("SIGTERM");
  const timer = setTimeout(() => s.child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

/**
 * The load generator's client: `raw` (Node, plain TCP, frames parsed in
 * place: the default, cheapest per frame), `bun` (Bun's WebSocket), `ws`
 * (Node's ws).
 */
export type LoadgenKind = "raw" | "bun" | "ws";

/** Runs the load generator in its own process on core 1, bounded in time. */
export function runLoadgen(spec: LoadSpec, kind: LoadgenKind = "raw"): Promise<LoadResult> {
  const command = kind === "bun" ? [BUN, "bench/loadgen.ts"] : [...NODE_TS, "bench/loadgen.ts"];
  const bound =
    (spec.connectTimeoutMs ?? 60_000) + (spec.durationMs ?? 5000) + (spec.drainMs ?? 5000) + (spec.holdMs ?? 2000);
  return runPinnedJson<LoadResult>([...command, JSON.stringify({ ...spec, client: kind })], bound + 30_000, "loadgen");
}

/**
 * Runs a load process (`command`) on core 1, SIGKILLed after `killAfterMs`,
 * and resolves with the JSON of its last stdout line; rejects with the end of
 * its stderr when there is none (`what` names it in the error).
 */
export function runPinnedJson<T>(command: string[], killAfterMs: number, what: string): Promise<T> {
  const child = spawnPinned(command, 1, {});
  let out = "";
  let err = "";
  child.stdout?.on("data", (c: Buffer) => {
    out += c.toString();
  });
  child.stderr?.on("data", (c: Buffer) => {
    err = (err + c.toString()).slice(-4000);
  });
  return new Promise((res, rej) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      const line = out.trim().split("\n").at(-1) ?? "";
      try {
        res(JSON.parse(line) as T);
      } catch {
        rej(new Error(`${what} exited ${code}: ${err.trim().slice(-500)}`));
      }
    });
  });
}

export const median = (xs: number[]): number => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export const fmt = (n: number, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : "-";

/** `a / b` as "1.23x", or "" when either is missing. */
export const ratio = (a: number, b: number | undefined) =>
  b && Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${fmt(a / b, 2)}x` : "";

/** What code and which runtimes the numbers belong to. */
export function versions(): Record<string, string> {
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

/** The machine, and how busy it is (other people's work shares it). */
export function machine(): Record<string, unknown> & { cpus: number; memMiB: number; loadavg: number[] } {
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

/** What a named scenario gets from `npm run bench -- <name> [options]`. */
export interface ScenarioContext {
  /** Rounds to run (`--runs`, default 3; 1 with `--quick`). */
  runs: number;
  /** `--quick`: a few seconds, to prove the scenario runs. */
  quick: boolean;
  /** The options after the scenario's name that run.ts did not take (`--runs`, `--quick`, `--out`). */
  args: string[];
  /** Progress lines go to stderr; the report's markdown goes to stdout. */
  log(line: string): void;
}

/** What a named scenario hands back: run.ts prints the markdown and writes both to bench/results/. */
export interface ScenarioReport {
  markdown: string;
  /** Raw results, saved as JSON. */
  data?: unknown;
}

/** A module registered in run.ts's SCENARIOS exports `run`. */
export interface ScenarioModule {
  run(ctx: ScenarioContext): Promise<ScenarioReport>;
}

/**
 * Starts ours on Node (`src/index.ts`, PORT 0, JSON logs, no rate limit, then
 * `env`), unpinned, for the standalone Redis scripts (bench/redis-*.ts), and
 * resolves with its port once it logs "listening" (within `timeoutMs`). The
 * child is pushed onto `children` at once, so the caller kills it whatever
 * happens. `nodeArgs` go before the script (e.g. --cpu-prof).
 */
export function startListening(
  env: Record<string, string>,
  children: ChildProcess[],
  { nodeArgs = [], timeoutMs = 20_000 }: { nodeArgs?: string[]; timeoutMs?: number } = {},
): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn("node", [...nodeArgs, "--import", "tsx", "src/index.ts"], {
    cwd: ROOT,
    env: { ...process.env, PORT: "0", HOST: "127.0.0.1", LOG_FORMAT: "json", RATE_LIMIT: "0", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start within ${timeoutMs / 1000} s`)), timeoutMs);
    let buf = "";
    let found = false;
    // Keeps reading after "listening" (a full pipe would stall the server), discarding.
    child.stdout?.on("data", (chunk: Buffer) => {
      if (found) return;
      buf += chunk.toString();
      for (const line of buf.split("\n")) {
        if (!line.includes('"listening"')) continue;
        clearTimeout(timer);
        found = true;
        resolve({ child, port: (JSON.parse(line) as { port: number }).port });
        return;
      }
    });
    child.once("exit", (code) => reject(new Error(`server exited (${code})`)));
  });
}

/** A WebSocket (ws) to `room` on ours at `port`, open within `timeoutMs`. */
export function openRoom(port: number, room: string, timeoutMs: number): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/websocket?room=${room}`);
    const timer = setTimeout(() => reject(new Error("connect timed out")), timeoutMs);
    ws.once("open", () => {
      clearTimeout(timer);
      resolve(ws);
    });
    ws.once("error", reject);
  });
}

/** Deletes the bench's keys under `prefix` (SCAN, never KEYS or FLUSH: the Redis may be shared). Bounded. */
export async function deleteRedisKeys(redis: Redis, prefix: string): Promise<void> {
  let cursor = "0";
  for (let i = 0; i < 100; i++) {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
    if (keys.length > 0) await redis.del(...keys);
    cursor = next;
    if (cursor === "0") break;
  }
}
