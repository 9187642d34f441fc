/**
 * The best plain Bun server we know for a broadcast: every frame received
 * in one event-loop turn is queued, and when the turn ends (setImmediate)
 * each socket gets the whole queue in one `ws.cork` (one system call per
 * client per turn; Bun's topic publish writes at most 32 messages per call).
 * Ours on Bun does the same with a room's frames (BunBroadcaster in
 * src/runtime/bun-ws.ts), so this, beside `Bun.serve publish`, is the honest
 * ceiling for it.
 */
// A module, so its names do not collide with the other bench servers (scripts share a global scope in tsc).
export {};

declare const Bun: {
  serve(options: unknown): { port: number };
};
interface BunSocket {
  send(data: string | Uint8Array): number;
  cork(fn: () => void): void;
}

const sockets = new Set<BunSocket>();
let turn: (string | Uint8Array)[] = [];
let queued: (string | Uint8Array)[] = [];
const sendQueued = (ws: BunSocket) => {
  for (const data of queued) ws.send(data);
};
const flush = () => {
  queued = turn;
  turn = [];
  for (const ws of sockets) {
    if (queued.length === 1) ws.send(queued[0]!);
    else ws.cork(() => sendQueued(ws));
  }
};

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  fetch(req: Request, srv: { upgrade(req: Request): boolean }) {
    if (srv.upgrade(req)) return undefined;
    return new Response("websocket only", { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    open(ws: BunSocket) {
      sockets.add(ws);
    },
    close(ws: BunSocket) {
      sockets.delete(ws);
    },
    message(_ws: BunSocket, data: string | Uint8Array) {
      if (turn.push(data) === 1) setImmediate(flush);
    },
  },
});
console.log(JSON.stringify({ msg: "listening", port: server.port }));
process.on("SIGTERM", () => process.exit(0));
