/**
 * The Bun ceiling: plain `Bun.serve` with one topic; every frame is published
 * to it (Bun frames it once in native code and writes it to every subscriber).
 */
declare const Bun: {
  serve(options: unknown): { port: number; publish(topic: string, data: string | Uint8Array): number };
};
interface BunSocket {
  subscribe(topic: string): void;
}

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
      ws.subscribe("room");
    },
    message(_ws: BunSocket, data: string | Uint8Array) {
      server.publish("room", data);
    },
  },
});
console.log(JSON.stringify({ msg: "listening", port: server.port }));
process.on("SIGTERM", () => process.exit(0));
