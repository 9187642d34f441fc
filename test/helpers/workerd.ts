/**
 * A {@link ServerTarget} for the Cloudflare Workers build (src/worker.ts):
 * `wrangler dev`, workerd on 127.0.0.1, one Durable Object per room, history
 * in the objects' SQLite storage persisted to a temp folder.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { resolve } from "node:path";
import { track } from "./cleanup.ts";
import { type RunningServer, type ServerTarget, tempHistoryPath } from "./server.ts";

const ROOT = resolve(import.meta.dirname, "../..");
/** wrangler bundles the Worker and boots two workerd processes; on a busy 2-core box that takes a while. */
const START_TIMEOUT_MS = 45_000;

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      srv.close(() => (typeof address === "object" && address ? res(address.port) : rej(new Error("no port"))));
    });
  });
}

/** Variables a developer's shell might set that would reach wrangler or the Worker. */
const SCRUBBED = /^(CLOUDFLARE_|WRANGLER_|NODE_OPTIONS$)/;

/**
 * `wrangler dev` (scripts/wrangler.sh: wrangler from npm on Deno, no network)
 * on a free port, for the Worker that `config` (relative to the repo) names.
 * Config reaches the Worker as `--var`s; `historyPath` names the persisted
 * state (two starts with the same path see the same objects). wrangler logs
 * no `{"msg":"listening"}` line, so readiness is its own "Ready on" line plus
 * a /healthz answer. Stopping signals the whole process group: wrangler runs
 * two workerd children that must not outlive a test.
 */
export function wranglerTarget(name: string, config = "wrangler.jsonc"): ServerTarget {
  return {
    name,
    async start(extra = {}, opts = {}) {
      const [port, inspector] = [await freePort(), await freePort()];
      const state = `${opts.historyPath ?? tempHistoryPath()}.workerd-state`;
      const chosen: Record<string, string> = { LOG_LEVEL: "info", ...extra };
      const vars = Object.entries(chosen).flatMap(([k, v]) => ["--var", `${k}:${v}`]);
      const env: Record<string, string> = {};
      for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !SCRUBBED.test(k)) env[k] = v;
      const args = ["scripts/wrangler.sh", "dev", "--config", config, "--ip", "127.0.0.1", "--port", String(port)];
      args.push("--inspector-port", String(inspector), "--persist-to", state);
      // An empty env file: a developer's .dev.vars or .env (AUTH_SECRET, ...) would override the --vars.
      args.push("--env-file", "/dev/null", "--show-interactive-dev-session=false", ...vars);
      const child = spawn("sh", args, {
        cwd: ROOT,
        env: { ...env, CI: "1" },
        stdio: ["ignore", "pipe", "pipe"],
        detached: true,
      });
      const running = await ready(child, port, chosen);
      track(() => running.kill());
      return running;
    },
  };
}

/** The chat's Worker (src/worker.ts, wrangler.jsonc). */
export const workerdTarget: ServerTarget = wranglerTarget("workerd");

function ready(child: ChildProcess, port: number, env: Record<string, string>): Promise<RunningServer> {
  let out = "";
  let exit: { code: number | null; signal: string | null } | null = null;
  const exited = new Promise<{ code: number | null; signal: string | null }>((res) => {
    child.once("exit", (code, signal) => {
      exit = { code, signal };
      res(exit);
    });
  });
  const append = (chunk: Buffer) => {
    out += chunk.toString();
    if (out.length > 1_000_000) out = out.slice(-500_000);
  };
  child.stdout?.on("data", append);
  child.stderr?.on("data", append);
  const group = (signal: NodeJS.Signals) => {
    try {
      if (child.pid) process.kill(-child.pid, signal);
    } catch {
      // the group is gone already
    }
  };
  const handle: RunningServer = {
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/websocket`,
    pid: child.pid ?? -1,
    env,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      const t0 = Date.now();
      if (!exit) {
        group(signal);
        const timer = setTimeout(() => group("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      group("SIGKILL"); // workerd children that outlived wrangler
      return { ...(exit ?? { code: null, signal: null }), ms: Date.now() - t0 };
    },
    async kill() {
      if (!exit) {
        group("SIGKILL");
        await exited;
      }
      group("SIGKILL");
    },
    output: () => out,
  };

  return new Promise((res, rej) => {
    const deadline = Date.now() + START_TIMEOUT_MS;
    const fail = (why: string) => {
      void handle.kill();
      rej(new Error(`workerd (wrangler dev) ${why}; output:\n${out.slice(-8000)}`));
    };
    void exited.then((e) => fail(`exited early (code ${e.code}, signal ${e.signal})`));
    const poll = async () => {
      while (!exit && Date.now() < deadline) {
        if (out.includes(`Ready on http://127.0.0.1:${port}`)) {
          try {
            const r = await fetch(`${handle.url}/healthz`, { signal: AbortSignal.timeout(2000) });
            if (r.status === 200) return res(handle);
          } catch {
            // not answering yet
          }
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      if (!exit) fail(`was not ready within ${START_TIMEOUT_MS} ms`);
    };
    void poll();
  });
}
