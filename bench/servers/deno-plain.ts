/**
 * The Deno ceiling: plain `Deno.serve` with `Deno.upgradeWebSocket` and a
 * broadcast loop (`socket.send(data)` to every open socket): Deno's own
 * WebSocket offers no pre-framed or topic send.
 */
declare const Deno: {
  env: { get(key: string): string | undefined };
  serve(
    options: { hostname: string; port: number; onListen?(addr: { port: number }): void },
    handler: (req: Request) => Response,
  ): unknown;
  upgradeWebSocket(req: Request): { socket: WebSocket; response: Response };
  addSignalListener(signal: string, handler: () => void): void;
  exit(code: number): never;
};

const sockets = new Set<WebSocket>();
Deno.serve(
  {
    hostname: "127.0.0.1",
    port: Number(Deno.env.get("PORT") ?? 0),
    onListen: ({ port }) => console.log(JSON.stringify({ msg: "listening", port })),
  },
  (req) => {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket")
      return new Response("websocket only", { status: 426 });
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onopen = () => sockets.add(socket);
    socket.onclose = () => sockets.delete(socket);
    socket.onmessage = (e) => {
      for (const s of sockets) if (s.readyState === 1) s.send(e.data);
    };
    return response;
  },
);
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
