/**
 * A local Redis Cluster for the cluster suites: 3 masters and 3 replicas
 * started from the `redis-server` binary on free ports (each port + 10000 is
 * its cluster bus), joined with `redis-cli --cluster create`, and stopped
 * (SIGKILL, data dir removed) when the suite ends. Nothing persists: a node
 * that restarts comes back empty, as a failover test wants.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";

/** True when both binaries a local cluster needs are on the PATH. */
export const haveClusterTools = spawnSync("sh", ["-c", "command -v redis-server && command -v redis-cli"]).status === 0;

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** A port whose cluster bus port (+10000) is free too. */
async function freeNodePort(taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 10000);
    if (taken.has(port) || taken.has(port + 10000)) continue;
    if ((await portFree(port)) && (await portFree(port + 10000))) return port;
  }
  throw new Error("no free port pair for a cluster node");
}

async function ping(port: number): Promise<boolean> {
  const client = new Redis({
    port,
    host: "127.0.0.1",
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
  });
  client.on("error", () => {});
  try {
    await client.connect();
    return (await client.ping()) === "PONG";
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

async function info(port: number, command: string[]): Promise<string> {
  const client = new Redis({ port, host: "127.0.0.1", retryStrategy: () => null, maxRetriesPerRequest: 0 });
  client.on("error", () => {});
  try {
    return String(await client.call(command[0]!, ...command.slice(1)));
  } finally {
    client.disconnect();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A running local cluster. */
export class LocalCluster {
  readonly #children = new Map<number, ChildProcess>();

  private constructor(
    readonly ports: number[],
    readonly dir: string,
  ) {}

  /** Starts 3 masters + 3 replicas and resolves once every node says cluster_state:ok (within ~30 s). */
  static async start(): Promise<LocalCluster> {
    const dir = mkdtempSync(join(tmpdir(), "chat-cluster-"));
    const taken = new Set<number>();
    const ports: number[] = [];
    for (let i = 0; i < 6; i++) {
      const p = await freeNodePort(taken);
      taken.add(p);
      taken.add(p + 10000);
      ports.push(p);
    }
    const cluster = new LocalCluster(ports, dir);
    try {
      for (const port of ports) cluster.#spawn(port);
      for (const port of ports) {
        let up = false;
        for (let i = 0; i < 50 && !up; i++) {
          up = await ping(port);
          if (!up) await sleep(100);
        }
        if (!up) throw new Error(`cluster node ${port} did not start`);
      }
      const create = spawnSync(
        "redis-cli",
        ["--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "1", "--cluster-yes"],
        { encoding: "utf8", timeout: 30_000 },
      );
      if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`);
      await cluster.waitHealthy(30_000);
      return cluster;
    } catch (error) {
      cluster.stop();
      throw error;
    }
  }

  #spawn(port: number): void {
    const child = spawn(
      "redis-server",
      [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        join(this.dir, `nodes-${port}.conf`),
        // A dead master is replaced within ~2 s.
        "--cluster-node-timeout",
        "1000",
        // A replica may take over however far behind it is (the epoch reports what was lost).
        "--cluster-replica-validity-factor",
        "0",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        this.dir,
      ],
      { stdio: "ignore" },
    );
    this.#children.set(port, child);
  }

  /** A URL of one node (any node will do for a cluster client). */
  get url(): string {
    return `redis://127.0.0.1:${this.ports[0]}`;
  }

  /** Waits until every running node reports cluster_state:ok and every replica's link is up. */
  async waitHealthy(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      let ok = true;
      for (const port of this.#running()) {
        try {
          if (!(await info(port, ["CLUSTER", "INFO"])).includes("cluster_state:ok")) ok = false;
          const repl = await info(port, ["INFO", "replication"]);
          if (repl.includes("role:slave") && !repl.includes("master_link_status:up")) ok = false;
        } catch {
          ok = false;
        }
        if (!ok) break;
      }
      if (ok) return;
      await sleep(200);
    }
    throw new Error(`the cluster was not healthy within ${ms} ms`);
  }

  #running(): number[] {
    return [...this.#children].filter(([, c]) => c.exitCode === null && c.signalCode === null).map(([p]) => p);
  }

  /** The port of the master that serves `key`'s slot now. */
  async masterOf(key: string): Promise<number> {
    const port = this.#running()[0]!;
    const slot = Number(await info(port, ["CLUSTER", "KEYSLOT", key]));
    const client = new Redis({ port, host: "127.0.0.1", retryStrategy: () => null, maxRetriesPerRequest: 0 });
    client.on("error", () => {});
    try {
      const ranges = (await client.call("CLUSTER", "SLOTS")) as [number, number, [string, number, string]][];
      for (const [from, to, [, master]] of ranges) if (slot >= from && slot <= to) return master;
    } finally {
      client.disconnect();
    }
    throw new Error(`no master for ${key}`);
  }

  /** SIGKILLs one node (a crash), and waits for its exit. */
  async kill(port: number): Promise<void> {
    const child = this.#children.get(port);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
  }

  /** Kills every node and removes the data dir. */
  stop(): void {
    for (const child of this.#children.values()) if (child.exitCode === null) child.kill("SIGKILL");
    this.#children.clear();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
