/**
 * Webhook delivery under load (`npm run bench -- webhooks`): ours on Node
 * (HISTORY=sqlite, the default) takes a steady stream of chat messages
 * (1000/s by default) and delivers each one's `message.created` to a local
 * receiver on 127.0.0.1. Side by side in one run:
 *
 * - `off`: no WEBHOOK_URL (the baseline: server CPU per message without webhooks);
 * - `on, N rooms`: the messages spread over N rooms (rooms deliver in parallel);
 * - `on, 1 room`: every message in one room (one request at a time: the
 *   per-room order makes this the slowest case).
 *
 * Reported per variant (median of the runs): messages sent per second
 * (checked against the target, so the load generator is not the limit),
 * events delivered per second while sending, lag (event time to arrival at
 * the receiver: p50, p99, max), backlog when the sending stopped and how long
 * the rest took, server CPU per message, and the server's RSS sampled every
 * second (start, middle, end, after the drain) to show memory does not grow.
 *
 * Options: --rate N (messages/s, 1000), --duration-ms N (20000; 3000 with
 * --quick), --rooms N (20), --variants off,rooms,one (all), --cpu-prof DIR, --before DIR
 * (another checkout, e.g. `git archive` of an older commit: its server runs
 * the webhook variants too, interleaved with ours, rows marked "(before)").
 */
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import WebSocket from "ws";
import {
  fmt,
  median,
  NODE_TS,
  OURS_ENV,
  type ScenarioContext,
  type ScenarioReport,
  type Started,
  startServer,
  stopServer,
} from "./harness.ts";

const SECRET = "bench-webhook-secret-0123456789";
const CLK_TCK = 100;

interface Options {
  rate: number;
  durationMs: number;
  rooms: number;
  variants: string[];
  before: string | null;
  /** --cpu-prof DIR: each server writes a V8 CPU profile there (node --cpu-prof). */
  cpuProf: string | null;
}

interface Variant {
  name: string;
  webhooks: boolean;
  rooms: number;
  /** The checkout whose server runs (--before), or ours. */
  cwd?: string;
}

/** One run of one variant. */
export interface WebhookRun {
  variant: string;
  sent: number;
  sendRate: number;
  /** message.created events the receiver got while the messages were being sent. */
  deliveredWhileSending: number;
  deliveredRate: number;
  /** Events the receiver got in all (after the drain). */
  delivered: number;
  /** Distinct event ids among them (at least once: duplicates show as delivered > unique). */
  unique: number;
  backlogAtStop: number;
  drainMs: number;
  lagP50: number;
  lagP99: number;
  lagMax: number;
  /** Server CPU from the first message to the last delivery, per message. */
  cpuMsPerMessage: number;
  /** The bench process's own CPU (sender + receiver) as a share of one core: near 1 would make it the limit. */
  loadCpuShare: number;
  rssMiB: { start: number; middle: number; end: number; drained: number; max: number };
}

function parse(args: string[], quick: boolean): Options {
  const o: Options = {
    rate: 1000,
    durationMs: quick ? 3000 : 20_000,
    rooms: 20,
    variants: ["off", "rooms", "one"],
    before: null,
    cpuProf: null,
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const v = args[i + 1];
    if (a === "--rate") o.rate = Number(v);
    else if (a === "--duration-ms") o.durationMs = Number(v);
    else if (a === "--rooms") o.rooms = Number(v);
    else if (a === "--variants") o.variants = (v ?? "").split(",");
    else if (a === "--before") o.before = v ?? null;
    else if (a === "--cpu-prof") o.cpuProf = v ?? null;
    else continue;
    i++;
  }
  return o;
}

/** A receiver that counts message.created arrivals and their lag; answers 204 at once. */
async function startReceiver(): Promise<{
  server: Server;
  url: string;
  lags: number[];
  ids: Set<string>;
  count: () => number;
}> {
  const lags: number[] = [];
  const ids = new Set<string>();
  let count = 0;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const e = JSON.parse(Buffer.concat(chunks).toString()) as { id: string; event: string; ts: number };
      if (e.event === "message.created") {
        count++;
        ids.add(e.id);
        lags.push(Date.now() - e.ts);
      }
      res.writeHead(204).end();
    });
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return { server, url: `http://127.0.0.1:${port}/hook`, lags, ids, count: () => count };
}

function rssMiB(pid: number): number {
  try {
    const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
    return kb ? Number(kb) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

function cpuMs(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command's ") ".
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
  } catch {
    return Number.NaN;
  }
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

async function openClients(port: number, rooms: number): Promise<WebSocket[]> {
  const clients: WebSocket[] = [];
  for (let r = 0; r < rooms; r++) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/websocket?room=wh-bench-${r}&user=sender${r}`, "chat.v1");
    await new Promise<void>((res, rej) => {
      ws.once("open", () => res());
      ws.once("error", rej);
    });
    // Frames are read (and dropped) so the server never sees a slow consumer.
    ws.on("message", () => {});
    clients.push(ws);
  }
  return clients;
}

async function runOnce(v: Variant, o: Options, log: (l: string) => void): Promise<WebhookRun> {
  const receiver = await startReceiver();
  const env: Record<string, string> = { ...OURS_ENV, RATE_LIMIT_IP: "0" };
  if (v.webhooks) Object.assign(env, { WEBHOOK_URL: receiver.url, WEBHOOK_SECRET: SECRET });
  let server: Started | null = null;
  try {
    const prof = o.cpuProf ? ["--cpu-prof", `--cpu-prof-dir=${o.cpuProf}`] : [];
    const [node, ...flags] = NODE_TS;
    server = await startServer({ command: [node!, ...prof, ...flags, "src/index.ts"], env, cwd: v.cwd });
    const pid = server.child.pid!;
    const clients = await openClients(server.port, v.rooms);
    const rss: number[] = [];
    const sampler = setInterval(() => rss.push(rssMiB(pid)), 1000);
    const cpu0 = cpuMs(pid);
    const self0 = process.cpuUsage();
    const t0 = Date.now();
    let sent = 0;
    // A tick every 10 ms sends what the rate owes by then: steady, and exact over the run.
    await new Promise<void>((resolve) => {
      const tick = setInterval(() => {
        const elapsed = Date.now() - t0;
        const due = Math.min(Math.floor((elapsed * o.rate) / 1000), Math.floor((o.durationMs * o.rate) / 1000));
        while (sent < due) {
          clients[sent % clients.length]!.send(JSON.stringify({ message: `m${sent}` }));
          sent++;
        }
        if (elapsed >= o.durationMs) {
          clearInterval(tick);
          resolve();
        }
      }, 10);
    });
    const sendMs = Date.now() - t0;
    const self = process.cpuUsage(self0);
    const deliveredWhileSending = receiver.count();
    const rssEnd = rssMiB(pid);
    const tStop = Date.now();
    // Bounded: at most 60 s for the backlog to drain.
    if (v.webhooks) {
      while (receiver.count() < sent && Date.now() - tStop < 60_000) await new Promise((r) => setTimeout(r, 50));
    }
    const drainMs = Date.now() - tStop;
    // Up to the end of the drain: every delivery's cost is in, whenever it happened.
    const cpu1 = cpuMs(pid);
    clearInterval(sampler);
    const drained = rssMiB(pid);
    for (const c of clients) c.close();
    const run: WebhookRun = {
      variant: v.name,
      sent,
      sendRate: (sent * 1000) / sendMs,
      deliveredWhileSending,
      deliveredRate: (deliveredWhileSending * 1000) / sendMs,
      delivered: receiver.count(),
      unique: receiver.ids.size,
      backlogAtStop: v.webhooks ? sent - deliveredWhileSending : 0,
      drainMs: v.webhooks ? drainMs : 0,
      lagP50: pct(receiver.lags, 50),
      lagP99: pct(receiver.lags, 99),
      lagMax: receiver.lags.length ? Math.max(...receiver.lags) : Number.NaN,
      cpuMsPerMessage: (cpu1 - cpu0) / Math.max(1, sent),
      loadCpuShare: (self.user + self.system) / 1000 / sendMs,
      rssMiB: {
        start: rss[0] ?? Number.NaN,
        middle: rss[Math.floor(rss.length / 2)] ?? Number.NaN,
        end: rssEnd,
        drained,
        max: Math.max(...rss.filter(Number.isFinite), drained),
      },
    };
    log(
      `${v.name}: sent ${fmt(run.sendRate)}/s, delivered ${fmt(run.deliveredRate)}/s, lag p50 ${fmt(run.lagP50)} ms p99 ${fmt(run.lagP99)} ms, backlog ${run.backlogAtStop}, rss ${fmt(run.rssMiB.start, 1)} -> ${fmt(run.rssMiB.end, 1)} MiB`,
    );
    return run;
  } finally {
    if (server) await stopServer(server);
    await new Promise((r) => receiver.server.close(() => r(null)));
    receiver.server.closeAllConnections();
  }
}

/** Runs the scenario; exported for run.ts (SCENARIOS) and the smoke test. */
export async function run(ctx: ScenarioContext): Promise<ScenarioReport> {
  const o = parse(ctx.args, ctx.quick);
  const all: Variant[] = [
    { name: "off", webhooks: false, rooms: o.rooms },
    { name: `on, ${o.rooms} rooms`, webhooks: true, rooms: o.rooms },
    { name: "on, 1 room", webhooks: true, rooms: 1 },
  ];
  const keys = ["off", "rooms", "one"];
  const variants = all.filter((_, i) => o.variants.includes(keys[i]!));
  if (o.before) {
    const cwd = o.before;
    variants.push(...variants.filter((v) => v.webhooks).map((v) => ({ ...v, name: `${v.name} (before)`, cwd })));
  }
  const runs: WebhookRun[] = [];
  // Rounds interleave the variants, so a change in the machine's load hits them alike.
  for (let r = 0; r < ctx.runs; r++) {
    for (const v of variants) runs.push(await runOnce(v, o, (l) => ctx.log(`round ${r + 1}: ${l}`)));
  }
  const rows = variants.map((v) => {
    const mine = runs.filter((x) => x.variant === v.name);
    const m = (f: (x: WebhookRun) => number) => median(mine.map(f));
    return { v, mine, m };
  });
  const base = rows.find((r) => !r.v.webhooks)?.m((x) => x.cpuMsPerMessage);
  const lines = [
    `### Webhook delivery: ${fmt(o.rate)} messages/s for ${fmt(o.durationMs / 1000, 1)} s (median of ${ctx.runs})`,
    "",
    "| variant | sent/s | delivered/s while sending | lag p50 / p99 / max (ms) | backlog at stop | drain (ms) | server CPU per message (ms) | vs off | RSS start / middle / end / drained (MiB) | sender+receiver CPU |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const { v, m } of rows) {
    const cpu = m((x) => x.cpuMsPerMessage);
    lines.push(
      `| ${v.name} | ${fmt(m((x) => x.sendRate))} | ${v.webhooks ? fmt(m((x) => x.deliveredRate)) : "-"} | ${
        v.webhooks ? `${fmt(m((x) => x.lagP50))} / ${fmt(m((x) => x.lagP99))} / ${fmt(m((x) => x.lagMax))}` : "-"
      } | ${v.webhooks ? fmt(m((x) => x.backlogAtStop)) : "-"} | ${v.webhooks ? fmt(m((x) => x.drainMs)) : "-"} | ${fmt(
        cpu,
        3,
      )} | ${base ? `${fmt(cpu / base, 2)}x` : ""} | ${fmt(
        m((x) => x.rssMiB.start),
        1,
      )} / ${fmt(
        m((x) => x.rssMiB.middle),
        1,
      )} / ${fmt(
        m((x) => x.rssMiB.end),
        1,
      )} / ${fmt(
        m((x) => x.rssMiB.drained),
        1,
      )} | ${fmt(m((x) => x.loadCpuShare) * 100)}% |`,
    );
  }
  const dup = runs.filter((x) => x.delivered !== x.unique).length;
  const lost = runs.filter((x) => x.variant !== "off" && x.unique < x.sent).length;
  lines.push(
    "",
    `Every delivered event counted once per id: ${dup === 0 ? "yes" : `no, duplicates in ${dup} runs`}; all ${
      lost === 0 ? "sent messages delivered after the drain" : `messages delivered in all but ${lost} runs`
    }.`,
  );
  return { markdown: lines.join("\n"), data: { options: o, runs } };
}
