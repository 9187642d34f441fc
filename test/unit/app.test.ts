/**
 * The app in-process (Hono's app.request): what a real server shows only for
 * an instant, like answers while draining, and routes that need no socket.
 */
import { sign } from "hono/jwt";
import type { UpgradeWebSocket } from "hono/ws";
import { describe, expect, it } from "vitest";
import { type Answer, createChat } from "../../src/app.ts";
import { loadConfig } from "../../src/config.ts";
import { MemoryHub } from "../../src/hub/memory.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { noopMetrics } from "../../src/observability/metrics.ts";
import { formatMessageId } from "../../src/protocol.ts";
import type { SessionInit } from "../../src/session.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { FailingStore } from "../helpers/failing-store.ts";

/** Stands in for a runtime's upgrade helper: answers 299 where the real one would upgrade (101 cannot be built). */
const UPGRADED = 299;
const fakeUpgrade = (() => async () => new Response(null, { status: UPGRADED })) as unknown as UpgradeWebSocket;

function build(env: Record<string, string> = {}) {
  const store = new FailingStore(new MemoryStore());
  const hub = new MemoryHub(store, silentLogger);
  const chat = createChat({
    // chat.test is the Host of these requests (ALLOWED_HOSTS: see limits.test.ts and the fair-use cases).
    config: loadConfig({ ALLOWED_HOSTS: "chat.test", ...env }),
    hub,
    store,
    logger: silentLogger,
    metrics: noopMetrics,
    upgradeWebSocket: fakeUpgrade,
  });
  return { chat, store };
}

const upgrade = { Upgrade: "websocket", Connection: "Upgrade", Host: "chat.test" };

describe("createChat routes", () => {
  it("/healthz turns 503 once draining, and /websocket refuses new connections with 503 JSON", async () => {
    const { chat } = build();
    expect((await chat.app.request("/healthz")).status).toBe(200);
    expect((await chat.app.request("/websocket", { headers: upgrade })).status).toBe(UPGRADED);
    chat.drain();
    const health = await chat.app.request("/healthz");
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ status: "draining" });
    const ws = await chat.app.request("/websocket", { headers: upgrade });
    expect(ws.status).toBe(503);
    expect(await ws.json()).toEqual({ error: expect.any(String) });
  });

  it("a plain GET on /websocket is 426 JSON", async () => {
    const res = await build().chat.app.request("/websocket");
    expect(res.status).toBe(426);
    expect(await res.json()).toEqual({ error: expect.any(String) });
  });

  it("/metrics is 404 JSON where the runtime serves no metrics", async () => {
    const res = await build().chat.app.request("/metrics");
    expect(res.status).toBe(404);
  });

  it("/rooms/:room/messages caps limit at 500 and answers 503 JSON when the store cannot read", async () => {
    const { chat, store } = build();
    for (let i = 0; i < 600; i++) {
      await store.append({
        type: "message",
        id: formatMessageId(1000 + i, 0),
        room: "big",
        user: "u",
        message: `${i}`,
        ts: 1,
      });
    }
    const res = await chat.app.request("/rooms/big/messages?limit=100000");
    expect(((await res.json()) as { messages: unknown[] }).messages).toHaveLength(500);
    for (const bad of ["0", "-1", "1.5", "x", ""]) {
      expect((await chat.app.request(`/rooms/big/messages?limit=${bad}`)).status, bad).toBe(400);
    }
    store.failReads = true;
    const down = await chat.app.request("/rooms/big/messages");
    expect(down.status).toBe(503);
    expect(await down.json()).toEqual({ error: expect.any(String) });
  });

  it("unknown paths are 404 JSON; every answer carries the security headers", async () => {
    const res = await build().chat.app.request("/nope");
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ error: "not found" });
    expect(res.headers.get("content-security-policy")).toContain("default-src 'self'");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
  });

  it("a Host that is not allowed is refused 403 before anything else (DNS rebinding)", async () => {
    const { chat } = build({ ALLOWED_HOSTS: "other.test" });
    const res = await chat.app.request("/websocket", { headers: upgrade });
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ error: expect.stringMatching(/host/) });
    expect((await chat.app.request("/rooms/lobby/messages", { headers: { Host: "chat.test" } })).status).toBe(403);
    expect((await chat.app.request("/rooms/lobby/messages", { headers: { Host: "other.test" } })).status).toBe(200);
  });

  it("the origin rule compares host and port with Host", async () => {
    const { chat } = build({ ALLOWED_ORIGINS: "https://ok.example" });
    const status = async (origin: string, host = "chat.test:8888") =>
      (await chat.app.request("/websocket", { headers: { ...upgrade, Host: host, Origin: origin } })).status;
    expect(await status("http://chat.test:8888")).toBe(UPGRADED);
    expect(await status("https://CHAT.test:8888")).toBe(UPGRADED);
    expect(await status("http://chat.test:8889")).toBe(403);
    expect(await status("http://chat.test")).toBe(403);
    expect(await status("https://ok.example")).toBe(UPGRADED);
    expect(await status("https://ok.example:444")).toBe(403);
    expect(await status("not a url")).toBe(403);
    expect(await status("null")).toBe(403);
  });
});

describe("the /websocket route without Hono (chat.direct, Node's upgrades)", () => {
  const SECRET = "direct-route-secret";

  /** A chat whose fake upgrade helper reports the session parameters the route handed it. */
  function buildCapturing(env: Record<string, string>) {
    const store = new FailingStore(new MemoryStore());
    let captured: SessionInit | null = null;
    type Events = { onOpen(event: unknown, ws: unknown): void };
    const capture = ((create: (c: unknown) => Events) => async (c: { get(key: string): SessionInit }) => {
      captured = c.get("chatSession");
      // Opened as a runtime would, so the address's connection is counted.
      create(c).onOpen({}, { raw: {}, send() {}, close() {} });
      return new Response(null, { status: UPGRADED });
    }) as unknown as UpgradeWebSocket;
    const chat = createChat({
      config: loadConfig({ ALLOWED_HOSTS: "chat.test", ...env }),
      hub: new MemoryHub(store, silentLogger),
      store,
      logger: silentLogger,
      metrics: noopMetrics,
      upgradeWebSocket: capture,
    });
    return { chat, store, captured: () => captured };
  }

  /** A view of a request as node-ws reads it: header names in any case, Hono's query parser. */
  function view(path: string, headers: Record<string, string>) {
    const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
    const url = new URL(path, "http://chat.test");
    return {
      header: (name: string) => lower[name.toLowerCase()],
      query: (name: string) => url.searchParams.get(name) ?? undefined,
    };
  }

  type Case = {
    name: string;
    path: string;
    headers?: Record<string, string>;
    env?: Record<string, string>;
    /** The status through Hono (101: accepted). */
    expect: number;
  };

  it("answers every case as the route through Hono does: status, JSON, extra headers, session parameters", async () => {
    const good = await sign({ name: "ann", rooms: ["team-*"], exp: Math.floor(Date.now() / 1000) + 600 }, SECRET);
    const auth = { AUTH_SECRET: SECRET };
    const cases: Case[] = [
      { name: "accepted, seed", path: "/websocket?room=a", expect: 101 },
      { name: "accepted, lobby, named, since", path: "/websocket?user=bob&since=abc", expect: 101 },
      {
        name: "accepted, v1",
        path: "/websocket?room=a",
        headers: { "Sec-WebSocket-Protocol": "x, chat.v1" },
        expect: 101,
      },
      { name: "not an upgrade", path: "/websocket", headers: { Upgrade: "h2c" }, expect: 426 },
      { name: "host", path: "/websocket", headers: { Host: "evil.test" }, expect: 403 },
      { name: "origin", path: "/websocket", headers: { Origin: "https://evil.test" }, expect: 403 },
      { name: "same origin", path: "/websocket", headers: { Origin: "http://chat.test" }, expect: 101 },
      { name: "room", path: "/websocket?room=a%20b", expect: 400 },
      { name: "user", path: "/websocket?user=%00", expect: 400 },
      { name: "since", path: `/websocket?since=${"9".repeat(65)}`, expect: 400 },
      { name: "no token", path: "/websocket?room=team-a", env: auth, expect: 401 },
      { name: "bad token", path: "/websocket?room=team-a&token=nope", env: auth, expect: 401 },
      { name: "room not allowed", path: `/websocket?room=other&token=${good}`, env: auth, expect: 403 },
      { name: "token", path: `/websocket?room=team-a&user=mallory&token=${good}`, env: auth, expect: 101 },
      {
        name: "bearer",
        path: "/websocket?room=team-a",
        headers: { Authorization: `Bearer ${good}` },
        env: auth,
        expect: 101,
      },
      {
        name: "cookie",
        path: "/websocket?room=team-a",
        headers: { Cookie: `a=b; token=${good}` },
        env: auth,
        expect: 101,
      },
      { name: "address cap", path: "/websocket", env: { MAX_CONNECTIONS_PER_IP: "1" }, expect: 429 },
      {
        name: "handshake rate",
        path: "/websocket",
        env: { MAX_CONNECTIONS_PER_IP: "0", RATE_LIMIT_IP: "1", RATE_LIMIT_IP_REFILL: "0.001" },
        expect: 429,
      },
      { name: "banned", path: "/websocket?room=a&user=troll", expect: 403 },
      { name: "ban check fails", path: "/websocket?room=a&user=bob", expect: 503 },
    ];
    for (const c of cases) {
      const headers = { ...upgrade, ...c.headers };
      const run = async (direct: boolean) => {
        const built = buildCapturing(c.env ?? {});
        await new Promise((r) => setTimeout(r, 0)); // the security headers are known
        if (c.name === "banned") await built.store.ban("a", "troll", null);
        if (c.name === "ban check fails") built.store.failReads = true;
        // The limits' cases: the first handshakes are counted (cap) or charged (rate), the last refused.
        const tries = c.name === "address cap" ? 2 : c.name === "handshake rate" ? 3 : 1;
        let answer: { status: number; body: unknown; headers: Record<string, string> } | SessionInit | null = null;
        for (let i = 0; i < tries; i++) {
          if (direct) {
            const a = await built.chat.direct!.admit(view(c.path, headers), undefined);
            if ("status" in a) answer = { status: a.status, body: a.body, headers: (a as Answer).headers ?? {} };
            else {
              answer = a;
              built.chat.direct!.open(a, null, () => ({ id: "x", send() {}, close() {}, bufferedAmount: () => 0 }));
            }
          } else {
            const res = await built.chat.app.request(c.path, { headers });
            if (res.status === UPGRADED) answer = built.captured();
            else {
              const extra: Record<string, string> = {};
              const retry = res.headers.get("retry-after");
              if (retry !== null) extra["retry-after"] = retry;
              answer = { status: res.status, body: await res.json(), headers: extra };
            }
          }
        }
        return answer;
      };
      // retryAfterMs depends on when each ran: compared by presence only.
      const timeless = (a: Awaited<ReturnType<typeof run>>) =>
        a && "body" in a && typeof (a.body as { retryAfterMs?: unknown }).retryAfterMs === "number"
          ? { ...a, body: { ...(a.body as object), retryAfterMs: "a number" } }
          : a;
      const viaHono = timeless(await run(false));
      const viaDirect = timeless(await run(true));
      expect(viaHono && "status" in viaHono ? viaHono.status : 101, c.name).toBe(c.expect);
      expect(viaDirect, c.name).toEqual(viaHono);
    }
  });

  it("carries the security headers Hono's middleware sets", async () => {
    const { chat } = build();
    await new Promise((r) => setTimeout(r, 0));
    const res = await chat.app.request("/nope");
    const expected: [string, string][] = [];
    res.headers.forEach((value, name) => {
      if (name !== "content-type" && name !== "content-length") expected.push([name, value]);
    });
    expect(chat.direct?.headers).toEqual(expected);
  });
});
