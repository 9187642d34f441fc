import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { formatMessageId } from "../../src/protocol.ts";
import { createRedisClient } from "../../src/redis/client.ts";
import { decode, encodeMessage } from "../../src/redis/codec.ts";
import { RoomKeys } from "../../src/redis/keys.ts";
import { fromStreamId, HistoryConflictError, RedisLog, toStreamId } from "../../src/redis/log.ts";
import { RedisStore } from "../../src/store/redis.ts";
import type { HistoryStore } from "../../src/store/store.ts";
import { prefixesDeletedAfterAll, REDIS_URL, readyClient, redisSkipNote, redisSkipReason } from "../helpers/redis.ts";
import { storeContract } from "./store.contract.ts";

const testPrefix = prefixesDeletedAfterAll();

// Wrapped so that without Redis the contract cases are reported as skipped, with the reason.
describe.skipIf(redisSkipReason !== null)(`RedisStore contract${redisSkipNote}`, () => {
  storeContract("RedisStore (streams, real Redis)", async (options = {}) => {
    const prefix = testPrefix("store");
    // The client fails fast instead of queueing, so wait for it to connect.
    const open = async () => {
      const client = await readyClient();
      return new RedisStore(client, {
        limit: options.limit,
        prefix,
        owned: true,
        ttlMs: options.ttlMs,
        ...(options.now ? { now: options.now } : {}),
      });
    };
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
});

describe.skipIf(redisSkipReason !== null)(
  `RedisStore${redisSkipReason ? ` (skipped: ${redisSkipReason})` : ""}`,
  () => {
    const msg = (room: string, ms: number, seq: number, text = "x") => ({
      type: "message" as const,
      id: formatMessageId(ms, seq),
      room,
      user: "u",
      message: text,
      ts: ms,
    });

    it("stream entry ids are the message ids without padding, both ways", () => {
      expect(toStreamId("1700000000000-000042")).toBe("1700000000000-42");
      expect(fromStreamId("1700000000000-42")).toBe("1700000000000-000042");
      expect(() => toStreamId("nope")).toThrow();
    });

    it("an append below the top is refused as a conflict (nothing stored); a repeat is ignored", async () => {
      const prefix = testPrefix("store");
      const redis = await readyClient();
      const store = new RedisStore(redis, { prefix, owned: true });
      try {
        await store.append(msg("r", 2000, 5, "top"));
        await store.append(msg("r", 2000, 5, "top")); // same id: a retry, ignored
        const below = store.append(msg("r", 2000, 4, "late"));
        await expect(below).rejects.toBeInstanceOf(HistoryConflictError);
        await expect(below).rejects.toMatchObject({ top: formatMessageId(2000, 5) });
        expect((await store.latest("r", 10)).map((m) => m.message)).toEqual(["top"]);
        const raw: [string, string[]][] = await redis.xrange(new RoomKeys(prefix).stream("r"), "-", "+");
        expect(raw.map(([id]) => id)).toEqual(["2000-5"]);
      } finally {
        await store.close();
      }
    });

    it("an append and the PUBLISH of its channel message are one step; a refused one publishes nothing", async () => {
      const prefix = testPrefix("store");
      const keys = new RoomKeys(prefix);
      const sub = new Redis(REDIS_URL);
      const got: string[] = [];
      sub.on("message", (_c: string, p: string) => got.push(p));
      await sub.subscribe(keys.channel("r"));
      const client = await readyClient();
      const log = new RedisLog(client, { prefix });
      const channel = keys.channel("r");
      const epoch = "abcd1234";
      const send = (m: ReturnType<typeof msg>) =>
        log.append(
          m,
          { mode: "create", epoch },
          { command: "PUBLISH", channel, payload: encodeMessage(epoch, m, JSON.stringify(m)) },
        );
      try {
        const first = msg("r", 3000, 0, "line1\nline2");
        await send(first);
        await expect(send(msg("r", 2999, 0))).rejects.toBeInstanceOf(HistoryConflictError);
        for (let i = 0; i < 50 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
        await new Promise((r) => setTimeout(r, 50));
        expect(got).toHaveLength(1);
        expect(decode(got[0]!)).toEqual({ kind: "message", epoch, id: first.id, text: JSON.stringify(first) });
      } finally {
        await client.quit();
        sub.disconnect();
      }
    });

    it("pipelined appends land in order or not at all: after a refused one, those behind it are refused", async () => {
      const prefix = testPrefix("store");
      const clients = await Promise.all([readyClient(), readyClient()]);
      const [a, b] = clients.map((c) => new RedisStore(c, { prefix, owned: true })) as [RedisStore, RedisStore];
      try {
        // Another instance took 4000-0 first.
        await a.append(msg("r", 4000, 0, "theirs"));
        // This one sends two without waiting: the first collides, so the second
        // (whose id alone would fit) must not land ahead of its retry.
        const first = b.append(msg("r", 4000, 0, "mine-1"));
        const second = b.append(msg("r", 4000, 1, "mine-2"));
        await expect(first).rejects.toBeInstanceOf(HistoryConflictError);
        await expect(second).rejects.toBeInstanceOf(HistoryConflictError);
        // The retries, in order, both land.
        await Promise.all([b.append(msg("r", 4001, 0, "mine-1")), b.append(msg("r", 4001, 1, "mine-2"))]);
        expect((await a.latest("r", 10)).map((m) => m.message)).toEqual(["theirs", "mine-1", "mine-2"]);
      } finally {
        await a.close();
        await b.close();
      }
    });

    it("reads fail fast, not queued, while Redis does not answer", async () => {
      const client = createRedisClient("redis://127.0.0.1:1", { commandTimeoutMs: 500 });
      const store = new RedisStore(client, { owned: true });
      const t0 = Date.now();
      await expect(store.latest("r", 10)).rejects.toThrow();
      await expect(store.append(msg("r", 1, 0))).rejects.toThrow();
      expect(Date.now() - t0).toBeLessThan(1000);
      await store.close();
    });
  },
);
