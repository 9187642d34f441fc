/**
 * Bun's WebSocket side, for src/runtime/bun.ts: Hono's WebSocket helper over
 * `server.upgrade` (our own), the socket adapter, the topic broadcaster, and
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
import type { Config } from "../config.ts";
import type { Broadcaster, ChatSocket } from "../hub/hub.ts";
import { selectSubprotocol } from "../protocol.ts";
import { Heartbeat } from "./start.ts";

/** What a connection carries in Bun's `ws.data`. */
interface BunData {
  events: WSEvents<BunSocket>;
  protocol: string;
  /** Made once, at open. */
  ctx: WSContext<BunSocket> | null;
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
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  /** To every subscriber but this socket. */
  publish(topic: string, data: string): number;
}

/** The slice of Bun's Server used here. */
export interface BunServer {
  readonly port: number;
  upgrade(req: Request, options: { data: BunData; headers?: Record<string, string> }): boolean;
  /** Returns bytes sent, 0 when dropped, -1 when some subscriber has backpressure. */
  publish(topic: string, data: string): number;
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
  const data: BunData = { events, protocol, ctx: null };
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
  constructor(
    readonly id: string,
    readonly raw: BunSocket,
  ) {}

  send(text: string): void {
    this.raw.send(text);
  }

  close(code: number, reason: string): void {
    this.raw.close(code, reason);
  }

  bufferedAmount(): number {
    return this.raw.getBufferedAmount();
  }
}

/** The core's socket over the WSContext's Bun socket. */
export function toSocket(ws: WSContext, id: string): ChatSocket {
  return new BunChatSocket(id, ws.raw as BunSocket);
}

const rawOf = (socket: ChatSocket): BunSocket | undefined => (socket instanceof BunChatSocket ? socket.raw : undefined);

/** Bun's topics: uWS frames a published message once for all subscribers. */
export function topicBroadcaster(server: () => BunServer): Broadcaster {
  return {
    subscribe: (socket, channel) => rawOf(socket)?.subscribe(channel),
    unsubscribe: (socket, channel) => rawOf(socket)?.unsubscribe(channel),
    publish(channel, text, except) {
      const raw = except ? rawOf(except) : undefined;
      // A closing socket's own publish sends nothing at all; then the
      // server publishes (the closing socket discards its copy).
      const sent = raw && raw.readyState === 1 ? raw.publish(channel, text) : server().publish(channel, text);
      return sent <= 0; // -1: some subscriber has backpressure (0: dropped)
    },
  };
}

const OPEN_EVENT = { type: "open" };

/**
 * Bun.serve's `websocket` option: our helper's handlers plus the contract's
 * limits, and our heartbeat (Bun's `idleTimeout` counts whole seconds).
 */
export function websocketOptions(config: Config) {
  const sockets = new Set<BunSocket>();
  const heartbeat = new Heartbeat(() => sockets, config.heartbeatMs);
  const options = {
    // Bun closes with 1009 past this, before buffering the frame.
    maxPayloadLength: config.maxFrameBytes,
    perMessageDeflate: config.wsCompression,
    // Member closes a reader past MAX_BUFFERED_BYTES with 1013 right after
    // the send (or publish) that crossed it, so no `drain` handler is
    // needed; Bun's own limit, which drops frames silently, sits well above
    // so it never acts first.
    backpressureLimit: Math.max(16 * 1024 * 1024, 4 * config.maxBufferedBytes),
    closeOnBackpressureLimit: false,
    idleTimeout: 0,
    sendPings: false,
    open(ws: BunSocket) {
      sockets.add(ws);
      heartbeat.opened(ws);
      dispatch(ws, "onOpen", OPEN_EVENT);
    },
    message(ws: BunSocket, message: string | Uint8Array) {
      const data =
        typeof message === "string"
          ? message
          : message.buffer.slice(message.byteOffset, message.byteOffset + message.byteLength);
      dispatch(ws, "onMessage", { type: "message", data });
    },
    close(ws: BunSocket, code: number, reason: string) {
      sockets.delete(ws);
      dispatch(ws, "onClose", { type: "close", code, reason, wasClean: true });
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
