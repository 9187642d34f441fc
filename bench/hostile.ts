/**
 * The hostile scenario (`npm run bench -- hostile`, issue 10): 1000 normal
 * clients chat as in the fan-out scenario while one client address runs one
 * attack from the issue's table, side by side with the same run without an
 * attack, on Node, Bun and Deno. The server runs with the production
 * defaults (limits on: RATE_LIMIT 10/1 s, RATE_LIMIT_IP 100/10 s,
 * MAX_CONNECTIONS_PER_IP 256, PRESENCE_INTERVAL_MS 250, LOG_LEVEL info).
 *
 * - Normal clients: the load generator, 1000 seed-mode connections in room
 *   `bench` spread over 250 source addresses (127.0.0.2 ...), 100 of them
 *   sending 1 message/s each (within RATE_LIMIT), for `--duration-ms`.
 *   Measured: loss, p99 latency, server CPU per delivery.
 * - The attacker: one address, 127.0.0.1, in a process of its own
 *   (`node bench/hostile.ts attack <kind> <port>`), started before the load
 *   and stopped after it:
 *   - `history`: 1000 stored messages of 2000 four-byte characters in room
 *     `attic`; bursts of 100 `{"type":"history","limit":500}`, reconnecting
 *     after each burst;
 *   - `reconnect`: 20 loops that connect, send 10 messages, close, again;
 *   - `churn`: 150 named members idle in room `lobby2` (victims, from
 *     127.0.1.x); the attacker joins and leaves there in 10 loops;
 *   - `invalid`: one connection sending 1-byte invalid JSON frames as fast
 *     as its socket takes them.
 *   Reported: what the attacker got (answers, rate_limited, 429s), bytes the
 *   churn pushed to each idle member, and the server's log lines.
 *
 * Options: --runtimes node,bun,deno --attacks none,history,reconnect,churn,invalid
 * --duration-ms N (8000; 3000 with --quick) --clients N (1000; 200 with --quick).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import WebSocket from "ws";
import { formatMessageId } from "../src/protocol.ts";
import { SqliteStore } from "../src/store/sqlite.ts";
import {
  BUN,
  DENO,
  fmt,
  median,
  NODE_TS,
  runLoadgen,
  type ScenarioContext,
  type ScenarioReport,
  type Started,
  spawnPinned,
  startServer,
  stopServer,
} from "./harness.ts";
import type { LoadResult } from "./loadgen.ts";

const ATTACKS = ["none", "history", "reconnect", "churn", "invalid"] as const;
type Attack = (typeof ATTACKS)[number];

const RUNTIMES: Record<string, string[]> = {
  node: [...NODE_TS, "src/index.ts"],
  bun: [BUN, "run", "src/index.ts"],
  deno: [DENO, "run", "-A", "src/index.ts"],
};

/** The production defaults, on loopback; info logs, so the log bound shows. */
const SERVER_ENV: Record<string, string> = { HOST: "127.0.0.1", LOG_LEVEL: "info", HEARTBEAT_MS: "30000" };

/** What the attacker process reports. */
export interface AttackStats {
  attack: Attack;
  /** Handshakes tried, and refused before the upgrade (429 and other statuses). */
  handshakes: number;
  refused: number;
  /** Frames the attacker sent. */
  framesSent: number;
  /** Answers that did work for it (history pages, accepted messages, error answers to bad frames). */
  served: number;
  rateLimited: number;
  /** Bytes received by the attacker itself. */
  bytesIn: number;
  /** Churn: bytes and presence frames received by the idle members, all together. */
  victimBytes: number;
  victimPresenceFrames: number;
  victims: number;
  ms: number;
  /** The attacker process's own CPU, share of one core (it shares the load generator's core). */
  cpuPercent: number;
}

/** One measured run. */
export interface HostileRun {
  runtime: string;
  attack: Attack;
  load: LoadResult;
  stats: AttackStats | null;
  /** Lines the server logged during the run. */
  logLines: number;
}

// ---------- the attacker (its own process) ----------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const EIGHT_KB = "\u{1F600}".repeat(2000);
/**
 * The invalid-frame attacker's pace: the issue's row sent ~155,000 frames/s.
 * The frames are written pre-framed to the TCP socket (a masked 1-byte text
 * frame is 7 bytes; a zero masking key is legal), so the attacker, which
 * shares a core with the load generator, costs that core little.
 */
const INVALID_FRAMES_PER_SEC = 150_000;
const INVALID_BATCH = 1000;
const INVALID_CHUNK = Buffer.concat(
  Array.from({ length: INVALID_BATCH }, () => Buffer.from([0x81, 0x81, 0, 0, 0, 0, 0x78])),
);

function open(
  url: string,
  opts: { protocol?: string; localAddress?: string } = {},
): Promise<{ ws: WebSocket; status: number }> {
  return new Promise((resolve) => {
    const ws = opts.protocol
      ? new WebSocket(url, opts.protocol, { localAddress: opts.localAddress ?? "127.0.0.1", handshakeTimeout: 10_000 })
      : new WebSocket(url, { localAddress: opts.localAddress ?? "127.0.0.1", handshakeTimeout: 10_000 });
    ws.once("open", () => resolve({ ws, status: 101 }));
    ws.once("unexpected-response", (_req, res) => {
      res.resume();
      ws.terminate();
      resolve({ ws, status: res.statusCode ?? 0 });
    });
    ws.once("error", () => resolve({ ws, status: 0 }));
  });
}

async function attacker(attack: Attack, port: number): Promise<void> {
  const base = `ws://127.0.0.1:${port}/websocket`;
  const stats: AttackStats = {
    attack,
    handshakes: 0,
    refused: 0,
    framesSent: 0,
    served: 0,
    rateLimited: 0,
    bytesIn: 0,
    victimBytes: 0,
    victimPresenceFrames: 0,
    victims: 0,
    ms: 0,
    cpuPercent: 0,
  };
  const t0 = Date.now();
  let stopping = false;
  const victims: WebSocket[] = [];
  const done = () => {
    stats.ms = Date.now() - t0;
    const cpu = process.cpuUsage();
    stats.cpuPercent = Math.round(((cpu.user + cpu.system) / 1000 / stats.ms) * 100);
    for (const v of victims) v.terminate();
    process.stdout.write(`${JSON.stringify(stats)}\n`);
    process.exit(0);
  };
  process.on("SIGTERM", () => {
    stopping = true;
    setTimeout(done, 200);
  });
  const count = (ws: WebSocket, onFrame?: (f: Record<string, unknown>) => void) =>
    ws.on("message", (data: Buffer) => {
      stats.bytesIn += data.length;
      const f = JSON.parse(data.toString()) as Record<string, unknown>;
      if (f.type === "error" && f.code === "rate_limited") stats.rateLimited++;
      onFrame?.(f);
    });
  const handshake = async (url: string, protocol?: string) => {
    stats.handshakes++;
    const r = await open(url, protocol ? { protocol } : {});
    if (r.status !== 101) {
      stats.refused++;
      await sleep(50); // a refused client backs off a little, as any loop would
      return null;
    }
    return r.ws;
  };

  if (attack !== "churn") process.stderr.write("attacker ready\n");
  if (attack === "history") {
    while (!stopping) {
      const ws = await handshake(`${base}?room=attic`, "chat.v1");
      if (!ws) continue;
      let answers = 0;
      count(ws, (f) => {
        if (f.type === "history") stats.served++;
        if (f.type === "history" || f.type === "error") answers++;
      });
      for (let i = 0; i < 100; i++) ws.send('{"type":"history","limit":500}');
      stats.framesSent += 100;
      const until = Date.now() + 2000;
      while (!stopping && answers < 100 && Date.now() < until && ws.readyState === WebSocket.OPEN) await sleep(20);
      ws.terminate();
    }
  } else if (attack === "reconnect") {
    const loop = async (k: number) => {
      while (!stopping) {
        const ws = await handshake(`${base}?room=attic2`);
        if (!ws) continue;
        let answers = 0;
        count(ws, (f) => {
          if (f.type === "message" && f.user === `a${k}`) stats.served++;
          if ((f.type === "message" && f.user === `a${k}`) || f.type === "error") answers++;
        });
        // 2000 four-byte characters: 8 KB, the longest a message may be.
        for (let i = 0; i < 10; i++) ws.send(JSON.stringify({ user: `a${k}`, message: EIGHT_KB }));
        stats.framesSent += 10;
        const until = Date.now() + 2000;
        while (!stopping && answers < 10 && Date.now() < until && ws.readyState === WebSocket.OPEN) await sleep(10);
        ws.terminate();
      }
    };
    await Promise.all(Array.from({ length: 20 }, (_, k) => loop(k)));
  } else if (attack === "churn") {
    // The victims: named, idle, each from an address of its own.
    for (let i = 0; i < 150; i++) {
      const r = await open(`${base}?room=lobby2&user=idle${i}`, {
        protocol: "chat.v1",
        localAddress: `127.0.1.${1 + (i % 250)}`,
      });
      if (r.status !== 101) continue;
      stats.victims++;
      victims.push(r.ws);
      r.ws.on("message", (data: Buffer) => {
        stats.victimBytes += data.length;
        if (data.includes('"presence"')) stats.victimPresenceFrames++;
      });
    }
    process.stderr.write("attacker ready\n");
    const loop = async (k: number) => {
      let n = 0;
      while (!stopping) {
        const ws = await handshake(`${base}?room=lobby2&user=churn${k}-${n++}`, "chat.v1");
        if (!ws) continue;
        await new Promise<void>((r) => {
          ws.once("message", () => r()); // the welcome: joined
          ws.once("close", () => r());
        });
        ws.close();
        await new Promise<void>((r) => ws.once("close", () => r()));
      }
    };
    await Promise.all(Array.from({ length: 10 }, (_, k) => loop(k)));
  } else if (attack === "invalid") {
    while (!stopping) {
      const ws = await handshake(`${base}?room=attic3`, "chat.v1");
      if (!ws) continue;
      count(ws, (f) => {
        if (f.type === "error" && f.code === "invalid_json") stats.served++;
      });
      const start = Date.now();
      const tcp = (ws as unknown as { _socket: { write(b: Buffer): boolean; writableLength: number } })._socket;
      while (!stopping && ws.readyState === WebSocket.OPEN) {
        tcp.write(INVALID_CHUNK);
        stats.framesSent += INVALID_BATCH;
        // Whatever the socket has not written yet is backpressure: wait for it.
        while (!stopping && tcp.writableLength > 64 * 1024) await sleep(5);
        const ahead = stats.framesSent / INVALID_FRAMES_PER_SEC - (Date.now() - start) / 1000;
        await sleep(Math.max(0, ahead * 1000));
      }
    }
  } else {
    while (!stopping) await sleep(100);
  }
  await new Promise(() => {}); // SIGTERM ends it
}

// ---------- the bench ----------

/** 1000 messages of 2000 four-byte characters (8 KB each) in room `attic`, as in the issue's first row. */
async function seedHistory(path: string): Promise<void> {
  const store = new SqliteStore(new Database(path), 10_000);
  const text = "\u{1F600}".repeat(2000);
  const t = Date.now() - 60_000;
  for (let i = 0; i < 1000; i++) {
    await store.append({
      type: "message",
      id: formatMessageId(t, i),
      room: "attic",
      user: "old",
      message: text,
      ts: t,
    });
  }
  await store.close();
}

function startAttacker(attack: Attack, port: number): { stop(): Promise<AttackStats | null>; ready: Promise<void> } {
  // On the load generator's core, never the server's.
  const child = spawnPinned([...NODE_TS, "bench/hostile.ts", "attack", attack, String(port)], 1, {});
  let out = "";
  let err = "";
  child.stdout?.on("data", (c: Buffer) => {
    out += c.toString();
  });
  let readyResolve!: () => void;
  const ready = new Promise<void>((r) => {
    readyResolve = r;
  });
  child.stderr?.on("data", (c: Buffer) => {
    err = (err + c.toString()).slice(-4000);
    if (err.includes("attacker ready")) readyResolve();
  });
  // Bounded: an attacker that never gets ready is reported without stats.
  setTimeout(readyResolve, 60_000);
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  return {
    ready: Promise.race([ready, exited]),
    async stop() {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
      try {
        return JSON.parse(out.trim().split("\n").at(-1) ?? "") as AttackStats;
      } catch {
        process.stderr.write(`attacker ${attack} gave no stats: ${err.slice(-500)}\n`);
        return null;
      }
    },
  };
}

function countLines(s: Started): () => number {
  let lines = 0;
  const on = (c: Buffer) => {
    for (const b of c) if (b === 10) lines++;
  };
  s.child.stdout?.on("data", on);
  s.child.stderr?.on("data", on);
  return () => lines;
}

async function oneRun(
  runtime: string,
  attack: Attack,
  o: { clients: number; durationMs: number },
  log: (l: string) => void,
): Promise<HostileRun> {
  const dir = mkdtempSync(join(tmpdir(), "chat-hostile-"));
  const path = join(dir, "chat.db");
  await seedHistory(path);
  const server = await startServer({ command: RUNTIMES[runtime]!, env: { ...SERVER_ENV, HISTORY_PATH: path } });
  const lines = countLines(server);
  try {
    const attacker = attack === "none" ? null : startAttacker(attack, server.port);
    await attacker?.ready;
    const before = lines();
    const load = await runLoadgen({
      url: `ws://127.0.0.1:${server.port}/websocket?room=bench`,
      scenario: "fanout",
      clients: o.clients,
      senders: Math.min(100, o.clients / 2),
      rate: 1,
      durationMs: o.durationMs,
      drainMs: 5000,
      serverPid: server.child.pid,
      sourceAddresses: 250,
    });
    const stats = (await attacker?.stop()) ?? null;
    const run: HostileRun = { runtime, attack, load, stats, logLines: lines() - before };
    log(
      `${runtime} ${attack}: lost ${load.lost}/${load.expected}, p99 ${fmt(load.latency.p99, 1)} ms, ` +
        `cpu/delivery ${fmt(load.serverCpuMicrosPerDelivery ?? Number.NaN, 2)} µs, log lines ${run.logLines}`,
    );
    return run;
  } finally {
    await stopServer(server);
    rmSync(dir, { recursive: true, force: true });
  }
}

function parseArgs(ctx: ScenarioContext) {
  const o = {
    runtimes: ["node", "bun", "deno"],
    attacks: [...ATTACKS] as Attack[],
    durationMs: ctx.quick ? 3000 : 8000,
    clients: ctx.quick ? 200 : 1000,
  };
  for (let i = 0; i < ctx.args.length; i++) {
    const a = ctx.args[i]!;
    const v = () => ctx.args[++i] ?? "";
    if (a === "--runtimes") o.runtimes = v().split(",");
    else if (a === "--attacks") o.attacks = ["none", ...(v().split(",") as Attack[]).filter((x) => x !== "none")];
    else if (a === "--duration-ms") o.durationMs = Number(v());
    else if (a === "--clients") o.clients = Number(v());
  }
  return o;
}

const ATTACK_NAMES: Record<Attack, string> = {
  none: "no attack",
  history: "history burst + reconnect",
  reconnect: "reconnect flood, 10 x 8 KB each",
  churn: "presence churn (150 idle)",
  invalid: "invalid-frame flood",
};

function attackerCell(s: AttackStats | null, attack: Attack): string {
  if (!s) return attack === "none" ? "" : "no stats";
  return `${attackerWhat(s, attack)} (attacker CPU ${s.cpuPercent}%)`;
}

function attackerWhat(s: AttackStats, attack: Attack): string {
  const secs = s.ms / 1000;
  const per = (n: number) => `${fmt(n / secs, 1)}/s`;
  switch (attack) {
    case "history":
      return `${s.handshakes} handshakes (${s.refused} refused), ${s.framesSent} history frames, ${s.served} answered (${per(s.served)}), ${s.rateLimited} rate_limited`;
    case "reconnect":
      return `${s.handshakes} handshakes (${s.refused} refused), ${s.framesSent} messages, ${s.served} accepted (${per(s.served)}), ${s.rateLimited} rate_limited`;
    case "churn":
      return `${s.handshakes} joins (${s.refused} refused, ${per(s.handshakes - s.refused)}); ${s.victims} idle members got ${fmt(s.victimPresenceFrames / Math.max(1, s.victims) / secs, 1)} presence frames/s each, ${fmt(s.victimBytes / 2 ** 20, 1)} MiB in all`;
    case "invalid":
      return `${s.framesSent} frames sent (${per(s.framesSent)}), ${s.served} answered, ${s.rateLimited} rate_limited`;
    default:
      return "";
  }
}

/** `npm run bench -- hostile`. */
export async function run(ctx: ScenarioContext): Promise<ScenarioReport> {
  const o = parseArgs(ctx);
  const runs: HostileRun[] = [];
  for (let round = 0; round < ctx.runs; round++) {
    for (const runtime of o.runtimes) {
      for (const attack of o.attacks) runs.push(await oneRun(runtime, attack, o, ctx.log));
    }
  }
  const out: string[] = [
    `### Hostile (${o.clients} normal clients, ${Math.min(100, o.clients / 2)} senders x 1 msg/s for ${o.durationMs} ms; one attacking address; production limits; median of ${ctx.runs} run(s))`,
    "",
    "| runtime | attack | normal lost | p99 ms | p99 vs no attack | server µs/delivery | server / load CPU % | server log lines | the attacker got |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  let pass = true;
  for (const runtime of o.runtimes) {
    const base = median(
      runs.filter((r) => r.runtime === runtime && r.attack === "none").map((r) => r.load.latency.p99),
    );
    for (const attack of o.attacks) {
      const mine = runs.filter((r) => r.runtime === runtime && r.attack === attack);
      if (mine.length === 0) continue;
      const p99 = median(mine.map((r) => r.load.latency.p99));
      const lost = Math.max(...mine.map((r) => r.load.lost));
      const ratioP99 = p99 / base;
      if (attack !== "none" && (lost > 0 || ratioP99 > 2)) pass = false;
      const last = mine.at(-1)!;
      out.push(
        `| ${runtime} | ${ATTACK_NAMES[attack]} | ${lost} of ${fmt(median(mine.map((r) => r.load.expected)))} | ${fmt(p99, 1)} | ${attack === "none" ? "" : `${fmt(ratioP99, 2)}x`} | ${fmt(median(mine.map((r) => r.load.serverCpuMicrosPerDelivery ?? Number.NaN)), 2)} | ${fmt(median(mine.map((r) => r.load.serverCpuPercent ?? Number.NaN)))} / ${fmt(median(mine.map((r) => r.load.loadgenCpuPercent ?? Number.NaN)))} | ${fmt(median(mine.map((r) => r.logLines)))} | ${attackerCell(last.stats, attack)} |`,
      );
    }
  }
  out.push(
    "",
    pass
      ? "Target met: zero loss and p99 within 2x of the run without the attack, for every attack and runtime."
      : "Target NOT met for some row (loss, or p99 above 2x the run without the attack).",
  );
  return { markdown: out.join("\n"), data: runs };
}

if (process.argv[2] === "attack" && import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  void attacker(process.argv[3] as Attack, Number(process.argv[4]));
}
