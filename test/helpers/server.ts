/**
 * Runtime-agnostic handles on a real chat server process, for the black-box
 * suite: each runtime (Node, Bun, Deno, workerd) provides a {@link ServerTarget}
 * and test/integration/server.suite.ts runs the same cases against it.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { track, trackForFile } from "./cleanup.ts";

/** How long a server may take to log "listening". */
export const START_TIMEOUT_MS = 20_000;

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      srv.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

/** A way to start the chat server on one runtime. */
export interface ServerTarget {
  name: string;
  /**
   * Starts a server on a free port. `env` is added to the defaults
   * (PORT=0, HOST=127.0.0.1, LOG_FORMAT=json); `historyPath` reuses a SQLite
   * file (restart tests), otherwise each start gets a fresh temp file.
   */
  start(env?: Record<string, string>, opts?: { historyPath?: string }): Promise<RunningServer>;
}

/** A started server process. */
export interface RunningServer {
  /** http://127.0.0.1:PORT */
  url: string;
  /** ws://127.0.0.1:PORT/websocket */
  wsUrl: string;
  pid: number;
  /** The environment the server was started with (what the test chose plus defaults). */
  env: Record<string, string>;
  /** Sends `signal` (SIGTERM by default) and resolves when the process has exited. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: string | null; ms: number }>;
  /** SIGKILL, then wait for the exit. */
  kill(): Promise<void>;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
}

/** Config variables a developer's shell might set that would change what a test sees. */
const SCRUBBED = [
  "PORT",
  "HOST",
  "HUB",
  "HISTORY",
  "HISTORY_PATH",
  "AUTH_SECRET",
  "ALLOWED_ORIGINS",
  "TLS_CERT",
  "TLS_KEY",
  "RATE_LIMIT",
  "RATE_LIMIT_IP",
  "MAX_CONNECTIONS_PER_IP",
  "TRUST_PROXY",
  "ALLOWED_HOSTS",
  "PRESENCE_INTERVAL_MS",
  "HEARTBEAT_MS",
  "WS_COMPRESSION",
  "LOG_LEVEL",
  "NODE_OPTIONS",
];

/** A fresh SQLite path in a temp folder that is removed when the test file ends. */
export function tempHistoryPath(): string {
  const dir = mkdtempSync(join(tmpdir(), "chat-test-"));
  trackForFile(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, "chat.db");
}

const MAX_OUTPUT = 4 * 1024 * 1024;

/**
 * A target that spawns `command` (from `cwd`, default the repo root) and waits
 * for its JSON log line `{"msg":"listening","port":N}`, which every runtime
 * entry writes. Rejects with the captured output if the process exits first
 * or does not listen within {@link START_TIMEOUT_MS}. The line is logged at
 * info, so a test must not raise LOG_LEVEL above it.
 */
export function spawnTarget(
  name: string,
  command: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): ServerTarget {
  const cwd = options.cwd ?? resolve(import.meta.dirname, "../..");
  return {
    name,
    async start(extra = {}, opts = {}) {
      const env: Record<string, string> = {};
      for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !SCRUBBED.includes(k)) env[k] = v;
      const chosen: Record<string, string> = {
        PORT: "0",
        HOST: "127.0.0.1",
        LOG_FORMAT: "json",
        LOG_LEVEL: "info",
        HISTORY_PATH: opts.historyPath ?? tempHistoryPath(),
        ...options.env,
        ...extra,
      };
      Object.assign(env, chosen);
      const [bin, ...args] = command;
      if (!bin) throw new Error(`target ${name} has an empty command`);
      const child = spawn(bin, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
      const running = await waitListening(name, child, chosen);
      track(() => running.kill());
      return running;
    },
  };
}

/**
 * A spawned server process: its output (bounded), its exit, and the
 * {@link RunningServer} handle once its port is known. `signal` is how a
 * signal reaches it (the process, or its whole group), `reap` what to do
 * after it exited (end children that outlived it).
 */
export class ServerProcess {
  #out = "";
  exit: { code: number | null; signal: string | null } | null = null;
  readonly exited: Promise<{ code: number | null; signal: string | null }>;

  constructor(
    readonly child: ChildProcess,
    readonly signal: (signal: NodeJS.Signals) => void = (sig) => child.kill(sig),
    readonly reap: () => void = () => {},
  ) {
    this.exited = new Promise((res) => {
      child.once("exit", (code, sig) => {
        this.exit = { code, signal: sig };
        res(this.exit);
      });
    });
  }

  append(chunk: Buffer): void {
    this.#out += chunk.toString();
    if (this.#out.length > MAX_OUTPUT) this.#out = this.#out.slice(-MAX_OUTPUT / 2);
  }

  output(): string {
    return this.#out;
  }

  handle(port: number, env: Record<string, string>): RunningServer {
    return {
      url: `http://127.0.0.1:${port}`,
      wsUrl: `ws://127.0.0.1:${port}/websocket`,
      pid: this.child.pid ?? -1,
      env,
      stop: async (signal: NodeJS.Signals = "SIGTERM") => {
        const t0 = Date.now();
        if (!this.exit) {
          this.signal(signal);
          // Bounded: a server that ignores the signal is killed after 10 s.
          const timer = setTimeout(() => this.signal("SIGKILL"), 10_000);
          await this.exited;
          clearTimeout(timer);
        }
        this.reap();
        return { ...(this.exit ?? { code: null, signal: null }), ms: Date.now() - t0 };
      },
      kill: async () => {
        if (!this.exit) {
          this.signal("SIGKILL");
          await this.exited;
        }
        this.reap();
      },
      output: () => this.#out,
    };
  }
}

function waitListening(name: string, child: ChildProcess, env: Record<string, string>): Promise<RunningServer> {
  const proc = new ServerProcess(child);
  let lineBuf = "";
  child.stderr?.on("data", (chunk: Buffer) => proc.append(chunk));

  return new Promise((resolvePromise, reject) => {
    let settled = false;
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (!proc.exit) child.kill("SIGKILL");
      reject(new Error(`${name} server ${why}; output:\n${proc.output().slice(-8000)}`));
    };
    const timer = setTimeout(() => fail(`did not log "listening" within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
    child.stdout?.on("data", (chunk: Buffer) => {
      proc.append(chunk);
      if (settled) return;
      lineBuf += chunk.toString();
      let nl = lineBuf.indexOf("\n");
      while (nl >= 0) {
        const line = lineBuf.slice(0, nl).trim();
        lineBuf = lineBuf.slice(nl + 1);
        nl = lineBuf.indexOf("\n");
        if (!line.startsWith("{")) continue;
        try {
          const rec = JSON.parse(line) as { msg?: unknown; port?: unknown };
          if (rec.msg === "listening" && typeof rec.port === "number") {
            settled = true;
            clearTimeout(timer);
            resolvePromise(proc.handle(rec.port, env));
            return;
          }
        } catch {
          // a partial or non-JSON line: keep reading
        }
      }
    });
    child.once("error", (e) => fail(`could not start (${e.message})`));
    void proc.exited.then((e) => fail(`exited early (code ${e.code}, signal ${e.signal})`));
  });
}

/** The Node entry, as `npm start` runs it but without npm in between (so signals reach it). */
export const nodeTarget: ServerTarget = spawnTarget("node", ["node", "--import", "tsx", "src/index.ts"]);

/** The Bun entry, `bun run src/index.ts`, from the repo's own devDependency (`npm install` brings it). */
export const bunTarget: ServerTarget = spawnTarget("bun", ["node_modules/.bin/bun", "run", "src/index.ts"]);

/** The Deno entry, `deno run -A src/index.ts`, from the repo's own devDependency. */
export const denoTarget: ServerTarget = spawnTarget("deno", ["node_modules/.bin/deno", "run", "-A", "src/index.ts"]);
