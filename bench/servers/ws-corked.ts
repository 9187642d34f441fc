/**
 * The Node ceiling: a `ws` server that frames each message once
 * (`Sender.frame`, as Socket.IO's engine does), writes the same bytes to
 * every open socket, and corks each socket once per event-loop turn, so all
 * the frames a client gets in one turn leave in one writev. Nothing per
 * recipient but the write. Also run under Deno (node:http + ws there).
 */
import * as ws from "ws";
import { WebSocket, WebSocketServer } from "ws";

/** ws's per-connection TCP socket: private, but stable across ws 8 (pinned). */
type Tcp = { write(b: Buffer): boolean; cork(): void; uncork(): void };
type Raw = WebSocket & { _socket: Tcp };
/** `Sender.frame` is public in ws but missing from @types/ws. */
const { Sender } = ws as unknown as {
  Sender: { frame(data: Buffer, options: Record<string, unknown>): Buffer[] };
};

const corked: Tcp[] = [];
const flush = () => {
  for (const tcp of corked.splice(0)) tcp.uncork();
};
const isCorked = new WeakSet<Tcp>();

const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.env.PORT ?? 0), perMessageDeflate: false });
wss.on("connection", (socket) => {
  socket.on("message", (data: Buffer, isBinary) => {
    const opts = { fin: true, opcode: isBinary ? 2 : 1, mask: false, readOnly: false, rsv1: false };
    const frame = Buffer.concat(Sender.frame(data, opts));
    for (const client of wss.clients) {
      if (client.readyState !== WebSocket.OPEN) continue;
      const tcp = (client as Raw)._socket;
      if (!isCorked.has(tcp)) {
        isCorked.add(tcp);
        tcp.cork();
        if (corked.push(tcp) === 1)
          setImmediate(() => {
            for (const t of corked) isCorked.delete(t);
            flush();
          });
      }
      tcp.write(frame);
    }
  });
});
wss.on("listening", () => {
  const address = wss.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  console.log(JSON.stringify({ msg: "listening", port }));
});
process.on("SIGTERM", () => process.exit(0));
