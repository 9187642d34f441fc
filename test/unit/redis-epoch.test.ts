/**
 * The epoch of a room's stream (src/redis/log.ts): when Redis loses a room's
 * history, a resume from before the loss says `complete: false` and the
 * members who were online are told to resume, never a silent gap. Losses are
 * made on the shared Redis for one room's keys only: DEL (what a flush or a
 * restart without persistence does to them) and DUMP/RESTORE of an older
 * state (what a failover to a replica that lagged, or a restart from an older
 * snapshot, does). The whole-server versions (a real restart of a private
 * non-persistent redis-server, FLUSHALL) are in test/integration/redis-epoch.test.ts.
 */
import type { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { Member } from "../../src/hub/hub.ts";
import { RedisHub } from "../../src/hub/redis.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { RedisLog } from "../../src/redis/log.ts";
import { RedisStore } from "../../src/store/redis.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";
import { prefixesDeletedAfterAll, readyClient, redisSkipNote, redisSkipReason } from "../helpers/redis.ts";

const testPrefix = prefixesDeletedAfterAll();

const isMessage = (f: Record<string, unknown>) => f.type === "message";

interface Instance {
  hub: RedisHub;
  store: RedisStore;
  redis: Redis;
}

async function instances(n: number, prefix: string): Promise<Instance[]> {
  const out: Instance[] = [];
  for (let i = 0; i < n; i++) {
    const [redis, subscriber] = await Promise.all([readyClient(), readyClient()]);
    const log = new RedisLog(redis, { prefix });
    const store = new RedisStore(redis, { log });
    out.push({
      hub: new RedisHub({ redis, subscriber, log, store, logger: silentLogger, presenceIntervalMs: 0 }),
      store,
      redis,
    });
  }
  return out;
}

async function member(hub: RedisHub, room: string, name: string): Promise<{ socket: FakeSocket; member: Member }> {
  const socket = new FakeSocket();
  const m = new Member(socket, name, "v1");
  await hub.join(room, m);
  m.release(null, null);
  return { socket, member: m };
}

async function closedWith(socket: FakeSocket, ms = 3000): Promise<{ code: number; reason: string }> {
  for (let i = 0; i < ms / 10 && socket.closes.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  expect(socket.closes.length, "the member was not told to resume").toBeGreaterThan(0);
  return socket.closes[0]!;
}

describe.skipIf(redisSkipReason !== null)(`Redis epoch${redisSkipNote}`, () => {
  it("history lost with its keys (flush, restart without persistence): old cursors resume incomplete, members resume", async () => {
    const prefix = testPrefix("epoch");
    const [a, b] = (await instances(2, prefix)) as [Instance, Instance];
    try {
      const room = "lost";
      const alice = await member(a.hub, room, "alice");
      const bob = await member(b.hub, room, "bob");
      const sent = [];
      for (const text of ["one", "two", "three"])
        sent.push(await a.hub.publish(room, alice.member, { user: "alice", message: text }));
      await bob.socket.waitFor(isMessage, 3);
      expect(await a.store.since(room, sent[0]!.id, 100)).toEqual({ messages: sent.slice(1), complete: true });

      // Redis loses the room: every key of it, as FLUSHALL or a restart without persistence would.
      const keys = a.store.log.keys;
      await a.redis.del(keys.stream(room), keys.meta(room), keys.changes(room));

      // The next message starts a new epoch; every member online is told to resume.
      const after = await b.hub.publish(room, bob.member, { user: "bob", message: "after" });
      expect(after.id > sent[2]!.id).toBe(true);
      expect((await closedWith(alice.socket)).code).toBe(1013);
      expect((await closedWith(bob.socket)).code).toBe(1013);
      // A cursor from before the loss: what is there, but not complete (the gap is reported).
      for (const old of sent) {
        expect(await a.store.since(room, old.id, 100)).toEqual({ messages: [after], complete: false });
      }
      // A cursor of the new epoch resumes as usual.
      const next = await member(a.hub, room, "carol");
      const more = await a.hub.publish(room, next.member, { user: "carol", message: "more" });
      expect(await b.store.since(room, after.id, 100)).toEqual({ messages: [more], complete: true });
    } finally {
      await Promise.all([a.hub.close(), b.hub.close()]);
    }
  });

  it("Redis back in time with its meta (failover to a lagging replica, older snapshot): the instance that saw more starts a new epoch", async () => {
    const prefix = testPrefix("epoch");
    const [a, b] = (await instances(2, prefix)) as [Instance, Instance];
    try {
      const room = "behind";
      const keys = a.store.log.keys;
      const alice = await member(a.hub, room, "alice");
      const bob = await member(b.hub, room, "bob");
      const kept = await a.hub.publish(room, alice.member, { user: "alice", message: "replicated" });
      await bob.socket.waitFor(isMessage, 1);
      // The replica's state: everything up to here.
      const snapshot = await Promise.all([keys.stream(room), keys.meta(room)].map((k) => a.redis.dumpBuffer(k)));
      const lost = [];
      for (const text of ["lost1", "lost2"])
        lost.push(await a.hub.publish(room, alice.member, { user: "alice", message: text }));
      await bob.socket.waitFor(isMessage, 3);
      // Failover: the replica, which never got the last two, takes over.
      for (const [i, k] of [keys.stream(room), keys.meta(room)].entries()) {
        await a.redis.restore(k, 0, snapshot[i]!, "REPLACE");
      }
      // Before anyone notices, the log looks whole from `kept` (this is the hidden gap the epoch closes).
      // The next append from an instance that saw the lost ids finds the top behind them.
      const after = await b.hub.publish(room, bob.member, { user: "bob", message: "after failover" });
      expect(after.id > lost[1]!.id).toBe(true);
      expect((await closedWith(alice.socket)).code).toBe(1013);
      expect((await closedWith(bob.socket)).code).toBe(1013);
      // Resuming from before the loss reports the gap, whether the cursor survived or was lost.
      expect((await a.store.since(room, kept.id, 100)).complete).toBe(false);
      expect((await a.store.since(room, lost[0]!.id, 100)).complete).toBe(false);
      expect(await a.store.since(room, after.id, 100)).toEqual({ messages: [], complete: true });
    } finally {
      await Promise.all([a.hub.close(), b.hub.close()]);
    }
  });

  it("an instance that catches up after a reconnect and finds the log behind what it delivered starts a new epoch", async () => {
    const prefix = testPrefix("epoch");
    const [a] = (await instances(1, prefix)) as [Instance];
    const log = new RedisLog(a.redis, { prefix });
    try {
      const room = "catchup";
      const alice = await member(a.hub, room, "alice");
      const first = await a.hub.publish(room, alice.member, { user: "alice", message: "one" });
      const before = await log.epoch(room);
      expect(before).toMatchObject({ top: first.id });
      // What a caller that saw a later id (the catch-up's `known`) does on a log behind it.
      const later = "9999999999999-000000";
      const reset = await log.epoch(room, later);
      expect(reset.epoch).not.toBe(before.epoch);
      expect(reset.base! > later).toBe(true);
      expect((await log.since(room, first.id, 10)).complete).toBe(false);
      // Not behind: nothing changes.
      expect(await log.epoch(room, first.id)).toEqual(reset);
    } finally {
      await a.hub.close();
    }
  });
});
