/**
 * Webhooks (docs/api.md: webhooks) against a real server of each runtime, with a real
 * receiver on 127.0.0.1 in the test process: the events a room produces,
 * signed, in order; pending events surviving a restart; the start-up rule
 * for WEBHOOK_SECRET. Called once from server.suite.ts.
 */
import { sign } from "hono/jwt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect } from "../helpers/client.ts";
import { type RunningServer, type ServerTarget, tempHistoryPath } from "../helpers/server.ts";
import { type Receiver, startReceiver, validSignature } from "../unit/webhooks-receiver.ts";

/** What the runtime can do here; everything defaults to true. */
export interface WebhookCaps {
  /** The process can be stopped (SIGTERM) and started again on the same data. */
  restart?: boolean;
  /** A bad setting stops start-up with a message (Workers answer 500 per request instead). */
  configExit?: boolean;
}

const SECRET = "webhook-secret-0123456789";
const AUTH = "webhook-auth-secret-0123456789";
const API_KEY = "webhook-api-key-0123456789";
let roomSeq = 0;
const freshRoom = () => `wh${process.pid.toString(36)}-${(++roomSeq).toString(36)}`;

type Json = Record<string, unknown>;

export function webhookCases(target: ServerTarget, caps: WebhookCaps = {}): void {
  const has = (k: keyof WebhookCaps) => caps[k] !== false;

  describe("8.4 webhooks", () => {
    let receiver: Receiver;
    let server: RunningServer;
    beforeAll(async () => {
      receiver = await startReceiver(() => 200);
      server = await target.start({ WEBHOOK_URL: receiver.url, WEBHOOK_SECRET: SECRET, RATE_LIMIT_IP: "0" });
    });
    afterAll(async () => {
      await receiver?.close();
    });

    /** Everything the receiver accepted for `room`, by event name and payload. */
    const forRoom = (room: string) => receiver.accepted().filter((r) => r.event.room === room);

    it("a room's joins, messages and leaves arrive in order, signed, with the message frame as data", async () => {
      receiver.answer = () => 200;
      const room = freshRoom();
      const c = await connect(`${server.wsUrl}?room=${room}&user=ann`, { protocols: "chat.v1" });
      expect((await c.next()).type).toBe("welcome");
      const sent: Json[] = [];
      for (const text of ["one", "two", "three"]) {
        c.send({ message: text });
        sent.push(await c.waitFor((f) => f.type === "message" && f.message === text));
      }
      await c.close();
      await receiver.until(() => forRoom(room).length === 5, 20_000, "5 events of the room");
      const got = forRoom(room);
      expect(got.map((r) => r.event.event)).toEqual([
        "member.joined",
        "message.created",
        "message.created",
        "message.created",
        "member.left",
      ]);
      expect(got[0]!.event.data).toEqual({ user: "ann" });
      expect(got[4]!.event.data).toEqual({ user: "ann" });
      for (const [i, m] of sent.entries()) {
        const { cid: _cid, ...frame } = m;
        expect(got[i + 1]!.event.data).toEqual(frame);
      }
      for (const r of got) {
        expect(validSignature(SECRET, r.body, r.signature)).toBe(true);
        expect(r.id).toBe(r.event.id);
        expect(typeof r.event.ts).toBe("number");
      }
      expect(new Set(got.map((r) => r.id)).size).toBe(5);
    });

    it("a second connection of the same name is no new join; its last leaving is the one leave", async () => {
      const room = freshRoom();
      const a = await connect(`${server.wsUrl}?room=${room}&user=bo`, { protocols: "chat.v1" });
      await a.next();
      const b = await connect(`${server.wsUrl}?room=${room}&user=bo`, { protocols: "chat.v1" });
      await b.next();
      await a.close();
      // A message after the first tab closed: the leave, if any were sent for it, would come before.
      b.send({ message: "still here" });
      await b.waitFor((f) => f.type === "message");
      await b.close();
      await receiver.until(() => forRoom(room).some((r) => r.event.event === "member.left"), 20_000, "the leave");
      expect(forRoom(room).map((r) => r.event.event)).toEqual(["member.joined", "message.created", "member.left"]);
    });

    it("edits, deletes and server API posts are announced too", async () => {
      const gov = await target.start({
        WEBHOOK_URL: receiver.url,
        WEBHOOK_SECRET: SECRET,
        AUTH_SECRET: AUTH,
        API_KEY,
        RATE_LIMIT_IP: "0",
      });
      const room = freshRoom();
      const jwt = await sign({ name: "eve", exp: Math.floor(Date.now() / 1000) + 600 }, AUTH, "HS256");
      const c = await connect(`${gov.wsUrl}?room=${room}&token=${jwt}`, { protocols: "chat.v1" });
      expect((await c.next()).type).toBe("welcome");
      c.send({ message: "typo" });
      const m = await c.waitFor((f) => f.type === "message");
      c.send({ type: "edit", id: m.id, message: "fixed" });
      await c.waitFor((f) => f.type === "edited");
      const api = (method: string, path: string, body?: unknown) =>
        fetch(`${gov.url}/api/rooms/${room}${path}`, {
          method,
          headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          signal: AbortSignal.timeout(5000),
        });
      expect((await api("DELETE", `/messages/${m.id}`)).status).toBe(204);
      expect((await api("POST", "/messages", { user: "system", message: "from the backend" })).status).toBe(201);
      await receiver.until(
        () => forRoom(room).some((r) => r.event.event === "message.created" && r.event.data.user === "system"),
        20_000,
        "the API's message",
      );
      const got = forRoom(room).map((r) => [r.event.event, r.event.data]);
      expect(got).toEqual([
        ["member.joined", { user: "eve" }],
        ["message.created", expect.objectContaining({ id: m.id, user: "eve", message: "typo" })],
        [
          "message.edited",
          expect.objectContaining({ id: m.id, user: "eve", message: "fixed", edited: expect.any(Number) }),
        ],
        ["message.deleted", { id: m.id }],
        ["message.created", expect.objectContaining({ user: "system", message: "from the backend" })],
      ]);
      await c.close();
      await gov.stop();
    });

    it.runIf(has("restart"))("events pending when the server stops are delivered after it restarts", async () => {
      const historyPath = tempHistoryPath();
      const down = await startReceiver(() => 503);
      // Retries at most 2 s apart, so the events are due soon after the restart however slow it is.
      const env: Record<string, string> = {
        WEBHOOK_URL: down.url,
        WEBHOOK_SECRET: SECRET,
        WEBHOOK_RETRY_MAX_MS: "2000",
        RATE_LIMIT_IP: "0",
      };
      // With HUB=redis the outbox is shared by every instance on the prefix, and the suite's
      // server (another WEBHOOK_URL) would deliver these events: this case gets a prefix of its own.
      if (server.env.HUB === "redis") env.REDIS_PREFIX = `${server.env.REDIS_PREFIX ?? "chat:"}restart:`;
      try {
        const first = await target.start(env, { historyPath });
        const room = freshRoom();
        const c = await connect(`${first.wsUrl}?room=${room}&user=cy`, { protocols: "chat.v1" });
        await c.next();
        for (const text of ["a", "b", "c"]) {
          c.send({ message: text });
          await c.waitFor((f) => f.type === "message" && f.message === text);
        }
        await down.until(() => down.received.length >= 1, 20_000, "a first (refused) attempt");
        expect((await first.stop()).code).toBe(0);
        const attemptsBefore = down.received.length;
        // The receiver is back, at the same address, for the restarted server.
        down.answer = () => 200;
        const second = await target.start(env, { historyPath });
        await down.until(
          () => down.accepted().some((r) => r.event.room === room && r.event.event === "member.left"),
          20_000,
          "the room's events after the restart",
        );
        const got = down.accepted().filter((r) => r.event.room === room);
        expect(got.map((r) => [r.event.event, r.event.data.message ?? r.event.data.user])).toEqual([
          ["member.joined", "cy"],
          ["message.created", "a"],
          ["message.created", "b"],
          ["message.created", "c"],
          ["member.left", "cy"],
        ]);
        // The first attempt's event is the one delivered: the same id, so the receiver can dedupe.
        expect(got[0]!.id).toBe(down.received[0]!.id);
        expect(attemptsBefore).toBeGreaterThanOrEqual(1);
        await second.stop();
      } finally {
        await down.close();
      }
    });

    it.runIf(has("configExit"))("WEBHOOK_URL without WEBHOOK_SECRET stops start-up with a clear message", async () => {
      await expect(target.start({ WEBHOOK_URL: "http://127.0.0.1:9/hook" })).rejects.toThrow(
        /WEBHOOK_SECRET must be set when WEBHOOK_URL is/,
      );
      await expect(target.start({ WEBHOOK_URL: "ftp://example.com/x", WEBHOOK_SECRET: SECRET })).rejects.toThrow(
        /WEBHOOK_URL.*must be an http\(s\) URL/,
      );
    });
  });
}
