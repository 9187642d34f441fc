/**
 * Black-box: HUB=redis on a private redis-server that loses its data
 * mid-conversation, by a restart without persistence and by FLUSHALL. The
 * clients online are closed with 1013 (history was reset) and a resume
 * from before the loss says `recovered: false`: never a silent gap.
 */
import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { connect, roomUrl, type TestClient } from "../helpers/client.ts";
import { haveRedisServer, startPrivateRedis } from "../helpers/redis.ts";
import { nodeTarget, type RunningServer } from "../helpers/server.ts";

const V1 = { protocols: "chat.v1" };
const isMessage = (f: Record<string, unknown>) => f.type === "message";

/** The last message id a client saw (welcome history included). */
function lastId(client: TestClient): string {
  let last = "";
  for (const f of client.received) {
    if (f.json?.type === "welcome") for (const m of f.json.history as { id: string }[]) last = m.id;
    else if (f.json?.type === "message") last = f.json.id as string;
  }
  return last;
}

async function twoInstances(redisUrl: string): Promise<[RunningServer, RunningServer]> {
  const env = { HUB: "redis", REDIS_URL: redisUrl, REDIS_PREFIX: "chat:", RATE_LIMIT: "0" };
  // One after the other: on a loaded machine two tsx start-ups at once can pass the start timeout.
  return [await nodeTarget.start(env), await nodeTarget.start(env)];
}

const reason = haveRedisServer ? "" : " (skipped: redis-server is not installed)";

describe.skipIf(!haveRedisServer)(`Redis loses its data mid-conversation${reason}`, () => {
  it("restart without persistence: clients are told to resume, and the resume reports the gap", async () => {
    const redis = await startPrivateRedis("epoch");
    const [a, b] = await twoInstances(redis.url);
    const room = "restart";
    const alice = await connect(roomUrl(a, { room, user: "alice" }), V1);
    await alice.waitFor("welcome");
    const bob = await connect(roomUrl(b, { room, user: "bob" }), V1);
    await bob.waitFor("welcome");
    for (let i = 0; i < 5; i++) alice.send({ message: `before${i}` });
    await bob.collect(isMessage, 5, 5000);
    const seenByBob = lastId(bob);

    // No snapshot: the restarted Redis is empty.
    await redis.stop();
    await redis.start();
    // Each instance reconnects, finds the room's epoch gone and asks its clients to resume.
    expect((await alice.waitClosed(10_000)).code).toBe(1013);
    expect((await bob.waitClosed(10_000)).code).toBe(1013);

    const back = await connect(roomUrl(b, { room, user: "bob", since: seenByBob }), V1);
    const welcome = await back.waitFor("welcome", 5000);
    expect(welcome.recovered).toBe(false);
    // The conversation goes on in the new epoch, and resumes from it are complete.
    const alice2 = await connect(roomUrl(a, { room, user: "alice" }), V1);
    await alice2.waitFor("welcome");
    alice2.send({ message: "after" });
    await back.waitFor((f) => f.type === "message" && f.message === "after", 5000);
    const newer = lastId(back);
    alice2.send({ message: "later" });
    await alice2.waitFor((f) => f.type === "message" && f.message === "later", 5000);
    const again = await connect(roomUrl(a, { room, user: "bob", since: newer }), V1);
    const w2 = await again.waitFor("welcome", 5000);
    expect(w2.recovered).toBe(true);
    expect((w2.history as { message: string }[]).map((m) => m.message)).toEqual(["later"]);
  });

  it("FLUSHALL: the next message starts a new epoch; clients online resume and see recovered false", async () => {
    const redis = await startPrivateRedis("epoch");
    const [a, b] = await twoInstances(redis.url);
    const room = "flush";
    const alice = await connect(roomUrl(a, { room, user: "alice" }), V1);
    await alice.waitFor("welcome");
    const bob = await connect(roomUrl(b, { room, user: "bob" }), V1);
    await bob.waitFor("welcome");
    for (let i = 0; i < 3; i++) bob.send({ message: `before${i}` });
    await alice.collect(isMessage, 3, 5000);
    const seenByAlice = lastId(alice);

    const admin = new Redis(redis.url, { maxRetriesPerRequest: 1 });
    try {
      await admin.flushall();
    } finally {
      admin.disconnect();
    }
    // Nobody noticed yet (no reconnect); the next message does.
    bob.send({ message: "after flush" });
    expect((await alice.waitClosed(5000)).code).toBe(1013);
    expect((await bob.waitClosed(5000)).code).toBe(1013);
    const back = await connect(roomUrl(a, { room, user: "alice", since: seenByAlice }), V1);
    const welcome = await back.waitFor("welcome", 5000);
    expect(welcome.recovered).toBe(false);
    // What the store holds now is in the history: the message after the flush.
    expect((welcome.history as { message: string }[]).map((m) => m.message)).toEqual(["after flush"]);
  });
});
