/**
 * The hub and store contracts on a local Redis Cluster (3 masters, 3
 * replicas, started from redis-server by test/helpers/redis-cluster.ts):
 * every key of a room in one slot, sharded pub/sub through ioredis' Cluster.
 * Skipped, with the reason, only where redis-server or redis-cli is missing.
 */
import type { Cluster } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Member } from "../../src/hub/hub.ts";
import { RedisHub } from "../../src/hub/redis.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { createRedisCluster, waitReady } from "../../src/redis/client.ts";
import { RedisLog } from "../../src/redis/log.ts";
import { RedisStore } from "../../src/store/redis.ts";
import type { HistoryStore } from "../../src/store/store.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";
import { hubLogAndStore, uniquePrefix } from "../helpers/redis.ts";
import { haveClusterTools, LocalCluster } from "../helpers/redis-cluster.ts";
import { type HubFactoryOptions, hubContract } from "./hub.contract.ts";
import { storeContract } from "./store.contract.ts";

let cluster: LocalCluster | null = null;
const clients: Cluster[] = [];

async function client(): Promise<Cluster> {
  const c = createRedisCluster(cluster!.url);
  c.on("error", () => {});
  clients.push(c);
  if (!(await waitReady(c, 10_000))) throw new Error("cluster client did not connect");
  return c;
}

async function makeHubs(n: number, options: HubFactoryOptions = {}) {
  const prefix = uniquePrefix("cl");
  const hubs: RedisHub[] = [];
  for (let i = 0; i < n; i++) {
    const c = await client();
    const { log, store } = hubLogAndStore(c, prefix, options.wrapStore);
    hubs.push(
      new RedisHub({
        redis: c,
        subscriber: c,
        log,
        store,
        logger: silentLogger,
        sharded: true,
        presenceIntervalMs: options.presenceIntervalMs ?? 0,
      }),
    );
  }
  return { hubs, cleanup: async () => void (await Promise.all(hubs.map((h) => h.close()))) };
}

const reason = haveClusterTools ? null : "redis-server or redis-cli is not installed";

describe.skipIf(reason !== null)(
  `Redis Cluster (3 masters, 3 replicas)${reason ? ` (skipped: ${reason})` : ""}`,
  () => {
    beforeAll(async () => {
      cluster = await LocalCluster.start();
    }, 60_000);

    afterAll(() => {
      for (const c of clients) c.disconnect();
      cluster?.stop();
    });

    hubContract("one RedisHub on a cluster", (options) => makeHubs(1, options));
    hubContract("three RedisHubs on a cluster", (options) => makeHubs(3, options));

    storeContract("RedisStore on a cluster", async (options = {}) => {
      const prefix = uniquePrefix("cls");
      const open = async () =>
        new RedisStore(await client(), {
          prefix,
          limit: options.limit,
          ttlMs: options.ttlMs,
          ...(options.now ? { now: options.now } : {}),
        });
      let current: HistoryStore = await open();
      return {
        get store() {
          return current;
        },
        async reopen() {
          await current.close();
          current = await open();
          return current;
        },
        cleanup: () => current.close(),
      };
    });

    it("a room's keys and channel share one slot, on one master", async () => {
      const log = new RedisLog(await client(), { prefix: "chat:" });
      const k = log.keys;
      const room = "slot-check";
      const masters = await Promise.all(
        [k.stream(room), k.meta(room), k.changes(room), k.bans(room), k.presence(room), k.channel(room)].map((key) =>
          cluster!.masterOf(key),
        ),
      );
      expect(new Set(masters).size).toBe(1);
    });

    it("rooms spread over the masters still reach every instance (sharded subscriptions on each master)", async () => {
      const { hubs, cleanup } = await makeHubs(2);
      try {
        const rooms = Array.from({ length: 12 }, (_, i) => `spread-${i}`);
        const shards = new Set(await Promise.all(rooms.map((r) => cluster!.masterOf(`chat:{${r}}:ch`))));
        expect(shards.size).toBeGreaterThan(1);
        const sockets: FakeSocket[] = [];
        for (const room of rooms) {
          const socket = new FakeSocket();
          const m = new Member(socket, null, "seed");
          await hubs[1]!.join(room, m);
          m.release(null, null);
          sockets.push(socket);
          const sender = new Member(new FakeSocket(), "s", "v1");
          await hubs[0]!.join(room, sender);
          sender.release(null, null);
          await hubs[0]!.publish(room, sender, { user: "s", message: room });
        }
        for (const [i, socket] of sockets.entries()) {
          const [got] = await socket.waitFor((f) => f.type === "message");
          expect(got!.message).toBe(rooms[i]);
        }
      } finally {
        await cleanup();
      }
    });
  },
);
