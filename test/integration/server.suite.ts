/**
 * The black-box server suite: a real server process per runtime, real `ws`
 * clients, nothing faked. Each runtime's test file calls
 * `serverSuite(target)`; capabilities a platform lacks are switched off with
 * `caps` (and the reason belongs in that file).
 *
 * Tests that need a special configuration start their own server; the rest
 * share one default server per describe and use a fresh room each, so every
 * case stands alone.
 */
import { request } from "node:http";
import { connect as netConnect } from "node:net";
import { sign } from "hono/jwt";
import { beforeAll, describe, expect, it } from "vitest";
import { connect, expectRefused, type TestClient } from "../helpers/client.ts";
import { type RunningServer, type ServerTarget, tempHistoryPath } from "../helpers/server.ts";
import { fairUseCases } from "./abuse/fair-use.cases.ts";
import { pagingCases } from "./abuse/paging.cases.ts";
import { governanceCases } from "./governance.cases.ts";
import { webhookCases } from "./webhooks.cases.ts";

/** What a runtime supports; everything defaults to true. */
export interface SuiteCaps {
  /** GET /metrics in Prometheus text (not on Workers). */
  metrics?: boolean;
  /** SIGTERM ends the process gracefully (not under wrangler). */
  signals?: boolean;
  /** History survives a restart given the same HISTORY_PATH. */
  restart?: boolean;
  /** Server pings and the HEARTBEAT_MS rule. */
  heartbeat?: boolean;
  /** A client that does not read is closed with 1013. */
  slowConsumer?: boolean;
  /** A text frame of invalid UTF-8 closes with 1007 (workerd decodes it to U+FFFD before the app sees it). */
  utf8Close?: boolean;
  /** GET /api/rooms lists every room (not on Workers: no object sees every room). */
  apiRooms?: boolean;
  /** A server-initiated close completes for a client that never sent a frame (not under wrangler dev). */
  closeSilent?: boolean;
}

const SUB = "chat.v1";
let roomSeq = 0;
/** A room no other test uses. */
const freshRoom = () => `r${process.pid.toString(36)}-${(++roomSeq).toString(36)}`;

type Json = Record<string, unknown>;

function q(params: Record<string, string | undefined>): string {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) s.set(k, v);
  const text = s.toString();
  return text ? `?${text}` : "";
}

/** A seed-mode (tutorial) client in `room`. */
function seed(server: RunningServer, room: string, extra: Record<string, string> = {}): Promise<TestClient> {
  return connect(`${server.wsUrl}${q({ room, ...extra })}`);
}

/** A chat.v1 client in `room`, after its welcome (returned alongside). */
async function v1(
  server: RunningServer,
  room: string,
  user: string | undefined,
  extra: Record<string, string | undefined> = {},
): Promise<{ c: TestClient; welcome: Json }> {
  const c = await connect(`${server.wsUrl}${q({ room, user, ...extra })}`, { protocols: SUB });
  const welcome = await c.next();
  expect(welcome.type).toBe("welcome");
  return { c, welcome };
}

const isMsg = (f: Json) => f.type === "message";
const fetchJson = async (url: string, init?: RequestInit) => {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: tests that expect JSON fail on the shape
  }
  return { status: res.status, headers: res.headers, body, text };
};

/** A raw upgrade request, to see the handshake answer exactly as the server wrote it. */
function rawUpgrade(
  server: RunningServer,
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined> }> {
  return new Promise((resolve, reject) => {
    const req = request(`${server.url}${path}`, {
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": Buffer.from("0123456789abcdef").toString("base64"),
        ...headers,
      },
      timeout: 5000,
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
    });
    req.on("response", (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
    });
    req.on("timeout", () => req.destroy(new Error("raw upgrade timed out")));
    req.on("error", reject);
    req.end();
  });
}

/** Sends `{user,message}` from a seed client and waits for its own copy back. */
async function say(c: TestClient, user: string, message: string): Promise<Json> {
  c.send({ user, message });
  return c.waitFor((f) => isMsg(f) && f.message === message && f.user === user);
}

/** A small seeded PRNG (mulberry32), so a failing fuzz run reproduces from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Registers the black-box suite for one runtime: it starts servers with
 * `target` (several configurations) and talks to them with real clients.
 */
export function serverSuite(target: ServerTarget, caps: SuiteCaps = {}): void {
  const has = (k: keyof SuiteCaps) => caps[k] !== false;

  describe(`server suite: ${target.name}`, () => {
    let server: RunningServer;

    beforeAll(async () => {
      // Every case here comes from 127.0.0.1: with the per-address bucket on,
      // the suite's cases would spend one shared budget. The per-address
      // limits (defaults included) are the fair-use cases', on their own servers.
      server = await target.start({ RATE_LIMIT_IP: "0" });
    });

    governanceCases(target, {
      apiRooms: has("apiRooms"),
      restart: has("signals") && has("restart"),
      closeSilent: has("closeSilent"),
    });
    webhookCases(target, { restart: has("signals") && has("restart"), configExit: has("signals") });
    fairUseCases(target, caps);
    pagingCases(target, caps);

    describe("routes", () => {
      it("GET / serves the page as HTML", async () => {
        const res = await fetchJson(`${server.url}/`);
        expect(res.status).toBe(200);
        expect(res.headers.get("content-type")).toMatch(/^text\/html/);
        expect(res.text).toMatch(/<html|<!doctype html/i);
      });

      it("GET /healthz answers JSON status ok", async () => {
        const res = await fetchJson(`${server.url}/healthz`);
        expect(res.status).toBe(200);
        expect(res.headers.get("content-type")).toMatch(/application\/json/);
        expect(res.body).toMatchObject({ status: "ok" });
      });

      it.runIf(has("metrics"))("GET /metrics is Prometheus text with the chat metrics", async () => {
        const room = freshRoom();
        const c = await seed(server, room);
        const before = await fetchJson(`${server.url}/metrics`);
        expect(before.status).toBe(200);
        expect(before.headers.get("content-type")).toMatch(/^text\/plain/);
        expect(before.text).toMatch(/^# TYPE chat_connections gauge$/m);
        expect(before.text).toMatch(/^# TYPE chat_messages_total counter$/m);
        const count = (text: string) => Number(/^chat_messages_total(?:\{[^}]*\})? (\d+)/m.exec(text)?.[1] ?? "NaN");
        const connections = (text: string) =>
          [...text.matchAll(/^chat_connections(?:\{[^}]*\})? (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
        expect(connections(before.text)).toBeGreaterThanOrEqual(1);
        await say(c, "metric", "counted");
        const after = await fetchJson(`${server.url}/metrics`);
        expect(count(after.text)).toBeGreaterThanOrEqual(count(before.text) + 1);
        // The gauge follows connections both ways (other tests' clients may come and go meanwhile).
        const extra = await Promise.all([seed(server, room), v1(server, room, "gauge")]);
        const up = connections((await fetchJson(`${server.url}/metrics`)).text);
        expect(up).toBeGreaterThanOrEqual(2);
        await extra[0].close();
        await extra[1].c.close();
        let down = up;
        for (let i = 0; i < 40 && down > up - 2; i++) {
          await new Promise((r) => setTimeout(r, 50));
          down = connections((await fetchJson(`${server.url}/metrics`)).text);
        }
        expect(down).toBeLessThanOrEqual(up - 2);
      });

      it("GET /rooms/:room/messages pages history, newest last", async () => {
        const room = freshRoom();
        const c = await seed(server, room);
        const sent: Json[] = [];
        for (let i = 0; i < 7; i++) sent.push(await say(c, "pager", `p${i}`));
        const all = await fetchJson(`${server.url}/rooms/${room}/messages`);
        expect(all.status).toBe(200);
        expect((all.body as { messages: Json[] }).messages.map((m) => m.message)).toEqual(sent.map((m) => m.message));
        const last3 = await fetchJson(`${server.url}/rooms/${room}/messages?limit=3`);
        expect((last3.body as { messages: Json[] }).messages.map((m) => m.id)).toEqual(sent.slice(4).map((m) => m.id));
        const page = await fetchJson(`${server.url}/rooms/${room}/messages?before=${sent[4]!.id}&limit=2`);
        expect((page.body as { messages: Json[] }).messages.map((m) => m.id)).toEqual(
          sent.slice(2, 4).map((m) => m.id),
        );
        const empty = await fetchJson(`${server.url}/rooms/${freshRoom()}/messages`);
        expect(empty.body).toEqual({ messages: [] });
      });

      it("GET /rooms/:room/messages refuses bad input with 400 JSON", async () => {
        for (const path of ["/rooms/a%20b/messages", "/rooms/x/messages?limit=abc", "/rooms/x/messages?before=nope"]) {
          const res = await fetchJson(`${server.url}${path}`);
          expect(res.status, path).toBe(400);
          expect(res.body, path).toEqual({ error: expect.any(String) });
        }
      });

      it("a bad room or user on /websocket is 400 JSON before the upgrade", async () => {
        const cases = [
          { room: "a b" },
          { room: "r".repeat(65) },
          { room: "sl/ash" },
          { room: "" },
          { user: "u".repeat(33) },
          { user: "new\nline" },
          { user: "nul\u0000" },
        ];
        for (const params of cases) {
          const res = await expectRefused(`${server.wsUrl}${q(params)}`);
          expect(res.status, JSON.stringify(params)).toBe(400);
          expect(res.body, JSON.stringify(params)).toEqual({ error: expect.any(String) });
        }
      });
    });

    describe("seed mode (the tutorial's protocol)", () => {
      it("a tutorial client sends {user,message} and every client of the room, sender included, gets it", async () => {
        const room = freshRoom();
        const a = await seed(server, room);
        const b = await seed(server, room);
        expect(a.protocol).toBe("");
        const t0 = Date.now();
        a.send({ user: "alice", message: "hello" });
        const lines: string[] = [];
        for (const c of [a, b]) {
          const f = await c.next();
          expect(f).toMatchObject({ type: "message", user: "alice", message: "hello", room });
          expect(typeof f.id).toBe("string");
          expect(typeof f.ts).toBe("number");
          expect(f.ts as number).toBeGreaterThan(t0 - 60_000);
          // What the tutorial's page does with every frame.
          lines.push(`${f.user}: ${f.message}`);
        }
        expect(lines).toEqual(["alice: hello", "alice: hello"]);
      });

      it("seed clients get only message and error frames, even while v1 clients come, type and go", async () => {
        const room = freshRoom();
        const s = await seed(server, room);
        const named = await seed(server, room, { user: "sue" }); // a named seed client: still no presence
        const { c: v } = await v1(server, room, "vic");
        v.send({ type: "typing" });
        v.send({ type: "ping" });
        await v.waitFor("pong");
        await v.close();
        s.send("not json");
        await s.waitFor("error");
        await say(s, "sam", "sentinel");
        await named.waitFor((f) => f.message === "sentinel");
        for (const c of [s, named]) {
          for (const f of c.received) expect(["message", "error"]).toContain(f.json?.type);
        }
        expect(named.received.map((f) => f.json?.type)).toEqual(["message"]);
      });

      it("a named seed connection sends under its name without `user` in the frame", async () => {
        const room = freshRoom();
        const c = await seed(server, room, { user: "nora" });
        c.send({ message: "named" });
        expect(await c.next()).toMatchObject({ user: "nora", message: "named" });
      });

      it("offering only other subprotocols selects none (seed mode)", async () => {
        const res = await rawUpgrade(server, `/websocket?room=${freshRoom()}`, { "Sec-WebSocket-Protocol": "foo" });
        expect(res.status).toBe(101);
        expect(res.headers["sec-websocket-protocol"]).toBeUndefined();
        const none = await rawUpgrade(server, `/websocket?room=${freshRoom()}`, {});
        expect(none.status).toBe(101);
        expect(none.headers["sec-websocket-protocol"]).toBeUndefined();
      });
    });

    describe("chat.v1", () => {
      it("the handshake selects chat.v1, also when offered second", async () => {
        const first = await connect(`${server.wsUrl}?room=${freshRoom()}`, { protocols: SUB });
        expect(first.protocol).toBe(SUB);
        const second = await connect(`${server.wsUrl}?room=${freshRoom()}`, { protocols: ["foo", SUB] });
        expect(second.protocol).toBe(SUB);
        const raw = await rawUpgrade(server, `/websocket?room=${freshRoom()}`, {
          "Sec-WebSocket-Protocol": "foo, chat.v1",
        });
        expect(raw.status).toBe(101);
        expect(raw.headers["sec-websocket-protocol"]).toBe(SUB);
      });

      it("the first frame is the welcome, with users and the room's last messages, oldest first", async () => {
        const room = freshRoom();
        const s = await seed(server, room);
        const sent = [await say(s, "sam", "one"), await say(s, "sam", "two"), await say(s, "sam", "three")];
        const { c: a, welcome } = await v1(server, room, "alice");
        expect(welcome).toMatchObject({ type: "welcome", room, user: "alice", users: ["alice"] });
        expect(welcome.history).toEqual(sent);
        expect(welcome).not.toHaveProperty("recovered");
        const { welcome: w2 } = await v1(server, room, "bob");
        expect([...(w2.users as string[])].sort()).toEqual(["alice", "bob"]);
        const { welcome: anon } = await v1(server, room, undefined);
        expect(anon.user).toBeNull();
        expect([...(anon.users as string[])].sort()).toEqual(["alice", "bob"]);
        await a.close();
      });

      it("presence: joined and left go to v1 clients with the users list", async () => {
        const room = freshRoom();
        const { c: a } = await v1(server, room, "alice");
        const { c: b } = await v1(server, room, "bob");
        const joined = await a.waitFor((f) => f.type === "presence" && f.joined === "bob");
        expect([...(joined.users as string[])].sort()).toEqual(["alice", "bob"]);
        await b.close();
        const left = await a.waitFor((f) => f.type === "presence" && f.left === "bob");
        expect(left.users).toEqual(["alice"]);
      });

      it("ping is answered with pong", async () => {
        const { c } = await v1(server, freshRoom(), "pinger");
        c.send({ type: "ping" });
        expect(await c.waitFor("pong")).toEqual({ type: "pong" });
      });

      it("a history request returns up to N messages older than the id, oldest first", async () => {
        const room = freshRoom();
        const s = await seed(server, room);
        const sent: Json[] = [];
        for (let i = 0; i < 6; i++) sent.push(await say(s, "sam", `h${i}`));
        const { c } = await v1(server, room, "hank");
        c.send({ type: "history", before: sent[4]!.id, limit: 3 });
        const reply = await c.waitFor("history");
        expect(reply.messages).toEqual(sent.slice(1, 4));
        c.send({ type: "history", before: sent[0]!.id, limit: 3 });
        expect((await c.waitFor("history")).messages).toEqual([]);
        c.send({ type: "history", limit: 2 }); // no before: the newest
        expect((await c.waitFor("history")).messages).toEqual(sent.slice(4));
        c.send({ type: "history", before: "yesterday", cid: "h-1" });
        expect(await c.waitFor("error")).toMatchObject({ code: "invalid_frame", cid: "h-1" });
      });

      it("typing is relayed to the others, not back to the typist", async () => {
        const room = freshRoom();
        const { c: a } = await v1(server, room, "alice");
        const { c: b } = await v1(server, room, "bob");
        a.send({ type: "typing" });
        expect(await b.waitFor("typing")).toEqual({ type: "typing", user: "alice" });
        a.send({ type: "ping" });
        await a.waitFor("pong"); // the typist's frames so far are all in
        expect(a.received.some((f) => f.json?.type === "typing")).toBe(false);
      });

      it("the sender's echo carries its cid; the others' copies do not; the frame's user is ignored", async () => {
        const room = freshRoom();
        const { c: a } = await v1(server, room, "alice");
        const { c: b } = await v1(server, room, "bob");
        a.send({ type: "message", message: "hi", cid: "c-1", user: "mallory" });
        const echo = await a.waitFor(isMsg);
        const copy = await b.waitFor(isMsg);
        expect(echo).toMatchObject({ message: "hi", cid: "c-1", user: "alice" });
        expect(copy).toMatchObject({ message: "hi", user: "alice", id: echo.id });
        expect(copy).not.toHaveProperty("cid");
      });

      it("an unnamed v1 client must name the user in each message", async () => {
        const { c } = await v1(server, freshRoom(), undefined);
        c.send({ message: "who?", cid: "c-2" });
        expect(await c.waitFor("error")).toMatchObject({ code: "invalid_message", cid: "c-2" });
        c.send({ message: "me", user: "me" });
        expect(await c.waitFor(isMsg)).toMatchObject({ user: "me", message: "me" });
      });

      it("rooms are isolated", async () => {
        const r1 = freshRoom();
        const r2 = freshRoom();
        const { c: a } = await v1(server, r1, "alice");
        const { c: b } = await v1(server, r2, "bob");
        a.send({ message: "in r1" });
        b.send({ message: "in r2" });
        expect(await a.waitFor(isMsg)).toMatchObject({ message: "in r1", room: r1 });
        expect(await b.waitFor(isMsg)).toMatchObject({ message: "in r2", room: r2 });
        a.send({ type: "ping" });
        b.send({ type: "ping" });
        await a.waitFor("pong");
        await b.waitFor("pong");
        expect(a.received.filter((f) => f.json?.type === "message")).toHaveLength(1);
        expect(b.received.filter((f) => f.json?.type === "message")).toHaveLength(1);
        expect(a.received.some((f) => f.json?.joined === "bob")).toBe(false);
      });

      it("3 interleaving senders: every receiver sees the same ids in the same order, ids increasing", async () => {
        const room = freshRoom();
        const senders = [(await v1(server, room, "s0")).c, (await v1(server, room, "s1")).c, await seed(server, room)];
        const watchers = [await seed(server, room), (await v1(server, room, "w")).c];
        const perSender = 10; // within the default rate limit bucket
        for (let k = 0; k < perSender; k++) {
          senders.forEach((s, i) => {
            s.send({ user: `s${i}`, message: `${i}:${k}`, cid: `${i}-${k}` });
          });
        }
        const total = perSender * senders.length;
        const seqs = await Promise.all(
          [...senders, ...watchers].map(async (c) => (await c.collect(isMsg, total, 8000)).map((f) => f.id as string)),
        );
        for (const seq of seqs) expect(seq).toEqual(seqs[0]);
        expect(new Set(seqs[0]).size).toBe(total);
        expect([...seqs[0]!].sort()).toEqual(seqs[0]);
        // Each sender's messages keep their order.
        const texts = watchers[0]!.received
          .filter((f) => f.json?.type === "message")
          .map((f) => f.json!.message as string);
        for (let i = 0; i < senders.length; i++) {
          expect(texts.filter((t) => t.startsWith(`${i}:`))).toEqual(
            Array.from({ length: perSender }, (_, k) => `${i}:${k}`),
          );
        }
      });
    });

    describe("resume with since", () => {
      it("after a disconnect the welcome holds exactly the missed messages, recovered true", async () => {
        const room = freshRoom();
        const { c: a } = await v1(server, room, "alice");
        const s = await seed(server, room);
        const seen = await say(s, "sam", "before");
        await a.waitFor((f) => f.id === seen.id);
        await a.close();
        const missed = [await say(s, "sam", "m1"), await say(s, "sam", "m2"), await say(s, "sam", "m3")];
        const { welcome } = await v1(server, room, "alice", { since: seen.id as string });
        expect(welcome.recovered).toBe(true);
        expect(welcome.history).toEqual(missed);
      });

      it("since the newest id: empty history, recovered true; live messages follow without duplicates", async () => {
        const room = freshRoom();
        const s = await seed(server, room);
        const last = await say(s, "sam", "last");
        const { c, welcome } = await v1(server, room, "alice", { since: last.id as string });
        expect(welcome).toMatchObject({ recovered: true, history: [] });
        const next = await say(s, "sam", "next");
        expect(await c.waitFor(isMsg)).toEqual(next);
      });

      it("clients joining during a burst get every message once: history, then live, no gap, no duplicate", async () => {
        const room = freshRoom();
        const base = await say(await seed(server, room), "sam", "base");
        const senders = [await seed(server, room), await seed(server, room), await seed(server, room)];
        const perSender = 10;
        // Joins start between the sends, so their welcomes are prepared while messages arrive.
        const joins: Promise<{ c: TestClient; welcome: Json }>[] = [];
        for (let k = 0; k < perSender; k++) {
          if (k % 3 === 0) joins.push(v1(server, room, `j${k}`, k % 2 ? { since: base.id as string } : {}));
          for (const [i, s] of senders.entries()) s.send({ user: `s${i}`, message: `${i}:${k}` });
        }
        const all = (await senders[0]!.collect(isMsg, perSender * senders.length, 8000)).map((f) => f.id as string);
        const joined = await Promise.all(joins);
        for (const { c, welcome } of joined) {
          const history = (welcome.history as Json[])
            .map((m) => m.id as string)
            .filter((id) => id > (base.id as string));
          const liveCount = all.length - history.length;
          const live = liveCount > 0 ? (await c.collect(isMsg, liveCount, 8000)).map((f) => f.id as string) : [];
          expect([...history, ...live]).toEqual(all);
        }
      });

      it("since an unknown id or a non-id: recovered false", async () => {
        const room = freshRoom();
        const s = await seed(server, room);
        await say(s, "sam", "x");
        for (const since of ["0000000000001-000000", "not-an-id"]) {
          const { welcome } = await v1(server, room, "alice", { since });
          expect(welcome.recovered, since).toBe(false);
        }
      });

      it("since a pruned id: recovered false, history holds what the store still has", async () => {
        const small = await target.start({ HISTORY_LIMIT: "5", RATE_LIMIT: "0" });
        const room = freshRoom();
        const s = await seed(small, room);
        const sent: Json[] = [];
        for (let i = 0; i < 15; i++) sent.push(await say(s, "sam", `n${i}`));
        const { welcome } = await v1(small, room, "alice", { since: sent[0]!.id as string });
        expect(welcome.recovered).toBe(false);
        const history = welcome.history as Json[];
        expect(history.length).toBeGreaterThanOrEqual(5);
        expect(history).toEqual(sent.slice(-history.length));
      });
    });

    describe("errors and limits (docs/protocol.md: limits and errors)", () => {
      const rows: [string, string | Buffer, string][] = [
        ["not JSON", "hello there", "invalid_json"],
        ["a JSON array", "[1,2,3]", "invalid_json"],
        ["a JSON string", '"hi"', "invalid_json"],
        ["message missing", JSON.stringify({ user: "u" }), "invalid_message"],
        ["message not a string", JSON.stringify({ user: "u", message: 42 }), "invalid_message"],
        ["message empty", JSON.stringify({ user: "u", message: "" }), "invalid_message"],
        ["message only white space", JSON.stringify({ user: "u", message: "  \n " }), "invalid_message"],
        ["user missing (seed)", JSON.stringify({ message: "hi" }), "invalid_message"],
        ["user not a string", JSON.stringify({ user: 5, message: "hi" }), "invalid_message"],
        ["user longer than 32", JSON.stringify({ user: "u".repeat(33), message: "hi" }), "invalid_message"],
        ["user with control characters", JSON.stringify({ user: "a\u0007b", message: "hi" }), "invalid_message"],
        ["message of 2001 characters", JSON.stringify({ user: "u", message: "x".repeat(2001) }), "message_too_long"],
        ["unknown type", JSON.stringify({ type: "dance", user: "u", message: "hi" }), "unknown_type"],
        ["binary frame", Buffer.from([1, 2, 3]), "unsupported_data"],
      ];

      it("every bad frame gets its error, the connection stays open, and nobody else sees anything", async () => {
        const room = freshRoom();
        const bad = await seed(server, room);
        const other = await seed(server, room);
        for (const [label, frame, code] of rows) {
          bad.send(frame);
          const err = await bad.next();
          expect(err, label).toEqual({ type: "error", code, message: expect.any(String) });
          expect((err.message as string).length, label).toBeGreaterThan(0);
        }
        const ok = await say(bad, "u", "still here");
        expect(await other.next()).toEqual(ok); // the first and only frame the other got
        expect(bad.closeInfo).toBeNull();
      });

      it("a frame of MAX_FRAME_BYTES is accepted; one byte more closes with 1009", async () => {
        const room = freshRoom();
        const c = await seed(server, room);
        const other = await seed(server, room);
        const pad = (n: number) => JSON.stringify({ user: "u", message: "x" }).replace('"x"', `"${"x".repeat(n)}"`);
        const legal = pad(65536 - pad(0).length);
        expect(Buffer.byteLength(legal)).toBe(65536);
        c.send(legal);
        expect(await c.next()).toMatchObject({ type: "error", code: "message_too_long" });
        const tooBig = pad(65537 - pad(0).length);
        c.send(tooBig);
        expect((await c.waitClosed()).code).toBe(1009);
        await say(other, "o", "unharmed");
      });

      it.runIf(has("utf8Close"))("a text frame that is not valid UTF-8 closes with 1007", async () => {
        const room = freshRoom();
        const c = await seed(server, room);
        const other = await seed(server, room);
        // ws sends the bytes as they are when told the frame is text.
        c.ws.send(Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0xff, 0x22, 0x7d]), { binary: false });
        expect((await c.waitClosed()).code).toBe(1007);
        await say(other, "o", "unharmed");
      });

      it("a lone surrogate escaped in JSON is refused as invalid_message, the connection stays", async () => {
        const c = await seed(server, freshRoom());
        c.send('{"user":"u","message":"half \\ud83d"}');
        expect(await c.next()).toMatchObject({ type: "error", code: "invalid_message" });
        await say(c, "u", "whole 😀");
      });

      it("rate limit (default bucket 10): the excess gets rate_limited and is dropped", async () => {
        const room = freshRoom();
        const c = await seed(server, room);
        const other = await seed(server, room);
        const n = 16;
        for (let i = 0; i < n; i++) c.send({ user: "spam", message: `r${i}`, cid: `r${i}` });
        const frames = await c.collect(() => true, n, 5000);
        const accepted = frames.filter(isMsg);
        const limited = frames.filter((f) => f.type === "error" && f.code === "rate_limited");
        expect(accepted.length + limited.length).toBe(n);
        expect(accepted.length).toBeGreaterThanOrEqual(10);
        expect(accepted.length).toBeLessThanOrEqual(12); // the bucket refills 1/s while this runs
        expect(limited.length).toBeGreaterThan(0);
        expect(limited[0]).toMatchObject({ cid: expect.stringMatching(/^r\d+$/) });
        // The others got exactly the accepted ones.
        await say(other, "o", "after");
        const seen = other.received.map((f) => f.json!).filter((f) => isMsg(f) && f.user === "spam");
        expect(seen.map((f) => f.id)).toEqual(accepted.map((f) => f.id));
      });
    });

    describe("origin check", () => {
      it("same host is allowed, another origin is 403 JSON, no Origin is allowed", async () => {
        const room = freshRoom();
        const host = new URL(server.url).host;
        const same = await connect(`${server.wsUrl}?room=${room}`, { headers: { Origin: `http://${host}` } });
        await say(same, "o", "same origin");
        for (const origin of ["http://evil.example", `http://${host}.evil.example`, "null", "http://127.0.0.1:1"]) {
          const res = await expectRefused(`${server.wsUrl}?room=${room}`, { headers: { Origin: origin } });
          expect(res.status, origin).toBe(403);
          expect(res.body, origin).toEqual({ error: expect.any(String) });
        }
        const none = await seed(server, room);
        await say(none, "n", "no origin");
      });
    });

    describe("auth (AUTH_SECRET)", () => {
      const secret = "test-secret-0123456789abcdef";
      let authed: RunningServer;
      const now = () => Math.floor(Date.now() / 1000);
      const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
      const token = (claims: Record<string, unknown>, key = secret) =>
        sign({ exp: now() + 600, ...claims }, key, "HS256");

      beforeAll(async () => {
        authed = await target.start({ AUTH_SECRET: secret });
      });

      it("missing, invalid, wrongly signed or expired tokens are 401 JSON before the upgrade", async () => {
        const room = freshRoom();
        const cases: [string, string | undefined][] = [
          ["missing", undefined],
          ["garbage", "not.a.token"],
          ["wrong key", await token({ name: "eve" }, "another-secret-0123456789")],
          ["expired", await token({ name: "old", exp: now() - 60 })],
          ["no name or sub", await token({ role: "x" })],
          ["unsigned (alg none)", `${b64({ alg: "none", typ: "JWT" })}.${b64({ name: "eve", exp: now() + 600 })}.`],
          ["HS256 header, empty signature", `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ name: "eve" })}.`],
        ];
        for (const [label, t] of cases) {
          const res = await expectRefused(`${authed.wsUrl}${q({ room, token: t })}`);
          expect(res.status, label).toBe(401);
          expect(res.body, label).toEqual({ error: expect.any(String) });
        }
        const rest = await fetchJson(`${authed.url}/rooms/${room}/messages`);
        expect(rest.status).toBe(401);
      });

      it("a token by query, Bearer header or cookie is accepted; the name comes from name, else sub", async () => {
        const room = freshRoom();
        const byQuery = await connect(
          `${authed.wsUrl}${q({ room, token: await token({ name: "quinn", sub: "q1" }) })}`,
        );
        const byBearer = await connect(`${authed.wsUrl}${q({ room })}`, {
          headers: { Authorization: `Bearer ${await token({ sub: "bea" })}` },
        });
        const byCookie = await connect(`${authed.wsUrl}${q({ room })}`, {
          headers: { Cookie: `theme=dark; token=${await token({ name: "coco" })}` },
        });
        for (const [c, name] of [
          [byQuery, "quinn"],
          [byBearer, "bea"],
          [byCookie, "coco"],
        ] as const) {
          c.send({ user: "mallory", message: `from ${name}` });
          expect(await c.waitFor((f) => isMsg(f) && f.message === `from ${name}`)).toMatchObject({ user: name });
        }
      });

      it("the v1 welcome names the token's user, and ?user= cannot override it", async () => {
        const room = freshRoom();
        const t = await token({ name: "tina" });
        const { c, welcome } = await v1(authed, room, "impostor", { token: t });
        expect(welcome).toMatchObject({ user: "tina", users: ["tina"] });
        c.send({ message: "hi", user: "impostor" });
        expect(await c.waitFor(isMsg)).toMatchObject({ user: "tina" });
      });
    });

    describe.runIf(has("signals"))("graceful shutdown and restart", () => {
      it("SIGTERM: every client gets 1001, history is flushed, exit 0 within 5 s; a restart keeps it all", async () => {
        const historyPath = tempHistoryPath();
        const s = await target.start({ RATE_LIMIT: "0" }, { historyPath });
        const room = freshRoom();
        const clients: TestClient[] = [];
        for (let i = 0; i < 30; i++) {
          clients.push(i % 2 ? await seed(s, room) : (await v1(s, room, `u${i}`)).c);
        }
        const first = await say(clients[1]!, "sam", "first");
        const last = await say(clients[1]!, "sam", "before shutdown");
        // Sent without waiting: accepted before the signal or refused, never lost silently.
        for (let i = 0; i < 20; i++) clients[1]!.send({ user: "sam", message: `burst ${i}` });
        const result = await s.stop("SIGTERM");
        expect(result.code).toBe(0);
        expect(result.ms).toBeLessThan(5000);
        const closes = await Promise.all(clients.map((c) => c.waitClosed(2000)));
        expect(closes.map((c) => c.code)).toEqual(clients.map(() => 1001));
        if (!has("restart")) return;

        const again = await target.start({}, { historyPath });
        const res = await fetchJson(`${again.url}/rooms/${room}/messages?limit=500`);
        const stored = (res.body as { messages: Json[] }).messages;
        // Every message a client saw echoed is in the file. (A burst message
        // stored while the connections were closing is kept but not echoed:
        // the client finds it when it resumes.)
        const echoed = clients[1]!.received.map((f) => f.json!).filter((f) => isMsg(f) && f.user === "sam");
        const storedIds = stored.map((m) => m.id as string);
        for (const m of echoed) expect(storedIds).toContain(m.id);
        expect(storedIds).toContain(last.id);
        expect([...storedIds].sort()).toEqual(storedIds);
        // Resume across the restart, and ids continue above the stored ones.
        const { c, welcome } = await v1(again, room, "alice", { since: first.id as string });
        expect(welcome.recovered).toBe(true);
        expect(welcome.history).toEqual(stored.slice(1));
        c.send({ message: "after restart" });
        const fresh = await c.waitFor(isMsg);
        expect((fresh.id as string) > (stored.at(-1)!.id as string)).toBe(true);
      });

      it("SIGINT shuts down the same way", async () => {
        const s = await target.start();
        const room = freshRoom();
        const a = await seed(s, room);
        const { c: b } = await v1(s, room, "bea");
        const result = await s.stop("SIGINT");
        expect(result.code).toBe(0);
        expect(result.ms).toBeLessThan(5000);
        expect((await a.waitClosed(2000)).code).toBe(1001);
        expect((await b.waitClosed(2000)).code).toBe(1001);
      });
    });

    describe("unlimited server (RATE_LIMIT=0, MAX_MESSAGE_LENGTH=60000; MAX_BUFFERED_BYTES default)", () => {
      let unlimited: RunningServer;

      beforeAll(async () => {
        unlimited = await target.start({ RATE_LIMIT: "0", MAX_MESSAGE_LENGTH: "60000" });
      });

      it("RATE_LIMIT=0 turns the limit off; welcome holds the last 50; since resumes up to 1000", async () => {
        const room = freshRoom();
        const c = await seed(unlimited, room);
        const n = 1010;
        // The first echo says the join is done: a burst before it would meet
        // the bound on frames held before the welcome (64, then 1008).
        c.send({ user: "u", message: "f0" });
        const frames = await c.collect(() => true, 1, 15_000);
        for (let i = 1; i < n; i++) c.send({ user: "u", message: `f${i}` });
        frames.push(...(await c.collect(() => true, n - 1, 15_000)));
        expect(frames.every(isMsg)).toBe(true);
        const ids = frames.map((f) => f.id as string);
        const { welcome } = await v1(unlimited, room, "late");
        expect((welcome.history as Json[]).map((m) => m.id)).toEqual(ids.slice(-50));
        // Exactly 1000 after the id: all of them, complete.
        const full = await v1(unlimited, room, "back", { since: ids[n - 1001]! });
        expect(full.welcome.recovered).toBe(true);
        expect((full.welcome.history as Json[]).map((m) => m.id)).toEqual(ids.slice(-1000));
        // More than 1000 after it: the newest 1000, and the gap is reported.
        const gap = await v1(unlimited, room, "gone", { since: ids[0]! });
        expect(gap.welcome.recovered).toBe(false);
        expect((gap.welcome.history as Json[]).map((m) => m.id)).toEqual(ids.slice(-1000));
      });

      it.runIf(has("slowConsumer"))(
        "a client that stops reading is closed with 1013 while another keeps receiving everything",
        async () => {
          const room = freshRoom();
          const slow = await seed(unlimited, room);
          const reader = await seed(unlimited, room);
          const sender = await seed(unlimited, room);
          // Stop reading at the TCP level: the kernel buffers fill, then the server's.
          const raw = (slow.ws as unknown as { _socket: import("node:net").Socket })._socket;
          raw.pause();
          const text = "y".repeat(59_000);
          // Where /metrics exists, the flood stops once the server has closed the
          // slow client, so it resumes reading before the server's close
          // timeout (3 s on Node) turns the 1013 into a dropped connection.
          const slowCount = async () =>
            has("metrics")
              ? Number(
                  /^chat_slow_consumers_total (\d+)/m.exec((await fetchJson(`${unlimited.url}/metrics`)).text)?.[1],
                )
              : Number.NaN;
          const slowBefore = await slowCount();
          const max = 320; // ~19 MB: far more than loopback buffers plus 1 MiB
          const got: Json[] = [];
          // Paced by the reader (8 messages, ~470 KB, in flight at a time), so
          // only the client that stopped reading falls behind.
          let stopAt = max;
          for (let i = 0; i < stopAt; i += 8) {
            for (let k = i; k < i + 8; k++) sender.send({ user: "flood", message: `${k} ${text}` });
            got.push(...(await reader.collect(isMsg, 8, 10_000)));
            // One more round after the close, which the slow client must not get.
            if (stopAt === max && i % 32 === 24 && (await slowCount()) > slowBefore) stopAt = i + 16;
          }
          expect(got.map((f) => (f.message as string).split(" ")[0])).toEqual(
            Array.from({ length: got.length }, (_, i) => String(i)),
          );
          const n = got.length;
          raw.resume();
          expect((await slow.waitClosed(10_000)).code).toBe(1013);
          // The slow client never got more than a prefix, in order, and no gaps.
          const slowIds = slow.received.filter((f) => f.json?.type === "message").map((f) => f.json!.id);
          expect(slowIds).toEqual(got.slice(0, slowIds.length).map((f) => f.id));
          expect(slowIds.length).toBeLessThan(n);
          await say(reader, "r", "still fine");
        },
      );

      it("300+ random frames from one client never crash the server nor disturb a normal client", async () => {
        const seedValue = Number(process.env.FUZZ_SEED ?? 20261128);
        const rand = prng(seedValue);
        const room = freshRoom();
        const fuzzer = await seed(unlimited, room);
        const { c: normal } = await v1(unlimited, room, "norm");
        const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
        const int = (n: number) => Math.floor(rand() * n);
        const randText = (n: number) => {
          let s = "";
          for (let i = 0; i < n; i++) {
            const r = rand();
            if (r < 0.6) s += String.fromCharCode(32 + int(95));
            else if (r < 0.7) s += String.fromCharCode(int(32));
            else if (r < 0.8) s += String.fromCodePoint(0x80 + int(0x2f80));
            else if (r < 0.9) s += String.fromCodePoint(0x1f300 + int(0x300));
            else s += pick(["\\", '"', "{", "}", "[", "]", ":", ",", "\u2028", "\ufeff", "\ufffd"]);
          }
          return s;
        };
        const randJson = (depth: number): unknown => {
          const r = rand();
          if (depth > 3 || r < 0.3) {
            return pick<unknown>([
              null,
              true,
              false,
              int(1000),
              -int(1000),
              rand() * 1e308,
              randText(int(20)),
              "",
              "message",
              "user",
            ]);
          }
          if (r < 0.55) return Array.from({ length: int(4) }, () => randJson(depth + 1));
          const o: Record<string, unknown> = {};
          for (let i = int(5); i > 0; i--) {
            o[pick(["user", "message", "type", "cid", "before", "limit", "since", "__proto__", randText(5)])] =
              randJson(depth + 1);
          }
          return o;
        };
        const generators: (() => string | Buffer)[] = [
          () => randText(int(200)),
          () => JSON.stringify(randJson(0)),
          () => JSON.stringify({ user: randText(1 + int(40)), message: randText(int(100)) }),
          () =>
            JSON.stringify({
              user: "fz",
              message: randText(1 + int(100)),
              type: pick(["message", "ping", "typing", "history", 7, null]),
            }),
          () => `${"[".repeat(1 + int(5000))}${"]".repeat(int(5000))}`,
          () => `${'{"a":'.repeat(1 + int(2000))}1${"}".repeat(int(2000))}`,
          () => `{"user":"fz","message":"n","x":1${"0".repeat(400)}}`,
          () => `{"user":"fz","message":1e999999}`,
          () => `{"user":"fz","message":"lone \\ud800 ${pick(["\\udfff", "", "x"])}"}`,
          () => `{"user":"\\udc00","message":"hi"}`,
          () => `{"user":"fz","message":"${String.fromCharCode(0xd800 + int(0x800))}"}`, // raw lone surrogate: ws sends U+FFFD
          () => Buffer.from(Array.from({ length: int(300) }, () => int(256))),
          () => JSON.stringify({ user: "fz", message: "z".repeat(60_000 + int(5000)) }), // big but within 64 KiB
          () => JSON.stringify({ user: "fz", message: `ok ${int(1e6)}` }),
          () => "",
        ];
        const n = 320;
        let normalSent = 0;
        for (let i = 0; i < n; i++) {
          let frame = pick(generators)();
          if (typeof frame === "string" && Buffer.byteLength(frame) > 65536) frame = frame.slice(0, 30_000);
          fuzzer.send(frame);
          if (i % 16 === 0) {
            normal.send({ message: `normal ${normalSent++}`, cid: `n${i}` });
          }
        }
        normal.send({ type: "ping" });
        // The seed fuzzer gets one answer per frame (its echo or an error) plus the normal client's messages.
        const answers = await fuzzer.collect(
          (f) => f.type === "error" || (f.type === "message" && f.user !== "norm"),
          n,
          20_000,
        );
        expect(answers.length, `fuzz seed ${seedValue}`).toBe(n);
        await normal.waitFor("pong", 10_000);
        await say(fuzzer, "fz", "final");
        await normal.waitFor((f) => isMsg(f) && f.message === "final", 10_000);
        // The normal client saw every accepted message, in the fuzzer's order, and all of its own.
        const fuzzerSaw = fuzzer.received
          .map((f) => f.json)
          .filter((f) => f !== null && isMsg(f))
          .map((f) => f!.id);
        const normalSaw = normal.received
          .map((f) => f.json)
          .filter((f) => f !== null && isMsg(f))
          .map((f) => f!.id);
        expect(normalSaw, `fuzz seed ${seedValue}`).toEqual(fuzzerSaw);
        const own = normal.received.map((f) => f.json).filter((f) => f !== null && isMsg(f) && f.user === "norm");
        expect(own).toHaveLength(normalSent);
        expect(normal.received.some((f) => f.json?.type === "error")).toBe(false);
        expect(normal.closeInfo).toBeNull();
        const health = await fetchJson(`${unlimited.url}/healthz`);
        expect(health.status).toBe(200);
      });

      it("a v1 fuzzer (ping, typing, history with random fields) cannot crash the server either", async () => {
        const rand = prng(7);
        const room = freshRoom();
        const { c: fuzzer } = await v1(unlimited, room, "fuzz");
        const { c: normal } = await v1(unlimited, room, "norm");
        const vals: unknown[] = [
          null,
          -1,
          0,
          1,
          1.5,
          501,
          Number.MAX_VALUE,
          "x",
          "0000000000001-000000",
          [],
          {},
          true,
          "9".repeat(400),
        ];
        for (let i = 0; i < 150; i++) {
          const type = ["history", "ping", "typing", "message", "welcome", "presence"][Math.floor(rand() * 6)];
          const frame: Record<string, unknown> = { type };
          for (const k of ["before", "limit", "message", "cid", "user"]) {
            if (rand() < 0.5) frame[k] = vals[Math.floor(rand() * vals.length)];
          }
          fuzzer.send(frame);
        }
        fuzzer.send({ type: "ping" });
        await fuzzer.waitFor("pong", 10_000);
        normal.send({ message: "done" });
        expect(await normal.waitFor((f) => isMsg(f) && f.message === "done")).toMatchObject({ user: "norm" });
        expect((await fetchJson(`${unlimited.url}/healthz`)).status).toBe(200);
      });
    });

    describe("short heartbeat (HEARTBEAT_MS=500) and ALLOWED_ORIGINS", () => {
      let tuned: RunningServer;

      beforeAll(async () => {
        tuned = await target.start({
          HEARTBEAT_MS: "500",
          ALLOWED_ORIGINS: "https://chat.example.com,http://localhost:3000",
        });
      });

      it.runIf(has("heartbeat"))("a client that never answers pings is terminated; one that does stays", async () => {
        const room = freshRoom();
        const mute = await connect(`${tuned.wsUrl}?room=${room}`, { autoPong: false });
        const alive = await seed(tuned, room);
        let pings = 0;
        mute.ws.on("ping", () => pings++);
        const closed = await mute.waitClosed(5000);
        expect(pings).toBeGreaterThanOrEqual(1);
        expect(closed.code).not.toBe(1000);
        expect(alive.closeInfo).toBeNull();
        await say(alive, "a", "still alive");
      });
      it("ALLOWED_ORIGINS admits the listed origins only", async () => {
        const room = freshRoom();
        for (const origin of ["https://chat.example.com", "http://localhost:3000"]) {
          const c = await connect(`${tuned.wsUrl}?room=${room}`, { headers: { Origin: origin } });
          await say(c, "o", origin);
        }
        const res = await expectRefused(`${tuned.wsUrl}?room=${room}`, {
          headers: { Origin: "https://other.example.com" },
        });
        expect(res.status).toBe(403);
      });
    });

    describe("raw TCP", () => {
      it("clients that vanish mid-handshake, mid-frame or right after opening do not hurt the server", async () => {
        const port = Number(new URL(server.url).port);
        const room = freshRoom();
        const vanish: Promise<unknown>[] = [];
        for (let i = 0; i < 10; i++) {
          // Half a handshake, then a reset.
          const sock = netConnect(port, "127.0.0.1");
          vanish.push(
            new Promise<void>((resolve) => {
              sock.once("connect", () => {
                sock.write(`GET /websocket?room=${room} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs`);
                sock.resetAndDestroy();
                resolve();
              });
              sock.once("error", () => resolve());
            }),
          );
        }
        for (let i = 0; i < 10; i++) {
          const c = await seed(server, room);
          // A frame header announcing 1000 masked bytes, then 10 of them, then a reset.
          const raw = (c.ws as unknown as { _socket: import("node:net").Socket })._socket;
          raw.write(Buffer.concat([Buffer.from([0x81, 0xfe, 0x03, 0xe8, 1, 2, 3, 4]), Buffer.alloc(10, 7)]));
          raw.resetAndDestroy();
          vanish.push(c.closed);
        }
        for (let i = 0; i < 10; i++) {
          const c = await connect(`${server.wsUrl}?room=${room}&user=v${i}`, { protocols: SUB });
          c.ws.terminate();
          vanish.push(c.closed);
        }
        await Promise.all(vanish);
        const after = await seed(server, room);
        await say(after, "still", "here");
        // Nobody who vanished stays listed (the server may see the resets a little later).
        let users: unknown;
        for (let i = 0; i < 30; i++) {
          const { c, welcome } = await v1(server, room, "last");
          users = welcome.users;
          await c.close();
          if (JSON.stringify(users) === '["last"]') break;
          await new Promise((r) => setTimeout(r, 100));
        }
        expect(users).toEqual(["last"]);
      });

      it("garbage instead of a handshake does not hurt the server", async () => {
        const sock = netConnect(Number(new URL(server.url).port), "127.0.0.1");
        await new Promise<void>((resolve, reject) => {
          sock.once("connect", () => resolve());
          sock.once("error", reject);
        });
        sock.write(
          "GET /websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x00\xff garbage",
        );
        let answer = "";
        sock.on("data", (d: Buffer) => {
          answer += d.toString();
        });
        await new Promise<void>((resolve) => {
          sock.once("close", () => resolve());
          sock.once("error", () => resolve());
          sock.setTimeout(3000, () => {
            sock.destroy();
            resolve();
          });
        });
        expect(answer).toMatch(/^HTTP\/1\.1 4\d\d /);
        expect((await fetchJson(`${server.url}/healthz`)).status).toBe(200);
      });
    });
  });
}
