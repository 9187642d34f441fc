import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { MemoryOutbox, type Outbox } from "../../src/webhooks/outbox.ts";
import { LeaseLostError, RedisLease, RedisOutbox, WebhookKeys } from "../../src/webhooks/redis-outbox.ts";
import { SqliteOutbox } from "../../src/webhooks/sqlite-outbox.ts";
import { prefixesDeletedAfterAll, readyClient, redisSkipNote, redisSkipReason } from "../helpers/redis.ts";
import { freshRoom, makeEvent, outboxContract } from "./webhooks-outbox.contract.ts";

outboxContract("MemoryOutbox", async () => {
  const outbox = new MemoryOutbox();
  return { outbox, cleanup: () => outbox.close() };
});

outboxContract("SqliteOutbox (better-sqlite3, temp file)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "chat-outbox-"));
  const path = join(dir, "chat.db");
  let current: Outbox = new SqliteOutbox(new Database(path));
  return {
    get outbox() {
      return current;
    },
    async reopen() {
      await current.close();
      current = new SqliteOutbox(new Database(path));
      return current;
    },
    async cleanup() {
      await current.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

const testPrefix = prefixesDeletedAfterAll();

describe.skipIf(redisSkipReason !== null)(`RedisOutbox${redisSkipNote}`, () => {
  outboxContract("RedisOutbox (streams, real Redis)", async () => {
    const prefix = testPrefix("wh");
    const open = async () => new RedisOutbox(await readyClient(), { prefix, owned: true });
    let current: Outbox = await open();
    return {
      get outbox() {
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

  it("one instance holds the lease; another takes it once it is let go", async () => {
    const prefix = testPrefix("wh");
    const [r1, r2] = await Promise.all([readyClient(), readyClient()]);
    try {
      const keys = new WebhookKeys(prefix);
      const a = new RedisLease(r1, keys, "a", 5000);
      const b = new RedisLease(r2, keys, "b", 5000);
      expect(await a.hold()).toBe(true);
      expect(await b.hold()).toBe(false);
      expect(await a.hold()).toBe(true);
      await a.release();
      expect(await b.hold()).toBe(true);
      expect(await a.hold()).toBe(false);
    } finally {
      r1.disconnect();
      r2.disconnect();
    }
  });

  it("an instance that lost the lease cannot change delivery state (fenced)", async () => {
    const prefix = testPrefix("wh");
    const [r1, r2] = await Promise.all([readyClient(), readyClient()]);
    try {
      const keys = new WebhookKeys(prefix);
      const leaseA = new RedisLease(r1, keys, "a", 5000);
      const leaseB = new RedisLease(r2, keys, "b", 5000);
      const a = new RedisOutbox(r1, { prefix, owner: "a" });
      const room = freshRoom();
      await a.add(makeEvent(room, 1));
      expect(await leaseA.hold()).toBe(true);
      const { events } = await a.head(room, 1);
      await leaseA.release();
      expect(await leaseB.hold()).toBe(true);
      await expect(a.remove(room, events[0]!.key, { attempts: 0, failingSince: null, nextAt: 0 })).rejects.toThrow(
        LeaseLostError,
      );
      await expect(a.failed(room, { attempts: 1, failingSince: 1, nextAt: 2 })).rejects.toThrow(LeaseLostError);
      expect((await a.head(room, 1)).events).toHaveLength(1);
    } finally {
      r1.disconnect();
      r2.disconnect();
    }
  });
});

describe("MemoryOutbox", () => {
  it("past maxPending drops the oldest event and says so", async () => {
    const dropped: string[] = [];
    const outbox = new MemoryOutbox(3, (e) => dropped.push(e.id));
    const a = freshRoom("a");
    const b = freshRoom("b");
    await outbox.add(makeEvent(a, 1));
    await outbox.add(makeEvent(b, 1));
    await outbox.add(makeEvent(a, 2));
    await outbox.add(makeEvent(b, 2));
    expect(dropped).toEqual([`ev-${a}-1`]);
    expect(await outbox.pending()).toBe(3);
    expect((await outbox.head(a, 10)).events.map((e) => e.id)).toEqual([`ev-${a}-2`]);
  });
});
