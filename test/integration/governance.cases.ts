/**
 * Governance on every runtime (docs/protocol.md token lifetime, 8.1-8.3): the
 * `rooms` and `role` claims, moderation frames, bans, the server API, and
 * tokens that expire on an open connection. Called once from
 * server.suite.ts with the runtime's target; real servers, real clients.
 *
 * Nothing here times the server: expiry tests use tokens that end within a
 * few seconds and wait (bounded) for the close; "nothing else changed" is
 * checked with a sentinel message that must arrive after anything wrong.
 */
import { sign } from "hono/jwt";
import { beforeAll, describe, expect, it } from "vitest";
import { connect, expectRefused, type TestClient } from "../helpers/client.ts";
import { type RunningServer, type ServerTarget, tempHistoryPath } from "../helpers/server.ts";

/** What a runtime cannot do here (the reason belongs where the caps are set). */
export interface GovernanceCaps {
  /** `GET /api/rooms` across rooms (not on Workers: no object sees every room). */
  apiRooms?: boolean;
  /** The process can be stopped and started again on the same data (bans survive restarts). */
  restart?: boolean;
  /**
   * A close from the server completes for a client that never sent a frame.
   * Under wrangler dev the client sees such a close only at its own close
   * timeout, so there the tests let those clients send one frame first.
   */
  closeSilent?: boolean;
}

const SUB = "chat.v1";
const SECRET = "governance-secret-0123456789";
const API_KEY = "api-key-0123456789abcdef";
type Json = Record<string, unknown>;

let roomSeq = 0;
const freshRoom = () => `gov${process.pid.toString(36)}-${(++roomSeq).toString(36)}`;
const nowS = () => Math.floor(Date.now() / 1000);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function q(params: Record<string, string | undefined>): string {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) s.set(k, v);
  return `?${s.toString()}`;
}

/** A signed token; `exp` ten minutes ahead unless the claims say otherwise (null: none). */
function token(claims: Json, key = SECRET): Promise<string> {
  const payload: Json = { exp: nowS() + 600, ...claims };
  if (payload.exp === null) delete payload.exp;
  return sign(payload, key, "HS256");
}

async function fetchJson(url: string, init: RequestInit = {}): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = text === "" ? null : JSON.parse(text);
  } catch {
    // not JSON: the assertion shows the text
  }
  return { status: res.status, body };
}

const isMsg = (f: Json) => f.type === "message";

/**
 * Registers the governance cases for one runtime. Servers start with
 * AUTH_SECRET and API_KEY (and RATE_LIMIT_IP=0: many handshakes come from
 * one test address; the per-connection bucket stays on).
 */
export function governanceCases(target: ServerTarget, caps: GovernanceCaps = {}): void {
  const has = (k: keyof GovernanceCaps) => caps[k] !== false;

  describe("governance (docs/protocol.md token lifetime, 8)", () => {
    let gov: RunningServer;
    let plain: RunningServer;

    beforeAll(async () => {
      [gov, plain] = await Promise.all([
        target.start({ AUTH_SECRET: SECRET, API_KEY, RATE_LIMIT_IP: "0" }),
        target.start({ RATE_LIMIT_IP: "0" }),
      ]);
    });

    /** A chat.v1 client with a token for `claims`, after its welcome. */
    async function member(room: string, claims: Json, server = gov): Promise<{ c: TestClient; welcome: Json }> {
      const c = await connect(`${server.wsUrl}${q({ room, token: await token(claims) })}`, { protocols: SUB });
      const welcome = await c.next();
      expect(welcome.type).toBe("welcome");
      return { c, welcome };
    }

    /**
     * A seed-mode client with a token, once it has joined (seed mode has no
     * welcome: its own first message coming back shows it is in the room).
     */
    async function seedMember(room: string, claims: Json): Promise<TestClient> {
      const c = await connect(`${gov.wsUrl}${q({ room, token: await token(claims) })}`);
      const text = `joined ${Math.random().toString(36).slice(2)}`;
      c.send({ message: text });
      await c.waitFor((f) => isMsg(f) && f.message === text);
      return c;
    }

    /** Where the platform needs it (see {@link GovernanceCaps.closeSilent}), one frame from `c` and its answer. */
    async function prime(c: TestClient, seed = false): Promise<void> {
      if (has("closeSilent")) return;
      c.send(seed ? "not json" : { type: "ping" });
      await c.waitFor(seed ? "error" : "pong");
    }

    /** Sends a message and waits for its echo; returns the stored message. */
    async function say(c: TestClient, message: string): Promise<Json> {
      const cid = `say-${Math.random().toString(36).slice(2)}`;
      c.send({ type: "message", message, cid });
      return c.waitFor((f) => isMsg(f) && f.cid === cid);
    }

    /** The API with the key. */
    function api(path: string, init: RequestInit = {}): Promise<{ status: number; body: unknown }> {
      const headers = { authorization: `Bearer ${API_KEY}`, "content-type": "application/json", ...init.headers };
      return fetchJson(`${gov.url}/api${path}`, { ...init, headers });
    }

    /**
     * Sends a sentinel message from `from` and waits for it at each watcher;
     * returns what else each watcher got meanwhile (presence aside).
     */
    async function since(from: TestClient, watchers: TestClient[]): Promise<Json[][]> {
      const marks = watchers.map((w) => w.received.length);
      const text = `sentinel ${Math.random().toString(36).slice(2)}`;
      from.send({ type: "message", message: text });
      const out: Json[][] = [];
      for (const [i, w] of watchers.entries()) {
        await w.waitFor((f) => isMsg(f) && f.message === text);
        out.push(
          w.received
            .slice(marks[i])
            .map((f) => f.json ?? {})
            // Presence is merged and may come late (PRESENCE_INTERVAL_MS); it is not what these checks are about.
            .filter((f) => !(isMsg(f) && f.message === text) && f.type !== "presence"),
        );
      }
      return out;
    }

    async function restHistory(room: string, claims: Json = { name: "reader" }): Promise<Json[]> {
      const res = await fetchJson(`${gov.url}/rooms/${room}/messages`, {
        headers: { authorization: `Bearer ${await token(claims)}` },
      });
      expect(res.status).toBe(200);
      return (res.body as { messages: Json[] }).messages;
    }

    describe("8.1 who may enter a room", () => {
      it("rooms claim: exact names and prefix* let in; any other room is 403 room not allowed, handshake and REST", async () => {
        const claims = { name: "pria", rooms: ["team-*", "lobby-x"] };
        const t = await token(claims);
        const suffix = freshRoom();
        for (const room of [`team-${suffix}`, "lobby-x"]) {
          const c = await connect(`${gov.wsUrl}${q({ room, token: t })}`, { protocols: SUB });
          expect(await c.next()).toMatchObject({ type: "welcome", room, user: "pria" });
          await c.close();
          expect(
            (await fetchJson(`${gov.url}/rooms/${room}/messages`, { headers: { authorization: `Bearer ${t}` } }))
              .status,
          ).toBe(200);
        }
        for (const room of [`other-${suffix}`, "lobby-xy", "team", `xteam-${suffix}`]) {
          const refused = await expectRefused(`${gov.wsUrl}${q({ room, token: t })}`, { protocols: SUB });
          expect(refused, room).toMatchObject({ status: 403, body: { error: "room not allowed" } });
          const rest = await fetchJson(`${gov.url}/rooms/${room}/messages`, {
            headers: { authorization: `Bearer ${t}` },
          });
          expect(rest, room).toEqual({ status: 403, body: { error: "room not allowed" } });
        }
        // Absent: every room. Not an array of strings: the token is refused.
        expect((await member(freshRoom(), { name: "free" })).welcome.user).toBe("free");
        for (const rooms of ["team-*", [1], {}]) {
          const res = await expectRefused(
            `${gov.wsUrl}${q({ room: "team-a", token: await token({ name: "x", rooms }) })}`,
          );
          expect(res.status, JSON.stringify(rooms)).toBe(401);
        }
      });

      it('role "moderator": the welcome says role moderator; nobody else gets a role', async () => {
        const room = freshRoom();
        expect((await member(room, { name: "mod", role: "moderator" })).welcome.role).toBe("moderator");
        expect((await member(room, { name: "user", role: "admin" })).welcome).not.toHaveProperty("role");
        expect((await member(room, { name: "user2" })).welcome).not.toHaveProperty("role");
      });
    });

    describe("8.2 moderation", () => {
      it("delete by the author: v1 members get deleted, seed members nothing; every history drops it", async () => {
        const room = freshRoom();
        const { c: alice } = await member(room, { name: "alice" });
        const { c: bob } = await member(room, { name: "bob" });
        const seed = await seedMember(room, { name: "sid" });
        const kept = await say(alice, "kept");
        const gone = await say(alice, "gone");
        await seed.waitFor((f) => isMsg(f) && f.message === "gone");
        alice.send({ type: "delete", id: gone.id, cid: "d-1" });
        for (const c of [alice, bob])
          expect(await c.waitFor("deleted")).toEqual({ type: "deleted", room, id: gone.id });
        const [seedGot = []] = await since(bob, [seed]);
        expect(seedGot).toEqual([]);
        // Welcome, resume, history frame and REST: the message is in none of them.
        const { c: late, welcome } = await member(room, { name: "late" });
        const ids = (welcome.history as Json[]).map((m) => m.id);
        expect(ids).toContain(kept.id);
        expect(ids).not.toContain(gone.id);
        const resumed = await connect(
          `${gov.wsUrl}${q({ room, since: kept.id as string, token: await token({ name: "res" }) })}`,
          {
            protocols: SUB,
          },
        );
        const rw = await resumed.next();
        expect((rw.history as Json[]).map((m) => m.message)).not.toContain("gone");
        late.send({ type: "history", limit: 50 });
        const h = await late.waitFor((f) => f.type === "history");
        expect((h.messages as Json[]).map((m) => m.id)).not.toContain(gone.id);
        expect((await restHistory(room)).map((m) => m.id)).toEqual(expect.not.arrayContaining([gone.id]));
        expect((await restHistory(room)).map((m) => m.id)).toContain(kept.id);
      });

      it("a moderator deletes anyone's message; someone else's delete is forbidden and changes nothing", async () => {
        const room = freshRoom();
        const { c: alice } = await member(room, { name: "alice" });
        const { c: eve } = await member(room, { name: "eve" });
        const { c: mod } = await member(room, { name: "mod", role: "moderator" });
        const m = await say(alice, "mine");
        await eve.waitFor((f) => isMsg(f) && f.id === m.id);
        eve.send({ type: "delete", id: m.id, cid: "e-1" });
        expect(await eve.waitFor("error")).toMatchObject({ code: "forbidden", cid: "e-1" });
        const [aliceSaw = []] = await since(mod, [alice]);
        expect(aliceSaw.filter((f) => f.type === "deleted")).toEqual([]);
        expect((await restHistory(room)).map((f) => f.id)).toContain(m.id);
        mod.send({ type: "delete", id: m.id, cid: "m-1" });
        expect(await alice.waitFor("deleted")).toMatchObject({ id: m.id });
        expect(await eve.waitFor("deleted")).toMatchObject({ id: m.id });
      });

      it("delete: unknown id is not_found, a bad id invalid_frame, both with cid; nobody else sees anything", async () => {
        const room = freshRoom();
        const { c: alice } = await member(room, { name: "alice", role: "moderator" });
        const { c: bob } = await member(room, { name: "bob" });
        const m = await say(alice, "stays");
        await bob.waitFor(isMsg);
        alice.send({ type: "delete", id: "0000000000001-000000", cid: "u-1" });
        expect(await alice.waitFor("error")).toMatchObject({ code: "not_found", cid: "u-1" });
        for (const [i, bad] of [{}, { id: 5 }, { id: "x" }, { id: null }].entries()) {
          alice.send({ type: "delete", ...bad, cid: `b-${i}` });
          expect(await alice.waitFor("error"), JSON.stringify(bad)).toMatchObject({
            code: "invalid_frame",
            cid: `b-${i}`,
          });
        }
        const [bobSaw = []] = await since(alice, [bob]);
        expect(bobSaw).toEqual([]);
        expect((await restHistory(room)).map((f) => f.id)).toContain(m.id);
        expect(alice.closeInfo).toBeNull();
      });

      it("edit by the author: v1 members get edited; history and REST return the new text with edited", async () => {
        const room = freshRoom();
        const { c: alice } = await member(room, { name: "alice" });
        const { c: bob } = await member(room, { name: "bob" });
        const seed = await seedMember(room, { name: "sid" });
        const m = await say(alice, "helo");
        await seed.waitFor((f) => isMsg(f) && f.id === m.id);
        alice.send({ type: "edit", id: m.id, message: "hello", cid: "ed-1" });
        const e = await bob.waitFor("edited");
        expect(e).toEqual({ type: "edited", room, id: m.id, message: "hello", edited: expect.any(Number) });
        expect(await alice.waitFor("edited")).toEqual(e);
        const [seedGot = []] = await since(alice, [seed]);
        expect(seedGot).toEqual([]); // seed members get no edited frame
        const stored = (await restHistory(room)).find((f) => f.id === m.id);
        expect(stored).toMatchObject({ id: m.id, user: "alice", message: "hello", ts: m.ts, edited: e.edited });
        const { welcome } = await member(room, { name: "late" });
        expect((welcome.history as Json[]).find((f) => f.id === m.id)).toMatchObject({
          message: "hello",
          edited: e.edited,
        });
      });

      it("edit: only the author (not a moderator); bad text, unknown and bad ids are refused; nothing changes", async () => {
        const room = freshRoom();
        const { c: alice } = await member(room, { name: "alice" });
        const { c: mod } = await member(room, { name: "mod", role: "moderator" });
        const m = await say(alice, "original");
        await mod.waitFor(isMsg);
        const cases: [Json, string][] = [
          [{ id: m.id, message: "by mod" }, "forbidden"],
          [{ id: "0000000000001-000000", message: "x" }, "not_found"],
          [{ id: "nope", message: "x" }, "invalid_frame"],
          [{ id: m.id }, "invalid_message"],
          [{ id: m.id, message: "   " }, "invalid_message"],
          [{ id: m.id, message: 42 }, "invalid_message"],
          [{ id: m.id, message: "x".repeat(2001) }, "message_too_long"],
        ];
        for (const [i, [frame, code]] of cases.entries()) {
          const sender = i === 0 ? mod : alice;
          sender.send({ type: "edit", ...frame, cid: `c${i}` });
          expect(await sender.waitFor("error"), JSON.stringify(frame).slice(0, 80)).toMatchObject({
            code,
            cid: `c${i}`,
          });
        }
        const [aliceSaw = [], modSaw = []] = await since(mod, [alice, mod]);
        expect(aliceSaw).toEqual([]);
        expect(modSaw).toEqual([]);
        const stored = (await restHistory(room)).find((f) => f.id === m.id);
        expect(stored).toMatchObject({ message: "original" });
        expect(stored).not.toHaveProperty("edited");
      });

      it("ban (until lifted): every connection of the user closes with 4003; handshakes get 403 banned; unban lifts it", async () => {
        const room = freshRoom();
        const { c: mod } = await member(room, { name: "mod", role: "moderator" });
        const { c: bystander } = await member(room, { name: "bea" });
        const { c: troll1 } = await member(room, { name: "troll" });
        const troll2 = await seedMember(room, { name: "troll" });
        await prime(troll1);
        await prime(troll2, true);
        mod.send({ type: "ban", user: "troll", cid: "ban-1" });
        expect(await mod.waitFor((f) => f.type === "banned")).toEqual({
          type: "banned",
          room,
          user: "troll",
          until: null,
          cid: "ban-1",
        });
        for (const t of [troll1, troll2]) expect((await t.waitClosed(5000)).code).toBe(4003);
        const refused = await expectRefused(`${gov.wsUrl}${q({ room, token: await token({ name: "troll" }) })}`);
        expect(refused).toMatchObject({ status: 403, body: { error: "banned" } });
        // Other rooms and other users are not affected.
        expect((await member(freshRoom(), { name: "troll" })).welcome.user).toBe("troll");
        expect(bystander.closeInfo).toBeNull();
        mod.send({ type: "unban", user: "troll", cid: "ub-1" });
        expect(await mod.waitFor((f) => f.type === "unbanned")).toEqual({
          type: "unbanned",
          room,
          user: "troll",
          cid: "ub-1",
        });
        expect((await member(room, { name: "troll" })).welcome.user).toBe("troll");
      });

      it("ban with seconds ends by itself", async () => {
        const room = freshRoom();
        const { c: mod } = await member(room, { name: "mod", role: "moderator" });
        const before = Date.now();
        mod.send({ type: "ban", user: "brief", seconds: 1 });
        const answer = await mod.waitFor((f) => f.type === "banned");
        expect(answer.until as number).toBeGreaterThanOrEqual(before + 1000);
        const url = async () => `${gov.wsUrl}${q({ room, token: await token({ name: "brief" }) })}`;
        expect((await expectRefused(await url())).status).toBe(403);
        await sleep(Math.max(0, (answer.until as number) - Date.now()) + 50);
        // Bounded: the ban's end has passed; the next handshakes must get in.
        let welcome: Json | null = null;
        for (let i = 0; i < 20 && welcome === null; i++) {
          try {
            const c = await connect(await url(), { protocols: SUB });
            welcome = await c.next();
          } catch {
            await sleep(100);
          }
        }
        expect(welcome).toMatchObject({ type: "welcome", user: "brief" });
      });

      it("ban and unban: only moderators; bad user or seconds is invalid_frame; nothing changes", async () => {
        const room = freshRoom();
        const { c: eve } = await member(room, { name: "eve" });
        const { c: mod } = await member(room, { name: "mod", role: "moderator" });
        const { c: target2 } = await member(room, { name: "target" });
        eve.send({ type: "ban", user: "target", cid: "x1" });
        expect(await eve.waitFor("error")).toMatchObject({ code: "forbidden", cid: "x1" });
        eve.send({ type: "unban", user: "target", cid: "x2" });
        expect(await eve.waitFor("error")).toMatchObject({ code: "forbidden", cid: "x2" });
        const bad: Json[] = [
          { type: "ban" },
          { type: "ban", user: "" },
          { type: "ban", user: "a\u0007b" },
          { type: "ban", user: "x".repeat(33) },
          { type: "ban", user: "target", seconds: -1 },
          { type: "ban", user: "target", seconds: 1.5 },
          { type: "ban", user: "target", seconds: "60" },
          { type: "unban", user: 7 },
        ];
        for (const [i, frame] of bad.entries()) {
          mod.send({ ...frame, cid: `v${i}` });
          expect(await mod.waitFor("error"), JSON.stringify(frame)).toMatchObject({
            code: "invalid_frame",
            cid: `v${i}`,
          });
        }
        await since(mod, [target2]);
        expect(target2.closeInfo).toBeNull();
        expect((await member(room, { name: "target" })).welcome.user).toBe("target");
      });

      it("moderation frames are charged like messages: a burst gets rate_limited", async () => {
        const room = freshRoom();
        const { c } = await member(room, { name: "burst", role: "moderator" });
        for (let i = 0; i < 30; i++) c.send({ type: "delete", id: "0000000000001-000000", cid: `r${i}` });
        const errors = await c.collect("error", 30, 5000);
        expect(errors.some((e) => e.code === "rate_limited")).toBe(true);
        expect(errors.filter((e) => e.code === "not_found").length).toBeLessThan(30);
      });

      it("without AUTH_SECRET every moderation frame and auth is forbidden; seed mode does not know them", async () => {
        const room = freshRoom();
        const c = await connect(`${plain.wsUrl}${q({ room, user: "anna" })}`, { protocols: SUB });
        await c.next();
        c.send({ message: "hi", cid: "h" });
        const m = await c.waitFor((f) => isMsg(f) && f.cid === "h");
        const frames: Json[] = [
          { type: "delete", id: m.id },
          { type: "edit", id: m.id, message: "x" },
          { type: "ban", user: "bob" },
          { type: "unban", user: "bob" },
          { type: "auth", token: "x.y.z" },
        ];
        for (const [i, f] of frames.entries()) {
          c.send({ ...f, cid: `f${i}` });
          expect(await c.waitFor("error"), String(f.type)).toMatchObject({ code: "forbidden", cid: `f${i}` });
        }
        const seed = await connect(`${plain.wsUrl}${q({ room })}`);
        seed.send({ type: "delete", id: m.id });
        expect(await seed.waitFor("error")).toMatchObject({ code: "unknown_type" });
        // The message is still there.
        const rest = await fetchJson(`${plain.url}/rooms/${room}/messages`);
        expect((rest.body as { messages: Json[] }).messages.map((x) => x.id)).toContain(m.id);
      });

      it.runIf(has("restart"))(
        "bans survive a restart",
        async () => {
          const historyPath = tempHistoryPath();
          const env = { AUTH_SECRET: SECRET, API_KEY, RATE_LIMIT_IP: "0" };
          const first = await target.start(env, { historyPath });
          const room = freshRoom();
          const put = await fetchJson(`${first.url}/api/rooms/${room}/bans/kept`, {
            method: "PUT",
            headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
            body: "{}",
          });
          expect(put.status).toBe(204);
          expect((await first.stop()).code).toBe(0);
          const second = await target.start(env, { historyPath });
          const refused = await expectRefused(`${second.wsUrl}${q({ room, token: await token({ name: "kept" }) })}`);
          expect(refused).toMatchObject({ status: 403, body: { error: "banned" } });
        },
        90_000,
      ); // two server starts
    });

    describe("8.3 server API", () => {
      it("without API_KEY /api is 404; a missing or wrong key is 401 JSON and does nothing", async () => {
        expect(
          (await fetchJson(`${plain.url}/api/rooms`, { headers: { authorization: `Bearer ${API_KEY}` } })).status,
        ).toBe(404);
        const room = freshRoom();
        const { c } = await member(room, { name: "watch" });
        for (const authorization of [
          undefined,
          "Bearer wrong-key-0123456789abcd",
          `Basic ${API_KEY}`,
          `Bearer ${API_KEY}x`,
          "Bearer",
        ]) {
          const headers: Record<string, string> = { "content-type": "application/json" };
          if (authorization) headers.authorization = authorization;
          const res = await fetchJson(`${gov.url}/api/rooms/${room}/messages`, {
            method: "POST",
            headers,
            body: JSON.stringify({ user: "x", message: "should not arrive" }),
          });
          expect(res, String(authorization)).toEqual({ status: 401, body: { error: expect.any(String) } });
        }
        const [saw = []] = await since(c, [c]);
        expect(saw).toEqual([]);
      });

      it("POST a message: 201 with the message, delivered to v1 and seed members, stored", async () => {
        const room = freshRoom();
        const { c } = await member(room, { name: "ann" });
        const seed = await seedMember(room, { name: "sid" });
        const res = await api(`/rooms/${room}/messages`, {
          method: "POST",
          body: JSON.stringify({ user: "system", message: "maintenance at 5" }),
        });
        expect(res.status).toBe(201);
        const message = (res.body as { message: Json }).message;
        expect(message).toMatchObject({ type: "message", room, user: "system", message: "maintenance at 5" });
        expect(await c.waitFor((f) => isMsg(f) && f.id === message.id)).toEqual(message);
        expect(await seed.waitFor((f) => isMsg(f) && f.id === message.id)).toEqual(message);
        expect((await restHistory(room)).map((m) => m.id)).toContain(message.id);
        // Into a room nobody is in: stored all the same.
        const empty = freshRoom();
        const res2 = await api(`/rooms/${empty}/messages`, {
          method: "POST",
          body: JSON.stringify({ user: "bot", message: "first" }),
        });
        expect(res2.status).toBe(201);
        expect((await restHistory(empty)).map((m) => m.message)).toEqual(["first"]);
      });

      it("POST with bad input is 400 JSON and delivers nothing", async () => {
        const room = freshRoom();
        const { c } = await member(room, { name: "ann" });
        const bodies: [string, string][] = [
          ["not json", "{"],
          ["array", "[]"],
          ["no user", JSON.stringify({ message: "x" })],
          ["bad user", JSON.stringify({ user: "a\u0000", message: "x" })],
          ["long user", JSON.stringify({ user: "u".repeat(33), message: "x" })],
          ["no message", JSON.stringify({ user: "bot" })],
          ["empty message", JSON.stringify({ user: "bot", message: " " })],
          ["number message", JSON.stringify({ user: "bot", message: 1 })],
          ["too long", JSON.stringify({ user: "bot", message: "x".repeat(2001) })],
        ];
        for (const [label, body] of bodies) {
          const res = await api(`/rooms/${room}/messages`, { method: "POST", body });
          expect(res, label).toEqual({ status: 400, body: { error: expect.any(String) } });
        }
        const bigBody = JSON.stringify({ user: "bot", message: "x".repeat(70_000) });
        expect((await api(`/rooms/${room}/messages`, { method: "POST", body: bigBody })).status).toBe(413);
        const badRoom = await api("/rooms/bad%20room/messages", {
          method: "POST",
          body: JSON.stringify({ user: "b", message: "x" }),
        });
        expect(badRoom).toEqual({ status: 400, body: { error: expect.any(String) } });
        const [saw = []] = await since(c, [c]);
        expect(saw).toEqual([]);
        expect(await restHistory(room)).toHaveLength(1); // the sentinel only
      });

      it("DELETE a message: 204 and members get deleted; unknown 404; bad id 400", async () => {
        const room = freshRoom();
        const { c } = await member(room, { name: "ann" });
        const m = await say(c, "remove me");
        expect((await api(`/rooms/${room}/messages/${m.id}`, { method: "DELETE" })).status).toBe(204);
        expect(await c.waitFor("deleted")).toEqual({ type: "deleted", room, id: m.id });
        expect(await api(`/rooms/${room}/messages/${m.id}`, { method: "DELETE" })).toMatchObject({ status: 404 });
        expect(await api(`/rooms/${room}/messages/nope`, { method: "DELETE" })).toEqual({
          status: 400,
          body: { error: expect.any(String) },
        });
        expect((await restHistory(room)).map((x) => x.id)).not.toContain(m.id);
      });

      it("PUT and DELETE a ban: 204; the user is closed with 4003 and refused, then let in again; bad input 400", async () => {
        const room = freshRoom();
        const { c: victim } = await member(room, { name: "vic" });
        await prime(victim);
        const { c: other } = await member(room, { name: "oth" });
        for (const body of ['{"seconds":-1}', '{"seconds":"x"}', '{"seconds":2.5}', "[1]", "{"]) {
          expect(await api(`/rooms/${room}/bans/vic`, { method: "PUT", body }), body).toEqual({
            status: 400,
            body: { error: expect.any(String) },
          });
        }
        expect(await api(`/rooms/${room}/bans/${"n".repeat(33)}`, { method: "PUT", body: "{}" })).toMatchObject({
          status: 400,
        });
        expect(victim.closeInfo).toBeNull();
        expect(
          (await api(`/rooms/${room}/bans/vic`, { method: "PUT", body: JSON.stringify({ seconds: 3600 }) })).status,
        ).toBe(204);
        expect((await victim.waitClosed(5000)).code).toBe(4003);
        const url = async () => `${gov.wsUrl}${q({ room, token: await token({ name: "vic" }) })}`;
        expect(await expectRefused(await url())).toMatchObject({ status: 403, body: { error: "banned" } });
        expect(other.closeInfo).toBeNull();
        expect((await api(`/rooms/${room}/bans/vic`, { method: "DELETE" })).status).toBe(204);
        const back = await connect(await url(), { protocols: SUB });
        expect(await back.next()).toMatchObject({ type: "welcome", user: "vic" });
      });

      it("GET presence: the names online", async () => {
        const room = freshRoom();
        await member(room, { name: "p1" });
        await member(room, { name: "p2" });
        expect(await api(`/rooms/${room}/presence`)).toEqual({ status: 200, body: { users: ["p1", "p2"] } });
        expect(await api(`/rooms/${freshRoom()}/presence`)).toEqual({ status: 200, body: { users: [] } });
        expect((await api("/rooms/bad%20room/presence")).status).toBe(400);
      });

      it.runIf(has("apiRooms"))("GET /api/rooms: rooms with someone online and their connection counts", async () => {
        const a = freshRoom();
        const b = freshRoom();
        const { c: a1 } = await member(a, { name: "r1" });
        const { c: a2 } = await member(a, { name: "r1" });
        const seed = await connect(`${gov.wsUrl}${q({ room: b, token: await token({ name: "r2" }) })}`);
        // A seed connection has no welcome to wait for: its message shows it has joined.
        seed.send({ message: "here" });
        await seed.waitFor(isMsg);
        const res = await api("/rooms");
        expect(res.status).toBe(200);
        const rooms = (res.body as { rooms: { room: string; online: number }[] }).rooms;
        expect(rooms.filter((r) => r.room === a || r.room === b)).toEqual([
          { room: a, online: 2 },
          { room: b, online: 1 },
        ]);
        // Everyone gone: no longer listed (the closes reach the server a moment later).
        await a1.close();
        await a2.close();
        let listed = true;
        for (let k = 0; k < 50 && listed; k++) {
          const now = ((await api("/rooms")).body as { rooms: { room: string }[] }).rooms;
          listed = now.some((r) => r.room === a);
          if (listed) await new Promise((r) => setTimeout(r, 100));
        }
        expect(listed).toBe(false);
      });
    });

    describe("7 token lifetime", () => {
      it("a v1 connection whose token expires gets token_expired, then close 4001; a seed one 4001", async () => {
        const room = freshRoom();
        const exp = nowS() + 2;
        const { c } = await member(room, { name: "short", exp });
        const seed = await seedMember(room, { name: "short2", exp });
        await prime(c);
        await prime(seed, true);
        const seedMark = seed.received.length;
        const closed = await c.waitClosed(10_000);
        expect(closed.code).toBe(4001);
        expect(c.received.map((f) => f.json).find((f) => f?.type === "error")).toMatchObject({ code: "token_expired" });
        expect((await seed.waitClosed(10_000)).code).toBe(4001);
        // Seed mode has no error frame for it: just the close.
        expect(seed.received.slice(seedMark)).toEqual([]);
      });

      it("refresh: auth with a fresh token is answered with its exp and keeps the connection past the old one", async () => {
        const room = freshRoom();
        const exp = nowS() + 2;
        const { c } = await member(room, { name: "keep", exp });
        const fresh = nowS() + 600;
        c.send({ type: "auth", token: await token({ name: "keep", exp: fresh }), cid: "a1" });
        expect(await c.waitFor((f) => f.type === "auth")).toEqual({ type: "auth", exp: fresh, cid: "a1" });
        // Wait until the first token is past, then the connection still answers.
        await sleep(Math.max(0, (exp + 1) * 1000 - Date.now()));
        c.send({ type: "ping" });
        expect(await c.waitFor("pong")).toEqual({ type: "pong" });
        expect(c.closeInfo).toBeNull();
        // A token without exp: answered with exp null.
        c.send({ type: "auth", token: await token({ name: "keep", exp: null }) });
        expect(await c.waitFor((f) => f.type === "auth")).toEqual({ type: "auth", exp: null });
      });

      it("an invalid, expired or other user's token is invalid_token and changes nothing: the old exp still ends it", async () => {
        const room = freshRoom();
        const exp = nowS() + 3;
        const { c } = await member(room, { name: "ivy", exp });
        const refused: [string, string][] = [
          ["garbage", "not-a-token"],
          ["other user", await token({ name: "mallory", exp: nowS() + 600 })],
          ["expired", await token({ name: "ivy", exp: nowS() - 10 })],
          ["wrong key", await token({ name: "ivy" }, "another-secret-0123456789")],
          ["room not allowed", await token({ name: "ivy", rooms: ["elsewhere"] })],
        ];
        for (const [label, t] of refused) {
          c.send({ type: "auth", token: t, cid: label });
          expect(await c.waitFor("error"), label).toMatchObject({ code: "invalid_token", cid: label });
        }
        for (const bad of [{ type: "auth" }, { type: "auth", token: 5 }, { type: "auth", token: "" }]) {
          c.send(bad);
          expect(await c.waitFor("error"), JSON.stringify(bad)).toMatchObject({ code: "invalid_frame" });
        }
        expect((await c.waitClosed(10_000)).code).toBe(4001);
      });

      it("AUTH_ISSUER and AUTH_AUDIENCE: tokens without them or with others are 401; aud may be an array", async () => {
        const server = await target.start({
          AUTH_SECRET: SECRET,
          AUTH_ISSUER: "https://issuer.example",
          AUTH_AUDIENCE: "chat",
          RATE_LIMIT_IP: "0",
        });
        const room = freshRoom();
        const url = async (claims: Json) => `${server.wsUrl}${q({ room, token: await token(claims) })}`;
        const good = { iss: "https://issuer.example", aud: "chat" };
        for (const [label, claims] of [
          ["no iss", { name: "a", aud: "chat" }],
          ["other iss", { name: "a", aud: "chat", iss: "https://evil.example" }],
          ["no aud", { name: "a", iss: good.iss }],
          ["other aud", { name: "a", iss: good.iss, aud: "other" }],
          ["aud array without it", { name: "a", iss: good.iss, aud: ["x", "y"] }],
        ] as const) {
          expect((await expectRefused(await url(claims))).status, label).toBe(401);
        }
        for (const claims of [
          { name: "b", ...good },
          { name: "c", iss: good.iss, aud: ["other", "chat"] },
        ]) {
          const c = await connect(await url(claims), { protocols: SUB });
          expect(await c.next()).toMatchObject({ type: "welcome", user: claims.name });
        }
        // A refresh is checked the same way.
        const c = await connect(await url({ name: "d", ...good }), { protocols: SUB });
        await c.next();
        c.send({ type: "auth", token: await token({ name: "d", iss: good.iss, aud: "other" }) });
        expect(await c.waitFor("error")).toMatchObject({ code: "invalid_token" });
        c.send({ type: "auth", token: await token({ name: "d", ...good }) });
        expect(await c.waitFor((f) => f.type === "auth")).toMatchObject({ type: "auth" });
      }, 90_000); // starts its own server: wrangler alone can take 20 s on a busy machine
    });
  });
}
