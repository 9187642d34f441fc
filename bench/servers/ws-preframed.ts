/**
 * A Node ceiling: each message is framed once (ws's public static
 * `Sender.frame`) and the same bytes are written to every open socket, as
 * Socket.IO's engine does. Nothing per recipient but the write itself.
 */
import * as ws from "ws";
import { WebSocket, WebSocketServer } from "ws";

/** ws's per-connection TCP socket: private, but stable across ws 8 (pinned). */
type Raw = WebSocket & { _socket: { write(b: Buffer): boolean } };
/** `Sender.frame` is public in ws but missing from @types/ws. */
const { Sender } = ws as unknown as {
  Sender: { frame(data: Buffer, options: Record<string, unknown>): Buffer[] };
};

const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.env.PORT ?? 0), perMessageDeflate: false });
wss.on("connection", (ws) => {
  ws.on("message", (data: Buffer, isBinary) => {
    const opts = { fin: true, opcode: isBinary ? 2 : 1, mask: false, readOnly: false, rsv1: false };
    const frame = Buffer.concat(Sender.frame(data, opts));
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) (client as Raw)._socket.write(frame);
    }
  });
});
wss.on("listening", () => {
  const address = wss.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  console.log(JSON.stringify({ msg: "listening", port }));
});
process.on("SIGTERM", () => process.exit(0));
