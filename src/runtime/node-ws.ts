/**
 * Node's WebSocket side, for src/runtime/node.ts (and Deno's node:http mode):
 * the `ws` server configured for the contract, our sockets over it and the
 * rooms' broadcaster (a turn's frames built once and written to each client
 * in one write), Hono's WebSocket helper over it,
 * and serving the app through @hono/node-server with it.
 *
 * The helper is our own rather than @hono/node-server's:
 * its per-connection closure keeps the
 * upgrade's Hono Context, Request, Headers, URLs and the IncomingMessage
 * alive for the connection's whole life: about 10 KiB of heap per idle
 * connection, more than ws itself needs (docs/benchmarks.md, idle memory).
 * Here the app's middleware only marks the request as accepted; the
 * `upgrade` listener then lets ws finish the handshake and keeps nothing of
 * the request but the app's event handlers.
 */
import { readFileSync } from "node:fs";
import type { IncomingHttpHeaders, IncomingMessage, Server } from "node:http";
import { STATUS_CODES } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Duplex } from "node:stream";
import { serve } from "@hono/node-server";
import { getQueryParam } from "hono/utils/url";
import { defineWebSocketHelper, type SendOptions, WSContext, type WSContextInit, type WSEvents } from "hono/ws";
import * as wsModule from "ws";
import { WebSocket, WebSocketServer } from "ws";
import { type Answer, answerHeaders, type DirectUpgrades, isWebSocketTarget } from "../app.ts";
import type { Config } from "../config.ts";
import type { RequestView } from "../governance/token.ts";
import type { Broadcaster, ChatSocket } from "../hub/hub.ts";
import type { Logger } from "../observability/logger.ts";
import { selectSubprotocol } from "../protocol.ts";
import type { Session, SessionInit } from "../session.ts";
import { type BuiltChat, currentTurn, Heartbeat, type Served, sameTurn } from "./start.ts";

/**
 * How long a server-side close waits for the client's close frame before the
 * TCP connection is destroyed. ws waits 30 s by default; a client closed with
 * 1013 for not reading would keep its MAX_BUFFERED_BYTES (and more) in memory
 * all that time. A client that reads within this window still sees the
 * 1013; one that does not sees the connection drop (1006).
 */
export const CLOSE_TIMEOUT_MS = 3000;

/** The `ws` server, configured for the contract rather than ws's defaults. */
export function createWsServer(config: Config): WebSocketServer {
  // `closeTimeout` exists since ws 8.18; @types/ws does not list it yet.
  const options: ConstructorParameters<typeof WebSocketServer>[0] & { closeTimeout: number } = {
    closeTimeout: CLOSE_TIMEOUT_MS,
    noServer: true,
    // ws closes with 1009 past this, before buffering the frame.
    maxPayload: config.maxFrameBytes,
    perMessageDeflate: config.wsCompression,
    // ws would select the first offered protocol; the contract selects
    // chat.v1 only, and otherwise none (seed mode).
    handleProtocols: (offered) => selectSubprotocol([...offered].join(",")) ?? false,
    // handleUpgrades keeps the open sockets itself: ws's tracking adds a
    // closure and a listener array to every connection (~150 B each).
    clientTracking: false,
    WebSocket: ChatWebSocket,
  };
  return new WebSocketServer(options);
}

/**
 * The part of a `ws` WebSocket that is not public: its TCP socket. ws 8
 * writes every frame there (Sender#sendFrame), and `bufferedAmount` counts
 * what waits in it, so bytes we write there ourselves keep the slow-consumer
 * rule working. ws is pinned (package.json) and
 * test/unit/node-shared-frame.test.ts fails if this changes.
 */
interface WsInternals {
  _socket: { write(data: Buffer): boolean };
}

/**
 * True while ws hands a client's frame to the app (the poll phase). A room's
 * frames published then are written out with a setImmediate, once the poll
 * phase has read what had arrived, so a turn's log grows with the load by
 * itself (process.nextTick there wrote after each read: HISTORY=memory
 * fan-out cost 8.2 µs of server CPU per delivery against 2.6,
 * docs/benchmarks.md). Any other publish (a SQLite batch's fan-out, after
 * its commit in a setImmediate; a Redis read's; a timer's) is written out on
 * process.nextTick, once the callback that fans the whole batch out has run:
 * a setImmediate queued from inside the check phase would wait for the next
 * turn, whose poll phase reads new frames first, halving the batches under
 * load (65 against 101 deliveries per write in saturation).
 */
let reading = false;

/** Most UTF-16 units of frames a turn's log holds before it is written out within the turn. */
const FLUSH_BYTES = 64 * 1024;

/** `Sender.frame` is a public static of ws (Socket.IO's engine uses it) but @types/ws lacks it. */
const { Sender } = wsModule as unknown as {
  Sender: { frame(data: Buffer, options: Record<string, unknown>): Buffer[] };
};
const TEXT_FRAME = { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false };

/** A server-to-client text frame (unmasked), header and payload in one Buffer. */
export function frameText(text: string): Buffer {
  const parts = Sender.frame(Buffer.from(text), TEXT_FRAME);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/**
 * Our socket on `ws` directly: Hono's WSContext adds nothing on the send
 * path. A class rather than an object of closures: one of these lives per
 * connection, and methods on a prototype cost nothing per connection (tsx's
 * keepNames gives every named closure its own property dictionary, ~250 B).
 */
class WsSocket implements ChatSocket {
  constructor(
    readonly id: string,
    readonly raw: WebSocket,
  ) {}

  /** The turn of {@link fresh} (see bufferedAmount). */
  #turn = -1;
  /** Bytes this socket queued in that turn and not yet handed on. */
  #fresh = 0;

  send(text: string): void {
    if (turnLog !== null) writeOutBefore(this);
    const before = this.raw.bufferedAmount;
    this.raw.send(text);
    this.wrote(before);
  }

  /** Counts what a write queued in this turn (`before`: bufferedAmount before it). */
  protected wrote(before: number): void {
    const now = currentTurn();
    if (now !== this.#turn) {
      this.#turn = now;
      this.#fresh = 0;
    }
    // Never negative: bytes the kernel took meanwhile were older ones.
    const added = this.raw.bufferedAmount - before;
    if (added > 0) this.#fresh += added;
  }

  close(code: number, reason: string): void {
    if (turnLog !== null) writeOutBefore(this);
    this.raw.close(code, reason);
  }

  /**
   * What the client has not taken from earlier turns. Node hands a write to
   * the kernel at once, so this turn's share is what the kernel refused,
   * counted from the next turn; Deno's node:net counts every write as queued
   * until its asynchronous op completes, even for a client that reads, so a
   * turn's writes there would pass for a slow consumer (as on Deno.serve,
   * ./deno-ws.ts).
   */
  bufferedAmount(): number {
    return this.raw.bufferedAmount - (sameTurn(this.#turn) ? this.#fresh : 0);
  }

  pause(ms: number): void {
    // ws stops reading the TCP socket; frames already read still arrive (and are dropped).
    this.raw.pause();
    setTimeout(() => this.raw.resume(), ms).unref();
  }

  /**
   * Writes a channel's frames of this turn ({@link WsBroadcaster}): each
   * text through ws, which compresses it for this connection.
   */
  writeLog(log: TurnLog, _frames: () => readonly Buffer[], _all: Buffer | null, from: number): void {
    const { texts, skip } = log;
    const before = this.raw.bufferedAmount;
    for (let i = from; i < texts.length; i++) if (skip[i] !== this) this.raw.send(texts[i]!);
    this.wrote(before);
  }
}

/**
 * A connection without permessage-deflate: a room's frames are framed once
 * ({@link frameText}) and the same bytes are written to every such socket,
 * instead of ws encoding and framing the text again per recipient.
 * (Compressed connections need their own deflated frame: plain WsSocket.)
 */
class WsFramedSocket extends WsSocket {
  readonly #tcp: WsInternals["_socket"];

  constructor(id: string, raw: WebSocket) {
    super(id, raw);
    this.#tcp = (raw as unknown as WsInternals)._socket;
  }

  /**
   * Writes a channel's frames of this turn as one Buffer: `all` (every
   * frame, the same Buffer for every subscriber) when this socket gets every
   * frame, else the ones from `from` on that it does not skip, out of the
   * log's `frames` (each framed once for every socket). The bytes go to ws's
   * TCP socket, where ws writes its own frames and where `bufferedAmount`
   * counts what the client has not taken.
   */
  override writeLog(log: TurnLog, frames: () => readonly Buffer[], all: Buffer | null, from: number): void {
    // ws.send drops frames once closing starts; so do we.
    if (this.raw.readyState !== 1) return;
    let bytes = all;
    if (bytes === null) {
      const framed = frames();
      const parts: Buffer[] = [];
      for (let i = from; i < framed.length; i++) if (log.skip[i] !== this) parts.push(framed[i]!);
      if (parts.length === 0) return;
      bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    }
    const before = this.raw.bufferedAmount;
    this.#tcp.write(bytes);
    this.wrote(before);
  }
}

/**
 * A channel's frames published in this turn and not written yet (see
 * {@link WsBroadcaster}). One at a time in the process: a publish to another
 * channel, or a direct send or close to one of its subscribers, writes it
 * out first, so every client gets its frames in the order they were sent.
 */
interface TurnLog {
  broadcaster: WsBroadcaster;
  channel: string;
  texts: string[];
  /** UTF-16 units in `texts`: the log is written out past {@link FLUSH_BYTES}. */
  size: number;
  /** Per frame, the socket it skips (the sender, whose echo went separately), or null. */
  skip: (WsSocket | null)[];
  /** Subscribers added since the log began: the index of their first frame. */
  joinedAt: Map<WsSocket, number> | null;
}

let turnLog: TurnLog | null = null;

/** Writes the turn's log out at the end of the turn (see {@link reading}). */
function endOfTurn(): void {
  if (turnLog !== null) writeOut(turnLog);
}

/** Before a direct send to (or close of) `socket`: its broadcast frames go first. */
function writeOutBefore(socket: WsSocket): void {
  const log = turnLog!;
  if (log.broadcaster.has(log.channel, socket)) writeOut(log);
}

function writeOut(log: TurnLog): void {
  turnLog = null;
  log.broadcaster.write(log);
}

/**
 * The rooms' fan-out on ws, as BunBroadcaster is on Bun (the hub's
 * {@link Broadcaster}): a room subscribes its released members, and the
 * frames a channel gets in one event-loop turn are framed once, joined into
 * one Buffer and written to each subscriber with one write at the end of
 * the turn. A delivery then costs a share of one write per client per turn,
 * where the plain corked ws server (bench/servers/ws-corked.ts) queues a
 * chunk per frame and client for a writev. Member.deliver's checks (held
 * frames, ids the welcome covered, ws's bufferedAmount) stay for members not
 * released yet; a subscriber found past `maxBuffered` when the log is
 * written makes the channel's next publish report it, and the room then
 * checks its members' backlogs (the slow-consumer rule). Saturation, 200
 * clients: see docs/benchmarks.md.
 */
export class WsBroadcaster implements Broadcaster {
  readonly #channels = new Map<string, Set<WsSocket>>();
  /** Channels with a subscriber past maxBuffered when their log was last written. */
  readonly #over = new Set<string>();

  /** UTF-16 units a turn's log holds before it is written out. */
  readonly #step: number;

  /** @param maxBuffered MAX_BUFFERED_BYTES: a subscriber with more queued is reported */
  constructor(readonly maxBuffered: number) {
    this.#step = Math.max(1024, Math.min(FLUSH_BYTES, Math.floor(maxBuffered / 8)));
  }

  subscribe(socket: ChatSocket, channel: string): void {
    // Only ours can be written to here; a foreign socket would silently miss broadcasts.
    if (!(socket instanceof WsSocket)) throw new TypeError("WsBroadcaster serves only sockets made by toSocket");
    let sockets = this.#channels.get(channel);
    if (sockets === undefined) {
      sockets = new Set();
      this.#channels.set(channel, sockets);
    }
    sockets.add(socket);
    // Frames already in this turn's log were published before it joined.
    const log = turnLog;
    if (log !== null && log.broadcaster === this && log.channel === channel) {
      log.joinedAt ??= new Map();
      log.joinedAt.set(socket, log.texts.length);
    }
  }

  unsubscribe(socket: ChatSocket, channel: string): void {
    const sockets = this.#channels.get(channel);
    if (sockets === undefined || !sockets.delete(socket as WsSocket)) return;
    if (sockets.size === 0) this.#channels.delete(channel);
  }

  /** True when `socket` is subscribed to `channel`. */
  has(channel: string, socket: WsSocket): boolean {
    return this.#channels.get(channel)?.has(socket) === true;
  }

  publish(channel: string, text: string, except: ChatSocket | null): boolean {
    let log = turnLog;
    if (log !== null && (log.broadcaster !== this || log.channel !== channel)) {
      writeOut(log);
      log = null;
    }
    if (this.#channels.has(channel)) {
      if (log === null) {
        log = { broadcaster: this, channel, texts: [], size: 0, skip: [], joinedAt: null };
        turnLog = log;
        if (reading) setImmediate(endOfTurn);
        else process.nextTick(endOfTurn);
      }
      log.texts.push(text);
      log.skip.push(except as WsSocket | null);
      log.size += text.length;
      // Bounded: a long burst goes out in steps, as a cork does, small next
      // to maxBuffered, so that one step never passes for a slow reader.
      if (log.size >= this.#step) writeOut(log);
    }
    return this.#over.delete(channel);
  }

  /** Writes a log out to the channel's subscribers (called through {@link writeOut}). */
  write(log: TurnLog): void {
    const sockets = this.#channels.get(log.channel);
    if (sockets === undefined) return;
    const { joinedAt } = log;
    // Sockets that skip a frame of this log (a sender whose echo went directly).
    const skipping = log.skip.some((s) => s !== null) ? new Set(log.skip) : null;
    let framed: Buffer[] | null = null;
    const frames = () => {
      framed ??= log.texts.map(frameText);
      return framed;
    };
    let all: Buffer | null = null;
    let over = false;
    for (const socket of sockets) {
      const from = joinedAt?.get(socket) ?? 0;
      const whole = from === 0 && !skipping?.has(socket);
      if (whole && all === null) {
        const f = frames();
        all = f.length === 1 ? f[0]! : Buffer.concat(f);
      }
      socket.writeLog(log, frames, whole ? all : null, from);
      // What it has not taken from earlier turns (see WsSocket.bufferedAmount).
      if (socket.bufferedAmount() > this.maxBuffered) over = true;
    }
    if (over) this.#over.add(log.channel);
  }
}

/** Our socket for a ws connection: pre-framed room sends unless it is compressed. */
export function toSocket(ws: WSContext, id: string): ChatSocket {
  return socketOf(ws.raw as WebSocket, id);
}

function socketOf(raw: WebSocket, id: string): ChatSocket {
  return raw.extensions === "" ? new WsFramedSocket(id, raw) : new WsSocket(id, raw);
}

/** Upgrades the app accepted, until the `upgrade` listener picks them up. */
const accepted = new WeakMap<IncomingMessage, WSEvents<WebSocket>>();

/**
 * The helper the app's `/websocket` route uses (`upgradeWebSocket((c) =>
 * events)`); it needs {@link handleUpgrades} on the server to do anything.
 */
export const upgradeWebSocket = defineWebSocketHelper<WebSocket>(async (c, events) => {
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (!incoming) return new Response(JSON.stringify({ error: "not a Node upgrade" }), { status: 500 });
  accepted.set(incoming, events);
  // Never sent: the upgrade listener answers with ws's 101 instead.
  return new Response(null, { status: 200 });
});

type Fetch = (req: Request, env: { incoming: IncomingMessage }) => Response | Promise<Response>;

const ignore = () => {};

/**
 * The headers of an upgrade request, read from Node's already parsed
 * `req.headers` (names lower-cased, repeats joined) through the part of the
 * Headers API the app uses.
 */
class UpgradeHeaders {
  constructor(readonly incoming: IncomingHttpHeaders) {}

  get(name: string): string | null {
    const v = this.incoming[name.toLowerCase()];
    return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
  }

  has(name: string): boolean {
    return this.incoming[name.toLowerCase()] !== undefined;
  }

  forEach(fn: (value: string, key: string, parent: UpgradeHeaders) => void): void {
    for (const [key, value] of this.entries()) fn(value, key, this);
  }

  *entries(): IterableIterator<[string, string]> {
    for (const key of Object.keys(this.incoming).sort()) yield [key, this.get(key)!];
  }

  *keys(): IterableIterator<string> {
    for (const [key] of this.entries()) yield key;
  }

  *values(): IterableIterator<string> {
    for (const [, value] of this.entries()) yield value;
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }
}

/**
 * The Fetch API view of an upgrade request: what Hono and the app read of
 * it (method, URL, headers; an upgrade has no body). Not a full `Request`:
 * building one (undici's, with its Headers, URL and AbortSignal) for every
 * handshake was about a third of the app's share of a handshake's CPU
 * (docs/benchmarks.md, connect time).
 */
function toRequest(req: IncomingMessage): Request {
  return {
    method: req.method ?? "GET",
    url: upgradeUrl(req),
    headers: new UpgradeHeaders(req.headers),
  } as unknown as Request;
}

function upgradeUrl(req: IncomingMessage): string {
  const encrypted = (req.socket as { encrypted?: boolean }).encrypted === true;
  const target = req.url?.startsWith("/") ? req.url : "/"; // absolute-form targets are not served
  return `${encrypted ? "https" : "http"}://${req.headers.host ?? "localhost"}${target}`;
}

/** An upgrade's URL query and headers as the app's checks read them ({@link DirectUpgrades}). */
class UpgradeView implements RequestView {
  #url: string | null = null;

  constructor(readonly req: IncomingMessage) {}

  header(name: string): string | undefined {
    // Node's names are lower case, as the app's are: toLowerCase would copy each.
    const v = this.req.headers[hasUpperCase(name) ? name.toLowerCase() : name];
    return Array.isArray(v) ? v.join(", ") : v;
  }

  query(name: string): string | undefined {
    // The URL Hono would see (toRequest), read by Hono's own query parser.
    this.#url ??= upgradeUrl(this.req);
    return getQueryParam(this.#url, name) as string | undefined;
  }
}

function hasUpperCase(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c >= 0x41 && c <= 0x5a) return true;
  }
  return false;
}

/**
 * Writes the app's answer to a refused upgrade, body included (the contract
 * wants the JSON error, not just the status), and closes the socket.
 */
async function refuse(socket: Duplex, res: Response): Promise<void> {
  const body = Buffer.from(await res.arrayBuffer());
  const headers: [string, string][] = [];
  res.headers.forEach((value, key) => {
    headers.push([key, value]);
  });
  await writeRefusal(socket, res.status, headers, body);
}

/** {@link refuse} for an answer made without a Response; the headers as a Response would list them. */
function refuseDirect(socket: Duplex, answer: Answer, security: readonly (readonly [string, string])[]): Promise<void> {
  return writeRefusal(socket, answer.status, answerHeaders(answer, security), Buffer.from(JSON.stringify(answer.body)));
}

async function writeRefusal(
  socket: Duplex,
  status: number,
  headers: readonly (readonly [string, string])[],
  body: Buffer,
): Promise<void> {
  const head = [
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Error"}`,
    "Connection: close",
    `Content-Length: ${body.length}`,
  ];
  for (const [key, value] of headers) {
    if (key !== "content-length" && key !== "connection") head.push(`${key}: ${value}`);
  }
  if (socket.destroyed) return;
  await new Promise<void>((resolve) => {
    socket.once("error", () => resolve());
    socket.write(Buffer.concat([Buffer.from(`${head.join("\r\n")}\r\n\r\n`), body]), () => resolve());
  });
  socket.destroy();
}

/**
 * What the WSContext reads from: the ws socket only. A class, so a
 * connection costs one small object rather than a set of closures.
 */
class WsContextInit implements WSContextInit<WebSocket> {
  constructor(readonly raw: WebSocket) {}

  get protocol(): string {
    return this.raw.protocol;
  }

  get readyState(): 0 | 1 | 2 | 3 {
    return this.raw.readyState as 0 | 1 | 2 | 3;
  }

  send(data: string | ArrayBuffer | Uint8Array, options: SendOptions): void {
    this.raw.send(data, { compress: options.compress ?? false });
  }

  close(code?: number, reason?: string): void {
    this.raw.close(code, reason);
  }
}

type EventName = "onOpen" | "onMessage" | "onClose" | "onError";

/**
 * Calls an app handler as a method (the app's events may be a class); one
 * that throws must not take the process down with it.
 */
function dispatch(conn: Conn, name: EventName, event: unknown): void {
  try {
    (conn.events[name] as ((this: unknown, event: never, ws: WSContext<WebSocket>) => void) | undefined)?.call(
      conn.events,
      event as never,
      conn.ctx,
    );
  } catch (error) {
    console.error(error);
  }
}

/** What a ws connection carries for the app: its events and its one WSContext. */
class Conn {
  readonly ctx: WSContext<WebSocket>;

  constructor(
    ws: WebSocket,
    readonly events: WSEvents<WebSocket>,
  ) {
    this.ctx = new WSContext<WebSocket>(new WsContextInit(ws));
  }
}

/** One server's part in its sockets' events ({@link ChatWebSocket}). */
interface SocketSide {
  /** The socket closed: forget it, tell the app (Conn: its events; Session: the direct route). */
  closed(ws: ChatWebSocket, code: number, reason: Buffer): void;
  /** The socket failed (ws closes it next). */
  failed(ws: ChatWebSocket, error: Error): void;
  ponged(ws: ChatWebSocket): void;
}

/**
 * ws's WebSocket (`options.WebSocket`) with what a connection needs in its
 * own fields, and the events ws emits on it (message, close, error, pong)
 * handed on in `emit` itself. No listener is added per connection: four of
 * them grew each socket's event table by ~100 B, a symbol property for the
 * app's side cost a property array (~40 B), and the heartbeat a WeakMap
 * entry (docs/benchmarks.md, idle memory). Anything else, or a socket
 * nothing is attached to, goes to ws's EventEmitter as usual.
 */
export class ChatWebSocket extends WebSocket {
  /** The app's side: its Session (the direct route) or its events (through Hono). */
  app: Session | Conn | null = null;
  side: SocketSide | null = null;
  /** The heartbeat's round of the last pong (see Heartbeat). */
  pongRound = 0;

  override emit(event: string | symbol, a?: unknown, b?: unknown): boolean {
    const app = this.app;
    const side = this.side;
    if (app === null || side === null) {
      // Nothing attached yet: ws closes a failed socket itself.
      if (event === "error" && this.listenerCount("error") === 0) return false;
      return super.emit(event, a, b);
    }
    switch (event) {
      case "message":
        onMessage(app, a as Buffer, b as boolean);
        return true;
      case "close":
        side.closed(this, a as number, b as Buffer);
        return true;
      case "error":
        side.failed(this, a as Error);
        return true;
      case "pong":
        side.ponged(this);
        return true;
      default:
        return super.emit(event, a, b);
    }
  }
}

/**
 * A frame for the app. The app reads `data` of a message event; a plain
 * object stands in for MessageEvent (costly to construct in Node).
 */
function onMessage(app: Session | Conn, data: Buffer, isBinary: boolean): void {
  const payload = isBinary
    ? (data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer)
    : data.toString("utf8");
  reading = true;
  try {
    if (app instanceof Conn) dispatch(app, "onMessage", { type: "message", data: payload });
    else app.message(payload);
  } catch (error) {
    console.error(error);
  } finally {
    reading = false;
  }
}

/** The app's close and error events through Hono's handlers (CloseEvent is absent in Node 20). */
function closeConn(conn: Conn, code: number, reason: Buffer): void {
  dispatch(conn, "onClose", { type: "close", code, reason: reason.toString(), wasClean: true });
}

function failConn(conn: Conn, error: Error): void {
  dispatch(conn, "onError", { type: "error", error, message: error.message });
}

const OPEN_EVENT = { type: "open" };

/**
 * Answers `GET /websocket` through the app's {@link DirectUpgrades}, the
 * way the plain ws server answers any upgrade: synchronously in the
 * `upgrade` event when no check needs a promise (no token, no name to look
 * up in the bans), and with nothing per connection but the app's session
 * on the ws socket and ws's own listeners. Returns a handler that answers
 * and returns true, or returns false for requests it leaves to the app's
 * `fetch`.
 */
function directUpgrades(
  wss: WebSocketServer,
  direct: DirectUpgrades,
  side: SocketSide,
  opened: (ws: ChatWebSocket) => void,
): (req: IncomingMessage, socket: Duplex, head: Buffer) => boolean {
  let headerLines: string[] = [];
  let headersFrom: DirectUpgrades["headers"] = null;
  /** The session parameters of the upgrade ws is completing (it calls back synchronously). */
  let completing: SessionInit | null = null;
  wss.on("headers", (headers: string[]) => {
    if (completing !== null) for (const line of headerLines) headers.push(line);
  });
  const completed = (ws: WebSocket) => {
    const init = completing;
    if (init === null) {
      ws.terminate(); // not ours to complete; cannot happen while ws calls back synchronously
      return;
    }
    completing = null;
    const chat = ws as ChatWebSocket;
    chat.app = direct.open(init, ws, socketOf);
    chat.side = side;
    opened(chat);
  };
  const answer = (
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    admitted: SessionInit | Answer,
    security: readonly (readonly [string, string])[],
  ) => {
    if (socket.destroyed) return;
    if ("status" in admitted) {
      void refuseDirect(socket, admitted, security);
      return;
    }
    completing = admitted;
    try {
      wss.handleUpgrade(req, socket, head, completed);
    } finally {
      completing = null;
    }
  };
  return (req, socket, head) => {
    const security = direct.headers;
    if (security === null || req.method !== "GET" || req.url === undefined || !isWebSocketTarget(req.url)) return false;
    if (security !== headersFrom) {
      headersFrom = security;
      // The app's response headers (security headers) go on the 101 too.
      headerLines = security
        .filter(([key]) => key !== "content-length" && key !== "content-type")
        .map(([key, value]) => `${key}: ${value}`);
    }
    const admitted = direct.admit(new UpgradeView(req), req.socket.remoteAddress);
    if (!(admitted instanceof Promise)) {
      answer(req, socket, head, admitted, security);
      return true;
    }
    // A client that resets while the checks wait must not crash the process.
    socket.on("error", ignore);
    void admitted.then((a) => {
      socket.off("error", ignore);
      answer(req, socket, head, a, security);
    });
    return true;
  };
}

/**
 * Answers every `upgrade` request of `server` through the app: `GET
 * /websocket` through `direct` when given, the rest through `fetch`.
 * Accepted ones are completed by `wss` (made by {@link createWsServer}),
 * the rest get the app's response. Returns the open sockets (`wss` does not
 * track them).
 */
export function handleUpgrades(
  server: Server,
  wss: WebSocketServer,
  fetch: Fetch,
  direct?: DirectUpgrades,
  heartbeatMs = 0,
): { clients: ReadonlySet<ChatWebSocket>; heartbeat: Heartbeat<ChatWebSocket> } {
  const clients = new Set<ChatWebSocket>();
  const heartbeat = new Heartbeat(() => clients, heartbeatMs, {
    get: (ws) => ws.pongRound,
    set: (ws, round) => {
      ws.pongRound = round;
    },
  });
  const side: SocketSide = {
    closed(ws, code, reason) {
      clients.delete(ws);
      const app = ws.app!;
      if (app instanceof Conn) closeConn(app, code, reason);
      else direct?.closed(app, code);
    },
    failed(ws, error) {
      const app = ws.app!;
      if (app instanceof Conn) failConn(app, error);
      else direct?.closed(app, 1011);
    },
    ponged(ws) {
      heartbeat.ponged(ws);
    },
  };
  const opened = (ws: ChatWebSocket) => {
    clients.add(ws);
    heartbeat.opened(ws);
  };
  const answerDirect = direct ? directUpgrades(wss, direct, side, opened) : null;
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (answerDirect?.(req, socket, head)) return;
    // A client that resets mid-handshake must not crash the process.
    socket.on("error", ignore);
    void (async () => {
      let res: Response;
      try {
        res = await fetch(toRequest(req), { incoming: req });
      } catch {
        res = new Response(JSON.stringify({ error: "bad request" }), {
          status: 400,
          headers: { "content-type": "application/json" },
        });
      }
      const events = accepted.get(req);
      accepted.delete(req);
      if (socket.destroyed) return;
      if (!events) {
        await refuse(socket, res);
        return;
      }
      // The app's response headers (security headers) go on the 101 too.
      const addHeaders = (headers: string[]) => {
        res.headers.forEach((value, key) => {
          if (key !== "content-length" && key !== "content-type") headers.push(`${key}: ${value}`);
        });
      };
      wss.on("headers", addHeaders);
      try {
        wss.handleUpgrade(req, socket, head, (ws) => {
          socket.off("error", ignore);
          const chat = ws as ChatWebSocket;
          const conn = new Conn(ws, events);
          chat.app = conn;
          chat.side = side;
          opened(chat);
          dispatch(conn, "onOpen", OPEN_EVENT);
        });
      } finally {
        wss.off("headers", addHeaders);
      }
    })();
  });
  return { clients, heartbeat };
}

/**
 * Serves the app with @hono/node-server (HTTP) and our `ws` server
 * (upgrades, heartbeat): Node's server, and Deno's with DENO_SERVER=node.
 */
export function serveWithWs(chat: BuiltChat, config: Config, logger: Logger): Promise<Served> {
  const wss = createWsServer(config);
  const tls = config.tls;
  return new Promise((resolve) => {
    const server = serve(
      {
        fetch: chat.app.fetch,
        port: config.port,
        hostname: config.host,
        ...(tls
          ? {
              createServer: createHttpsServer,
              serverOptions: { cert: readFileSync(tls.cert), key: readFileSync(tls.key) },
            }
          : {}),
      },
      (info) => resolve(served(info.port)),
    ) as Server;
    // Our own upgrade handling, not the adapter's `websocket` option: it
    // keeps nothing of the request alive per connection.
    const { clients, heartbeat } = handleUpgrades(server, wss, chat.app.fetch, chat.direct, config.heartbeatMs);
    server.on("error", (error) => {
      logger.error({ err: error }, "server error");
      process.exit(1);
    });
    const served = (port: number): Served => ({
      port,
      stopAccepting() {
        heartbeat.stop();
        server.close(); // no new connections; open ones are closed by the chat
      },
      openSockets: () => clients.size,
      closeAll() {
        for (const ws of clients) ws.terminate();
        server.closeAllConnections?.();
      },
    });
  });
}
