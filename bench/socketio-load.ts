/**
 * The multi-instance load generator (`bench/multi-instance.ts` runs it in its
 * own process): opens `rooms x clientsPerRoom` connections spread evenly over
 * every instance's URL, lets the first `sendersPerRoom` of each room send
 * (so senders sit on every instance), and measures what every connection
 * receives: loss, duplicates, reorders, and latency sender -> receiver,
 * kept apart for receivers on ANOTHER instance than the sender.
 *
 * Two protocols, the same load: `ours` (our WebSocket, seed frames
 * `{"user","message"}`) and `socketio` (a lean Socket.IO client, below).
 * Either way a message's text is `~sender~seq~sentAtMicros~` plus padding,
 * and every delivered frame carries it in a `"message":"~...` field, so one
 * parser reads both.
 *
 * Socket.IO client mode: socket.io-client (an Engine.IO socket, a Socket.IO
 * decoder and an emitter per connection) cost 1.6x this client's CPU per
 * received event (24 vs 15 µs, 100 clients, 30k events, websocket transport,
 * measured 2026-12-02), the same order as the servers' cost per delivery, so
 * the load side would weigh on what is measured. This speaks the wire protocol directly over `ws`
 * on the websocket transport (the server allows only that transport): Engine.IO
 * v4 packets `0{...}` open, `2` ping -> `3` pong, and Socket.IO v5 packets
 * `40` connect to `/` and `42["chat",{...}]` events. That is the whole
 * protocol a websocket-only client of the default namespace uses.
 *
 * Usage: `node --import tsx bench/socketio-load.ts '<json MultiLoadSpec>'`;
 * prints one JSON {@link MultiLoadResult} line. Every phase is bounded.
 */
import { readFileSync } from "node:fs";
import WebSocket from "ws";

/** What to run. */
export interface MultiLoadSpec {
  protocol: "ours" | "socketio";
  /** One base URL per instance: ws://127.0.0.1:PORT */
  urls: string[];
  rooms: number;
  clientsPerRoom: number;
  /** Client k < sendersPerRoom of each room sends; it sits on instance k % urls.length. */
  sendersPerRoom: number;
  /**
   * Saturation: messages a sender may have in flight, a message being in
   * flight until EVERY client of its room (on every instance) has it. Counting
   * only the sender's own echo would let the other instances fall behind
   * without bound and the latency measure their backlog. @default 8
   */
  window?: number;
  /** Sending before the measured phase (JIT, Redis connections warm): not in deliveries/s, CPU or latency; loss is checked over everything. @default 0 */
  warmupMs?: number;
  /** Measured sending phase. @default 5000 */
  durationMs?: number;
  /** Longest wait after sending stops for every delivery. @default 5000 */
  drainMs?: number;
  /** Extra characters per message. @default 0 */
  padding?: number;
  /** Server processes (every instance) and Redis: CPU read from /proc. */
  serverPids: number[];
  redisPid?: number;
}

export interface Percentiles {
  n: number;
  p50: number;
  p99: number;
}

export interface MultiLoadResult {
  protocol: string;
  instances: number;
  clients: number;
  connected: number;
  senders: number;
  sent: number;
  expected: number;
  /** In-order, first-time deliveries. */
  delivered: number;
  deliveriesPerSec: number;
  lost: number;
  /** Frames whose seq was not above the last seen from that sender (duplicate or reordered). */
  outOfOrder: number;
  closedEarly: number;
  /** ms, sender -> receiver on another instance (n = 0 with one instance). */
  crossLatency: Percentiles;
  /** ms, every delivery. */
  allLatency: Percentiles;
  serverCpuMs: number;
  redisCpuMs: number;
  /** (servers + Redis) CPU µs per delivery, over the measured phase and drain. */
  cpuMicrosPerDelivery: number;
  serverCpuMicrosPerDelivery: number;
  redisCpuMicrosPerDelivery: number;
  /** Share of one core the load generator used over sending and drain. */
  loadgenCpuPercent: number;
  errors: string[];
}

/** Log-bucketed latency histogram in µs, 1% relative precision: bounded memory for any run. */
class Histogram {
  readonly #counts = new Float64Array(2400);
  #n = 0;
  record(micros: number): void {
    const b = Math.min(2399, Math.max(0, Math.floor(Math.log(Math.max(micros, 1)) / Math.log(1.01))));
    this.#counts[b]!++;
    this.#n++;
  }
  summary(): Percentiles {
    const at = (p: number) => {
      const want = Math.ceil(this.#n * p);
      let seen = 0;
      for (let b = 0; b < this.#counts.length; b++) {
        seen += this.#counts[b]!;
        if (seen >= want) return Math.round(1.01 ** b / 10) / 100;
      }
      return Number.NaN;
    };
    return this.#n === 0 ? { n: 0, p50: Number.NaN, p99: Number.NaN } : { n: this.#n, p50: at(0.5), p99: at(0.99) };
  }
}

function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) * 10; // utime + stime, 100 ticks/s
  } catch {
    return 0;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const nowMicros = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const MARK = '"message":"~';

interface Conn {
  ws: WebSocket;
  instance: number;
  room: number;
  /** Global sender id, or -1. */
  sender: number;
  /** Last seq seen per global sender id (of this room's senders). */
  last: Int32Array;
  ready: boolean;
}

export async function runMultiLoad(spec: MultiLoadSpec): Promise<MultiLoadResult> {
  const n = spec.urls.length;
  const S = spec.sendersPerRoom;
  const window = spec.window ?? 8;
  const durationMs = spec.durationMs ?? 5000;
  const warmupMs = spec.warmupMs ?? 0;
  const drainMs = spec.drainMs ?? 5000;
  const pad = "x".repeat(spec.padding ?? 0);
  const errors: string[] = [];
  const senderInstance: number[] = [];
  const senderConn: Conn[] = [];
  const sentBy: number[] = [];
  /** Per sender: every message below this seq reached every client of the room. */
  const done: number[] = [];
  /** Per sender: how many clients have seq (ring indexed by seq % window; seq is always in [done, done + window)). */
  const got: Int32Array[] = [];
  const cross = new Histogram();
  const all = new Histogram();
  let delivered = 0;
  let inPhase = 0;
  let outOfOrder = 0;
  let closedEarly = 0;
  let sending = false;
  let measuring = false;
  let phaseEnd = 0;

  const send = (c: Conn) => {
    const id = c.sender;
    const seq = sentBy[id]!;
    sentBy[id] = seq + 1;
    const text = `~${id}~${seq}~${nowMicros()}~${pad}`;
    const user = `u${id}`;
    c.ws.send(
      spec.protocol === "ours"
        ? `{"user":"${user}","message":"${text}"}`
        : `42["chat",{"user":"${user}","message":"${text}"}]`,
    );
  };

  const onPayload = (c: Conn, s: string) => {
    const at = s.indexOf(MARK);
    if (at < 0) return;
    const a = at + MARK.length;
    const b = s.indexOf("~", a);
    const d = s.indexOf("~", b + 1);
    const e = s.indexOf("~", d + 1);
    const id = Number(s.slice(a, b));
    const seq = Number(s.slice(b + 1, d));
    const sent = Number(s.slice(d + 1, e));
    const local = id - c.room * S;
    if (!(local >= 0 && local < S)) return;
    if (seq <= c.last[local]!) {
      outOfOrder++;
      return;
    }
    c.last[local] = seq;
    delivered++;
    const now = nowMicros();
    if (measuring) {
      if (now <= phaseEnd) inPhase++;
      const us = now - sent;
      all.record(us);
      if (senderInstance[id] !== c.instance) cross.record(us);
    }
    const ring = got[id];
    if (ring === undefined) return;
    const members = inRoom[c.room]!;
    if (++ring[seq % window]! < members || seq !== done[id]) return;
    // The oldest in-flight message is everywhere: slide past every completed one.
    let next = done[id]!;
    while (next < sentBy[id]! && ring[next % window]! >= members) ring[next++ % window] = 0;
    done[id] = next;
    if (sending) {
      const sc = senderConn[id]!;
      while (sentBy[id]! - done[id]! < window) send(sc);
    }
  };

  const open = (instance: number, room: number, sender: number): Promise<Conn> =>
    new Promise((resolve, reject) => {
      const base = spec.urls[instance]!;
      const url =
        spec.protocol === "ours"
          ? `${base}/websocket?room=mi${room}`
          : `${base}/socket.io/?EIO=4&transport=websocket&room=mi${room}`;
      const ws = new WebSocket(url, { perMessageDeflate: false });
      const c: Conn = { ws, instance, room, sender, last: new Int32Array(S).fill(-1), ready: false };
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new Error("connect timed out (30 s)"));
      }, 30_000);
      const ready = () => {
        if (c.ready) return;
        c.ready = true;
        clearTimeout(timer);
        resolve(c);
      };
      ws.on("message", (data) => {
        const s = String(data);
        if (spec.protocol === "ours") {
          onPayload(c, s);
          return;
        }
        // Engine.IO / Socket.IO text packets.
        if (s.startsWith("42")) onPayload(c, s);
        else if (s === "2") ws.send("3");
        else if (s.startsWith("0")) ws.send("40");
        else if (s.startsWith("40")) ready();
        else if (s.startsWith("44")) errors.push(`connect refused: ${s.slice(0, 200)}`);
      });
      // Ours in seed mode sends no welcome: the room is joined once the upgrade is done (and the settle pause below covers its Redis subscription).
      if (spec.protocol === "ours") ws.once("open", ready);
      ws.once("close", () => {
        if (c.ready && !stopping) closedEarly++;
      });
      ws.once("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });

  let stopping = false;
  /** Clients connected per room: what "every client of the room" means (a failed connect is reported, not waited for). */
  const inRoom = new Array<number>(spec.rooms).fill(0);
  const conns: Conn[] = [];
  const plan: [number, number, number][] = [];
  for (let r = 0; r < spec.rooms; r++) {
    for (let k = 0; k < spec.clientsPerRoom; k++) plan.push([k % n, r, k < S ? r * S + k : -1]);
  }
  // 50 connects in flight at a time.
  for (let i = 0; i < plan.length; i += 50) {
    const batch = await Promise.allSettled(plan.slice(i, i + 50).map(([inst, r, s]) => open(inst, r, s)));
    for (const b of batch) {
      if (b.status === "fulfilled") conns.push(b.value);
      else if (errors.length < 5) errors.push(`connect: ${String(b.reason)}`);
    }
  }
  for (const c of conns) {
    inRoom[c.room]!++;
    if (c.sender < 0) continue;
    senderInstance[c.sender] = c.instance;
    senderConn[c.sender] = c;
    sentBy[c.sender] = 0;
    done[c.sender] = 0;
    got[c.sender] = new Int32Array(window);
  }
  // Let joins (and the Redis subscriptions behind them) settle.
  await sleep(1000);

  sending = true;
  for (const c of senderConn) if (c) while (sentBy[c.sender]! - done[c.sender]! < window) send(c);
  await sleep(warmupMs);
  const cpu0 = spec.serverPids.reduce((t, p) => t + cpuMs(p), 0);
  const redis0 = cpuMs(spec.redisPid);
  const self0 = process.cpuUsage();
  const delivered0 = delivered;
  const t0 = performance.now();
  phaseEnd = nowMicros() + durationMs * 1000;
  measuring = true;
  await sleep(durationMs);
  sending = false;
  const sent = sentBy.reduce((t, x) => t + (x ?? 0), 0);
  const expected = senderConn.reduce((t, c) => t + (c ? sentBy[c.sender]! * inRoom[c.room]! : 0), 0);
  const drainEnd = performance.now() + drainMs;
  while (delivered + outOfOrder < expected && performance.now() < drainEnd) await sleep(20);
  const wall = (performance.now() - t0) / 1000;
  const serverCpuMs = spec.serverPids.reduce((t, p) => t + cpuMs(p), 0) - cpu0;
  const redisCpuMs = cpuMs(spec.redisPid) - redis0;
  const self = process.cpuUsage(self0);
  stopping = true;
  for (const c of conns) c.ws.terminate();
  const measured = delivered - delivered0;
  const per = (ms: number) => (measured > 0 ? Math.round(((ms * 1000) / measured) * 1000) / 1000 : Number.NaN);
  if (conns.length < plan.length) errors.push(`${plan.length - conns.length} connections failed`);
  return {
    protocol: spec.protocol,
    instances: n,
    clients: plan.length,
    connected: conns.length,
    senders: senderConn.filter(Boolean).length,
    sent,
    expected,
    delivered,
    deliveriesPerSec: Math.round(inPhase / (durationMs / 1000)),
    lost: Math.max(0, expected - delivered - outOfOrder),
    outOfOrder,
    closedEarly,
    crossLatency: cross.summary(),
    allLatency: all.summary(),
    serverCpuMs,
    redisCpuMs,
    cpuMicrosPerDelivery: per(serverCpuMs + redisCpuMs),
    serverCpuMicrosPerDelivery: per(serverCpuMs),
    redisCpuMicrosPerDelivery: per(redisCpuMs),
    loadgenCpuPercent: Math.round(((self.user + self.system) / 1e6 / wall) * 100),
    errors,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const spec = JSON.parse(process.argv[2] ?? "{}") as MultiLoadSpec;
  const bound = setTimeout(
    () => process.exit(2),
    120_000 + (spec.warmupMs ?? 0) + (spec.durationMs ?? 5000) + (spec.drainMs ?? 5000),
  );
  const result = await runMultiLoad(spec);
  clearTimeout(bound);
  console.log(JSON.stringify(result));
  process.exit(0);
}
