/**
 * Bun's WebSocket side, for src/runtime/bun.ts: the socket adapter, the
 * topic broadcaster, the contract's subprotocol rule on `server.upgrade`,
 * and Bun's `websocket` options (limits, heartbeat) around hono/bun's.
 */
import { websocket } from "hono/bun";
import type { WSContext } from "hono/ws";
import type { Config } from "../config.ts";
import type { Broadcaster, ChatSocket } from "../hub/hub.ts";
import { selectSubprotocol } from "../protocol.ts";

/** The slice of Bun's ServerWebSocket used here. */
export interface BunSocket {
  readonly readyState: number;
  send(data: string): number;
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
  upgrade(req: Request, options: { data?: { protocol?: string }; headers?: Record<string, string> }): boolean;
  /** Returns bytes sent, 0 when dropped, -1 when some subscriber has backpressure. */
  publish(topic: string, data: string): number;
  stop(closeActiveConnections?: boolean): Promise<void>;
}

/** Bun's socket behind each ChatSocket, for the broadcaster. */
const rawOf = new WeakMap<ChatSocket, BunSocket>();

/** The core's socket over Bun's: `raw` is stable per connection, unlike the WSContext (new per event). */
export function toSocket(ws: WSContext, id: string): ChatSocket {
  const raw = ws.raw as BunSocket;
  const socket: ChatSocket = {
    id,
    send: (text) => void raw.send(text),
    close: (code, reason) => raw.close(code, reason),
    bufferedAmount: () => raw.getBufferedAmount(),
  };
  rawOf.set(socket, raw);
  return socket;
}

/** Bun's topics: uWS frames a published message once for all subscribers. */
export function topicBroadcaster(server: () => BunServer): Broadcaster {
  return {
    subscribe: (socket, channel) => rawOf.get(socket)?.subscribe(channel),
    unsubscribe: (socket, channel) => rawOf.get(socket)?.unsubscribe(channel),
    publish(channel, text, except) {
      const raw = except ? rawOf.get(except) : undefined;
      // A closing socket's own publish sends nothing at all; then the
      // server publishes (the closing socket discards its copy).
      const sent = raw && raw.readyState === 1 ? raw.publish(channel, text) : server().publish(channel, text);
      return sent <= 0; // -1: some subscriber has backpressure (0: dropped)
    },
  };
}

/**
 * The `server` hono/bun's helper upgrades through. The helper echoes the
 * first offered protocol; the contract selects chat.v1 wherever it is
 * offered, and otherwise none (an empty header sends none).
 */
export function contractUpgrader(bun: BunServer): Pick<BunServer, "upgrade"> {
  return {
    upgrade: (req, options) => {
      const protocol = selectSubprotocol(req.headers.get("sec-websocket-protocol")) ?? "";
      return bun.upgrade(req, {
        ...options,
        data: { ...options.data, protocol },
        headers: { "Sec-WebSocket-Protocol": protocol },
      });
    },
  };
}

/**
 * Bun.serve's `websocket` option: hono/bun's handlers plus the contract's
 * limits, and a heartbeat of our own (Bun's `idleTimeout` counts whole
 * seconds): a ping every HEARTBEAT_MS, no pong for two intervals: terminated.
 */
export function websocketOptions(config: Config) {
  const sockets = new Set<BunSocket>();
  const lastPong = new WeakMap<BunSocket, number>();
  const timer =
    config.heartbeatMs > 0
      ? setInterval(() => {
          const now = Date.now();
          for (const ws of sockets) {
            if (now - (lastPong.get(ws) ?? now) > 2 * config.heartbeatMs) ws.terminate();
            else ws.ping();
          }
        }, config.heartbeatMs)
      : undefined;
  const options = {
    ...websocket,
    // Bun closes with 1009 past this, before buffering the frame.
    maxPayloadLength: config.maxFrameBytes,
    perMessageDeflate: config.wsCompression,
    // Member closes a reader past MAX_BUFFERED_BYTES with 1013 right after
    // the send (or publish) that crossed it, so no `drain` handler is
    // needed (hono/bun forwards none); Bun's own limit, which drops frames
    // silently, sits well above so it never acts first.
    backpressureLimit: Math.max(16 * 1024 * 1024, 4 * config.maxBufferedBytes),
    closeOnBackpressureLimit: false,
    idleTimeout: 0,
    sendPings: false,
    open(ws: BunSocket) {
      sockets.add(ws);
      lastPong.set(ws, Date.now());
      websocket.open(ws as never);
    },
    close(ws: BunSocket, code?: number, reason?: string) {
      sockets.delete(ws);
      websocket.close(ws as never, code, reason);
    },
    pong(ws: BunSocket) {
      lastPong.set(ws, Date.now());
    },
  };
  return {
    options,
    /** Open connections. */
    sockets: sockets as ReadonlySet<BunSocket>,
    stopHeartbeat: () => clearInterval(timer),
  };
}
