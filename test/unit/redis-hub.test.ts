import type { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { Member } from "../../src/hub/hub.ts";
import { RedisHub } from "../../src/hub/redis.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { formatMessageId } from "../../src/protocol.ts";
import { createRedisClient } from "../../src/redis/client.ts";
import { RedisLog } from "../../src/redis/log.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import type { HistoryStore } from "../../src/store/store.ts";
import type { EventSink, HubEvent } from "../../src/webhooks/events.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";
import {
  hubLogAndStore,
  prefixesDeletedAfterAll,
  readyClient,
  redisSkipNote,
  redisSkipReason,
} from "../helpers/redis.ts";
import { type HubFactoryOptions, hubContract } from "./hub.contract.ts";

const testPrefix = prefixesDeletedAfterAll();

interface Built {
  hubs: RedisHub[];
  /** Each hub's two clients: disconnecting them is an instance dying without a word. */
  clients: Redis[][];
  stores: HistoryStore[];
  logs: RedisLog[];
  prefix: string;
  cleanup(): Promise<void>;
}

/** `n` hubs sharing one Redis and one prefix, as `n` instances would. */
async function makeRedisHubs(
  n: number,
  options: HubFactoryOptions & { presenceTtlMs?: number; events?: (hub: number) => EventSink } = {},
): Promise<Built> {
  const prefix = testPrefix("hub");
  const hubs: RedisHub[] = [];
  const stores: HistoryStore[] = [];
  const logs: RedisLog[] = [];
  const clients: Redis[][] = [];
  for (let i = 0; i < n; i++) {
    const [redis, subscriber] = await Promise.all([readyClient(), readyClient()]);
    const { log, store } = hubLogAndStore(redis, prefix, options.wrapStore);
    stores.push(store);
    logs.push(log);
    clients.push([redis, subscriber]);
    hubs.push(
      new RedisHub({
        redis,
        subscriber,
        log,
        store,
        logger: silentLogger,
        presenceTtlMs: options.presenceTtlMs ?? 6000,
        presenceIntervalMs: options.presenceIntervalMs ?? 0,
        events: options.events?.(i) ?? null,
      }),
    );
  }
  return {
    hubs,
    clients,
    stores,
    logs,
    prefix,
    cleanup: async () => {
      await Promise.all(hubs.map((h) => h.close()));
    },
  };
}

// Wrapped so that without Redis the contract cases are reported as skipped, with the reason.
describe.skipIf(redisSkipReason !== null)(`RedisHub contract${redisSkipNote}`, () => {
  hubContract("one RedisHub", (options) => makeRedisHubs(1, options));
  hubContract("three RedisHubs sharing Redis", (options) => makeRedisHubs(3, options));
});

const isMessage = (f: Record<string, unknown>) => f.type === "message";

describe.skipIf(redisSkipReason !== null)(`RedisHub${redisSkipNote}`, () => {
  it("ids continue above the room's stream top even when this instance's clock is far behind", async () => {
    const built = await makeRedisHubs(2);
    try {
      const [a, b] = built.hubs as [RedisHub, RedisHub];
      const room = "clock";
      // Another instance with a clock a day ahead already wrote to the room.
      const ahead = Date.now() + 86_400_000;
      await built.stores[0]!.append({
        type: "message",
        id: formatMessageId(ahead, 7),
        room,
        user: "x",
        message: "future",
        ts: ahead,
      });
      const sa = new FakeSocket();
      const ma = new Member(sa, "alice", "v1");
      await a.join(room, ma);
      ma.release(null, null);
      const mb = new Member(new FakeSocket(), "bob", "v1");
      await b.join(room, mb);
      mb.release(null, null);
      const first = await a.publish(room, ma, { user: "alice", message: "one" });
      const second = await b.publish(room, mb, { user: "bob", message: "two" });
      expect(first.id).toBe(formatMessageId(ahead, 8));
      expect(second.id > first.id).toBe(true);
      await sa.waitFor(isMessage, 2);
      a.leave(room, ma);
      b.leave(room, mb);
    } finally {
      await built.cleanup();
    }
  });

  it("when instances race for the same id, every echo still goes to its own sender only", async () => {
    const built = await makeRedisHubs(3);
    try {
      const room = "race";
      const members = await Promise.all(
        built.hubs.map(async (hub, i) => {
          const socket = new FakeSocket();
          const member = new Member(socket, `u${i}`, "v1");
          await hub.join(room, member);
          member.release(null, null);
          return { hub, socket, member, name: `u${i}` };
        }),
      );
      const per = 30;
      await Promise.all(
        members.flatMap((m) =>
          Array.from({ length: per }, (_, k) =>
            m.hub.publish(room, m.member, { user: m.name, message: `${k}`, cid: `${m.name}-${k}` }),
          ),
        ),
      );
      for (const m of members) {
        const got = await m.socket.waitFor(isMessage, per * members.length);
        const withCid = got.filter((f) => "cid" in f);
        expect(withCid.every((f) => f.user === m.name && f.cid === `${m.name}-${f.message}`)).toBe(true);
        expect(withCid).toHaveLength(per);
      }
      for (const m of members) m.hub.leave(room, m.member);
    } finally {
      await built.cleanup();
    }
  });

  it("under contention for ids, each sender's messages keep their order (pipelined appends, then retries)", async () => {
    const built = await makeRedisHubs(3);
    try {
      for (let round = 0; round < 15; round++) {
        const room = `order-${round}`;
        const members = await Promise.all(
          built.hubs.map(async (hub, i) => {
            const member = new Member(new FakeSocket(), `u${i}`, "v1");
            await hub.join(room, member);
            member.release(null, null);
            return { hub, member };
          }),
        );
        const sent: Promise<{ id: string; user: string }>[] = [];
        for (let k = 0; k < 15; k++) {
          for (const [s, m] of members.entries())
            sent.push(m.hub.publish(room, m.member, { user: `s${s}`, message: `${k}` }));
        }
        const stored = await Promise.all(sent);
        for (const s of [0, 1, 2]) {
          const ids = stored.filter((m) => m.user === `s${s}`).map((m) => m.id);
          expect([...ids].sort(), `round ${round}, sender ${s}`).toEqual(ids);
        }
        for (const m of members) m.hub.leave(room, m.member);
      }
    } finally {
      await built.cleanup();
    }
  });

  it("after its subscriber reconnects, a hub resubscribes and delivers what it missed, once and in order", async () => {
    const built = await makeRedisHubs(2);
    try {
      const [a, b] = built.hubs as [RedisHub, RedisHub];
      const subscriberB = built.clients[1]![1]!;
      const room = "catchup";
      const sa = new FakeSocket();
      const ma = new Member(sa, "alice", "v1");
      await a.join(room, ma);
      ma.release(null, null);
      const sb = new Member(new FakeSocket(), "bob", "v1");
      const sockB = sb.socket as FakeSocket;
      await b.join(room, sb);
      sb.release(null, null);
      await a.publish(room, ma, { user: "alice", message: "live" });
      await sockB.waitFor(isMessage);

      subscriberB.disconnect(false); // B hears nothing now
      await new Promise((r) => setTimeout(r, 50));
      expect(b.healthy).toBe(false);
      for (const text of ["gap1", "gap2", "gap3"]) await a.publish(room, ma, { user: "alice", message: text });
      expect(sockB.ofType("message")).toHaveLength(1);

      await subscriberB.connect();
      await sockB.waitFor(isMessage, 4);
      await a.publish(room, ma, { user: "alice", message: "after" });
      await sockB.waitFor(isMessage, 5);
      await sa.waitFor(isMessage, 5);
      const ids = (s: FakeSocket) => s.ofType("message").map((f) => f.id);
      expect(sockB.ofType("message").map((f) => f.message)).toEqual(["live", "gap1", "gap2", "gap3", "after"]);
      expect(ids(sockB)).toEqual(ids(sa));
      a.leave(room, ma);
      b.leave(room, sb);
    } finally {
      await built.cleanup();
    }
  });

  it("subscribes to a room only while it has local members", async () => {
    const built = await makeRedisHubs(1);
    const probe = await readyClient();
    try {
      const hub = built.hubs[0]!;
      const channel = `${built.prefix}{sub}:ch`;
      const numsub = async () => ((await probe.call("PUBSUB", "NUMSUB", channel)) as [string, number])[1];
      expect(await numsub()).toBe(0);
      const m = new Member(new FakeSocket(), null, "v1");
      await hub.join("sub", m);
      expect(await numsub()).toBe(1);
      hub.leave("sub", m);
      for (let i = 0; i < 50 && (await numsub()) !== 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(await numsub()).toBe(0);
    } finally {
      probe.disconnect();
      await built.cleanup();
    }
  });

  it("a dead instance's names expire within the TTL and the room is told they left", async () => {
    const built = await makeRedisHubs(2, { presenceTtlMs: 600 });
    const [live, dying] = built.hubs as [RedisHub, RedisHub];
    try {
      const room = "ttl";
      const watch = new FakeSocket();
      const w = new Member(watch, "wes", "v1");
      await live.join(room, w);
      w.release(null, null);
      await dying.join(room, new Member(new FakeSocket(), "dora", "v1"));
      await watch.waitFor((f) => f.type === "presence" && f.joined === "dora");
      expect(await live.users(room)).toEqual(["dora", "wes"]);
      // Dies without a word: no leave, no close, no more heartbeats reach Redis.
      const t0 = Date.now();
      for (const c of built.clients[1]!) c.disconnect();
      void dying;
      const [left] = await watch.waitFor((f) => f.type === "presence" && f.left === "dora", 1, 3000);
      expect(left!.users).toEqual(["wes"]);
      expect(Date.now() - t0).toBeLessThan(2500);
      expect(await live.users(room)).toEqual(["wes"]);
      live.leave(room, w);
    } finally {
      await built.cleanup();
    }
  });

  it("a name whose entry vanished (Redis lost it, or it expired during a stall) is announced again by the next heartbeat", async () => {
    const built = await makeRedisHubs(2, { presenceTtlMs: 600 });
    const [a, b] = built.hubs as [RedisHub, RedisHub];
    try {
      const room = "back";
      const watch = new FakeSocket();
      const w = new Member(watch, "wes", "v1");
      await b.join(room, w);
      w.release(null, null);
      const s = new Member(new FakeSocket(), "stan", "v1");
      await a.join(room, s);
      await watch.waitFor((f) => f.type === "presence" && f.joined === "stan");
      await built.clients[0]![0]!.zrem(`${built.prefix}{${room}}:online`, `${a.instanceId}|stan`);
      expect(await b.users(room)).toEqual(["wes"]);
      const frames = await watch.waitFor((f) => f.type === "presence" && f.joined === "stan", 2, 3000);
      const again = frames.at(-1);
      expect(again!.users).toEqual(["stan", "wes"]);
      expect(await b.users(room)).toEqual(["stan", "wes"]);
      a.leave(room, s);
      b.leave(room, w);
    } finally {
      await built.cleanup();
    }
  });

  it("with a per-instance history (HISTORY=memory), each delivered message is copied there in order", async () => {
    const prefix = testPrefix("hub");
    const [redis, subscriber] = await Promise.all([readyClient(), readyClient()]);
    const mirror = new MemoryStore();
    const hub = new RedisHub({
      redis,
      subscriber,
      log: new RedisLog(redis, { prefix }),
      logger: silentLogger,
      mirror,
    });
    try {
      const m = new Member(new FakeSocket(), "al", "v1");
      await hub.join("mirror", m);
      m.release(null, null);
      const sent = [];
      for (const text of ["a", "b", "c"]) sent.push(await hub.publish("mirror", m, { user: "al", message: text }));
      expect(await mirror.latest("mirror", 10)).toEqual(sent);
      hub.leave("mirror", m);
    } finally {
      await hub.close();
    }
  });

  it("is unhealthy and rejects publishes at once while Redis does not answer", async () => {
    const redis = createRedisClient("redis://127.0.0.1:1", { commandTimeoutMs: 300 });
    const subscriber = createRedisClient("redis://127.0.0.1:1", { commandTimeoutMs: 300 });
    const hub = new RedisHub({ redis, subscriber, log: new RedisLog(redis), logger: silentLogger });
    try {
      expect(hub.healthy).toBe(false);
      const m = new Member(new FakeSocket(), "a", "v1");
      const t0 = Date.now();
      await expect(hub.join("r", m)).rejects.toThrow();
      expect(Date.now() - t0).toBeLessThan(1000);
    } finally {
      await hub.close();
    }
  });

  it("webhook events are decided once across instances: first and last connection of a name, each message action by its instance", async () => {
    const seen: { hub: number; e: HubEvent }[] = [];
    const built = await makeRedisHubs(3, { presenceTtlMs: 600, events: (hub) => (e) => seen.push({ hub, e }) });
    const [a, b, c] = built.hubs as [RedisHub, RedisHub, RedisHub];
    try {
      const room = "events";
      const of = (event: string) => seen.filter((s) => s.e.event === event);
      const w = new Member(new FakeSocket(), "wes", "v1");
      await a.join(room, w);
      w.release(null, null);
      // bob: two tabs on two instances, one more on the first: one joined.
      const tabs = [new Member(new FakeSocket(), "bob", "v1"), new Member(new FakeSocket(), "bob", "v1")];
      await b.join(room, tabs[0]!);
      await c.join(room, tabs[1]!);
      const third = new Member(new FakeSocket(), "bob", "v1");
      await b.join(room, third);
      expect(of("member.joined").map((s) => (s.e.data as { user: string }).user)).toEqual(["wes", "bob"]);
      // Leaving all but one: nothing; the last one: one left.
      b.leave(room, tabs[0]!);
      c.leave(room, tabs[1]!);
      await new Promise((r) => setTimeout(r, 100));
      expect(of("member.left")).toEqual([]);
      b.leave(room, third);
      for (let i = 0; i < 100 && of("member.left").length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(of("member.left").map((s) => s.e.data)).toEqual([{ user: "bob" }]);
      // Messages: created once, by the publishing instance; edited and deleted once, by the acting one.
      const m = await b.publish(room, null, { user: "api", message: "hello" });
      await c.edit(room, m.id, "hello!");
      await a.delete(room, m.id);
      expect(of("message.created").map((s) => [s.hub, s.e.data])).toEqual([[1, m]]);
      expect(of("message.edited").map((s) => [s.hub, (s.e.data as { message: string }).message])).toEqual([
        [2, "hello!"],
      ]);
      expect(of("message.deleted").map((s) => [s.hub, s.e.data])).toEqual([[0, { id: m.id }]]);
      // An instance dying: its names expire once, announced by one survivor.
      const dora = new Member(new FakeSocket(), "dora", "v1");
      await c.join(room, dora);
      for (const client of built.clients[2]!) client.disconnect();
      for (let i = 0; i < 200 && of("member.left").length < 2; i++) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 400)); // more heartbeats: still once
      expect(of("member.left").map((s) => s.e.data)).toEqual([{ user: "bob" }, { user: "dora" }]);
      a.leave(room, w);
    } finally {
      await built.cleanup();
    }
  });
});
