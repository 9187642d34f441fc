/**
 * Black-box: real server processes with HUB=redis sharing one Redis. Two
 * instances behave as one server (same ids, same order, presence and typing
 * across them); an instance killed mid-stream loses nothing once its clients
 * resume on the other; a Redis that dies and comes back is survived.
 */
import { existsSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { trackForFile } from "../helpers/cleanup.ts";
import { connect, messageIds, roomUrl, type TestClient } from "../helpers/client.ts";
import {
  deleteKeys,
  haveRedisServer,
  REDIS_URL,
  redisSkipReason,
  startPrivateRedis,
  uniquePrefix,
} from "../helpers/redis.ts";
import { nodeTarget, type RunningServer, type ServerTarget, spawnTarget } from "../helpers/server.ts";

const V1 = { protocols: "chat.v1" };
const isMessage = (f: Record<string, unknown>) => f.type === "message";

/** Instances (two on Node unless told) on one Redis and prefix; the keys are deleted when the file ends. */
async function cluster(
  redisUrl = REDIS_URL,
  targets: ServerTarget[] = [nodeTarget, nodeTarget],
): Promise<RunningServer[]> {
  const prefix = uniquePrefix("cluster");
  trackForFile(() => deleteKeys(redisUrl, prefix));
  const env = { HUB: "redis", REDIS_URL: redisUrl, REDIS_PREFIX: prefix, RATE_LIMIT: "0" };
  // One after the other: on a loaded machine several tsx start-ups at once can pass the start timeout.
  const servers: RunningServer[] = [];
  for (const t of targets) servers.push(await t.start(env));
  return servers;
}

const bunBin = "node_modules/.bin/bun";
const denoBin = "node_modules/.bin/deno";
const haveBunDeno = existsSync(bunBin) && existsSync(denoBin);

async function health(server: RunningServer): Promise<{ status: number; body: { status?: string } }> {
  try {
    const res = await fetch(`${server.url}/healthz`, { signal: AbortSignal.timeout(2000) });
    return { status: res.status, body: (await res.json()) as { status?: string } };
  } catch {
    return { status: 0, body: {} };
  }
}

/** Polls until `check` passes, at most `ms`. */
async function eventually(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`not within ${ms} ms: ${what}`);
}

const skip = redisSkipReason !== null;

describe.skipIf(skip)(`Redis cluster: two instances${skip ? ` (skipped: ${redisSkipReason})` : ""}`, () => {
  it("serve one room as one server: same ids in the same order, echo cids, presence and typing across", async () => {
    const [a, b] = (await cluster()) as [RunningServer, RunningServer];
    const room = `r${Date.now().toString(36)}`;
    const alice = await connect(roomUrl(a, { room, user: "alice" }), V1);
    expect((await alice.waitFor("welcome")).users).toEqual(["alice"]);
    const bob = await connect(roomUrl(b, { room, user: "bob" }), V1);
    expect((await bob.waitFor("welcome")).users).toEqual(["alice", "bob"]);
    expect(await alice.waitFor((f) => f.type === "presence" && f.joined === "bob")).toMatchObject({
      users: ["alice", "bob"],
    });
    const seedA = await connect(roomUrl(a, { room }));
    const seedB = await connect(roomUrl(b, { room }));
    // Seed clients get no welcome: a v1 client's welcome, on each instance
    // after them, shows the server has joined them.
    for (const s of [a, b]) await (await connect(roomUrl(s, { room }), V1)).waitFor("welcome");

    bob.send({ type: "typing" });
    expect(await alice.waitFor("typing")).toEqual({ type: "typing", user: "bob" });

    const perSender = 20;
    for (let i = 0; i < perSender; i++) {
      alice.send({ message: `a${i}`, cid: `ca${i}` });
      bob.send({ message: `b${i}`, cid: `cb${i}` });
      seedA.send({ user: "sam", message: `s${i}` });
    }
    const total = perSender * 3;
    const clients = [alice, bob, seedA, seedB];
    const seqs = await Promise.all(
      clients.map(async (c) => (await c.collect(isMessage, total, 10_000)).map((f) => f.id)),
    );
    for (const s of seqs) expect(s).toEqual(seqs[0]);
    expect(new Set(seqs[0]).size).toBe(total);
    expect([...(seqs[0] as string[])].sort()).toEqual(seqs[0]);
    // Each sender's order is kept, and only the sender's echo carries its cid.
    const frames = alice.received.filter((f) => f.json?.type === "message").map((f) => f.json!);
    expect(frames.filter((f) => f.user === "alice").map((f) => f.message)).toEqual(
      Array.from({ length: perSender }, (_, i) => `a${i}`),
    );
    expect(frames.filter((f) => f.user === "alice").every((f, i) => f.cid === `ca${i}`)).toBe(true);
    expect(frames.some((f) => f.user === "bob" && "cid" in f)).toBe(false);
    // Paging over HTTP answers the same on either instance.
    const pages = await Promise.all(
      [a, b].map(async (s) =>
        (
          (await (await fetch(`${s.url}/rooms/${room}/messages?limit=500`)).json()) as {
            messages: { id: string }[];
          }
        ).messages.map((m) => m.id),
      ),
    );
    expect(pages[0]).toEqual(seqs[0]);
    expect(pages[1]).toEqual(seqs[0]);

    await bob.close();
    expect(await alice.waitFor((f) => f.type === "presence" && f.left === "bob")).toMatchObject({ users: ["alice"] });
  });

  it.skipIf(!haveBunDeno)(
    `Node, Bun and Deno instances share rooms with the same ids${haveBunDeno ? "" : " (skipped: bun or deno is not installed)"}`,
    async () => {
      const servers = await cluster(REDIS_URL, [
        nodeTarget,
        spawnTarget("bun", [bunBin, "run", "src/index.ts"]),
        spawnTarget("deno", [denoBin, "run", "-A", "src/index.ts"]),
      ]);
      const room = `x${Date.now().toString(36)}`;
      const clients: TestClient[] = [];
      for (const [i, s] of servers.entries()) {
        const c = await connect(roomUrl(s, { room, user: `u${i}` }), V1);
        await c.waitFor("welcome");
        clients.push(c);
      }
      for (let k = 0; k < 10; k++)
        for (const [i, c] of clients.entries()) c.send({ message: `${i}:${k}`, cid: `${i}-${k}` });
      const seqs = await Promise.all(
        clients.map(async (c) => (await c.collect(isMessage, 30, 10_000)).map((f) => f.id)),
      );
      for (const seq of seqs) expect(seq).toEqual(seqs[0]);
      for (const [i, c] of clients.entries()) {
        const echoes = c.received.filter((f) => f.json?.type === "message" && "cid" in f.json).map((f) => f.json!);
        expect(echoes.map((f) => f.cid)).toEqual(Array.from({ length: 10 }, (_, k) => `${i}-${k}`));
      }
    },
  );

  it("an instance killed with SIGKILL mid-stream: its clients resume on the other and nothing is lost", async () => {
    const [doomed, survivor] = (await cluster()) as [RunningServer, RunningServer];
    const room = `k${Date.now().toString(36)}`;
    const reader = await connect(roomUrl(doomed, { room, user: "rita" }), V1);
    await reader.waitFor("welcome");
    const localSender = await connect(roomUrl(doomed, { room, user: "tom" }), V1);
    await localSender.waitFor("welcome");
    const remoteSender = await connect(roomUrl(survivor, { room, user: "sue" }), V1);
    await remoteSender.waitFor("welcome");

    // Both send steadily; the doomed instance dies once the reader has seen some.
    const total = 150;
    const sending = (async () => {
      for (let i = 0; i < total; i++) {
        remoteSender.send({ message: `sue${i}`, cid: `s${i}` });
        if (localSender.ws.readyState === localSender.ws.OPEN) localSender.send({ message: `tom${i}`, cid: `t${i}` });
        await new Promise((r) => setTimeout(r, 4));
      }
    })();
    await reader.collect(isMessage, 40, 10_000);
    await doomed.kill();
    const killedAt = Date.now();
    // Tom does not come back: the dead instance's entry for him expires
    // (presence TTL 6 s, heartbeats every 2 s) and the room is told he left.
    const tomLeft = remoteSender.waitFor((f) => f.type === "presence" && f.left === "tom", 12_000);
    await reader.waitClosed(3000);
    await localSender.waitClosed(3000);
    await sending;

    // What the reader saw before, and what a resume on the survivor brings.
    const before = messageIds(reader);
    const last = before.at(-1)!;
    const resumed = await connect(roomUrl(survivor, { room, user: "rita", since: last }), V1);
    const welcome = await resumed.waitFor("welcome");
    expect(welcome.recovered).toBe(true);
    // Sue's messages were all answered (echo or error): her echoes are what was accepted.
    const echoes = await remoteSender.collect((f) => f.type === "message" && f.user === "sue", total, 10_000);
    const accepted = new Set(echoes.map((f) => f.id as string));
    // Tom's acknowledged messages (echoed before the kill) are accepted too.
    for (const f of localSender.received)
      if (f.json?.type === "message" && f.json.cid) accepted.add(f.json.id as string);
    // A sentinel sent after resuming arrives after everything stored before it.
    remoteSender.send({ message: "end", cid: "end" });
    await resumed.waitFor((f) => f.type === "message" && f.message === "end", 5000);
    const seen = [...before, ...messageIds(resumed)];
    expect(new Set(seen).size).toBe(seen.length); // no duplicates
    expect([...seen].sort()).toEqual(seen); // in order
    const missing = [...accepted].filter((id) => !seen.includes(id));
    expect(missing).toEqual([]);
    expect(accepted.size).toBeGreaterThanOrEqual(total);

    expect((await tomLeft).users).not.toContain("tom");
    expect(Date.now() - killedAt).toBeLessThan(10_000);
  });
});

describe.skipIf(skip || !haveRedisServer)(
  `Redis cluster: Redis dies and comes back${skip ? ` (skipped: ${redisSkipReason})` : !haveRedisServer ? " (skipped: redis-server is not installed)" : ""}`,
  () => {
    it("degraded and `unavailable` while down; resubscribes by itself and resume catches up when back", async () => {
      const redis = await startPrivateRedis("redis");
      const [a, b] = (await cluster(redis.url)) as [RunningServer, RunningServer];
      const room = "fault";
      const alice = await connect(roomUrl(a, { room, user: "alice" }), V1);
      await alice.waitFor("welcome");
      const bob = await connect(roomUrl(b, { room, user: "bob" }), V1);
      await bob.waitFor("welcome");
      for (let i = 0; i < 5; i++) alice.send({ message: `before${i}` });
      await bob.collect(isMessage, 5, 5000);
      await alice.collect(isMessage, 5, 5000);

      // Down: a snapshot first, so the restarted Redis holds the history.
      await redis.save();
      await redis.stop();
      await eventually(
        async () =>
          (await Promise.all([a, b].map(health))).every((h) => h.status === 503 && h.body.status === "degraded"),
        5000,
        "both instances report 503 degraded",
      );
      bob.send({ message: "lost?", cid: "down-1" });
      expect(await bob.waitFor("error", 5000)).toMatchObject({ code: "unavailable", cid: "down-1" });
      // The server stayed up and the connections open.
      expect(bob.closeInfo).toBeNull();
      expect(alice.closeInfo).toBeNull();

      // Back: each instance reconnects and resubscribes by itself.
      await redis.start();
      await eventually(
        async () => (await Promise.all([a, b].map(health))).every((h) => h.status === 200),
        10_000,
        "both instances healthy again",
      );
      alice.send({ message: "after", cid: "up-1" });
      expect(await bob.waitFor(isMessage, 5000)).toMatchObject({ message: "after" });
      expect(await alice.waitFor(isMessage, 5000)).toMatchObject({ message: "after", cid: "up-1" });

      // A client away meanwhile resumes with since and gets exactly what it missed.
      const lastSeen = messageIds(bob).at(-1)!;
      await bob.close();
      for (let i = 0; i < 3; i++) alice.send({ message: `missed${i}` });
      await alice.collect(isMessage, 3, 5000);
      const back = await connect(roomUrl(b, { room, user: "bob", since: lastSeen }), V1);
      const welcome = await back.waitFor("welcome");
      expect(welcome.recovered).toBe(true);
      expect((welcome.history as { message: string }[]).map((m) => m.message)).toEqual([
        "missed0",
        "missed1",
        "missed2",
      ]);
      // Nothing sent while Redis was down was stored: the sender was told instead.
      const all = (await (await fetch(`${a.url}/rooms/${room}/messages?limit=500`)).json()) as {
        messages: { message: string }[];
      };
      expect(all.messages.map((m) => m.message)).not.toContain("lost?");
      expect(all.messages.map((m) => m.message)).toContain("before4");
    });
  },
);
