/**
 * The Socket.IO baseline for the multi-instance bench: Socket.IO 4 with
 * `@socket.io/redis-adapter` (its documented set-up: one ioredis client to
 * publish, a duplicate to subscribe), websocket transport only (the same
 * transport ours serves; no long-polling upgrade dance), no compression.
 * A socket joins the room named in its handshake query; every "chat" event
 * is emitted to that room on every instance, the sender included, as ours
 * echoes a message to its sender.
 *
 * Env: PORT, REDIS_URL (@default redis://127.0.0.1:6379).
 */
import { createServer } from "node:http";
import { createAdapter } from "@socket.io/redis-adapter";
import { Redis } from "ioredis";
import { Server } from "socket.io";

const pub = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
const sub = pub.duplicate();
const http = createServer();
const io = new Server(http, {
  transports: ["websocket"],
  perMessageDeflate: false,
  adapter: createAdapter(pub, sub),
});

io.on("connection", (socket) => {
  const room = String(socket.handshake.query.room ?? "bench");
  socket.join(room);
  socket.on("chat", (message: unknown) => {
    io.to(room).emit("chat", message);
  });
});

http.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  const address = http.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  console.log(JSON.stringify({ msg: "listening", port }));
});
process.on("SIGTERM", () => {
  pub.disconnect();
  sub.disconnect();
  process.exit(0);
});
