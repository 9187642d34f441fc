/**
 * The load generator: opens C WebSocket connections to one room, lets S of
 * them send (at R msg/s each, or as fast as a window of unacknowledged
 * messages allows), and measures what every connection receives.
 *
 * Three clients (`client` in the spec): `raw` (the default under Node) speaks
 * WebSocket over plain TCP sockets and parses each frame in place in the
 * received bytes, without a string or an event per frame, so the load
 * generator is not the limit even against the fastest servers (its own CPU
 * is reported beside the server's); `bun` is Bun's global WebSocket, `ws` is
 * Node's `ws`. One process, one event loop: every timestamp comes from the
 * same clock, so latency is receive time minus the send time in the payload.
 *
 * Usage: `node --import tsx bench/loadgen.ts '<json LoadSpec>'` or
 * `bun bench/loadgen.ts '<json>'`; prints one JSON {@link LoadResult} line.
 *
 * Every message's text is `~sender~seq~sentAtMicros~`; the servers under test
 * broadcast either the client's frame as is (baselines) or a JSON object with
 * the same `message` field (ours, seed mode), so one parser reads both.
 */
import { readFileSync } from "node:fs";
import * as net from "node:net";

/** What to run. Every phase is bounded in time. */
export interface LoadSpec {
  /** ws://127.0.0.1:PORT/path?query */
  url: string;
  /** `fanout`/`saturation` send and measure deliveries; `idle` only connects and holds. */
  scenario: "fanout" | "saturation" | "idle";
  /** Connections to open. */
  clients: number;
  /** The first `senders` connections also send. @default 0 */
  senders?: number;
  /** Messages per second per sender; 0 = saturation (window-limited). @default 0 */
  rate?: number;
  /** Saturation: most messages a sender has sent and not yet received back. @default 16 */
  window?: number;
  /** How long senders send. @default 5000 */
  durationMs?: number;
  /** Longest wait, after sending stops, for every delivery to arrive. @default 5000 */
  drainMs?: number;
  /** Connection attempts in flight at once. @default 100 */
  connectConcurrency?: number;
  /** Longest the whole connect phase may take. @default 60000 */
  connectTimeoutMs?: number;
  /** Idle: how long connections are held before RSS is read. @default 2000 */
  holdMs?: number;
  /** The server's pid, to read its RSS from /proc (Linux). */
  serverPid?: number;
  /** Extra characters in each message, to model longer chat lines. @default 0 */
  padding?: number;
  /** Which WebSocket client: see the file's comment. @default "raw" under Node, "bun" under Bun */
  client?: "raw" | "ws" | "bun";
  /**
   * Raw client: connections are spread over this many source addresses (a
   * block of 127.0.0.x picked at random per run), each with its own
   * ephemeral ports, so tens of thousands of connections never run out of
   * ports. @default 1 + clients / 10000
   */
  sourceAddresses?: number;
}

/** Latency percentiles in milliseconds. */
export interface Latency {
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** What one run measured. */
export interface LoadResult {
  scenario: LoadSpec["scenario"];
  runtime: string;
  clients: number;
  connected: number;
  connectErrors: number;
  /** Wall time to open every connection. */
  connectMs: number;
  /** Per-connection handshake time. */
  connectLatency: Latency;
  senders: number;
  sent: number;
  /** sent x clients: what zero loss means. */
  expected: number;
  /** Unique messages received, all connections together. */
  delivered: number;
  /** Deliveries per second over the sending phase (deliveries that arrived in it). */
  deliveriesPerSec: number;
  /** Messages sent per second over the sending phase. */
  messagesPerSec: number;
  lost: number;
  duplicates: number;
  /** Messages received after a later one of the same sender. */
  reordered: number;
  /** Connections the server closed during the run. */
  closedEarly: number;
  latency: Latency;
  /** Server RSS before connecting and at the end of the connect/hold phase, in KiB. */
  rssBeforeKiB: number | null;
  rssAfterKiB: number | null;
  rssPerConnKiB: number | null;
  /**
   * Server CPU time (user + system) over the sending phase and drain, and
   * per delivery: less sensitive to a busy machine than deliveries/s.
   */
  serverCpuMs: number | null;
  serverCpuMicrosPerDelivery: number | null;
  /** Frames received that carried no bench payload (welcome, presence, errors). */
  otherFrames: number;
  /**
   * Server CPU time spent per connection opened (handshake, join, welcome),
   * in µs: steadier than connect time on a busy machine. (Clock ticks are
   * 10 ms, so a few hundred connections are needed for a useful number.)
   */
  connectCpuMicrosPerConn: number | null;
  /** The client used. */
  client: string;
  /**
   * Share of one core the server and the load generator used over the
   * sending phase and drain (100 = one core busy): a load generator near
   * 100 is the limit, not the server.
   */
  serverCpuPercent: number | null;
  loadgenCpuPercent: number | null;
  /** Why the run is not trustworthy, if it is not. */
  errors: string[];
}

declare const Bun: { version: string } | undefined;
const isBun = typeof Bun !== "undefined";
const runtime = isBun ? `bun ${Bun?.version}` : `node ${process.version}`;

/** A log-bucketed latency histogram: 1% relative precision, microseconds. */
class Histogram {
  readonly #counts = new Float64Array(2400);
  #max = 0;
  #n = 0;

  record(micros: number): void {
    const v = Math.max(micros, 1);
    if (v > this.#max) this.#max = v;
    const i = Math.min(this.#counts.length - 1, Math.floor(Math.log(v) * 100));
    this.#counts[i] = (this.#counts[i] ?? 0) + 1;
    this.#n++;
  }

  #quantile(q: number): number {
    if (this.#n === 0) return 0;
    const target = Math.ceil(q * this.#n);
    let seen = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      seen += this.#counts[i] ?? 0;
      if (seen >= target) return Math.min(this.#max, Math.exp((i + 1) / 100));
    }
    return this.#max;
  }

  /** Percentiles in milliseconds. */
  summary(): Latency {
    const ms = (us: number) => Math.round(us) / 1000;
    return {
      p50: ms(this.#quantile(0.5)),
      p90: ms(this.#quantile(0.9)),
      p99: ms(this.#quantile(0.99)),
      max: ms(this.#max),
    };
  }
}

/** Per receiver and sender: the highest seq seen and the seqs skipped over. */
interface Track {
  max: number;
  /** Seqs jumped over; a later arrival of one is a reorder, not a duplicate. */
  missing: Set<number> | null;
}

/** One connection's bookkeeping. */
interface Conn {
  index: number;
  tracks: Track[];
  /** For senders: messages sent and messages of its own received back. */
  sent: number;
  acked: number;
  open: boolean;
  send: (text: string) => void;
  close: () => void;
}

const MARK = '"message":"~';
const MARK_BYTES = Buffer.from(MARK);

/** Reads the unsigned integer at `i` of a byte buffer; returns [value, index after]. */
function readIntBytes(b: Uint8Array, i: number): [number, number] {
  let v = 0;
  let c = b[i] ?? 0;
  while (c >= 48 && c <= 57) {
    v = v * 10 + (c - 48);
    c = b[++i] ?? 0;
  }
  return [v, i];
}

function readIntString(s: string, i: number): [number, number] {
  let v = 0;
  let c = s.charCodeAt(i);
  while (c >= 48 && c <= 57) {
    v = v * 10 + (c - 48);
    c = s.charCodeAt(++i);
  }
  return [v, i];
}

function rssKiB(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** User + system CPU time of a process in ms, from /proc (Linux; clock ticks are 100 Hz there). */
function cpuMs(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name, which is in parentheses and may hold spaces.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return null;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** What the raw client tells its connection. */
interface RawHandlers {
  opened(): void;
  /**
   * One text frame; its payload is b[start, end) (valid until the handler
   * returns). `at`: when the chunk holding it was read (one clock read per
   * chunk, not per frame: every frame of a chunk arrived together).
   */
  frame(b: Buffer, start: number, end: number, at: number): void;
  closed(): void;
  failed(error: Error): void;
}

/**
 * A minimal WebSocket client over TCP, for the bench only: it sends masked
 * text frames (with a zero mask, which leaves the payload as is: any key is
 * valid, and servers unmask whatever the key), answers pings, and parses the
 * server's frames in place in the received chunk. Hand-rolled because every
 * client library makes a string or a Buffer and an event per frame, which at
 * millions of frames per second costs more than the servers under test.
 */
function openRaw(
  url: URL,
  localAddress: string | undefined,
  h: RawHandlers,
): { send(text: string): void; destroy(): void } {
  const socket = net.connect({ host: url.hostname, port: Number(url.port), ...(localAddress ? { localAddress } : {}) });
  socket.setNoDelay(true);
  let upgraded = false;
  let pending: Buffer | null = null;
  const request =
    `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  socket.once("connect", () => socket.write(request));
  const control = (opcode: number, payload: Buffer) => {
    const head = Buffer.from([0x80 | opcode, 0x80 | payload.length, 0, 0, 0, 0]);
    socket.write(Buffer.concat([head, payload]));
  };
  const parse = (b: Buffer, now: number) => {
    let i = 0;
    while (b.length - i >= 2) {
      const opcode = b[i]! & 0x0f;
      let len = b[i + 1]! & 0x7f;
      let at = i + 2;
      if (len === 126) {
        if (b.length - i < 4) break;
        len = b.readUInt16BE(i + 2);
        at = i + 4;
      } else if (len === 127) {
        if (b.length - i < 10) break;
        len = Number(b.readBigUInt64BE(i + 2));
        at = i + 10;
      }
      if (b.length < at + len) break;
      if (opcode === 1) h.frame(b, at, at + len, now);
      else if (opcode === 9) control(10, b.subarray(at, at + len));
      else if (opcode === 8) {
        socket.end();
        return null;
      }
      i = at + len;
    }
    return i < b.length ? Buffer.from(b.subarray(i)) : null;
  };
  socket.on("data", (chunk: Buffer) => {
    let b = pending ? Buffer.concat([pending, chunk]) : chunk;
    pending = null;
    if (!upgraded) {
      const end = b.indexOf("\r\n\r\n");
      if (end < 0) {
        pending = Buffer.from(b);
        return;
      }
      if (!b.subarray(0, 16).toString("latin1").startsWith("HTTP/1.1 101")) {
        h.failed(new Error(b.subarray(0, b.indexOf("\r\n")).toString("latin1")));
        socket.destroy();
        return;
      }
      upgraded = true;
      h.opened();
      b = b.subarray(end + 4);
    }
    pending = parse(b, performance.now());
  });
  socket.on("error", (e) => h.failed(e));
  socket.on("close", () => h.closed());
  return {
    send(text) {
      const payload = Buffer.from(text);
      const n = payload.length;
      const head = n < 126 ? 6 : n < 65536 ? 8 : 14;
      const frame = Buffer.allocUnsafe(head + n);
      frame[0] = 0x81;
      if (n < 126) frame[1] = 0x80 | n;
      else if (n < 65536) {
        frame[1] = 0x80 | 126;
        frame.writeUInt16BE(n, 2);
      } else {
        frame[1] = 0x80 | 127;
        frame.writeBigUInt64BE(BigInt(n), 2);
      }
      frame.fill(0, head - 4, head); // the mask key
      payload.copy(frame, head);
      socket.write(frame);
    },
    destroy: () => socket.destroy(),
  };
}

/** Runs one load spec to completion (or its time bounds) and returns what it measured. */
export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const clients = spec.clients;
  const senders = Math.min(spec.senders ?? 0, clients);
  const rate = spec.rate ?? 0;
  const window = spec.window ?? 16;
  const durationMs = spec.durationMs ?? 5000;
  const drainMs = spec.drainMs ?? 5000;
  const concurrency = spec.connectConcurrency ?? 100;
  const connectTimeoutMs = spec.connectTimeoutMs ?? 60_000;
  const padding = "x".repeat(spec.padding ?? 0);
  const errors: string[] = [];

  const latency = new Histogram();
  const connectLatency = new Histogram();
  let delivered = 0;
  let deliveredInWindow = 0;
  let duplicates = 0;
  let reordered = 0;
  let otherFrames = 0;
  let closedEarly = 0;
  let measuring = false;
  let stopping = false;
  const t0 = performance.now();
  const nowMicros = () => Math.round((performance.now() - t0) * 1000);
  const conns: Conn[] = [];
  const senderConns: Conn[] = [];

  /** Called for every payload a connection receives. */
  const onPayload = (conn: Conn, sender: number, seq: number, sentAt: number, receivedAt: number) => {
    const tracks = conn.tracks;
    let track = tracks[sender];
    if (!track) {
      track = { max: -1, missing: null };
      tracks[sender] = track;
    }
    if (seq === track.max + 1) {
      track.max = seq;
    } else if (seq > track.max) {
      track.missing ??= new Set();
      for (let s = track.max + 1; s < seq; s++) track.missing.add(s);
      track.max = seq;
    } else if (track.missing?.delete(seq)) {
      reordered++;
    } else {
      duplicates++;
      return;
    }
    delivered++;
    if (measuring) deliveredInWindow++;
    latency.record(receivedAt - sentAt);
    if (sender === conn.index) {
      conn.acked++;
      if (rate === 0 && !stopping) pump(conn);
    }
  };

  /** A payload at b[start, end), found by its `"message":"~` mark. */
  const onBytes = (conn: Conn, b: Buffer, start: number, end: number, receivedAt: number) => {
    const at = b.indexOf(MARK_BYTES, start);
    if (at < 0 || at + MARK_BYTES.length > end) {
      otherFrames++;
      return;
    }
    const [sender, i1] = readIntBytes(b, at + MARK_BYTES.length);
    const [seq, i2] = readIntBytes(b, i1 + 1);
    const [sentAt] = readIntBytes(b, i2 + 1);
    onPayload(conn, sender, seq, sentAt, receivedAt);
  };

  /**
   * A text frame's payload at b[start, end), read in place, from its end:
   * the payload's `~sender~seq~sentAt~` is the frame's last `~`s (the
   * baselines echo `{"user":..,"message":"~..~"}`, ours adds only `ts`
   * after it), so a backward scan finds it in a few bytes where
   * Buffer#indexOf cost a native call per frame (a quarter of the load
   * generator's time at 3M frames/s). Anything else, or a frame whose
   * numbers do not follow `"message":"~`, is read the slow way.
   */
  const onFrame = (conn: Conn, b: Buffer, start: number, end: number, receivedMs: number) => {
    let i = end - 1;
    while (i > start && b[i] !== 0x7e) i--;
    let sentAt = 0;
    let seq = 0;
    let sender = 0;
    let ok = i > start;
    if (ok) {
      let c = b[--i]!;
      for (let m = 1; c >= 48 && c <= 57; m *= 10, c = b[--i]!) sentAt += (c - 48) * m;
      ok = c === 0x7e;
    }
    if (ok) {
      let c = b[--i]!;
      for (let m = 1; c >= 48 && c <= 57; m *= 10, c = b[--i]!) seq += (c - 48) * m;
      ok = c === 0x7e;
    }
    if (ok) {
      let c = b[--i]!;
      for (let m = 1; c >= 48 && c <= 57; m *= 10, c = b[--i]!) sender += (c - 48) * m;
      ok = c === 0x7e && b[i - 1] === 0x22 && b[i - 2] === 0x3a; // `":~`: the start of `"message":"~`
    }
    const receivedAt = Math.round((receivedMs - t0) * 1000);
    if (ok) onPayload(conn, sender, seq, sentAt, receivedAt);
    else onBytes(conn, b, start, end, receivedAt);
  };

  const onText = (conn: Conn, s: string) => {
    const at = s.indexOf(MARK);
    if (at < 0) {
      otherFrames++;
      return;
    }
    const [sender, i1] = readIntString(s, at + MARK.length);
    const [seq, i2] = readIntString(s, i1 + 1);
    const [sentAt] = readIntString(s, i2 + 1);
    onPayload(conn, sender, seq, sentAt, nowMicros());
  };

  const sendOne = (conn: Conn) => {
    const text = `{"user":"s${conn.index}","message":"~${conn.index}~${conn.sent}~${nowMicros()}~${padding}"}`;
    conn.sent++;
    conn.send(text);
  };

  /** Saturation: keep `window` messages of this sender in flight. */
  const pump = (conn: Conn) => {
    while (conn.open && conn.sent - conn.acked < window) sendOne(conn);
  };

  const client = spec.client ?? (isBun ? "bun" : "raw");
  const WS = client === "ws" ? (await import("ws")).WebSocket : null;
  const target = new URL(spec.url);
  const sources = Math.max(1, Math.min(250, spec.sourceAddresses ?? 1 + Math.floor(clients / 10_000)));
  // A different block of source addresses each run: the previous run's
  // ports to the same address sit in TIME_WAIT for a minute, and a bound
  // connect cannot reuse them (19,000 connections then took 60 s instead of
  // 16-20 s for every target after the first).
  const sourceBase = sources > 1 ? 2 + Math.floor(Math.random() * (253 - sources)) : 0;

  const open = (index: number): Promise<Conn> =>
    new Promise((resolve, reject) => {
      const started = performance.now();
      const conn: Conn = {
        index,
        tracks: [],
        sent: 0,
        acked: 0,
        open: false,
        send: () => {},
        close: () => {},
      };
      const opened = () => {
        conn.open = true;
        connectLatency.record((performance.now() - started) * 1000);
        resolve(conn);
      };
      const closed = () => {
        if (conn.open && !stopping) closedEarly++;
        conn.open = false;
      };
      if (client === "raw") {
        const source = sources > 1 ? `127.0.0.${sourceBase + (index % sources)}` : undefined;
        const raw = openRaw(target, source, {
          opened,
          frame: (b, start, end, at) => onFrame(conn, b, start, end, at),
          closed,
          failed: (e) => {
            if (!conn.open) reject(e);
          },
        });
        conn.send = (t) => raw.send(t);
        conn.close = () => raw.destroy();
      } else if (WS) {
        const ws = new WS(spec.url, { perMessageDeflate: false });
        conn.send = (t) => ws.send(t);
        conn.close = () => ws.terminate();
        ws.on("open", opened);
        ws.on("message", (data: Buffer) => onBytes(conn, data, 0, data.length, nowMicros()));
        ws.on("close", closed);
        ws.on("error", (e: Error) => {
          if (!conn.open) reject(e);
        });
      } else {
        const ws = new WebSocket(spec.url);
        ws.binaryType = "arraybuffer";
        conn.send = (t) => ws.send(t);
        conn.close = () => ws.close();
        ws.onopen = opened;
        ws.onmessage = (e: MessageEvent) =>
          typeof e.data === "string"
            ? onText(conn, e.data)
            : onBytes(conn, Buffer.from(e.data as ArrayBuffer), 0, (e.data as ArrayBuffer).byteLength, nowMicros());
        ws.onclose = closed;
        ws.onerror = () => {
          if (!conn.open) reject(new Error("connect failed"));
        };
      }
    });

  // --- connect, `concurrency` attempts at a time, within connectTimeoutMs ---
  const rssBeforeKiB = rssKiB(spec.serverPid);
  const connectCpuStart = cpuMs(spec.serverPid);
  let connectErrors = 0;
  /** The first few distinct reasons a connection failed. */
  const connectReasons = new Set<string>();
  let next = 0;
  const connectStart = performance.now();
  const deadline = connectStart + connectTimeoutMs;
  const worker = async () => {
    while (next < clients && performance.now() < deadline) {
      const index = next++;
      try {
        conns[index] = await Promise.race([
          open(index),
          sleep(Math.max(0, deadline - performance.now())).then(() => {
            throw new Error("connect timed out");
          }),
        ]);
      } catch (error) {
        connectErrors++;
        const why = `connect: ${error instanceof Error ? error.message : String(error)}`;
        if (connectReasons.size < 5) connectReasons.add(why);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, clients) }, worker));
  const connectMs = performance.now() - connectStart;
  const connectCpuEnd = cpuMs(spec.serverPid);
  const live = conns.filter((c): c is Conn => c !== undefined);
  if (live.length < clients) {
    errors.push(`only ${live.length} of ${clients} connections opened (${[...connectReasons].join("; ")})`);
  }
  for (const c of live) if (c.index < senders) senderConns.push(c);

  let sent = 0;
  let sendMs = 0;
  let cpuStart: number | null = null;
  let serverCpuMs: number | null = null;
  let ownCpuStart: NodeJS.CpuUsage | undefined;
  let wallStart = 0;
  let loadgenCpuPercent: number | null = null;
  let serverCpuPercent: number | null = null;
  if (spec.scenario === "idle") {
    await sleep(spec.holdMs ?? 2000);
  } else if (senderConns.length > 0) {
    // Barrier: the servers register a connection asynchronously after the
    // handshake, so measure only once a message reaches everyone.
    const first = senderConns[0]!;
    sendOne(first);
    const barrierEnd = performance.now() + 10_000;
    while (performance.now() < barrierEnd && live.some((c) => (c.tracks[first.index]?.max ?? -1) < 0)) await sleep(10);
    if (live.some((c) => (c.tracks[first.index]?.max ?? -1) < 0)) errors.push("barrier message did not reach everyone");
    // The barrier message counts like any other.
    measuring = true;
    cpuStart = cpuMs(spec.serverPid);
    ownCpuStart = process.cpuUsage();
    wallStart = performance.now();
    const sendStart = performance.now();
    const timers: ReturnType<typeof setInterval>[] = [];
    if (rate > 0) {
      const every = 1000 / rate;
      senderConns.forEach((c, k) => {
        // Staggered, so the senders do not all fire in the same tick.
        const start = setTimeout(
          () => {
            sendOne(c);
            timers.push(setInterval(() => sendOne(c), every));
          },
          (every * k) / senderConns.length,
        );
        timers.push(start as unknown as ReturnType<typeof setInterval>);
      });
    } else {
      for (const c of senderConns) pump(c);
    }
    await sleep(durationMs);
    stopping = true;
    for (const t of timers) clearInterval(t);
    sendMs = performance.now() - sendStart;
    measuring = false;
    for (const c of senderConns) sent += c.sent;
    const expectedAll = sent * live.length;
    const drainEnd = performance.now() + drainMs;
    while (performance.now() < drainEnd && delivered < expectedAll) await sleep(10);
    const cpuEnd = cpuMs(spec.serverPid);
    if (cpuStart !== null && cpuEnd !== null) serverCpuMs = cpuEnd - cpuStart;
    const own = process.cpuUsage(ownCpuStart);
    const wall = performance.now() - wallStart;
    loadgenCpuPercent = Math.round(((own.user + own.system) / 1000 / wall) * 1000) / 10;
    if (serverCpuMs !== null) serverCpuPercent = Math.round((serverCpuMs / wall) * 1000) / 10;
  }
  const rssAfterKiB = rssKiB(spec.serverPid);

  stopping = true;
  for (const c of live) c.close();

  const expected = sent * live.length;
  let missing = 0;
  for (const c of live) {
    for (const s of senderConns) {
      const t = c.tracks[s.index];
      missing += (t?.missing?.size ?? 0) + (s.sent - 1 - (t?.max ?? -1));
    }
  }
  const seconds = sendMs / 1000;
  return {
    scenario: spec.scenario,
    runtime,
    clients,
    connected: live.length,
    connectErrors,
    connectMs: Math.round(connectMs),
    connectLatency: connectLatency.summary(),
    senders: senderConns.length,
    sent,
    expected,
    delivered,
    deliveriesPerSec: seconds > 0 ? Math.round(deliveredInWindow / seconds) : 0,
    messagesPerSec: seconds > 0 ? Math.round(sent / seconds) : 0,
    lost: missing,
    duplicates,
    reordered,
    closedEarly,
    latency: latency.summary(),
    rssBeforeKiB,
    rssAfterKiB,
    rssPerConnKiB:
      rssBeforeKiB !== null && rssAfterKiB !== null && live.length > 0
        ? Math.round(((rssAfterKiB - rssBeforeKiB) / live.length) * 100) / 100
        : null,
    serverCpuMs,
    serverCpuMicrosPerDelivery:
      serverCpuMs !== null && delivered > 0 ? Math.round((serverCpuMs * 1000 * 100) / delivered) / 100 : null,
    otherFrames,
    connectCpuMicrosPerConn:
      connectCpuStart !== null && connectCpuEnd !== null && live.length > 0
        ? Math.round(((connectCpuEnd - connectCpuStart) * 1000) / live.length)
        : null,
    client,
    serverCpuPercent,
    loadgenCpuPercent,
    errors,
  };
}

const isMain = process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/^.*[\\/]/, ""));
if (isMain) {
  const arg = process.argv[2];
  if (!arg) {
    console.error("usage: loadgen.ts '<json LoadSpec>'");
    process.exit(2);
  }
  const spec = JSON.parse(arg) as LoadSpec;
  // Hard bound on the whole run, whatever happens inside.
  const bound =
    (spec.connectTimeoutMs ?? 60_000) + (spec.durationMs ?? 5000) + (spec.drainMs ?? 5000) + (spec.holdMs ?? 2000);
  setTimeout(() => {
    console.error("loadgen: hard time bound reached");
    process.exit(3);
  }, bound + 20_000).unref();
  const result = await runLoad(spec);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  // Sockets are terminated; exit without waiting for their close handshakes.
  process.exit(0);
}
