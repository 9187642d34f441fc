/**
 * The typed ChatClient against a real Node server: acks and errors, presence
 * and typing, history paging, the offline queue, dead-connection detection,
 * and a stop/restart of the server mid-conversation (same HISTORY_PATH) with
 * nothing missed and nothing duplicated. With AUTH_SECRET: edit, delete, ban
 * and unban, token refresh through `getToken` and the reconnect after 4001.
 *
 * Paged welcomes and history answers, and the token and ban paths, are also
 * driven frame by frame through {@link scriptedServer}, a fake socket the test
 * answers by hand, so each order of frames is shown whatever the server's
 * page size.
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
import { sign } from "hono/jwt";
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
import { expectRefused } from "../helpers/client.ts";
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

/**
 * A server the test plays by hand: each socket the client opens is kept in
 * `sockets`, opens on the next tick, records what the client sends (parsed),
 * and takes frames from the test with `push` and a close with `drop`.
 */
function scriptedServer() {
  const sockets: Scripted[] = [];
  class Scripted implements WebSocketLike {
    readyState = 0;
    readonly protocol = "chat.v1";
    readonly sent: Array<Record<string, unknown>> = [];
    onopen: ((e: unknown) => void) | null = null;
    onmessage: ((e: { data: unknown }) => void) | null = null;
    onclose: ((e: { code: number; reason: string }) => void) | null = null;
    onerror: ((e: unknown) => void) | null = null;

    constructor(readonly url: string) {
      sockets.push(this);
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.({});
      }, 0);
    }

    send(data: string): void {
      this.sent.push(JSON.parse(data) as Record<string, unknown>);
    }

    close(): void {
      this.readyState = 3;
    }

    push(frame: object): void {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }

    drop(code = 1006, reason = ""): void {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    /** Frames of `type` the client sent. */
    of(type: string): Array<Record<string, unknown>> {
      return this.sent.filter((f) => f.type === type);
    }
  }
  return { sockets, WebSocket: Scripted };
}

/** Messages m0..m(n-1) of one room, ids in order. */
function messagesOf(n: number, room = "r", user = "bob"): ChatMessage[] {
  return Array.from({ length: n }, (_, i) => ({
    type: "message" as const,
    id: protocol.formatMessageId(1_700_000_000_000, i + 1),
    room,
    user,
    message: `m${i}`,
    ts: 1_700_000_000_000 + i,
  }));
}

function welcome(history: ChatMessage[], extra: Record<string, unknown> = {}) {
  return { type: "welcome", room: "r", user: "ada", users: ["ada", "bob"], history, ...extra };
}

/** An unsigned JWT-shaped token: the client only reads its `exp`; the scripted server checks nothing. */
function fakeToken(exp: number, name = "ada"): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part({ name, exp })}.sig`;
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

describe("ChatClient with a scripted server", () => {
  function scripted(opts: Partial<ChatClientOptions> = {}) {
    const server = scriptedServer();
    const c = new ChatClient({
      url: "ws://127.0.0.1:9/websocket",
      room: "r",
      user: "ada",
      WebSocket: server.WebSocket,
      backoff: FAST,
      pingIntervalMs: 0,
      ...opts,
    });
    track(() => c.close());
    const socket = async (n: number) => {
      await until(() => server.sockets.length > n && server.sockets[n]?.readyState === 1, `socket ${n}`);
      return server.sockets[n]!;
    };
    return { c, server, socket };
  }

  it("follows a paged welcome: every message once, in order; sends wait for the last page", async () => {
    const { c, socket } = scripted();
    const seen = record(c);
    const caughtUp = nextEvent(c, "caughtUp");
    const s0 = await socket(0);
    const ms = messagesOf(8);
    s0.push(welcome(ms.slice(0, 3), { more: true }));
    expect(c.status).toBe("open");
    const sending = c.send("hello");
    s0.push({ type: "history", messages: ms.slice(2, 5), more: true }); // m2 twice: shown once
    expect(s0.of("message")).toEqual([]); // not while the welcome is still arriving
    s0.push({ type: "history", messages: ms.slice(5), more: false });
    expect(await caughtUp).toEqual({ resumed: false, count: 8 });
    expect(seen.map((m) => m.message)).toEqual(ms.map((m) => m.message));
    expect(c.lastId).toBe(ms[7]!.id);
    const [out] = s0.of("message");
    expect(out).toMatchObject({ type: "message", message: "hello" });
    const echo = { ...messagesOf(9, "r", "ada")[8]!, message: "hello", cid: out!.cid };
    s0.push(echo);
    const { cid: _, ...stored } = echo;
    expect(await sending).toEqual(stored);
  });

  it("keeps a live message that overtakes the welcome's pages until they are in (none lost, none twice)", async () => {
    const { c, socket } = scripted();
    const seen = record(c);
    const ms = messagesOf(6);
    const s0 = await socket(0);
    s0.push(welcome(ms.slice(0, 2), { more: true }));
    s0.push(ms[5]!); // a live message before the pages 2..4: it must not move the cursor past them
    s0.push({ type: "history", messages: ms.slice(2, 5), more: false });
    expect(seen.map((m) => m.message)).toEqual(ms.map((m) => m.message));
  });

  it("resumes a paged welcome cut in the middle from the last message it delivered", async () => {
    const { c, socket } = scripted();
    const seen = record(c);
    const ms = messagesOf(10);
    const s0 = await socket(0);
    s0.push(welcome(ms.slice(0, 3), { more: true }));
    s0.push({ type: "history", messages: ms.slice(3, 6), more: true });
    s0.drop();
    const s1 = await socket(1);
    expect(new URL(s1.url).searchParams.get("since")).toBe(ms[5]!.id);
    const open = nextEvent(c, "open");
    s1.push(welcome(ms.slice(6, 8), { more: true, recovered: true }));
    expect(await open).toMatchObject({ resumed: true, recovered: true });
    s1.push({ type: "history", messages: ms.slice(8), more: false });
    expect(seen.map((m) => m.message)).toEqual(ms.map((m) => m.message));
    expect(c.lastId).toBe(ms[9]!.id);
  });

  it("collects a paged history answer for loadOlder, and knows when nothing older is left", async () => {
    const { c, socket } = scripted();
    const ms = messagesOf(20);
    const s0 = await socket(0);
    s0.push(welcome(ms.slice(15)));
    // The one-message look behind the welcome.
    await until(() => s0.of("history").length === 1, "the probe");
    const probe = s0.of("history")[0]!;
    expect(probe).toMatchObject({ before: ms[15]!.id, limit: 1 });
    s0.push({ type: "history", messages: [ms[14]], before: probe.before, cid: probe.cid });
    await until(() => c.hasOlder, "hasOlder");

    const older = c.loadOlder(10);
    await until(() => s0.of("history").length === 2, "the request");
    const ask = s0.of("history")[1]!;
    expect(ask).toMatchObject({ before: ms[15]!.id, limit: 10 });
    s0.push({ type: "history", messages: ms.slice(5, 9), before: ask.before, cid: ask.cid, more: true });
    s0.push({ type: "history", messages: ms.slice(9, 15), before: ask.before, cid: ask.cid, more: false });
    expect((await older).map((m) => m.message)).toEqual(ms.slice(5, 15).map((m) => m.message));
    expect(c.hasOlder).toBe(true);

    const rest = c.loadOlder(10);
    await until(() => s0.of("history").length === 3, "the second request");
    const ask2 = s0.of("history")[2]!;
    expect(ask2.before).toBe(ms[5]!.id);
    s0.push({ type: "history", messages: ms.slice(0, 5), before: ask2.before, cid: ask2.cid });
    expect(await rest).toHaveLength(5);
    expect(c.hasOlder).toBe(false);
  });

  it("rejects a rate-limited send with retryAfterMs, and a history request refused without a cid", async () => {
    const { c, socket } = scripted();
    const s0 = await socket(0);
    const [m0, m1] = messagesOf(2);
    s0.push(welcome([m1!]));
    await until(() => s0.of("history").length === 1, "the probe");
    const probe = s0.of("history")[0]!;
    s0.push({ type: "history", messages: [m0], before: probe.before });
    await until(() => c.hasOlder, "hasOlder");

    const sending = c.send("too fast");
    const [out] = s0.of("message");
    s0.push({ type: "error", code: "rate_limited", message: "slow down", cid: out!.cid, retryAfterMs: 1200 });
    await expect(sending).rejects.toMatchObject({ code: "rate_limited", retryAfterMs: 1200 });

    // The server refuses a `history` frame without echoing a cid: with one waiting, that is its answer.
    const older = c.loadOlder(50);
    await until(() => s0.of("history").length === 2, "the history request");
    s0.push({ type: "error", code: "rate_limited", message: "slow down", retryAfterMs: 1500 });
    await expect(older).rejects.toMatchObject({ code: "rate_limited", retryAfterMs: 1500 });

    const errors: unknown[] = [];
    c.on("error", (e) => errors.push(e));
    s0.push({ type: "error", code: "rate_limited", message: "typing too often", retryAfterMs: 800 });
    expect(errors).toEqual([{ type: "error", code: "rate_limited", message: "typing too often", retryAfterMs: 800 }]);
  });

  it("normalizes merged presence: joined and left are always lists", async () => {
    const { c, socket } = scripted();
    const s0 = await socket(0);
    s0.push(welcome([]));
    const events: ChatEvents["presence"][] = [];
    c.on("presence", (p) => events.push(p));
    s0.push({ type: "presence", users: ["ada", "bob", "cy"], joined: "cy" });
    s0.push({ type: "presence", users: ["ada", "dee", "eve"], joined: ["dee", "eve"], left: ["bob", "cy"] });
    expect(events).toEqual([
      { users: ["ada", "bob", "cy"], joined: ["cy"], left: [] },
      { users: ["ada", "dee", "eve"], joined: ["dee", "eve"], left: ["bob", "cy"] },
    ]);
    expect(c.users).toEqual(["ada", "dee", "eve"]);
  });

  it("settles edit, delete, ban and unban by the server's answers, and rejects by cid", async () => {
    const { c, socket } = scripted();
    const s0 = await socket(0);
    s0.push(welcome(messagesOf(2), { role: "moderator" }));
    expect(c.role).toBe("moderator");
    const [m0, m1] = messagesOf(2);
    const edits: unknown[] = [];
    const deletes: unknown[] = [];
    c.on("edited", (e) => edits.push(e));
    c.on("deleted", (d) => deletes.push(d));

    const editing = c.edit(m0!.id, "fixed");
    expect(s0.sent.at(-1)).toMatchObject({ type: "edit", id: m0!.id, message: "fixed" });
    // The server answers an edit by broadcasting it (no cid).
    s0.push({ type: "edited", room: "r", id: m0!.id, message: "fixed", edited: 5 });
    expect(await editing).toEqual({ room: "r", id: m0!.id, message: "fixed", edited: 5 });
    expect(edits).toEqual([{ room: "r", id: m0!.id, message: "fixed", edited: 5 }]);

    const deleting = c.delete(m1!.id);
    const refused = c.delete(m0!.id);
    const [, del2] = s0.of("delete");
    s0.push({ type: "error", code: "forbidden", message: "not yours", cid: del2!.cid });
    await expect(refused).rejects.toMatchObject({ code: "forbidden" });
    s0.push({ type: "deleted", room: "r", id: m1!.id });
    await expect(deleting).resolves.toBeUndefined();
    expect(deletes).toEqual([{ room: "r", id: m1!.id }]);

    const banning = c.ban("troll", 60);
    const [ban] = s0.of("ban");
    expect(ban).toMatchObject({ user: "troll", seconds: 60 });
    s0.push({ type: "banned", room: "r", user: "troll", until: 123, cid: ban!.cid });
    expect(await banning).toEqual({ until: 123 });
    const unbanning = c.unban("troll");
    const [unban] = s0.of("unban");
    s0.push({ type: "unbanned", room: "r", user: "troll", cid: unban!.cid });
    await expect(unbanning).resolves.toBeUndefined();

    // An answer that never comes: the request times out; offline requests fail at once.
    const c2 = scripted({ requestTimeoutMs: 100 });
    await expect(c2.c.delete(m0!.id)).rejects.toMatchObject({ code: "offline" });
    const t0 = await c2.socket(0);
    t0.push(welcome([]));
    await expect(c2.c.delete(m0!.id)).rejects.toMatchObject({ code: "timeout" });
  });

  it("stops for good when banned (4003): says why, rejects sends, never knocks again", async () => {
    const { c, server, socket } = scripted();
    const s0 = await socket(0);
    s0.push(welcome([]));
    const queued = c.send("last words");
    const closed = nextEvent(c, "closed");
    s0.drop(4003, "banned");
    expect(await closed).toEqual({ reason: "banned", code: 4003, message: "banned" });
    expect(c.status).toBe("closed");
    expect(c.closedReason).toBe("banned");
    await expect(queued).rejects.toMatchObject({ code: "closed" });
    await expect(c.send("again")).rejects.toMatchObject({ code: "closed" });
    c.connect(); // does nothing: the server said no
    await new Promise((r) => setTimeout(r, 400)); // several backoff steps (FAST is 50-300 ms)
    expect(server.sockets).toHaveLength(1);
  });

  it("refreshes the token ahead of exp with getToken, and fetches a new one after 4001", async () => {
    const now = () => Math.floor(Date.now() / 1000);
    const issued: string[] = [];
    const getToken = async () => {
      const t = fakeToken(now() + 4, `ada${issued.length}`);
      issued.push(t);
      return t;
    };
    const { c, server, socket } = scripted({ getToken });
    const s0 = await socket(0);
    expect(issued).toHaveLength(1);
    expect(new URL(s0.url).searchParams.get("token")).toBe(issued[0]);
    s0.push(welcome([]));
    // A 4 s token is refreshed at about half its life, on the same connection.
    await until(() => s0.of("auth").length === 1, "the refresh", 5000);
    const [auth] = s0.of("auth");
    expect(auth).toMatchObject({ token: issued[1] });
    const answered = nextEvent(c, "auth");
    s0.push({ type: "auth", exp: now() + 4, cid: auth!.cid });
    expect((await answered).exp).toBeGreaterThan(now());
    expect(server.sockets).toHaveLength(1);

    // The server ends it at expiry: a fresh token, then a new connection with it.
    s0.push({ type: "error", code: "token_expired", message: "the token expired" });
    s0.drop(4001, "token expired");
    const s1 = await socket(1);
    expect(issued).toHaveLength(3);
    expect(new URL(s1.url).searchParams.get("token")).toBe(issued[2]);
    expect(c.status).toBe("reconnecting");
  });

  it("closes with token_expired on 4001 when it has only a fixed token, and unauthorized when getToken gives none", async () => {
    const fixed = scripted({ token: fakeToken(Math.floor(Date.now() / 1000) + 60) });
    const s0 = await fixed.socket(0);
    s0.push(welcome([]));
    const closed = nextEvent(fixed.c, "closed");
    s0.drop(4001, "token expired");
    expect(await closed).toMatchObject({ reason: "token_expired", code: 4001 });
    await new Promise((r) => setTimeout(r, 300));
    expect(fixed.server.sockets).toHaveLength(1);

    const none = scripted({ getToken: async () => null });
    expect(await nextEvent(none.c, "closed")).toMatchObject({ reason: "unauthorized" });
    expect(none.server.sockets).toHaveLength(0);
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

describe("ChatClient against a server with AUTH_SECRET: moderation and token lifetime", () => {
  const SECRET = "client-test-secret-0123456789";
  let server: RunningServer;
  const now = () => Math.floor(Date.now() / 1000);
  const token = (name: string, claims: Record<string, unknown> = {}) =>
    sign({ name, exp: now() + 3600, ...claims }, SECRET, "HS256");

  beforeAll(async () => {
    server = await nodeTarget.start({ AUTH_SECRET: SECRET, RATE_LIMIT: "0" });
  });

  it("edits and deletes own messages; others get edited/deleted events; errors come back by request", async () => {
    const ada = client(server, { room: "gov", token: await token("ada") });
    const bob = client(server, { room: "gov", token: await token("bob") });
    await Promise.all([opened(ada), opened(bob)]);
    const sent = await ada.send("helo");
    const bobEdits = nextEvent(bob, "edited");
    const edit = await ada.edit(sent.id, "hello");
    expect(edit).toMatchObject({ room: "gov", id: sent.id, message: "hello" });
    expect(typeof edit.edited).toBe("number");
    expect(await bobEdits).toEqual(edit);

    await expect(bob.edit(sent.id, "hijacked")).rejects.toMatchObject({ code: "forbidden" });
    await expect(bob.delete(sent.id)).rejects.toMatchObject({ code: "forbidden" });
    await expect(ada.delete("1700000000000-000001")).rejects.toMatchObject({ code: "not_found" });
    await expect(bob.ban("ada")).rejects.toMatchObject({ code: "forbidden" });

    // A newcomer's history has the edit.
    const cy = client(server, { room: "gov", token: await token("cy") });
    const cySaw = record(cy);
    await nextEvent(cy, "caughtUp");
    expect(cySaw).toEqual([{ ...sent, message: "hello", edited: edit.edited }]);

    const bobDeletes = nextEvent(bob, "deleted");
    await ada.delete(sent.id);
    expect(await bobDeletes).toEqual({ room: "gov", id: sent.id });
  });

  it("a moderator's ban closes the user for good (no reconnect) and refuses their handshake until unbanned", async () => {
    const mod = client(server, { room: "bans", token: await token("mod", { role: "moderator" }) });
    const trollToken = await token("troll");
    const { net, WebSocket: Counted } = flakyNetwork();
    const troll = client(server, { room: "bans", token: trollToken, WebSocket: Counted });
    await Promise.all([opened(mod), opened(troll)]);
    expect(mod.role).toBe("moderator");
    expect(troll.role).toBe(null);
    // Presence is merged per interval: a join and a leave inside one would cancel out.
    await until(() => mod.users.includes("troll"), "the moderator to see troll");
    const closed = nextEvent(troll, "closed");
    const left = nextEvent(mod, "presence", (p) => p.left.includes("troll"));
    const ban = await mod.ban("troll", 60);
    expect(ban.until).toBeGreaterThan(Date.now());
    expect(await closed).toMatchObject({ reason: "banned", code: 4003 });
    await left;
    expect(troll.status).toBe("closed");
    await expect(troll.send("let me back")).rejects.toMatchObject({ code: "closed" });
    await new Promise((r) => setTimeout(r, 500)); // FAST backoff would have tried several times
    expect(net.connections).toBe(1);
    expect(await expectRefused(`${server.wsUrl}?room=bans&token=${trollToken}`)).toMatchObject({
      status: 403,
      body: { error: "banned" },
    });

    await mod.unban("troll");
    const back = client(server, { room: "bans", token: trollToken });
    await opened(back);
  });

  it("keeps one connection across token expiries by refreshing through getToken", async () => {
    let calls = 0;
    const c = client(server, {
      room: "refresh",
      getToken: () => {
        calls++;
        return sign({ name: "ada", exp: now() + 3 }, SECRET, "HS256");
      },
    });
    const opens: ChatEvents["open"][] = [];
    c.on("open", (e) => opens.push(e));
    const auths: ChatEvents["auth"][] = [];
    c.on("auth", (e) => auths.push(e));
    await opened(c);
    // Each 3 s token outlives itself only through the refresh; 7 s is two expiries.
    await until(() => auths.length >= 3, "three refreshes", 12_000);
    expect(opens).toHaveLength(1);
    expect(c.status).toBe("open");
    expect(calls).toBeGreaterThanOrEqual(4);
    await expect(c.send("still here")).resolves.toMatchObject({ user: "ada" });
  });

  it("after a refused refresh the server closes with 4001 and the client comes back with a fresh token", async () => {
    const tokens = [
      sign({ name: "ada", exp: now() + 3 }, SECRET, "HS256"),
      sign({ name: "mallory", exp: now() + 60 }, SECRET, "HS256"), // names another user: refused
      sign({ name: "ada", exp: now() + 3600 }, SECRET, "HS256"),
    ];
    let calls = 0;
    const c = client(server, {
      room: "expiry",
      getToken: () => tokens[Math.min(calls++, tokens.length - 1)]!,
    });
    const errors: string[] = [];
    c.on("error", (e) => errors.push(e.code));
    await opened(c);
    const back = await nextEvent(c, "open", (e) => e.resumed, 10_000);
    expect(back).toMatchObject({ user: "ada", resumed: true });
    expect(errors).toEqual(["invalid_token", "token_expired"]);
    expect(calls).toBe(3);
    await expect(c.send("back")).resolves.toMatchObject({ user: "ada" });
  });
});

describe("ChatClient and the server's limits", () => {
  it("rejects a send over the rate limit with retryAfterMs; after that wait it goes through", async () => {
    const server = await nodeTarget.start({ RATE_LIMIT: "2", RATE_LIMIT_REFILL: "1", HISTORY: "memory" });
    const c = client(server, { room: "limits", user: "ada" });
    await opened(c);
    const results = await Promise.allSettled([c.send("1"), c.send("2"), c.send("3")]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "fulfilled", "rejected"]);
    const error = (results[2] as PromiseRejectedResult).reason as ChatError;
    expect(error).toMatchObject({ code: "rate_limited" });
    expect(error.retryAfterMs).toBeGreaterThan(0);
    expect(error.retryAfterMs).toBeLessThanOrEqual(1000);
    await new Promise((r) => setTimeout(r, error.retryAfterMs));
    await expect(c.send("3, again")).resolves.toMatchObject({ message: "3, again" });
  });

  it("follows merged presence: every join is reported, the list is exact", async () => {
    const server = await nodeTarget.start({ HISTORY: "memory", PRESENCE_INTERVAL_MS: "300" });
    const watcher = client(server, { room: "crowd", user: "watch" });
    await opened(watcher);
    const joined = new Set<string>();
    let frames = 0;
    watcher.on("presence", (p) => {
      frames++;
      for (const u of p.joined) joined.add(u);
    });
    const names = ["a1", "a2", "a3", "a4", "a5", "a6"];
    await Promise.all(names.map((user) => opened(client(server, { room: "crowd", user }))));
    await until(() => names.every((n) => joined.has(n)), "every join");
    await until(() => watcher.users.length === names.length + 1, "the full list");
    expect([...watcher.users].sort()).toEqual([...names, "watch"].sort());
    expect(frames).toBeLessThan(names.length); // merged: fewer frames than joins
  });
});

describe("ChatClient resuming more than one frame can carry", () => {
  it("gets 1000 messages of 8 KB after a disconnect: all, in order, once, and is not cut off", async () => {
    // 8 MB of catch-up against a 1 MiB send buffer: only a paged welcome gets it through.
    const server = await nodeTarget.start({ HISTORY: "memory", RATE_LIMIT: "0", MAX_MESSAGE_LENGTH: "8000" });
    const { net, WebSocket: Flaky } = flakyNetwork();
    const reader = client(server, { room: "big", user: "reader", WebSocket: Flaky, pongTimeoutMs: 300 });
    await opened(reader);
    const seen = record(reader);
    const first = await reader.send("before");

    // Cut the reader off (a dead socket, and no way back) while the writer talks.
    net.blackhole = true;
    net.up = false;
    const cut = nextEvent(reader, "status", (s) => s.status === "reconnecting");
    reader.checkConnection();
    await cut;
    const writer = client(server, { room: "big", user: "writer" });
    await opened(writer);
    const big = "x".repeat(7990);
    const sent: ChatMessage[] = [];
    for (let i = 0; i < 1000; i += 100) {
      sent.push(...(await Promise.all(Array.from({ length: 100 }, (_, k) => writer.send(`${i + k} ${big}`)))));
    }

    const opens: ChatEvents["open"][] = [];
    reader.on("open", (e) => opens.push(e));
    const caughtUp = nextEvent(reader, "caughtUp", () => true, 30_000);
    net.blackhole = false;
    net.up = true;
    reader.retryNow();
    expect(await caughtUp).toEqual({ resumed: true, count: 1000 });
    expect(opens).toEqual([expect.objectContaining({ resumed: true, recovered: true })]); // one reconnect, no cut
    expect(seen.map((m) => m.id)).toEqual([first.id, ...sent.map((m) => m.id)]);
    expect(reader.lastId).toBe(sent.at(-1)!.id);
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
