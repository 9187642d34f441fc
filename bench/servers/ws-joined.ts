/**
 * The best plain ws server we know for a broadcast: every frame received in
 * one event-loop turn is framed once (`Sender.frame`), the turn's frames are
 * joined into one Buffer, and that Buffer is written to every open socket
 * with one write when the turn ends (setImmediate). Nothing per recipient
 * per frame at all: one write per client per turn. Ours on Node does the
 * same with a room's frames (WsBroadcaster in src/runtime/node-ws.ts), so
 * this, not `ws corked`, is the honest ceiling for it. Also run under Deno.
 */
import * as ws from "ws";
import { WebSocket, WebSocketServer } from "ws";

/** ws's per-connection TCP socket: private, but stable across ws 8 (pinned). */
type Raw = WebSocket & { _socket: { write(b: Buffer): boolean } };
/** `Sender.frame` is public in ws but missing from @types/ws. */
const { Sender } = ws as unknown as {
  Sender: { frame(data: Buffer, options: Record<string, unknown>): Buffer[] };
};

let turn: Buffer[] = [];
let scheduled = false;
const flush = () => {
  scheduled = false;
  const joined = turn.length === 1 ? turn[0]! : Buffer.concat(turn);
  turn = [];
  for (const client of wss.clients) if (client.readyState === WebSocket.OPEN) (client as Raw)._socket.write(joined);
};

const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.env.PORT ?? 0), perMessageDeflate: false });
wss.on("connection", (socket) => {
  socket.on("message", (data: Buffer, isBinary) => {
    const opts = { fin: true, opcode: isBinary ? 2 : 1, mask: false, readOnly: false, rsv1: false };
    turn.push(...Sender.frame(data, opts));
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  });
});
wss.on("listening", () => {
  const address = wss.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  console.log(JSON.stringify({ msg: "listening", port }));
});
process.on("SIGTERM", () => process.exit(0));
