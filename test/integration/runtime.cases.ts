/**
 * Cases where the runtimes' WebSocket stacks differ underneath (frame limits,
 * UTF-8, backpressure, pings, the subprotocol answer, native fan-out,
 * shutdown): run against every runtime entry, next to the shared black-box
 * suite, so a runtime that bends one of these rules fails here.
 */
import { request } from "node:http";
import { describe, expect, it } from "vitest";
import { connect, type TestClient } from "../helpers/client.ts";
import { type ServerTarget, tempHistoryPath } from "../helpers/server.ts";

/** The handshake answer's status and Sec-WebSocket-Protocol, read with a raw request. */
function handshake(url: string, protocols: string): Promise<{ status: number; protocol: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": protocols,
      },
      timeout: 3000,
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      const p = res.headers["sec-websocket-protocol"];
      resolve({ status: res.statusCode ?? 0, protocol: Array.isArray(p) ? p[0] : p });
    });
    req.on("response", (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, protocol: undefined });
    });
    req.on("timeout", () => req.destroy(new Error("handshake timed out")));
    req.on("error", reject);
    req.end();
  });
}

const ids = (frames: Record<string, unknown>[]) => frames.map((f) => f.id as string);

/** Runs the runtime-sensitive cases against one target. */
export function runtimeCases(target: ServerTarget): void {
  describe(`runtime rules: ${target.name}`, () => {
    it("selects chat.v1 wherever it is offered, and no protocol otherwise", async () => {
      const server = await target.start();
      const url = `${server.url}/websocket`;
      expect(await handshake(url, "chat.v1")).toEqual({ status: 101, protocol: "chat.v1" });
      expect(await handshake(url, "x-other,chat.v1")).toEqual({ status: 101, protocol: "chat.v1" });
      expect(await handshake(url, "x-other, chat.v1, y")).toEqual({ status: 101, protocol: "chat.v1" });
      expect(await handshake(url, "x-other")).toEqual({ status: 101, protocol: undefined });
      const c = await connect(`${server.wsUrl}?user=ann`, { protocols: ["x-other", "chat.v1"] });
      expect(c.protocol).toBe("chat.v1");
      expect((await c.next()).type).toBe("welcome");
    });

    it("closes 1009 on an oversize text or binary frame, 1007 on invalid UTF-8", async () => {
      const server = await target.start({ MAX_FRAME_BYTES: "1024" });
      const text = await connect(server.wsUrl);
      text.ws.send(JSON.stringify({ user: "a", message: "x".repeat(2000) }));
      expect((await text.waitClosed()).code).toBe(1009);
      const binary = await connect(server.wsUrl);
      binary.ws.send(Buffer.alloc(2000));
      expect((await binary.waitClosed()).code).toBe(1009);
      const small = await connect(server.wsUrl);
      small.ws.send(Buffer.alloc(10));
      expect(await small.waitFor("error")).toMatchObject({ code: "unsupported_data" });
      const utf8 = await connect(server.wsUrl);
      utf8.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
      expect((await utf8.waitClosed()).code).toBe(1007);
      // and the server still serves
      const ok = await connect(server.wsUrl);
      ok.send({ user: "a", message: "still here" });
      expect(await ok.waitFor("message")).toMatchObject({ message: "still here" });
    });

    it("closes a client that does not read with 1013, without slowing the others", async () => {
      const server = await target.start({ RATE_LIMIT: "0", MAX_BUFFERED_BYTES: "65536" });
      const room = `${server.wsUrl}?room=slow`;
      const stuck = await connect(room);
      const reader = await connect(room, { protocols: "chat.v1" });
      await reader.waitFor("welcome");
      // Stop reading from the socket: the server's buffer for it grows.
      const raw = (stuck.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
      raw.pause();
      const sender = await connect(room);
      const big = "y".repeat(1900);
      // Kernel buffers take a few MB first; the server's metric says when it gave up.
      let slow = false;
      let i = 0;
      while (i < 8000 && !slow) {
        sender.send({ user: "s", message: `${i} ${big}` });
        i++;
        if (i % 200 === 0) {
          // the reader keeps up: every message reaches it
          expect((await reader.collect("message", 200, 5000)).at(-1)?.message).toBe(`${i - 1} ${big}`);
          const metrics = await (await fetch(`${server.url}/metrics`)).text();
          slow = /^chat_slow_consumers_total 1$/m.test(metrics);
        }
      }
      expect(slow).toBe(true);
      raw.resume();
      expect((await stuck.waitClosed(10_000)).code).toBe(1013);
    });

    it("terminates a connection that answers no pings within two intervals", async () => {
      const server = await target.start({ HEARTBEAT_MS: "300" });
      const silent = await connect(server.wsUrl, { autoPong: false });
      const alive = await connect(server.wsUrl);
      const t0 = Date.now();
      await silent.waitClosed(3000);
      expect(Date.now() - t0).toBeLessThan(2000);
      await new Promise((r) => setTimeout(r, 500));
      alive.send({ user: "a", message: "alive" });
      expect(await alive.waitFor("message")).toMatchObject({ message: "alive" });
    });

    it("gives every receiver the same ids in the same order, welcome first, while clients join mid-stream", async () => {
      const server = await target.start({ RATE_LIMIT: "0" });
      const room = `${server.wsUrl}?room=order`;
      const sender = await connect(`${room}&user=sam`, { protocols: "chat.v1" });
      await sender.waitFor("welcome");
      const early = [await connect(room), await connect(`${room}&user=vic`, { protocols: "chat.v1" })];
      const n = 300;
      for (let i = 0; i < n; i++) sender.send({ type: "message", message: `m${i}`, cid: `c${i}` });
      // joins while messages are being published: welcome history + live frames must be gap-free
      const late: TestClient[] = [];
      for (let i = 0; i < 4; i++) late.push(await connect(`${room}&user=l${i}`, { protocols: "chat.v1" }));
      const echoes = await sender.collect("message", n, 10_000);
      expect(echoes.map((f) => f.cid)).toEqual(Array.from({ length: n }, (_, i) => `c${i}`));
      const order = ids(echoes);
      for (const c of early) {
        const got = await c.collect("message", n, 10_000);
        expect(ids(got)).toEqual(order);
        expect(got.every((f) => f.cid === undefined)).toBe(true);
      }
      for (const c of late) {
        const first = c.received[0]?.json ?? (await c.next());
        expect(first.type).toBe("welcome");
        const history = ids(first.history as Record<string, unknown>[]);
        const last = order.at(-1);
        const live: string[] = [];
        while ((live.at(-1) ?? history.at(-1)) !== last) live.push(ids([await c.waitFor("message", 10_000)])[0]!);
        const seen = [...history, ...live];
        // everything after the first message it saw, in order, without duplicates
        expect(seen).toEqual(order.slice(order.indexOf(seen[0]!)));
      }
    });

    it("on SIGTERM closes every connection with 1001, keeps history, exits 0 within 5 s", async () => {
      const historyPath = tempHistoryPath();
      const server = await target.start({}, { historyPath });
      const a = await connect(`${server.wsUrl}?room=bye`);
      const b = await connect(`${server.wsUrl}?room=bye&user=bo`, { protocols: "chat.v1" });
      await b.waitFor("welcome");
      a.send({ user: "a", message: "remember me" });
      await b.waitFor("message");
      const stopped = await server.stop("SIGTERM");
      expect((await a.waitClosed()).code).toBe(1001);
      expect((await b.waitClosed()).code).toBe(1001);
      expect(stopped.code).toBe(0);
      expect(stopped.ms).toBeLessThan(5000);
      const again = await target.start({}, { historyPath });
      const c = await connect(`${again.wsUrl}?room=bye`, { protocols: "chat.v1" });
      const welcome = await c.waitFor("welcome");
      expect((welcome.history as Record<string, unknown>[]).map((m) => m.message)).toEqual(["remember me"]);
    });

    it("serves the page, /healthz and /metrics", async () => {
      const server = await target.start();
      const page = await fetch(`${server.url}/`);
      expect(page.status).toBe(200);
      expect(page.headers.get("content-type")).toMatch(/^text\/html/);
      expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
      const c = await connect(server.wsUrl);
      c.send({ user: "m", message: "count me" });
      await c.waitFor("message");
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      expect(metrics).toMatch(/^chat_connections\{mode="seed"\} 1$/m);
      expect(metrics).toMatch(/^chat_messages_total 1$/m);
    });
  });
}
