/**
 * Webhooks with HUB=redis across instances: two servers share the outbox in
 * Redis; every event reaches the receiver once (not once per instance), a
 * room's messages in their order, one join and one leave per name whichever
 * instance its connections are on.
 */
import { describe, expect, it } from "vitest";
import { trackForFile } from "../helpers/cleanup.ts";
import { connect } from "../helpers/client.ts";
import { deleteKeys, REDIS_URL, redisSkipReason, uniquePrefix } from "../helpers/redis.ts";
import { nodeTarget } from "../helpers/server.ts";
import { startReceiver, validSignature } from "../unit/webhooks-receiver.ts";

const SECRET = "webhook-secret-0123456789";
const reason = redisSkipReason;

describe.skipIf(reason !== null)(`webhooks with HUB=redis${reason ? ` (skipped: ${reason})` : ""}`, () => {
  it("two instances: each event is delivered once, in the room's order", async () => {
    const prefix = uniquePrefix("whr");
    trackForFile(() => deleteKeys(REDIS_URL, prefix));
    const receiver = await startReceiver(() => 200);
    trackForFile(() => receiver.close());
    const env = {
      HUB: "redis",
      REDIS_URL,
      REDIS_PREFIX: prefix,
      WEBHOOK_URL: receiver.url,
      WEBHOOK_SECRET: SECRET,
      RATE_LIMIT_IP: "0",
      RATE_LIMIT: "0",
    };
    const [a, b] = await Promise.all([nodeTarget.start(env), nodeTarget.start(env)]);
    const room = `whr-${process.pid}`;
    const ann = await connect(`${a.wsUrl}?room=${room}&user=ann`, { protocols: "chat.v1" });
    await ann.next();
    const bob = await connect(`${b.wsUrl}?room=${room}&user=bob`, { protocols: "chat.v1" });
    await bob.next();
    // A second tab of ann's, on the other instance: no second join.
    const ann2 = await connect(`${b.wsUrl}?room=${room}&user=ann`, { protocols: "chat.v1" });
    await ann2.next();
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) {
      const [from, text] = i % 2 === 0 ? [ann, `a${i}`] : [bob, `b${i}`];
      from.send({ message: text });
      ids.push((await from.waitFor((f) => f.type === "message" && f.message === text)).id as string);
    }
    for (const c of [ann, ann2, bob]) await c.close();
    const ofRoom = () => receiver.accepted().filter((r) => r.event.room === room);
    await receiver.until(
      () => ofRoom().filter((r) => r.event.event === "member.left").length === 2,
      30_000,
      "both leaves",
    );
    const got = ofRoom();
    expect(new Set(receiver.received.map((r) => r.id)).size).toBe(receiver.received.length);
    expect(got.filter((r) => r.event.event === "message.created").map((r) => r.event.data.id)).toEqual(ids);
    expect(got.filter((r) => r.event.event === "member.joined").map((r) => r.event.data.user)).toEqual(["ann", "bob"]);
    expect(
      got
        .filter((r) => r.event.event === "member.left")
        .map((r) => r.event.data.user)
        .sort(),
    ).toEqual(["ann", "bob"]);
    for (const r of got) expect(validSignature(SECRET, r.body, r.signature)).toBe(true);
    await Promise.all([a.stop(), b.stop()]);
  }, 90_000);
});
