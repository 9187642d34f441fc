/**
 * Governance parts in-process: token claims, a connection's expiry timer,
 * the hub's webhook events, and what the server API does (and does not do)
 * for a caller without the key. The black-box cases on every runtime are in
 * test/integration/governance.cases.ts.
 */
import { sign } from "hono/jwt";
import type { UpgradeWebSocket } from "hono/ws";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createChat } from "../../src/app.ts";
import { loadConfig } from "../../src/config.ts";
import { AlarmClock } from "../../src/governance/expiry.ts";
import { banUser, ConnectionGovernance, type GovernanceHost } from "../../src/governance/moderation.ts";
import { decodeIdentity, encodeIdentity, type Identity, roomAllowed, verifyToken } from "../../src/governance/token.ts";
import { Member } from "../../src/hub/hub.ts";
import { MemoryHub } from "../../src/hub/memory.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { noopMetrics } from "../../src/observability/metrics.ts";
import { type ErrorCode, parseClientFrame } from "../../src/protocol.ts";
import { Session } from "../../src/session.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import type { HubEvent } from "../../src/webhooks/events.ts";
import { FailingStore } from "../helpers/failing-store.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";

const SECRET = "unit-secret-0123456789abcdef";
const nowS = () => Math.floor(Date.now() / 1000);
const tok = (claims: Record<string, unknown>) => sign({ exp: nowS() + 600, ...claims }, SECRET, "HS256");
const settings = { authSecret: SECRET, authIssuer: undefined, authAudience: undefined };

describe("tokens", () => {
  it("reads name (else sub), role, rooms and exp", async () => {
    const exp = nowS() + 60;
    expect(await verifyToken(await tok({ sub: "s1", role: "moderator", rooms: ["a", "b-*"], exp }), settings)).toEqual({
      name: "s1",
      moderator: true,
      rooms: ["a", "b-*"],
      exp,
    });
    expect(await verifyToken(await tok({ name: "n", sub: "s", role: "admin" }), settings)).toMatchObject({
      name: "n",
      moderator: false,
      rooms: null,
    });
    const noExp = await sign({ name: "forever" }, SECRET, "HS256");
    expect(await verifyToken(noExp, settings)).toMatchObject({ exp: null });
  });

  it("refuses bad rooms claims, bad names, expired tokens, and anything when there is no secret", async () => {
    for (const rooms of ["a", [1], { a: 1 }, Array.from({ length: 1001 }, (_, i) => `r${i}`)]) {
      expect(await verifyToken(await tok({ name: "x", rooms }), settings), JSON.stringify(rooms).slice(0, 30)).toEqual({
        refused: expect.any(String),
      });
    }
    expect(await verifyToken(await tok({ name: "" }), settings)).toHaveProperty("refused");
    expect(await verifyToken(await tok({ name: "x", exp: nowS() - 1 }), settings)).toHaveProperty("refused");
    expect(await verifyToken(await tok({ name: "x" }), { authSecret: undefined })).toHaveProperty("refused");
  });

  it("checks iss and aud when configured; aud may be an array that holds it", async () => {
    const strict = { authSecret: SECRET, authIssuer: "iss-1", authAudience: "chat" };
    expect(await verifyToken(await tok({ name: "a", iss: "iss-1", aud: "chat" }), strict)).toHaveProperty("name");
    expect(await verifyToken(await tok({ name: "a", iss: "iss-1", aud: ["x", "chat"] }), strict)).toHaveProperty(
      "name",
    );
    for (const claims of [
      { name: "a", aud: "chat" },
      { name: "a", iss: "iss-2", aud: "chat" },
      { name: "a", iss: "iss-1" },
      { name: "a", iss: "iss-1", aud: ["x"] },
    ]) {
      expect(await verifyToken(await tok(claims), strict), JSON.stringify(claims)).toHaveProperty("refused");
    }
  });

  it("rooms patterns: exact names, and prefixes ending in *", () => {
    expect(roomAllowed(null, "any")).toBe(true);
    expect(roomAllowed([], "any")).toBe(false);
    expect(roomAllowed(["*"], "any")).toBe(true);
    expect(roomAllowed(["team-*"], "team-a")).toBe(true);
    expect(roomAllowed(["team-*"], "team-")).toBe(true);
    expect(roomAllowed(["team-*"], "team")).toBe(false);
    expect(roomAllowed(["lobby"], "lobby2")).toBe(false);
    expect(roomAllowed(["a*b"], "a*b")).toBe(true); // only a trailing * is a wildcard
    expect(roomAllowed(["a*b"], "axb")).toBe(false);
  });

  it("the identity the Worker forwards round-trips; anything else decodes to null", () => {
    const id: Identity = { name: "n", moderator: true, rooms: ["a-*"], exp: 123 };
    expect(decodeIdentity(encodeIdentity(id))).toEqual(id);
    for (const text of [
      undefined,
      "",
      "{",
      "[]",
      '{"name":1}',
      '{"name":"n","moderator":"yes"}',
      '{"name":"n","moderator":true,"rooms":[1],"exp":null}',
    ]) {
      expect(decodeIdentity(text), String(text)).toBeNull();
    }
  });
});

describe("moderation frames parse (chat.v1 only)", () => {
  const parse = (frame: unknown, mode: "v1" | "seed" = "v1") => parseClientFrame(JSON.stringify(frame), mode, false);

  it("accepts each frame with its cid; seed mode does not know them", () => {
    expect(parse({ type: "ban", user: "u", cid: "c" })).toEqual({
      ok: true,
      frame: { type: "ban", user: "u", seconds: 0, cid: "c" },
    });
    expect(parse({ type: "edit", id: "0000000000001-000000", message: "m" })).toMatchObject({ ok: true });
    for (const type of ["auth", "delete", "edit", "ban", "unban"]) {
      expect(parse({ type, cid: "c" }, "seed")).toMatchObject({ ok: false, code: "unknown_type" });
    }
  });

  it("refuses bad fields with the right code and keeps the cid", () => {
    const cases: [unknown, ErrorCode][] = [
      [{ type: "delete", id: "1" }, "invalid_frame"],
      [{ type: "edit", id: "0000000000001-000000", message: "" }, "invalid_message"],
      [{ type: "edit", id: "0000000000001-000000", message: "x".repeat(2001) }, "message_too_long"],
      [{ type: "edit", id: "0000000000001-000000", message: "\ud800" }, "invalid_message"],
      [{ type: "ban", user: "u", seconds: 315_360_001 }, "invalid_frame"],
      [{ type: "auth", token: "t".repeat(8193) }, "invalid_frame"],
      [{ type: "unban" }, "invalid_frame"],
    ];
    for (const [frame, code] of cases) {
      expect(parse({ ...(frame as object), cid: "k" }), JSON.stringify(frame).slice(0, 60)).toMatchObject({
        ok: false,
        code,
        cid: "k",
      });
    }
    expect(parse({ type: "delete", id: "0000000000001-000000", cid: 5 })).toMatchObject({
      ok: false,
      code: "invalid_frame",
    });
  });
});

describe("a connection's expiry", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  function host(mode: "v1" | "seed" = "v1") {
    const events: string[] = [];
    const h: GovernanceHost = {
      room: "r",
      mode,
      name: "n",
      deliver: (text) => events.push(`deliver ${text}`),
      error: (code: ErrorCode) => events.push(`error ${code}`),
      close: (code: number) => events.push(`close ${code}`),
    };
    return { h, events };
  }

  it("a far exp (past setTimeout's 24.8-day limit) still ends the connection at exp, not before", () => {
    vi.useFakeTimers({ now: new Date("2026-01-01T00:00:00Z") });
    const store = new MemoryStore();
    const deps = { hub: new MemoryHub(store, silentLogger), store, tokens: settings, logger: silentLogger };
    const exp = nowS() + 30 * 86_400;
    const { h, events } = host();
    const gov = new ConnectionGovernance(deps, h, { name: "n", moderator: false, rooms: null, exp });
    gov.start();
    vi.advanceTimersByTime(29 * 86_400_000);
    expect(events).toEqual([]);
    vi.advanceTimersByTime(86_400_000);
    expect(events).toEqual(["error token_expired", "close 4001"]);
  });

  it("seed mode: closed with 4001 and no frame; stop() cancels it", () => {
    vi.useFakeTimers({ now: new Date("2026-01-01T00:00:00Z") });
    const store = new MemoryStore();
    const deps = { hub: new MemoryHub(store, silentLogger), store, tokens: settings, logger: silentLogger };
    const seed = host("seed");
    new ConnectionGovernance(deps, seed.h, { name: "n", moderator: false, rooms: null, exp: nowS() + 5 }).start();
    const stopped = host();
    const g2 = new ConnectionGovernance(deps, stopped.h, { name: "n", moderator: false, rooms: null, exp: nowS() + 5 });
    g2.start();
    g2.stop();
    vi.advanceTimersByTime(6000);
    expect(seed.events).toEqual(["close 4001"]);
    expect(stopped.events).toEqual([]);
  });
});

describe("MemoryHub webhook events", () => {
  it("joined/left per name's first and last connection, created/edited/deleted after the store", async () => {
    const events: HubEvent[] = [];
    const store = new MemoryStore();
    const hub = new MemoryHub(store, silentLogger, null, (e) => events.push(e));
    const tab1 = new Member(new FakeSocket(), "ann", "v1");
    const tab2 = new Member(new FakeSocket(), "ann", "v1");
    const anon = new Member(new FakeSocket(), null, "v1");
    for (const m of [tab1, tab2, anon]) {
      await hub.join("r", m);
      m.release(null, null);
    }
    const m = await hub.publish("r", tab1, { user: "ann", message: "hi" });
    expect(await store.get("r", m.id)).toEqual(m);
    await hub.edit("r", m.id, "hello");
    await hub.delete("r", m.id);
    hub.leave("r", tab1);
    hub.leave("r", anon);
    hub.leave("r", tab2);
    expect(events.map((e) => e.event)).toEqual([
      "member.joined",
      "message.created",
      "message.edited",
      "message.deleted",
      "member.left",
    ]);
    expect(events[1]).toEqual({ event: "message.created", room: "r", data: m });
    expect(events[2]).toMatchObject({ data: { id: m.id, message: "hello", edited: expect.any(Number) } });
    expect(events[3]).toEqual({ event: "message.deleted", room: "r", data: { id: m.id } });
    expect(events[4]).toEqual({ event: "member.left", room: "r", data: { user: "ann" } });
  });

  it("a kick reports the kicked name as left; nothing is reported for unknown edits or deletes", async () => {
    const events: HubEvent[] = [];
    const hub = new MemoryHub(new MemoryStore(), silentLogger, null, (e) => events.push(e));
    const m = new Member(new FakeSocket(), "bad", "v1");
    await hub.join("r", m);
    m.release(null, null);
    await hub.kick("r", "bad", 4003, "banned");
    expect(await hub.edit("r", "0000000000001-000000", "x")).toBeNull();
    expect(await hub.delete("r", "0000000000001-000000")).toBe(false);
    expect(events.map((e) => e.event)).toEqual(["member.joined", "member.left"]);
    expect((m.socket as FakeSocket).closes).toEqual([{ code: 4003, reason: "banned" }]);
  });
});

describe("server API without the key", () => {
  const UPGRADED = 299;
  const fakeUpgrade = (() => async () => new Response(null, { status: UPGRADED })) as unknown as UpgradeWebSocket;

  function build(env: Record<string, string>) {
    const store = new MemoryStore();
    const hub = new MemoryHub(store, silentLogger);
    const calls: string[] = [];
    for (const method of ["publish", "delete", "kick", "rooms", "users"] as const) {
      const original = hub[method].bind(hub) as (...args: unknown[]) => unknown;
      (hub as unknown as Record<string, unknown>)[method] = (...args: unknown[]) => {
        calls.push(method);
        return original(...args);
      };
    }
    const chat = createChat({
      config: loadConfig(env),
      hub,
      store,
      logger: silentLogger,
      metrics: noopMetrics,
      upgradeWebSocket: fakeUpgrade,
    });
    return { chat, calls };
  }

  it("is 404 when API_KEY is unset", async () => {
    const { chat } = build({});
    expect((await chat.app.request("/api/rooms", { headers: { authorization: "Bearer x" } })).status).toBe(404);
  });

  it("401 before any work: the body is never read and the hub never called", async () => {
    const { chat, calls } = build({ API_KEY: "unit-api-key-0123456789" });
    let pulled = false;
    const body = new ReadableStream(
      {
        pull(controller) {
          pulled = true;
          controller.enqueue(new TextEncoder().encode('{"user":"x","message":"y"}'));
          controller.close();
        },
      },
      { highWaterMark: 0 }, // pulled only when someone reads it
    );
    const res = await chat.app.request("/api/rooms/r/messages", {
      method: "POST",
      body,
      headers: { authorization: "Bearer wrong", "content-type": "application/json" },
      duplex: "half",
    } as RequestInit);
    expect(res.status).toBe(401);
    expect(await res.json()).toEqual({ error: expect.any(String) });
    for (const [method, path] of [
      ["GET", "/api/rooms"],
      ["PUT", "/api/rooms/r/bans/u"],
      ["DELETE", "/api/rooms/r/messages/0000000000001-000000"],
    ] as const) {
      expect((await chat.app.request(path, { method })).status, path).toBe(401);
    }
    expect(pulled).toBe(false);
    expect(calls).toEqual([]);
    const ok = await chat.app.request("/api/rooms", { headers: { authorization: "Bearer unit-api-key-0123456789" } });
    expect(await ok.json()).toEqual({ rooms: [] });
    expect(calls).toEqual(["rooms"]);
  });
});

describe("server API when the store fails", () => {
  it("answers 503 JSON and delivers nothing", async () => {
    const store = new FailingStore(new MemoryStore());
    const hub = new MemoryHub(store, silentLogger);
    const fakeUpgrade = (() => async () => new Response(null, { status: 299 })) as unknown as UpgradeWebSocket;
    const key = "unit-api-key-0123456789";
    const chat = createChat({
      config: loadConfig({ API_KEY: key }),
      hub,
      store,
      logger: silentLogger,
      metrics: noopMetrics,
      upgradeWebSocket: fakeUpgrade,
    });
    const socket = new FakeSocket();
    const watcher = new Member(socket, "w", "v1");
    await hub.join("r", watcher);
    watcher.release(null, null);
    store.failAppends = "reject";
    const res = await chat.app.request("/api/rooms/r/messages", {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ user: "bot", message: "lost" }),
    });
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ error: expect.any(String) });
    expect(socket.ofType("message")).toEqual([]);
  });
});

describe("a ban racing a handshake", () => {
  it("a ban stored (and kicked) while the connection was joining still closes it with 4003 once joined", async () => {
    const store = new MemoryStore();
    const hub = new MemoryHub(store, silentLogger);
    let letJoin: () => void = () => {};
    const gate = new Promise<void>((r) => {
      letJoin = r;
    });
    const join = hub.join.bind(hub);
    hub.join = async (room, member) => {
      await gate;
      return join(room, member);
    };
    const config = loadConfig({ AUTH_SECRET: SECRET });
    const deps = { hub, store, config, logger: silentLogger, metrics: noopMetrics };
    const identity: Identity = { name: "late", moderator: false, rooms: null, exp: null };
    const session = new Session(deps, { room: "r", name: "late", mode: "v1", since: null, identity });
    const socket = new FakeSocket();
    const opened = session.open(socket);
    // The moderator's ban lands between the handshake's check and the join.
    await banUser(hub, store, "r", "late", 0);
    letJoin();
    await opened;
    expect(socket.closes).toEqual([{ code: 4003, reason: "banned" }]);
    expect(socket.ofType("welcome")).toEqual([]);
    expect(await hub.users("r")).toEqual([]);
  });
});

describe("AlarmClock (a Durable Object's expiries on its one alarm)", () => {
  it("asks for an alarm per expiry, fires what is due, and answers the next one; cancelled ones never fire", () => {
    const asked: number[] = [];
    const clock = new AlarmClock((at) => asked.push(at));
    const fired: string[] = [];
    clock.schedule(3000, () => fired.push("c"));
    clock.schedule(1000, () => fired.push("a"));
    const cancel = clock.schedule(2000, () => fired.push("b"));
    expect(asked).toEqual([3000, 1000, 2000]);
    cancel();
    expect(clock.fire(999)).toBe(1000);
    expect(fired).toEqual([]);
    expect(clock.fire(2500)).toBe(3000);
    expect(fired).toEqual(["a"]);
    expect(clock.fire(3000)).toBeNull();
    expect(fired).toEqual(["a", "c"]);
    expect(clock.size).toBe(0);
  });

  it("a connection on the alarm clock expires when the alarm fires, not before; a refresh is persisted", async () => {
    const clock = new AlarmClock(() => {});
    const store = new MemoryStore();
    const deps = { hub: new MemoryHub(store, silentLogger), store, tokens: settings, logger: silentLogger, clock };
    const events: string[] = [];
    const kept: Identity[] = [];
    const h: GovernanceHost = {
      room: "r",
      mode: "v1",
      name: "n",
      deliver: (text) => events.push(text),
      error: (code: ErrorCode) => events.push(`error ${code}`),
      close: (code: number) => events.push(`close ${code}`),
      identityChanged: (identity) => kept.push(identity),
    };
    // Already past at start (a rebuild after hibernation): nothing until the alarm.
    const gov = new ConnectionGovernance(deps, h, { name: "n", moderator: false, rooms: null, exp: nowS() - 1 });
    gov.start();
    expect(events).toEqual([]);
    clock.fire(Date.now());
    expect(events).toEqual(["error token_expired", "close 4001"]);
    // A refresh on another connection re-schedules and reports the new identity.
    events.length = 0;
    const g2 = new ConnectionGovernance(deps, h, { name: "n", moderator: false, rooms: null, exp: nowS() + 5 });
    g2.start();
    const exp = nowS() + 600;
    g2.handle({ type: "auth", token: await tok({ name: "n", exp }) });
    await vi.waitFor(() => expect(kept).toHaveLength(1));
    expect(kept[0]).toMatchObject({ name: "n", exp });
    expect(clock.fire(Date.now() + 10_000)).toBe(exp * 1000);
    expect(events).toEqual([JSON.stringify({ type: "auth", exp })]);
  });
});
