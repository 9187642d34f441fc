/**
 * Bun's WebSocket side, for src/runtime/bun.ts: Hono's WebSocket helper over
 * `server.upgrade` (our own), the socket adapter, the room broadcaster, and
 * Bun's `websocket` options (limits, heartbeat).
 *
 * The helper is our own, as ./node-ws.ts is on Node: hono/bun's makes a new
 * WSContext for every event (which parses the connection's URL again) and a
 * `MessageEvent` for every frame, and keeps a parsed URL per connection; its
 * profile share was ~11% of a saturation run (docs/benchmarks.md). Here a
 * connection has one WSContext, made at open, and a frame is handed on as a
 * plain `{ data }`: the app reads nothing else. It also applies the
 * contract's subprotocol rule (hono/bun echoes the first offered protocol).
 */
import { defineWebSocketHelper, type SendOptions, WSContext, type WSContextInit, type WSEvents } from "hono/ws";
import { type Answer, answerHeaders, type DirectUpgrades, isWebSocketTarget } from "../app.ts";
import type { Config } from "../config.ts";
import type { RequestView } from "../governance/token.ts";
import type { Broadcaster, ChatSocket } from "../hub/hub.ts";
import { CloseCode, selectSubprotocol } from "../protocol.ts";
import type { Session, SessionInit } from "../session.ts";
import { Heartbeat } from "./start.ts";

/**
 * What a connection carries in Bun's `ws.data`: the app's events and their
 * WSContext (through Hono's route), or its session (the direct route, see
 * {@link directUpgrade}).
 */
interface BunData {
  events: WSEvents<BunSocket> | null;
  protocol: string;
  /** Made once, at open. */
  ctx: WSContext<BunSocket> | null;
  /** Direct route: the checked parameters until open, then the session. */
  init: SessionInit | null;
  session: Session | null;
  /** The heartbeat's round of the last pong (here, not in a WeakMap entry per connection). */
  pongRound: number;
}

/** The slice of Bun's ServerWebSocket used here. */
export interface BunSocket {
  readonly readyState: number;
  readonly data: BunData;
  send(data: string | ArrayBuffer | Uint8Array, compress?: boolean): number;
  close(code?: number, reason?: string): void;
  terminate(): void;
  ping(): number;
  getBufferedAmount(): number;
  /** Sends everything `fn` sends in one write. */
  cork(fn: (ws: BunSocket) => void): void;
}

/** The slice of Bun's Server used here. */
export interface BunServer {
  readonly port: number;
  upgrade(req: Request, options: { data: BunData; headers?: HeadersInit }): boolean;
  stop(closeActiveConnections?: boolean): Promise<void>;
}

/**
 * The helper the app's `/websocket` route uses. The app's fetch must get
 * `{ server }` (Bun's second fetch argument) as its env, which is also what
 * hono/bun's getConnInfo reads.
 */
export const upgradeWebSocket = defineWebSocketHelper<BunSocket>(async (c, events) => {
  const server = (c.env as { server?: BunServer } | undefined)?.server;
  if (!server) throw new TypeError("the app's env must hold Bun's server as `server`");
  // The contract selects chat.v1 wherever it is offered, else none (an
  // empty header sends none).
  const protocol = selectSubprotocol(c.req.header("sec-websocket-protocol")) ?? "";
  const data: BunData = { events, protocol, ctx: null, init: null, session: null, pongRound: 0 };
  if (server.upgrade(c.req.raw, { data, headers: { "Sec-WebSocket-Protocol": protocol } })) {
    // Bun answers the upgrade itself; this response is not sent.
    return new Response(null);
  }
  return new Response(JSON.stringify({ error: "not a valid WebSocket handshake" }), {
    status: 400,
    headers: { "content-type": "application/json" },
  });
});

/** What the WSContext reads from: Bun's socket only (one small object per connection). */
class BunContextInit implements WSContextInit<BunSocket> {
  constructor(readonly raw: BunSocket) {}

  get protocol(): string {
    return this.raw.data.protocol;
  }

  get readyState(): 0 | 1 | 2 | 3 {
    return this.raw.readyState as 0 | 1 | 2 | 3;
  }

  send(data: string | ArrayBuffer | Uint8Array, options: SendOptions): void {
    this.raw.send(data, options.compress ?? false);
  }

  close(code?: number, reason?: string): void {
    this.raw.close(code, reason);
  }
}

type EventName = "onOpen" | "onMessage" | "onClose" | "onError";

/**
 * Calls an app handler as a method (the app's events may be a class); one
 * that throws must not take Bun's handler (and the process) down.
 */
function dispatch(ws: BunSocket, name: EventName, event: unknown): void {
  const events = ws.data.events;
  if (events === null) return;
  try {
    (events[name] as ((this: unknown, event: never, ctx: WSContext<BunSocket>) => void) | undefined)?.call(
      events,
      event as never,
      contextOf(ws),
    );
  } catch (error) {
    console.error(error);
  }
}

function contextOf(ws: BunSocket): WSContext<BunSocket> {
  let ctx = ws.data.ctx;
  if (ctx === null) {
    ctx = new WSContext<BunSocket>(new BunContextInit(ws));
    ws.data.ctx = ctx;
  }
  return ctx;
}

/**
 * The core's socket over Bun's. A class: one small object per connection
 * (no closures), and the broadcaster reaches Bun's socket through `raw`.
 */
class BunChatSocket implements ChatSocket {
  /** Set while the socket is on some channel of this broadcaster. */
  broadcaster: BunBroadcaster | null = null;
  /** Channels it is on: the room's, and the room's v1 one for v1 members. */
  channels: string[] = NO_CHANNELS;
  /** The broadcaster's flush generation that {@link at} counts in. */
  gen = -1;
  /** How much of that generation's queue this socket has been sent. */
  at = 0;

  constructor(
    readonly id: string,
    readonly raw: BunSocket,
  ) {}

  send(text: string): void {
    if (this.broadcaster) this.broadcaster.catchUp(this, text);
    else this.raw.send(text);
  }

  close(code: number, reason: string): void {
    // Broadcasts queued before the close still come before its frame, but
    // not with 1013: a client closed for not reading is sent nothing more,
    // and one told to come back resumes from the history.
    if (code !== CloseCode.TryAgainLater) this.broadcaster?.catchUp(this, null);
    this.raw.close(code, reason);
  }

  bufferedAmount(): number {
    return this.raw.getBufferedAmount();
  }
}

const NO_CHANNELS: string[] = [];

/** True while Bun's `message` handler hands a client's frame to the app: see {@link BunBroadcaster}. */
let reading = false;

/** The core's socket over the WSContext's Bun socket. */
export function toSocket(ws: WSContext, id: string): ChatSocket {
  return new BunChatSocket(id, ws.raw as BunSocket);
}

const toBunSocket = (raw: BunSocket, id: string): ChatSocket => new BunChatSocket(id, raw);

/** What the app's checks read of a Bun request: its headers, and its query parsed once. */
class BunRequestView implements RequestView {
  #query: URLSearchParams | null = null;

  constructor(readonly req: Request) {}

  header(name: string): string | undefined {
    return this.req.headers.get(name) ?? undefined;
  }

  query(name: string): string | undefined {
    this.#query ??= new URL(this.req.url).searchParams;
    return this.#query.get(name) ?? undefined;
  }
}

/** The slice of Bun's Server the direct route uses beside {@link BunServer}. */
interface BunPeer {
  requestIP(req: Request): { address: string } | null;
}

/**
 * Answers `GET /websocket` through the app's {@link DirectUpgrades}, as
 * ./node-ws.ts does on Node: the same checks and answers as the route
 * through Hono, without a Hono Context, WSContext or the app's events per
 * connection (Bun's `ws.data` holds the session). Returns null for any
 * other request, and before the app knows its security headers.
 */
export function directUpgrade(
  direct: DirectUpgrades,
  req: Request,
  server: BunServer & BunPeer,
): Response | undefined | null | Promise<Response | undefined> {
  const security = direct.headers;
  if (security === null || req.method !== "GET") return null;
  const url = req.url;
  // The path only: scheme and host end at the third "/".
  const at = url.indexOf("/", url.indexOf("//") + 2);
  if (at < 0 || !isWebSocketTarget(url, at)) return null;
  const view = new BunRequestView(req);
  const admitted = direct.admit(view, server.requestIP(req)?.address);
  return admitted instanceof Promise
    ? admitted.then((a) => answerDirect(a, view, req, server, security))
    : answerDirect(admitted, view, req, server, security);
}

function answerDirect(
  admitted: SessionInit | Answer,
  view: BunRequestView,
  req: Request,
  server: BunServer,
  security: readonly (readonly [string, string])[],
): Response | undefined {
  if ("status" in admitted) {
    return new Response(JSON.stringify(admitted.body), {
      status: admitted.status,
      headers: answerHeaders(admitted, security),
    });
  }
  const protocol = selectSubprotocol(view.header("sec-websocket-protocol")) ?? "";
  const headers = new Headers(security as [string, string][]);
  headers.set("Sec-WebSocket-Protocol", protocol);
  const data: BunData = { events: null, protocol, ctx: null, init: admitted, session: null, pongRound: 0 };
  if (server.upgrade(req, { data, headers })) return undefined;
  return new Response(JSON.stringify({ error: "not a valid WebSocket handshake" }), {
    status: 400,
    headers: { "content-type": "application/json" },
  });
}

/** A broadcast waiting for its turn's flush. */
interface Queued {
  channel: string;
  text: string;
  except: ChatSocket | null;
}

/** Flush early past this many queued UTF-16 units, so no turn queues without bound. */
const FLUSH_AT = 64 * 1024;

/** What a corked write sends (module state: no closure per socket and flush). */
let corkQueue: Queued[] = [];
let corkFrom = 0;
let corkSocket: BunChatSocket | null = null;
let corkExtra: string | null = null;

function writeCorked(ws: BunSocket): void {
  const s = corkSocket!;
  const channels = s.channels;
  const first = channels[0];
  for (let i = corkFrom; i < corkQueue.length; i++) {
    const q = corkQueue[i]!;
    if (q.except !== s && (q.channel === first || channels.includes(q.channel))) ws.send(q.text);
  }
  if (corkExtra !== null) ws.send(corkExtra);
}

/**
 * Room fan-out on Bun: a turn's broadcasts are queued, then every subscriber
 * gets all of its share in one corked write (`ws.cork`), one system call per
 * client per turn. Bun's own topic publish (`server.publish`) writes at most
 * 32 messages per system call (uWS' topic tree), so it pays ~3x the calls at
 * saturation, which is most of a delivery's CPU (docs/benchmarks.md).
 *
 * A socket's own sends (welcome, echo, errors, frames for members not yet
 * subscribed) go through {@link catchUp}, which first writes what the queue
 * holds for it: every client gets its frames in the order they were sent.
 *
 * When the broadcasts come from frames being read (HISTORY=memory: fanned
 * out inside Bun's `message` handler), the flush is a setImmediate: it runs
 * once the poll has handed over every frame that had arrived, so the turn
 * grows with the load. Any other fan-out (a SQLite batch's, after its commit
 * in a setImmediate, which the hub fans out in one promise callback; a Redis
 * read's; a timer's) is flushed in a microtask of the same job: a
 * setImmediate queued from the check phase would wait for the next turn,
 * whose poll reads new frames before this batch is out. This relies on the
 * hub fanning a batch out in one callback: when it took a promise hop per
 * message, a microtask flush ran once per message (0.21 -> 4.97 µs of server
 * CPU per delivery in saturation). Not `process.nextTick`: Bun runs a tick
 * queued inside a promise reaction before the reactions queued after it,
 * which Node does not.
 */
export class BunBroadcaster implements Broadcaster {
  readonly #channels = new Map<string, Set<BunChatSocket>>();
  #queue: Queued[] = [];
  #queued = 0;
  #gen = 0;
  #scheduled = false;
  /** A flush left some subscriber past `maxBuffered`: the next publish says so. */
  #backedUp = false;
  readonly #flush = () => this.flush();

  /** @param maxBuffered MAX_BUFFERED_BYTES: a subscriber with more queued is reported */
  constructor(readonly maxBuffered: number) {}

  subscribe(socket: ChatSocket, channel: string): void {
    if (!(socket instanceof BunChatSocket)) throw new TypeError("BunBroadcaster serves only sockets made by toSocket");
    // Only broadcasts queued from now on are its: what came before went to
    // it one by one (held, then released) or is in the history it got.
    this.catchUp(socket, null);
    socket.broadcaster = this;
    socket.gen = this.#gen;
    socket.at = this.#queue.length;
    if (!socket.channels.includes(channel)) socket.channels = [...socket.channels, channel];
    let sockets = this.#channels.get(channel);
    if (sockets === undefined) {
      sockets = new Set();
      this.#channels.set(channel, sockets);
    }
    sockets.add(socket);
  }

  unsubscribe(socket: ChatSocket, channel: string): void {
    if (!(socket instanceof BunChatSocket)) return;
    const sockets = this.#channels.get(channel);
    if (sockets === undefined || !sockets.delete(socket)) return;
    if (sockets.size === 0) this.#channels.delete(channel);
    // What was queued while it was on the channel is still its.
    this.catchUp(socket, null);
    socket.channels = socket.channels.filter((c) => c !== channel);
    if (socket.channels.length === 0) {
      socket.channels = NO_CHANNELS;
      socket.broadcaster = null;
    }
  }

  publish(channel: string, text: string, except: ChatSocket | null): boolean {
    if (this.#channels.get(channel) === undefined) return false;
    this.#queue.push({ channel, text, except });
    this.#queued += text.length;
    if (this.#queued >= FLUSH_AT) this.flush();
    else if (!this.#scheduled) {
      this.#scheduled = true;
      if (reading) setImmediate(this.#flush);
      else queueMicrotask(this.#flush);
    }
    if (!this.#backedUp) return false;
    this.#backedUp = false;
    return true;
  }

  /**
   * Writes what the queue holds for `socket` that it has not had yet, then
   * `then` (a frame of its own), in one corked write.
   */
  catchUp(socket: BunChatSocket, then: string | null): void {
    const queue = this.#queue;
    if (socket.gen !== this.#gen) {
      socket.gen = this.#gen;
      socket.at = 0;
    }
    const ws = socket.raw;
    if (socket.at >= queue.length || socket.channels.length === 0 || ws.readyState !== 1) {
      socket.at = queue.length;
      if (then !== null) ws.send(then);
      return;
    }
    if (then === null && socket.at === queue.length - 1) {
      // One frame (a quiet room's usual flush): no cork needed.
      const q = queue[socket.at]!;
      socket.at = queue.length;
      if (q.except !== socket && socket.channels.includes(q.channel)) ws.send(q.text);
      if (ws.getBufferedAmount() > this.maxBuffered) this.#backedUp = true;
      return;
    }
    corkQueue = queue;
    corkFrom = socket.at;
    corkSocket = socket;
    corkExtra = then;
    socket.at = queue.length;
    ws.cork(writeCorked);
    corkSocket = null;
    corkExtra = null;
    if (ws.getBufferedAmount() > this.maxBuffered) this.#backedUp = true;
  }

  /** Sends the queue to every subscriber that has not had all of it. */
  flush(): void {
    this.#scheduled = false;
    const queue = this.#queue;
    if (queue.length === 0) return;
    let last: string | null = null;
    for (const q of queue) {
      if (q.channel === last) continue;
      last = q.channel;
      for (const socket of this.#channels.get(q.channel) ?? NO_SOCKETS) this.catchUp(socket, null);
    }
    this.#queue = [];
    this.#queued = 0;
    this.#gen++;
  }
}

const NO_SOCKETS: ReadonlySet<BunChatSocket> = new Set();

const OPEN_EVENT = { type: "open" };

/**
 * Bun.serve's `websocket` option: our helper's handlers plus the contract's
 * limits, and our heartbeat (Bun's `idleTimeout` counts whole seconds).
 */
export function websocketOptions(config: Config, direct?: DirectUpgrades) {
  const sockets = new Set<BunSocket>();
  const heartbeat = new Heartbeat(() => sockets, config.heartbeatMs, {
    get: (ws) => ws.data.pongRound,
    set: (ws, round) => {
      ws.data.pongRound = round;
    },
  });
  const options = {
    // Bun closes with 1009 past this, before buffering the frame.
    maxPayloadLength: config.maxFrameBytes,
    perMessageDeflate: config.wsCompression,
    // Member closes a reader past MAX_BUFFERED_BYTES with 1013 right after
    // the send that crossed it, or (BunBroadcaster) at the publish after the
    // flush that did, at most 64 Ki units later, so no `drain` handler is
    // needed; Bun's own limit, which drops frames silently, sits well above
    // so it never acts first.
    backpressureLimit: Math.max(16 * 1024 * 1024, 4 * config.maxBufferedBytes),
    closeOnBackpressureLimit: false,
    idleTimeout: 0,
    sendPings: false,
    open(ws: BunSocket) {
      sockets.add(ws);
      heartbeat.opened(ws);
      const d = ws.data;
      if (d.init && direct) {
        d.session = direct.open(d.init, ws, toBunSocket);
        d.init = null;
        return;
      }
      dispatch(ws, "onOpen", OPEN_EVENT);
    },
    message(ws: BunSocket, message: string | Uint8Array) {
      const data =
        typeof message === "string"
          ? message
          : message.buffer.slice(message.byteOffset, message.byteOffset + message.byteLength);
      reading = true;
      try {
        const session = ws.data.session;
        if (session) session.message(data as string | ArrayBuffer);
        else dispatch(ws, "onMessage", { type: "message", data });
      } catch (error) {
        console.error(error);
      } finally {
        reading = false;
      }
    },
    close(ws: BunSocket, code: number, reason: string) {
      sockets.delete(ws);
      const session = ws.data.session;
      if (session && direct) direct.closed(session, code);
      else dispatch(ws, "onClose", { type: "close", code, reason, wasClean: true });
    },
    pong(ws: BunSocket) {
      heartbeat.ponged(ws);
    },
  };
  return {
    options,
    /** Open connections. */
    sockets: sockets as ReadonlySet<BunSocket>,
    stopHeartbeat: () => heartbeat.stop(),
  };
}
