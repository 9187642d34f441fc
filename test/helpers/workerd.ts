/**
 * A {@link ServerTarget} for the Cloudflare Workers build (src/runtime/worker.ts):
 * `wrangler dev`, workerd on 127.0.0.1, one Durable Object per room, history
 * in the objects' SQLite storage persisted to a temp folder.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { resolve } from "node:path";
import WebSocket from "ws";
import { track } from "./cleanup.ts";
import { freePort, type RunningServer, ServerProcess, type ServerTarget, tempHistoryPath } from "./server.ts";

const ROOT = resolve(import.meta.dirname, "../..");
/** wrangler bundles the Worker and boots two workerd processes; on a busy 2-core box that takes a while. */
const START_TIMEOUT_MS = 45_000;

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

/** The chat's Worker (src/runtime/worker.ts, wrangler.jsonc). */
export const workerdTarget: ServerTarget = wranglerTarget("workerd");

function ready(child: ChildProcess, port: number, env: Record<string, string>): Promise<RunningServer> {
  const group = (signal: NodeJS.Signals) => {
    try {
      if (child.pid) process.kill(-child.pid, signal);
    } catch {
      // the group is gone already
    }
  };
  // Signals go to the whole group, and after the exit any workerd child
  // that outlived wrangler is killed too.
  const proc = new ServerProcess(child, group, () => group("SIGKILL"));
  child.stdout?.on("data", (chunk: Buffer) => proc.append(chunk));
  child.stderr?.on("data", (chunk: Buffer) => proc.append(chunk));
  const handle = proc.handle(port, env);

  return new Promise((res, rej) => {
    const deadline = Date.now() + START_TIMEOUT_MS;
    const fail = (why: string) => {
      void handle.kill();
      rej(new Error(`workerd (wrangler dev) ${why}; output:\n${proc.output().slice(-8000)}`));
    };
    void proc.exited.then((e) => fail(`exited early (code ${e.code}, signal ${e.signal})`));
    const poll = async () => {
      while (!proc.exit && Date.now() < deadline) {
        if (proc.output().includes(`Ready on http://127.0.0.1:${port}`)) {
          try {
            const r = await fetch(`${handle.url}/healthz`, { signal: AbortSignal.timeout(2000) });
            if (r.status === 200) return res(handle);
          } catch {
            // not answering yet
          }
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      if (!proc.exit) fail(`was not ready within ${START_TIMEOUT_MS} ms`);
    };
    void poll();
  });
}

/** How long a fixture call may go unanswered before it fails. */
const CALL_TIMEOUT_MS = 5000;

/**
 * One WebSocket to one fixture object (test/workers/fixture.ts): every call
 * `{id, gen, method, args}` is answered by id; a call the object throws on
 * rejects with its message, and the socket closing rejects what is waiting.
 */
export class FixtureLine<M extends string> {
  #next = 0;
  readonly #waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data) => {
      const reply = JSON.parse(data.toString()) as { id: number; ok: boolean; value?: unknown; error?: string };
      const w = this.#waiting.get(reply.id);
      this.#waiting.delete(reply.id);
      if (reply.ok) w?.resolve(reply.value);
      else w?.reject(new Error(reply.error));
    });
    ws.on("close", () => {
      for (const w of this.#waiting.values()) w.reject(new Error(`fixture socket closed (${ws.url})`));
      this.#waiting.clear();
    });
  }

  /** Opens `url` (the fixture Worker's `/<path>?name=...`); closed when the test ends. */
  static async open<M extends string>(url: string): Promise<FixtureLine<M>> {
    const ws = new WebSocket(url);
    track(() => ws.close());
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    return new FixtureLine<M>(ws);
  }

  /** Calls `method` on generation `gen` of the object's instance under test. */
  call(gen: number, method: M, args: unknown[] = []): Promise<unknown> {
    const id = ++this.#next;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${method} not answered in ${CALL_TIMEOUT_MS} ms`)),
        CALL_TIMEOUT_MS,
      );
      this.#waiting.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.ws.send(JSON.stringify({ id, gen, method, args }));
    });
  }
}
