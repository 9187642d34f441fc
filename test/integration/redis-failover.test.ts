/**
 * Black-box: two Node instances with HUB=redis on a local Redis Cluster
 * (REDIS_CLUSTER=true; 3 masters, 3 replicas). The master of a busy room is
 * killed mid-traffic; its replica takes over. Every message is answered
 * (echo, `unavailable`, or a 1013 close telling the client to resume), the
 * room goes on, and no resume hides a loss: a resume that says
 * `recovered: true` misses no accepted message.
 */
import { describe, expect, it } from "vitest";
import { trackForFile } from "../helpers/cleanup.ts";
import { connect, messageIds, roomUrl, type TestClient } from "../helpers/client.ts";
import { haveClusterTools, LocalCluster } from "../helpers/redis-cluster.ts";
import { nodeTarget } from "../helpers/server.ts";

const V1 = { protocols: "chat.v1" };

/** Ids of the sender's messages that were accepted (echoed with its cid). */
function accepted(client: TestClient): string[] {
  return client.received.filter((f) => f.json?.type === "message" && "cid" in f.json).map((f) => f.json!.id as string);
}

const reason = haveClusterTools ? "" : " (skipped: redis-server or redis-cli is not installed)";

describe.skipIf(!haveClusterTools)(`Redis Cluster: a master dies mid-traffic${reason}`, () => {
  it("its replica takes over; senders hear echo, unavailable or resume; no resume hides a loss", async () => {
    const cluster = await LocalCluster.start();
    trackForFile(() => cluster.stop());
    const env = { HUB: "redis", REDIS_CLUSTER: "true", REDIS_URL: cluster.url, RATE_LIMIT: "0" };
    // One after the other: on a loaded machine two tsx start-ups at once can pass the start timeout.
    const a = await nodeTarget.start(env);
    const b = await nodeTarget.start(env);
    const room = "failover";
    const reader = await connect(roomUrl(b, { room, user: "rita" }), V1);
    await reader.waitFor("welcome");
    const senders = [
      await connect(roomUrl(a, { room, user: "sam" }), V1),
      await connect(roomUrl(b, { room, user: "sue" }), V1),
    ];
    for (const s of senders) await s.waitFor("welcome");

    // Steady traffic from both instances; the room's master dies in the middle.
    const total = 120;
    const sending = (async () => {
      for (let i = 0; i < total; i++) {
        for (const [k, s] of senders.entries()) {
          if (s.ws.readyState === s.ws.OPEN) s.send({ message: `${k}:${i}`, cid: `${k}-${i}` });
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    await reader.collect((f) => f.type === "message", 30, 10_000);
    const master = await cluster.masterOf(`chat:{${room}}:log`);
    await cluster.kill(master);
    await sending;
    await cluster.waitHealthy(20_000);

    // Every message got an answer: an echo, an `unavailable` error, or the connection was closed to resume.
    for (const [k, s] of senders.entries()) {
      if (s.closeInfo !== null) {
        expect(s.closeInfo.code).toBe(1013);
        continue;
      }
      const answered = () =>
        s.received.filter(
          (f) => (f.json?.type === "message" && "cid" in f.json) || (f.json?.type === "error" && f.json.cid),
        ).length;
      for (let i = 0; i < 100 && answered() < total; i++) await new Promise((r) => setTimeout(r, 100));
      expect(answered(), `sender ${k}`).toBe(total);
      const errors = s.received.filter((f) => f.json?.type === "error").map((f) => f.json!.code);
      expect(new Set(errors).size <= 1 && errors.every((c) => c === "unavailable")).toBe(true);
    }
    const acceptedIds = new Set(senders.flatMap(accepted));
    expect(acceptedIds.size).toBeGreaterThan(0);

    // The room goes on: a message after the failover reaches a new client on the other instance.
    const after = await connect(roomUrl(a, { room, user: "ann" }), V1);
    await after.waitFor("welcome", 5000);
    let delivered = false;
    for (let i = 0; i < 20 && !delivered; i++) {
      after.send({ message: `after${i}`, cid: `after-${i}` });
      const answer = await after.waitFor(
        (f) => (f.type === "message" && f.cid === `after-${i}`) || (f.type === "error" && f.cid === `after-${i}`),
        5000,
      );
      delivered = answer.type === "message";
      if (!delivered) await new Promise((r) => setTimeout(r, 250));
    }
    expect(delivered, "messages flow again after the failover").toBe(true);

    // The reader resumes from what it saw; a `recovered: true` must not hide an accepted message that is gone.
    const last = messageIds(reader).at(-1)!;
    const resumed = await connect(roomUrl(a, { room, user: "rita", since: last }), V1);
    const welcome = await resumed.waitFor("welcome", 5000);
    const stored = new Set(
      (
        (await (await fetch(`${a.url}/rooms/${room}/messages?limit=500`)).json()) as { messages: { id: string }[] }
      ).messages.map((m) => m.id),
    );
    const lostAfterCursor = [...acceptedIds].filter((id) => id > last && !stored.has(id));
    if (welcome.recovered === true) expect(lostAfterCursor).toEqual([]);
    // What it got (all pages, when the welcome says more follow) is in order and without repeats of what it had.
    if (welcome.more === true) await resumed.waitFor((f) => f.type === "history" && f.more === false, 10_000);
    const got = messageIds(resumed);
    expect([...got].sort()).toEqual(got);
    expect(got.every((id) => id > last)).toBe(true);
    // Nor did the live path skip any (its catch-up after the subscriptions moved): seen live or resumed.
    if (welcome.recovered === true) {
      const all = new Set([...messageIds(reader), ...got]);
      expect([...acceptedIds].filter((id) => stored.has(id) && !all.has(id))).toEqual([]);
    }
  }, 90_000);
});
