/**
 * The Node fan-out (WsBroadcaster) writes one pre-framed Buffer per turn to
 * each ws connection's TCP socket, a private part of ws (`_socket`). These
 * cases fail if a ws upgrade moves it or changes what `bufferedAmount`
 * counts, before users see it.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import type { WSContext } from "hono/ws";
import { describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { Member } from "../../src/hub/hub.ts";
import { LocalRoom } from "../../src/hub/room.ts";
import { type ChatMessage, formatMessageId } from "../../src/protocol.ts";
import { frameText, toSocket, WsBroadcaster } from "../../src/runtime/node-ws.ts";
import { track } from "../helpers/cleanup.ts";

const require = createRequire(import.meta.url);

/** A ws server on port 0 and a client connected to it; resolves with both ends. */
async function pair(perMessageDeflate = false): Promise<{ server: WebSocket; client: WebSocket }> {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate });
  track(() => new Promise<void>((r) => wss.close(() => r())));
  await new Promise<void>((r) => wss.once("listening", () => r()));
  const address = wss.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  const serverSide = new Promise<WebSocket>((r) => wss.once("connection", (ws) => r(ws)));
  const client = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate });
  track(() => client.terminate());
  await new Promise<void>((r, j) => {
    client.once("open", () => r());
    client.once("error", j);
  });
  const server = await serverSide;
  track(() => server.terminate());
  return { server, client };
}

const asContext = (raw: WebSocket) => ({ raw }) as unknown as WSContext;

function collect(client: WebSocket, n: number): Promise<string[]> {
  const got: string[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`got ${got.length} of ${n} frames`)), 5000);
    client.on("message", (data: Buffer, isBinary: boolean) => {
      expect(isBinary).toBe(false);
      got.push(data.toString("utf8"));
      if (got.length === n) {
        clearTimeout(timer);
        resolve(got);
      }
    });
  });
}

describe("ws pre-framed sends (src/runtime/node-ws.ts)", () => {
  it("runs on the ws version whose internals it was written for", () => {
    const pkg = JSON.parse(readFileSync(require.resolve("ws/package.json"), "utf8")) as { version: string };
    const ours = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
      dependencies: Record<string, string>;
    };
    // A change here means: re-read ws's lib/websocket.js and lib/sender.js
    // (where frames are written, what bufferedAmount counts), then update.
    expect(ours.dependencies.ws).toBe("8.23.0");
    expect(pkg.version).toBe("8.23.0");
  });

  it("frames text as RFC 6455 unmasked text frames of every length class", () => {
    for (const [length, headerBytes, marker] of [
      [5, 2, 5],
      [125, 2, 125],
      [126, 4, 126],
      [65535, 4, 126],
      [65536, 10, 127],
    ] as const) {
      const text = "a".repeat(length);
      const frame = frameText(text);
      expect(frame.length).toBe(headerBytes + length);
      expect(frame[0]).toBe(0x81); // FIN + text opcode, no RSV bits
      expect(frame[1]).toBe(marker); // no mask bit
      expect(frame.subarray(headerBytes).toString()).toBe(text);
    }
    const utf8 = "héllo ✓ 🙂";
    expect(frameText(utf8)[1]).toBe(Buffer.byteLength(utf8));
  });

  it("writes a turn's frames to the TCP socket in order with ordinary sends", async () => {
    const { server, client } = await pair();
    const socket = toSocket(asContext(server), "t1");
    // The private part the broadcaster writes to.
    expect(typeof (server as unknown as { _socket?: { write?: unknown } })._socket?.write).toBe("function");
    const broadcaster = new WsBroadcaster(16 * 1024 * 1024);
    broadcaster.subscribe(socket, "m:r");
    const texts = ['{"n":1}', "héllo ✓ 🙂", "x".repeat(70_000), '{"n":4}', "y".repeat(300)];
    const received = collect(client, texts.length * 2);
    for (const t of texts) {
      socket.send(`plain ${t}`);
      broadcaster.publish("m:r", t, null);
    }
    expect(await received).toEqual(texts.flatMap((t) => [`plain ${t}`, t]));
  });

  it("frames a turn once for every subscriber: one Buffer, one write per client", async () => {
    const a = await pair();
    const b = await pair();
    const writes = new Map<string, Buffer[]>();
    for (const [name, side] of [
      ["a", a.server],
      ["b", b.server],
    ] as const) {
      const tcp = (side as unknown as { _socket: { write(data: Buffer): boolean } })._socket;
      const write = tcp.write.bind(tcp);
      writes.set(name, []);
      tcp.write = (data: Buffer) => {
        writes.get(name)!.push(data);
        return write(data);
      };
    }
    const broadcaster = new WsBroadcaster(1024 * 1024);
    broadcaster.subscribe(toSocket(asContext(a.server), "a"), "m:r");
    broadcaster.subscribe(toSocket(asContext(b.server), "b"), "m:r");
    const gotA = collect(a.client, 2);
    const gotB = collect(b.client, 2);
    broadcaster.publish("m:r", '{"type":"message","message":"hi"}', null);
    broadcaster.publish("m:r", '{"type":"message","message":"there"}', null);
    expect(await gotA).toEqual(['{"type":"message","message":"hi"}', '{"type":"message","message":"there"}']);
    expect(await gotB).toEqual(await gotA);
    expect(writes.get("a")).toHaveLength(1);
    expect(writes.get("b")).toHaveLength(1);
    expect(writes.get("a")![0]).toBe(writes.get("b")![0]);
  });

  it("sends nothing once the connection is closing", async () => {
    const { server, client } = await pair();
    const socket = toSocket(asContext(server), "c");
    const broadcaster = new WsBroadcaster(1024 * 1024);
    broadcaster.subscribe(socket, "m:r");
    server.close(1000, "bye");
    expect(() => broadcaster.publish("m:r", "late", null)).not.toThrow();
    const frames: string[] = [];
    client.on("message", (d: Buffer) => frames.push(d.toString()));
    await new Promise<void>((r) => client.once("close", () => r()));
    expect(frames).toEqual([]);
  });
});

describe("WsBroadcaster (a room's fan-out on ws)", () => {
  const message = (i: number, text: string): ChatMessage => ({
    type: "message",
    id: formatMessageId(1_700_000_000_000, i),
    room: "r",
    user: "u",
    message: text,
    ts: 1_700_000_000_000,
  });

  it("writes to every subscriber but the excepted one, compressed ones included, until unsubscribed", async () => {
    const a = await pair();
    const b = await pair();
    const z = await pair(true);
    const broadcaster = new WsBroadcaster(1024 * 1024);
    const [sa, sb, sz] = [
      toSocket(asContext(a.server), "a"),
      toSocket(asContext(b.server), "b"),
      toSocket(asContext(z.server), "z"),
    ];
    for (const s of [sa, sb, sz]) broadcaster.subscribe(s, "m:r");
    const gotA = collect(a.client, 2);
    const gotB = collect(b.client, 1);
    const gotZ = collect(z.client, 2);
    expect(broadcaster.publish("m:r", "one", sb)).toBe(false);
    broadcaster.unsubscribe(sb, "m:r");
    expect(broadcaster.publish("m:r", "two", null)).toBe(false);
    expect(broadcaster.publish("m:other", "nobody", null)).toBe(false);
    b.server.send("direct"); // b got nothing from either publish
    expect(await gotA).toEqual(["one", "two"]);
    expect(await gotZ).toEqual(["one", "two"]);
    expect(await gotB).toEqual(["direct"]);
  });

  it("keeps each client's order: frames of one turn go out together, a direct send or another channel's frame writes them out first", async () => {
    const a = await pair();
    const b = await pair();
    const broadcaster = new WsBroadcaster(1024 * 1024);
    const sa = toSocket(asContext(a.server), "a");
    const sb = toSocket(asContext(b.server), "b");
    for (const s of [sa, sb]) broadcaster.subscribe(s, "m:r");
    broadcaster.subscribe(sa, "v:r"); // a is v1: both channels
    const gotA = collect(a.client, 7);
    const gotB = collect(b.client, 4);
    // All in one turn, as a SQLite batch's fan-out is.
    broadcaster.publish("m:r", "1", null);
    broadcaster.publish("m:r", "2", sa); // a's own message: its echo went directly, just before
    sa.send("echo 2");
    broadcaster.publish("m:r", "3", null);
    broadcaster.publish("v:r", "presence", null);
    broadcaster.publish("m:r", "4", null);
    sa.send("pong");
    sb.close(1000, "bye");
    broadcaster.publish("m:r", "5", null); // b is closing: not sent
    expect(await gotA).toEqual(["1", "echo 2", "3", "presence", "4", "pong", "5"]);
    expect(await gotB).toEqual(["1", "2", "3", "4"]);
  });

  it("a socket subscribed in the middle of a turn gets only what was published after", async () => {
    const a = await pair();
    const late = await pair();
    const broadcaster = new WsBroadcaster(1024 * 1024);
    const sa = toSocket(asContext(a.server), "a");
    const sl = toSocket(asContext(late.server), "late");
    broadcaster.subscribe(sa, "m:r");
    const gotA = collect(a.client, 3);
    const gotLate = collect(late.client, 3);
    broadcaster.publish("m:r", "1", null);
    sl.send("1 (as its welcome's history)");
    broadcaster.subscribe(sl, "m:r");
    broadcaster.publish("m:r", "2", null);
    broadcaster.publish("m:r", "3", null);
    expect(await gotA).toEqual(["1", "2", "3"]);
    expect(await gotLate).toEqual(["1 (as its welcome's history)", "2", "3"]);
  });

  it("refuses a socket it cannot write to, rather than let it miss every broadcast", () => {
    const foreign = { id: "f", send() {}, close() {}, bufferedAmount: () => 0 };
    expect(() => new WsBroadcaster(1).subscribe(foreign, "m:r")).toThrow(TypeError);
  });

  it("keeps the slow-consumer rule: a released member that does not read is closed with 1013, the others get every message", async () => {
    const slowPair = await pair();
    const fast = await pair();
    (slowPair.client as unknown as { _socket: { pause(): void } })._socket.pause();
    const closed = new Promise<number>((r) => slowPair.server.once("close", (code: number) => r(code)));
    const room = new LocalRoom("r", new WsBroadcaster(1024 * 1024));
    let slowClosed = 0;
    const slow = new Member(
      toSocket(asContext(slowPair.server), "slow"),
      null,
      "seed",
      1024 * 1024,
      () => slowClosed++,
    );
    const reader = new Member(toSocket(asContext(fast.server), "fast"), null, "seed", 1024 * 1024);
    for (const m of [slow, reader]) {
      room.add(m);
      m.release(null, null);
    }
    const text = "z".repeat(60_000);
    const ids: string[] = [];
    const frames: string[] = [];
    fast.client.on("message", (data: Buffer) => frames.push(data.toString("utf8")));
    // Until the kernel's buffers for the paused client are full and ws's
    // queue passes 1 MiB; yielding between messages lets each turn's cork
    // be written out and the reader read.
    for (let i = 0; i < 1000 && slow.open; i++) {
      const m = message(i, text);
      ids.push(m.id);
      room.deliverMessage(m, JSON.stringify(m), null, undefined);
      await new Promise((r) => setImmediate(r));
    }
    expect(slow.open).toBe(false);
    expect(slowClosed).toBe(1);
    for (let i = 0; i < 500 && frames.length < ids.length; i++) await new Promise((r) => setTimeout(r, 10));
    expect(frames.map((f) => (JSON.parse(f) as ChatMessage).id)).toEqual(ids);
    (slowPair.client as unknown as { _socket: { resume(): void } })._socket.resume();
    expect(await closed).toBe(1013);
  });
});
