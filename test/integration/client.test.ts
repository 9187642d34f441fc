/**
 * The typed ChatClient against a real Node server: acks and errors, presence
 * and typing, history paging, the offline queue, dead-connection detection,
 * and a stop/restart of the server mid-conversation (same HISTORY_PATH) with
 * nothing missed and nothing duplicated.
 *
 * Network trouble that a real server cannot produce on demand (one client cut
 * off while the others are online; frames silently lost) comes from
 * {@link flakyNetwork}, a wrapper around `ws` that the client takes as its
 * WebSocket constructor.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import {
  ChatClient,
  type ChatClientOptions,
  ChatError,
  type ChatEvents,
  type WebSocketLike,
} from "../../src/client/chat-client.ts";
import type { ChatMessage } from "../../src/protocol.ts";
import * as protocol from "../../src/protocol.ts";
import { track } from "../helpers/cleanup.ts";
import { nodeTarget, type RunningServer, tempHistoryPath } from "../helpers/server.ts";

const WAIT_MS = 8000;

/** Resolves with the first event of `type` that `match` accepts; rejects after `timeoutMs`. */
function nextEvent<K extends keyof ChatEvents>(
  client: ChatClient,
  type: K,
  match: (e: ChatEvents[K]) => boolean = () => true,
  timeoutMs = WAIT_MS,
): Promise<ChatEvents[K]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = client.on(type, (e) => {
      if (!match(e)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

/** Polls `cond` every 20 ms, at most `timeoutMs`. */
async function until(cond: () => boolean, what: string, timeoutMs = WAIT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Every message a client emits, in order. */
function record(client: ChatClient): ChatMessage[] {
  const seen: ChatMessage[] = [];
  client.on("message", (m) => seen.push(m));
  return seen;
}

/**
 * A network between one client and the server that tests can break:
 * `up = false` refuses new connections (the server stays reachable for
 * others), `blackhole = true` loses every frame both ways without closing,
 * `deaf = true` loses only the server's frames.
 */
function flakyNetwork() {
  const net = { up: true, blackhole: false, deaf: false, connections: 0 };
  class FlakySocket implements WebSocketLike {
    onopen: ((e: unknown) => void) | null = null;
    onmessage: ((e: { data: unknown }) => void) | null = null;
    onclose: ((e: { code: number; reason: string }) => void) | null = null;
    onerror: ((e: unknown) => void) | null = null;
    readonly #ws: WebSocket | null = null;

    constructor(url: string, protocols?: string | string[]) {
      if (!net.up) {
        // Like an unreachable host: an error, then a 1006 close, asynchronously.
        setTimeout(() => {
          this.onerror?.({});
          this.onclose?.({ code: 1006, reason: "" });
        }, 5);
        return;
      }
      net.connections++;
      const ws = new WebSocket(url, protocols);
      this.#ws = ws;
      ws.onopen = () => this.onopen?.({});
      ws.onmessage = (e) => {
        if (!net.blackhole && !net.deaf) this.onmessage?.({ data: e.data });
      };
      ws.onclose = (e) => this.onclose?.({ code: e.code, reason: e.reason });
      ws.onerror = () => this.onerror?.({});
    }

    get readyState(): number {
      return this.#ws?.readyState ?? WebSocket.CONNECTING;
    }

    get protocol(): string {
      return this.#ws?.protocol ?? "";
    }

    send(data: string): void {
      if (!net.blackhole) this.#ws?.send(data);
    }

    close(code?: number, reason?: string): void {
      this.#ws?.close(code, reason);
    }
  }
  return { net, WebSocket: FlakySocket };
}

/** Fast backoff so reconnects happen within a test's time. */
const FAST = { initialMs: 50, maxMs: 300, jitter: 0.5 } as const;

function client(server: RunningServer, opts: Partial<ChatClientOptions> = {}): ChatClient {
  const c = new ChatClient({ url: server.wsUrl, WebSocket, backoff: FAST, ...opts });
  track(() => c.close());
  return c;
}

async function opened(c: ChatClient): Promise<void> {
  if (c.status !== "open") await nextEvent(c, "open");
}

describe("the page bundle", () => {
  it("uses protocol.ts's rules without carrying zod (its schemas are built lazily, server-side only)", () => {
    const bundle = readFileSync(new URL("../../static/app.bundle.js", import.meta.url), "utf8");
    expect(bundle).toContain(protocol.SUBPROTOCOL);
    expect(bundle).not.toMatch(/ZodError|\$ZodType/);
    expect(bundle.length).toBeLessThan(60_000);
  });
});

describe("ChatClient backoff", () => {
  it("grows the delay by the factor up to the maximum, with the jitter taken off it", async () => {
    const { net, WebSocket: Flaky } = flakyNetwork();
    net.up = false;
    let jitter = 0; // Math.random stand-in: 0 keeps the whole delay, 1 takes off the jitter fraction
    const delays: number[] = [];
    const c = new ChatClient({
      url: "ws://127.0.0.1:9/websocket",
      WebSocket: Flaky,
      backoff: { initialMs: 10, factor: 2, maxMs: 80, jitter: 0.5 },
      random: () => jitter,
    });
    track(() => c.close());
    c.on("status", (s) => {
      if (s.retryInMs !== undefined) delays.push(s.retryInMs);
    });
    await until(() => delays.length >= 6, "six retries");
    expect(delays.slice(0, 6)).toEqual([10, 20, 40, 80, 80, 80]);
    jitter = 1;
    const before = delays.length;
    await until(() => delays.length >= before + 2, "two more retries");
    expect(delays.slice(before, before + 2)).toEqual([40, 40]);
    expect(c.status).toBe("connecting"); // never opened: still the first connection
  });
});

describe("ChatClient against a running server", () => {
  let server: RunningServer;

  beforeAll(async () => {
    // No rate limit: the paging case sends 120 messages in one go.
    server = await nodeTarget.start({ RATE_LIMIT: "0" });
  });

  it("resolves send with the stored message; the room sees it once", async () => {
    const a = client(server, { room: "ack", user: "ada" });
    const b = client(server, { room: "ack", user: "bob" });
    await Promise.all([opened(a), opened(b)]);
    const seenByA = record(a);
    const seenByB = record(b);
    const iterated = b.messages();

    const sent = await a.send("hello there");
    expect(sent).toMatchObject({ type: "message", room: "ack", user: "ada", message: "hello there" });
    expect(sent.id).toMatch(/^\d{13}-\d{6}$/);
    expect(typeof sent.ts).toBe("number");
    expect(sent).not.toHaveProperty("cid");

    const first = await iterated.next();
    expect(first.value).toEqual(sent);
    await until(() => seenByB.length === 1, "bob to get the message");
    expect(seenByA).toEqual([sent]);
    expect(seenByB).toEqual([sent]);
    expect(a.lastId).toBe(sent.id);
  });

  it("rejects send with the server's code: message_too_long, invalid_message", async () => {
    const a = client(server, { room: "errors", user: "ada" });
    await opened(a);
    const tooLong = a.send("x".repeat(2001));
    await expect(tooLong).rejects.toBeInstanceOf(ChatError);
    await expect(tooLong).rejects.toMatchObject({ code: "message_too_long" });
    await expect(a.send("   ")).rejects.toMatchObject({ code: "invalid_message" });
    // The connection carries on.
    await expect(a.send("still here")).resolves.toMatchObject({ message: "still here" });
  });

  it("keeps presence and relays typing", async () => {
    const a = client(server, { room: "presence", user: "ada" });
    await opened(a);
    const joined = nextEvent(a, "presence", (p) => p.joined.includes("bob"));
    const b = client(server, { room: "presence", user: "bob" });
    await opened(b);
    expect((await joined).users.sort()).toEqual(["ada", "bob"]);
    expect([...b.users].sort()).toEqual(["ada", "bob"]);

    const typing = nextEvent(a, "typing");
    b.typing();
    b.typing(); // throttled: one notice
    expect(await typing).toEqual({ user: "bob" });

    const left = nextEvent(a, "presence", (p) => p.left.includes("bob"));
    b.close();
    expect((await left).users).toEqual(["ada"]);
  });

  it("pages through history with loadOlder until the start", async () => {
    const writer = client(server, { room: "paging", user: "writer" });
    await opened(writer);
    const all = await Promise.all(Array.from({ length: 120 }, (_, i) => writer.send(`m${i}`)));
    expect(all.map((m) => m.message)).toEqual(Array.from({ length: 120 }, (_, i) => `m${i}`));

    const reader = client(server, { room: "paging", user: "reader" });
    const fromWelcome = record(reader);
    await opened(reader);
    await until(() => fromWelcome.length === 50, "the welcome's 50 messages");
    expect(fromWelcome.map((m) => m.id)).toEqual(all.slice(70).map((m) => m.id));
    expect(reader.hasOlder).toBe(true);

    const page1 = await reader.loadOlder(50);
    expect(page1.map((m) => m.id)).toEqual(all.slice(20, 70).map((m) => m.id));
    const page2 = await reader.loadOlder(50);
    expect(page2.map((m) => m.id)).toEqual(all.slice(0, 20).map((m) => m.id));
    expect(reader.hasOlder).toBe(false);
    await expect(reader.loadOlder()).resolves.toEqual([]);
    // Older pages are the past, not new messages.
    expect(fromWelcome).toHaveLength(50);
  });

  it("knows when the welcome already holds the whole history (no 'load older' to offer)", async () => {
    const writer = client(server, { room: "short", user: "writer" });
    await opened(writer);
    for (const t of ["a", "b", "c"]) await writer.send(t);
    const reader = client(server, { room: "short", user: "reader" });
    const seen = record(reader);
    await nextEvent(reader, "beginning");
    expect(reader.hasOlder).toBe(false);
    expect(seen.map((m) => m.message)).toEqual(["a", "b", "c"]);
    await expect(reader.loadOlder()).resolves.toEqual([]);
    // A live message does not bring "older" back.
    await writer.send("d");
    await until(() => seen.length === 4, "the live message");
    expect(reader.hasOlder).toBe(false);
  });

  it("queues sends while offline (bounded) and sends them once, in order", async () => {
    const { net, WebSocket: Flaky } = flakyNetwork();
    net.up = false;
    const a = client(server, { room: "queue", user: "ada", WebSocket: Flaky, maxQueue: 3 });
    const watcher = client(server, { room: "queue", user: "watch" });
    await opened(watcher);
    const seen = record(watcher);

    const sends = ["one", "two", "three"].map((t) => a.send(t));
    await expect(a.send("four")).rejects.toMatchObject({ code: "queue_full" });
    expect(a.queued).toBe(3);
    expect(a.status).toBe("connecting");

    net.up = true;
    a.retryNow();
    const stored = await Promise.all(sends);
    expect(stored.map((m) => m.message)).toEqual(["one", "two", "three"]);
    expect(a.queued).toBe(0);
    await until(() => seen.length === 3, "the watcher to see the three");
    await new Promise((r) => setTimeout(r, 200)); // room for a duplicate to show up
    expect(seen.map((m) => m.message)).toEqual(["one", "two", "three"]);
  });

  it("takes a connection with no answer to its ping as dead, reconnects and resumes", async () => {
    const { net, WebSocket: Flaky } = flakyNetwork();
    const a = client(server, {
      room: "dead",
      user: "ada",
      WebSocket: Flaky,
      pingIntervalMs: 100,
      pongTimeoutMs: 200,
      connectTimeoutMs: 300,
    });
    await opened(a);
    const seen = record(a);
    const other = client(server, { room: "dead", user: "bob" });
    await opened(other);
    const first = await other.send("before the cut");
    await until(() => seen.length === 1, "the first message");

    net.blackhole = true;
    await nextEvent(a, "status", (s) => s.status === "reconnecting");
    const missed = await other.send("sent while ada was cut off");
    expect(seen).toEqual([first]);

    const back = nextEvent(a, "open");
    net.blackhole = false;
    expect(await back).toMatchObject({ resumed: true, recovered: true });
    await until(() => seen.length === 2, "the missed message");
    expect(seen).toEqual([first, missed]);
    expect(net.connections).toBeGreaterThan(1);
  });

  it("checkConnection() finds a dead connection without waiting for the next ping", async () => {
    const { net, WebSocket: Flaky } = flakyNetwork();
    const a = client(server, {
      room: "check",
      user: "ada",
      WebSocket: Flaky,
      pingIntervalMs: 60_000,
      pongTimeoutMs: 200,
    });
    await opened(a);
    a.checkConnection(); // alive: the pong keeps it
    await new Promise((r) => setTimeout(r, 400));
    expect(a.status).toBe("open");
    net.blackhole = true;
    a.checkConnection();
    // Well before the next ping (60 s away) could notice.
    await nextEvent(a, "status", (s) => s.status === "reconnecting", 3000);
    net.blackhole = false;
    await nextEvent(a, "open", (e) => e.resumed);
  });

  it("settles a send whose echo was lost from the resume, and resends one the server never got: each stored once", async () => {
    const { net, WebSocket: Flaky } = flakyNetwork();
    const dying = { pingIntervalMs: 100, pongTimeoutMs: 200, connectTimeoutMs: 300 };
    const a = client(server, { room: "inflight", user: "ada", WebSocket: Flaky, ...dying });
    const watcher = client(server, { room: "inflight", user: "watch" });
    await Promise.all([opened(a), opened(watcher)]);
    const seen = record(watcher);
    await a.send("warm-up"); // so the resume has a since

    // The server stores this one, but its echo never arrives.
    net.deaf = true;
    const echoLost = a.send("echo lost");
    await until(() => seen.length === 2, "the server to store it");
    await nextEvent(a, "status", (s) => s.status === "reconnecting");
    net.deaf = false;
    const stored = await echoLost;
    expect(stored).toEqual(seen[1]);

    // This one never reaches the server.
    await opened(a);
    net.blackhole = true;
    const neverArrived = a.send("never arrived");
    await nextEvent(a, "status", (s) => s.status === "reconnecting");
    net.blackhole = false;
    const resent = await neverArrived;
    expect(resent.message).toBe("never arrived");

    await until(() => seen.length === 3, "the resent message");
    await new Promise((r) => setTimeout(r, 200)); // room for a duplicate to show up
    expect(seen.map((m) => m.message)).toEqual(["warm-up", "echo lost", "never arrived"]);
  });
});

describe("ChatClient on Bun and Deno, with their own global WebSocket", () => {
  let server: RunningServer;
  const bin = (name: string) => resolve(import.meta.dirname, "../../node_modules/.bin", name);
  const clientPath = resolve(import.meta.dirname, "../../src/client/chat-client.ts");

  beforeAll(async () => {
    server = await nodeTarget.start({ HISTORY: "memory" });
  });

  for (const [runtime, args] of [
    ["bun", ["-e"]],
    ["deno", ["eval"]],
  ] as const) {
    it(`sends and receives on ${runtime}`, async () => {
      const watcher = client(server, { room: "runtimes", user: "watch" });
      await opened(watcher);
      const seen = record(watcher);
      // No WebSocket option: the runtime's global one must do.
      const code = `
        import { ChatClient } from ${JSON.stringify(clientPath)};
        const c = new ChatClient({ url: ${JSON.stringify(server.wsUrl)}, room: "runtimes", user: "${runtime}" });
        const sent = await c.send("hello from ${runtime}");
        const it = c.messages();
        await c.send("second");
        const next = await it.next();
        console.log(JSON.stringify({ sent, next: next.value }));
        c.close();
      `;
      const { stdout } = await promisify(execFile)(bin(runtime), [...args, code], { timeout: 20_000 });
      const out = JSON.parse(stdout.trim().split("\n").at(-1) ?? "") as { sent: ChatMessage; next: ChatMessage };
      expect(out.sent).toMatchObject({ user: runtime, message: `hello from ${runtime}`, room: "runtimes" });
      expect(out.next).toMatchObject({ user: runtime, message: "second" });
      await until(() => seen.length === 2, `the watcher to see ${runtime}'s messages`);
      expect(seen).toEqual([out.sent, out.next]);
    });
  }
});

describe("ChatClient across a server restart", () => {
  let port: number;
  const historyPath = tempHistoryPath();
  let server: RunningServer;

  afterAll(async () => {
    await server?.kill();
  });

  it("resumes after a restart mid-conversation: nothing missed, nothing duplicated", async () => {
    server = await nodeTarget.start({}, { historyPath });
    port = Number(new URL(server.url).port);
    const room = "restart";
    const ada = client(server, { room, user: "ada" });
    const { net, WebSocket: Flaky } = flakyNetwork();
    const bob = client(server, { room, user: "bob", WebSocket: Flaky });
    await Promise.all([opened(ada), opened(bob)]);
    const adaSaw = record(ada);
    const bobSaw = record(bob);
    const bobIterated: ChatMessage[] = [];
    const iterating = (async () => {
      for await (const m of bob.messages()) bobIterated.push(m);
    })();

    const before = [await ada.send("before 1"), await bob.send("before 2")];
    await until(() => bobSaw.length === 2 && adaSaw.length === 2, "both to see the first two");

    // Stop the server; keep bob off the network until ada has talked in the gap.
    net.up = false;
    await server.stop();
    await nextEvent(ada, "status", (s) => s.status === "reconnecting");
    const queuedByAda = ada.send("queued while the server was down");
    const queuedByBob = bob.send("bob queued too");
    expect(ada.queued).toBe(1);

    server = await nodeTarget.start({ PORT: String(port) }, { historyPath });
    const adaBack = await nextEvent(ada, "open", () => true, 15_000);
    expect(adaBack).toMatchObject({ resumed: true, recovered: true });
    const queued = await queuedByAda;
    const during = [queued, await ada.send("during the gap 1"), await ada.send("during the gap 2")];

    const bobBack = nextEvent(bob, "open");
    net.up = true;
    bob.retryNow();
    expect(await bobBack).toMatchObject({ resumed: true, recovered: true });
    const bobQueued = await queuedByBob;
    const after = await ada.send("after");

    const expected = [...before, ...during, bobQueued, after];
    await until(() => bobSaw.length === expected.length && adaSaw.length === expected.length, "everyone to catch up");
    await new Promise((r) => setTimeout(r, 200)); // room for a duplicate to show up
    const ids = (ms: ChatMessage[]) => ms.map((m) => m.id);
    expect(ids(bobSaw)).toEqual(ids(expected));
    expect(ids(adaSaw)).toEqual(ids(expected));
    expect(bobSaw.map((m) => m.message)).toEqual([
      "before 1",
      "before 2",
      "queued while the server was down",
      "during the gap 1",
      "during the gap 2",
      "bob queued too",
      "after",
    ]);
    expect(new Set(ids(bobSaw)).size).toBe(bobSaw.length);
    bob.close();
    await iterating;
    expect(ids(bobIterated)).toEqual(ids(expected));
  });

  it("says recovered: false when the server cannot give back what was missed", async () => {
    // In-memory history: the restarted server has none of what the client saw.
    let memory = await nodeTarget.start({ HISTORY: "memory" });
    const memoryPort = new URL(memory.url).port;
    const a = client(memory, { room: "gap", user: "ada" });
    await opened(a);
    const seen = await a.send("one");
    const gap = nextEvent(a, "gap", () => true, 15_000);
    const open = nextEvent(a, "open", (e) => e.resumed, 15_000);
    await memory.stop();
    memory = await nodeTarget.start({ HISTORY: "memory", PORT: memoryPort });
    expect(await open).toMatchObject({ resumed: true, recovered: false });
    expect(await gap).toEqual({ since: seen.id });
    await memory.stop();
  });
});
