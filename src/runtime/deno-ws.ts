/**
 * Deno's WebSocket side, for src/runtime/deno.ts: a Hono WebSocket helper
 * over Deno.upgradeWebSocket and the core's socket over Deno's WebSocket.
 */
import { defineWebSocketHelper, type UpgradeWebSocket, WSContext, type WSReadyState } from "hono/ws";
import type { ChatSocket } from "../hub/hub.ts";
import { selectSubprotocol } from "../protocol.ts";
import { currentTurn, sameTurn } from "./start.ts";

declare const Deno: {
  upgradeWebSocket(req: Request, options: { idleTimeout: number }): { response: Response; socket: WebSocket };
};

/** Open WebSockets, waited for at shutdown. */
let open = 0;

/** How many WebSockets the helper has open. */
export function openSockets(): number {
  return open;
}

/**
 * Deno's upgrade as a Hono WebSocket helper, built the way hono/deno builds
 * its own (defineWebSocketHelper), because that one bends four rules: it
 * echoes the first offered protocol; it hands that to Deno.upgradeWebSocket,
 * which throws unless the header lists it with ", " (`ws` sends "a,b"); it
 * compares `Upgrade` case-sensitively (404 for "WebSocket"); and Deno's
 * TypeError on a malformed handshake becomes a 500.
 * @param idleTimeout seconds; Deno pings at half of it and closes (1001)
 *   when no pong came; 0 turns it off
 */
export function upgradeWebSocket(idleTimeout: number): UpgradeWebSocket {
  return defineWebSocketHelper(async (c, events) => {
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") return;
    const protocol = selectSubprotocol(c.req.header("sec-websocket-protocol"));
    let upgraded: { response: Response; socket: WebSocket };
    try {
      upgraded = Deno.upgradeWebSocket(c.req.raw, { idleTimeout });
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
      return c.json({ error: `not a valid WebSocket handshake: ${error.message}` }, 400);
    }
    const { response, socket } = upgraded;
    // Named on the 101 ourselves (its headers may be set), not through Deno.
    if (protocol) response.headers.set("sec-websocket-protocol", protocol);
    const ws = new WSContext({
      send: (data) => socket.send(data),
      close: (code, reason) => socket.close(code, reason),
      raw: socket,
      get readyState() {
        return socket.readyState as WSReadyState;
      },
      url: null,
      protocol,
    });
    let opened = false;
    socket.onopen = (e) => {
      opened = true;
      open++;
      events.onOpen?.(e, ws);
    };
    socket.onmessage = (e) => events.onMessage?.(e, ws);
    socket.onclose = (e) => {
      if (opened) open--;
      opened = false;
      events.onClose?.(e, ws);
    };
    socket.onerror = (e) => events.onError?.(e, ws);
    return response;
  });
}

/**
 * Deno counts a frame in `bufferedAmount` until its asynchronous write
 * completes, even for a client that reads: a burst fanned out in one turn
 * would look like a slow consumer. What is still queued from earlier turns
 * is what the client has not taken, so only that counts.
 */
export function toSocket(ws: WSContext, id: string): ChatSocket {
  const raw = ws.raw as WebSocket;
  let at = -1;
  let fresh = 0;
  return {
    id,
    send(text) {
      const now = currentTurn();
      if (now !== at) {
        at = now;
        fresh = 0;
      }
      const before = raw.bufferedAmount;
      raw.send(text);
      fresh += raw.bufferedAmount - before;
    },
    close: (code, reason) => raw.close(code, reason),
    bufferedAmount: () => raw.bufferedAmount - (sameTurn(at) ? fresh : 0),
  };
}
