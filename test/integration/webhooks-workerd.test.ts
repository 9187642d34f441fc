/**
 * Webhooks on Workers, what only a Durable Object shows: events pending in
 * the room object's storage when wrangler dev stops are delivered after it
 * starts again, by the object's alarm (no request to the room needed).
 */
import { describe, expect, it } from "vitest";
import { connect } from "../helpers/client.ts";
import { tempHistoryPath } from "../helpers/server.ts";
import { workerdTarget } from "../helpers/workerd.ts";
import { startReceiver } from "../unit/webhooks-receiver.ts";

const SECRET = "webhook-secret-0123456789";

describe("webhooks on workerd", () => {
  it("events pending in the room's object are delivered by its alarm after a restart", async () => {
    const receiver = await startReceiver(() => 503);
    try {
      const historyPath = tempHistoryPath();
      // Retries at most 2 s apart: however slow wrangler is to stop and start here, the
      // pending events are due soon after the restart.
      const env = { WEBHOOK_URL: receiver.url, WEBHOOK_SECRET: SECRET, WEBHOOK_RETRY_MAX_MS: "2000" };
      const first = await workerdTarget.start(env, { historyPath });
      const room = `whd-${process.pid}`;
      const c = await connect(`${first.wsUrl}?room=${room}&user=dee`, { protocols: "chat.v1" });
      await c.next();
      for (const text of ["a", "b"]) {
        c.send({ message: text });
        await c.waitFor((f) => f.type === "message" && f.message === text);
      }
      await receiver.until(() => receiver.received.length >= 1, 20_000, "a first (refused) attempt");
      await first.stop();
      receiver.answer = () => 200;
      const second = await workerdTarget.start(env, { historyPath });
      await receiver.until(
        () => receiver.accepted().filter((r) => r.event.event === "message.created").length === 2,
        30_000,
        "both messages after the restart",
      );
      const got = receiver.accepted().filter((r) => r.event.room === room);
      expect(got.map((r) => [r.event.event, r.event.data.message ?? r.event.data.user])).toEqual([
        ["member.joined", "dee"],
        ["message.created", "a"],
        ["message.created", "b"],
      ]);
      expect(got[0]!.id).toBe(receiver.received[0]!.id);
      await second.stop();
    } finally {
      await receiver.close();
    }
  }, 90_000);

  it("a room woken from hibernation announces no second join for people who never left", async () => {
    const receiver = await startReceiver(() => 200);
    try {
      const server = await workerdTarget.start({ WEBHOOK_URL: receiver.url, WEBHOOK_SECRET: SECRET });
      const room = `whh-${process.pid}`;
      const ann = await connect(`${server.wsUrl}?room=${room}&user=ann`, { protocols: "chat.v1" });
      await ann.next();
      ann.send({ message: "before" });
      await ann.waitFor((f) => f.type === "message");
      await receiver.until(() => receiver.accepted().length === 2, 20_000, "join and message");
      // workerd evicts an idle object about 10 s after its last event (workerd-objects.test.ts).
      await new Promise((r) => setTimeout(r, 12_000));
      ann.send({ message: "after" });
      await ann.waitFor((f) => f.type === "message" && f.message === "after", 10_000);
      expect(server.output()).toContain("room rebuilt after hibernation");
      await ann.close();
      await receiver.until(() => receiver.accepted().some((r) => r.event.event === "member.left"), 20_000, "the leave");
      expect(receiver.accepted().map((r) => [r.event.event, r.event.data.message ?? r.event.data.user])).toEqual([
        ["member.joined", "ann"],
        ["message.created", "before"],
        ["message.created", "after"],
        ["member.left", "ann"],
      ]);
      await server.stop();
    } finally {
      await receiver.close();
    }
  }, 90_000);
});
