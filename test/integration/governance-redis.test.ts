/**
 * Governance across instances (docs/api.md: server API: "with HUB=redis a call on one
 * instance acts on every instance"): two Node servers on one Redis. A server
 * API call or a moderation frame on instance A acts on the members of
 * instance B, and a ban on A closes the user on B and refuses them on B.
 */
import { sign } from "hono/jwt";
import { beforeAll, describe, expect, it } from "vitest";
import { trackForFile } from "../helpers/cleanup.ts";
import { connect, expectRefused, type TestClient } from "../helpers/client.ts";
import { deleteKeys, REDIS_URL, redisSkipReason, uniquePrefix } from "../helpers/redis.ts";
import { nodeTarget, type RunningServer } from "../helpers/server.ts";

const SECRET = "governance-redis-secret-0123";
const API_KEY = "governance-redis-api-key-0123";
type Json = Record<string, unknown>;

let seq = 0;
const freshRoom = () => `gr${process.pid.toString(36)}-${(++seq).toString(36)}`;
const token = (claims: Json) => sign({ exp: Math.floor(Date.now() / 1000) + 600, ...claims }, SECRET, "HS256");
const isMsg = (f: Json) => f.type === "message";

async function member(server: RunningServer, room: string, claims: Json, v1 = true): Promise<TestClient> {
  const url = `${server.wsUrl}?${new URLSearchParams({ room, token: await token(claims) })}`;
  const c = await connect(url, v1 ? { protocols: "chat.v1" } : {});
  if (v1) expect((await c.next()).type).toBe("welcome");
  return c;
}

async function api(
  server: RunningServer,
  path: string,
  init: RequestInit = {},
): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${server.url}/api${path}`, {
    ...init,
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as unknown) : null };
}

/** Polls `read` (bounded: 5 s) until `done` holds; returns the last value. */
async function until<T>(read: () => Promise<T>, done: (v: T) => boolean): Promise<T> {
  let v = await read();
  for (let i = 0; i < 50 && !done(v); i++) {
    await new Promise((r) => setTimeout(r, 100));
    v = await read();
  }
  return v;
}

describe.skipIf(redisSkipReason !== null)(
  `governance across instances (HUB=redis)${redisSkipReason ? ` (skipped: ${redisSkipReason})` : ""}`,
  () => {
    let a: RunningServer;
    let b: RunningServer;

    beforeAll(async () => {
      const prefix = uniquePrefix("gov");
      trackForFile(() => deleteKeys(REDIS_URL, prefix));
      const env = { HUB: "redis", REDIS_URL, REDIS_PREFIX: prefix, AUTH_SECRET: SECRET, API_KEY, RATE_LIMIT_IP: "0" };
      [a, b] = await Promise.all([nodeTarget.start(env), nodeTarget.start(env)]);
    });

    it("POST and DELETE on A reach the members on B", async () => {
      const room = freshRoom();
      const onB = await member(b, room, { name: "bea" });
      const seedOnB = await member(b, room, { name: "sid" }, false);
      const posted = await api(a, `/rooms/${room}/messages`, {
        method: "POST",
        body: JSON.stringify({ user: "system", message: "from A" }),
      });
      expect(posted.status).toBe(201);
      const message = (posted.body as { message: Json }).message;
      expect(await onB.waitFor(isMsg)).toEqual(message);
      expect(await seedOnB.waitFor(isMsg)).toEqual(message);
      expect((await api(a, `/rooms/${room}/messages/${message.id}`, { method: "DELETE" })).status).toBe(204);
      expect(await onB.waitFor("deleted")).toEqual({ type: "deleted", room, id: message.id });
      // Gone from the history B serves too.
      const rest = await fetch(`${b.url}/rooms/${room}/messages`, {
        headers: { authorization: `Bearer ${await token({ name: "r" })}` },
        signal: AbortSignal.timeout(5000),
      });
      expect(((await rest.json()) as { messages: Json[] }).messages).toEqual([]);
    });

    it("a ban through the API on A closes the user's connections on B (4003) and B refuses them", async () => {
      const room = freshRoom();
      const troll = await member(b, room, { name: "troll" });
      const trollSeed = await member(b, room, { name: "troll" }, false);
      const bystander = await member(b, room, { name: "bea" });
      expect((await api(a, `/rooms/${room}/bans/troll`, { method: "PUT", body: "{}" })).status).toBe(204);
      expect((await troll.waitClosed(5000)).code).toBe(4003);
      expect((await trollSeed.waitClosed(5000)).code).toBe(4003);
      const url = `${b.wsUrl}?${new URLSearchParams({ room, token: await token({ name: "troll" }) })}`;
      expect(await expectRefused(url)).toMatchObject({ status: 403, body: { error: "banned" } });
      expect(bystander.closeInfo).toBeNull();
      expect((await api(b, `/rooms/${room}/bans/troll`, { method: "DELETE" })).status).toBe(204);
      expect((await member(a, room, { name: "troll" })).closeInfo).toBeNull();
    });

    it("a moderator's ban frame on A closes the user on B; an author's edit on A reaches B", async () => {
      const room = freshRoom();
      const mod = await member(a, room, { name: "mod", role: "moderator" });
      const author = await member(a, room, { name: "ann" });
      const watcher = await member(b, room, { name: "wes" });
      const troll = await member(b, room, { name: "troll" });
      author.send({ type: "message", message: "helo", cid: "m" });
      const m = await author.waitFor((f) => isMsg(f) && f.cid === "m");
      await watcher.waitFor(isMsg);
      author.send({ type: "edit", id: m.id, message: "hello" });
      expect(await watcher.waitFor("edited")).toMatchObject({ id: m.id, message: "hello" });
      mod.send({ type: "ban", user: "troll", seconds: 600, cid: "b" });
      expect(await mod.waitFor((f) => f.type === "banned")).toMatchObject({ user: "troll", cid: "b" });
      expect((await troll.waitClosed(5000)).code).toBe(4003);
      expect(watcher.closeInfo).toBeNull();
    });

    it("GET /api/rooms and presence on A count the connections and names on B", async () => {
      const room = freshRoom();
      await member(b, room, { name: "p1" });
      await member(b, room, { name: "p1" });
      await member(a, room, { name: "p2" });
      const rooms = await until(
        async () => ((await api(a, "/rooms")).body as { rooms: { room: string; online: number }[] }).rooms,
        (list) => list.some((r) => r.room === room && r.online === 3),
      );
      expect(rooms.find((r) => r.room === room)).toEqual({ room, online: 3 });
      expect(await api(a, `/rooms/${room}/presence`)).toEqual({ status: 200, body: { users: ["p1", "p2"] } });
    });
  },
);
