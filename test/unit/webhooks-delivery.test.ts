/**
 * The delivery loop against a real HTTP receiver on 127.0.0.1: signatures,
 * retries, order, head-of-line per room, give-up, stop, and (with Redis) one
 * delivery per event across instances. Short retry delays come in through
 * options; nothing here asserts on time.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/observability/logger.ts";
import { type Metrics, noopMetrics } from "../../src/observability/metrics.ts";
import { WebhookDelivery, type WebhookDeliveryOptions } from "../../src/webhooks/delivery.ts";
import { nodePost } from "../../src/webhooks/node-transport.ts";
import { MemoryOutbox, type Outbox } from "../../src/webhooks/outbox.ts";
import { RedisLease, RedisOutbox, WebhookKeys } from "../../src/webhooks/redis-outbox.ts";
import { SqliteOutbox } from "../../src/webhooks/sqlite-outbox.ts";
import { outboxSink } from "../../src/webhooks/start.ts";
import { fetchPost, type WebhookPost } from "../../src/webhooks/transport.ts";
import {
  haveRedisServer,
  PrivateRedis,
  prefixesDeletedAfterAll,
  readyClient,
  redisSkipNote,
  redisSkipReason,
  uniquePrefix,
} from "../helpers/redis.ts";
import { freePort } from "../helpers/server.ts";
import { freshRoom, makeEvent } from "./webhooks-outbox.contract.ts";
import { type Receiver, startReceiver, validSignature } from "./webhooks-receiver.ts";

const SECRET = "test-secret-0123456789";
const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Metrics that count what the loop reports. */
function countingMetrics() {
  const counts = { delivered: 0, attemptFailed: 0, failed: 0, pending: -1 };
  const metrics: Metrics = {
    ...noopMetrics,
    webhookDelivered: () => void counts.delivered++,
    webhookAttemptFailed: () => void counts.attemptFailed++,
    webhookFailed: () => void counts.failed++,
    webhookPending: (n) => {
      counts.pending = n;
    },
  };
  return { counts, metrics };
}

/** Waits until the outbox is empty (the loop removes an event right after its 2xx). Bounded. */
async function drained(outbox: Outbox): Promise<void> {
  for (let i = 0; i < 500 && (await outbox.pending()) > 0; i++) await new Promise((r) => setTimeout(r, 20));
  expect(await outbox.pending()).toBe(0);
}

async function receiver(answer?: Receiver["answer"]): Promise<Receiver> {
  const r = await startReceiver(answer);
  cleanups.push(() => r.close());
  return r;
}

/** The HTTP client of the cases below: every case runs with each. */
let post: WebhookPost = fetchPost;

function delivery(outbox: Outbox, to: Receiver, options: Partial<WebhookDeliveryOptions> = {}): WebhookDelivery {
  const d = new WebhookDelivery({
    post,
    url: to.url,
    secret: SECRET,
    outbox,
    logger: silentLogger,
    firstRetryMs: 5,
    maxRetryMs: 20,
    pollMs: 50,
    ...options,
  });
  cleanups.push(() => d.stop(0));
  return d;
}

describe.each([
  ["fetch", fetchPost],
  ["node:http", nodePost(8)],
] as const)("webhook delivery over %s", (_name, transport) => {
  beforeEach(() => {
    post = transport;
  });

  it("POSTs the event with its id and a signature the receiver can verify over the raw body", async () => {
    const to = await receiver();
    const outbox = new MemoryOutbox();
    const d = delivery(outbox, to);
    d.start();
    const sink = outboxSink(outbox, d, silentLogger);
    const message = {
      type: "message" as const,
      id: "0000000000001-000000",
      room: "lobby",
      user: "ann",
      message: 'héllo "you" 🎉',
      ts: 1,
    };
    sink({ event: "message.created", room: "lobby", data: message });
    await to.until(() => to.received.length === 1, undefined, "one delivery");
    const [got] = to.received;
    expect(validSignature(SECRET, got!.body, got!.signature)).toBe(true);
    expect(validSignature("another-secret-0123456", got!.body, got!.signature)).toBe(false);
    expect(got!.signature).toMatch(/^sha256=[0-9a-f]{64}$/);
    expect(got!.id).toBe(got!.event.id);
    expect(got!.event).toMatchObject({ event: "message.created", room: "lobby", data: message });
    expect(typeof got!.event.ts).toBe("number");
    await drained(outbox);
  });

  it("a receiver that answers 500 three times then 200 gets the event four times in all, then no more", async () => {
    let answered = 0;
    const to = await receiver(() => (++answered <= 3 ? 500 : 200));
    const outbox = new MemoryOutbox();
    const { counts, metrics } = countingMetrics();
    const d = delivery(outbox, to, { metrics });
    const room = freshRoom();
    await outbox.add(makeEvent(room, 1));
    d.start();
    await to.until(() => to.accepted().length === 1, undefined, "the 200");
    // A few more loop turns: nothing is sent again once it was accepted.
    await d.runDue();
    await d.runDue();
    expect(to.received.map((r) => r.status)).toEqual([500, 500, 500, 200]);
    expect(new Set(to.received.map((r) => r.id)).size).toBe(1);
    expect(new Set(to.received.map((r) => r.body)).size).toBe(1);
    await drained(outbox);
    expect(counts).toMatchObject({ delivered: 1, attemptFailed: 3, failed: 0 });
  });

  it("no answer within the timeout counts as a failure and is retried", async () => {
    let n = 0;
    const to = await receiver(() => (++n === 1 ? "hang" : 204));
    const outbox = new MemoryOutbox();
    const d = delivery(outbox, to, { timeoutMs: 200 });
    await outbox.add(makeEvent(freshRoom(), 1));
    d.start();
    await to.until(() => to.accepted().length === 1, undefined, "the retry's 204");
    expect(to.received.map((r) => r.status)).toEqual([0, 204]);
  });

  it("a redirect is not a success", async () => {
    let n = 0;
    const to = await receiver(() => (++n === 1 ? 307 : 200));
    const outbox = new MemoryOutbox();
    const d = delivery(outbox, to);
    await outbox.add(makeEvent(freshRoom(), 1));
    d.start();
    await to.until(() => to.accepted().length === 1);
    expect(to.received.map((r) => r.status)).toEqual([307, 200]);
  });

  it("one room's events arrive in order, each accepted once, through random failures", async () => {
    let rnd = 7;
    // A fixed pseudo-random sequence: failures land in different places each request, the same each run.
    const flaky = () => {
      rnd = (rnd * 1103515245 + 12345) % 2147483648;
      return rnd % 10 < 3 ? 503 : 200;
    };
    const to = await receiver(flaky);
    const outbox = new MemoryOutbox();
    const d = delivery(outbox, to, { pageSize: 7 });
    d.start();
    const room = freshRoom();
    const sink = outboxSink(outbox, d, silentLogger);
    for (let i = 0; i < 60; i++) sink({ event: "member.joined", room, data: { user: `u${i}` } });
    await to.until(() => to.accepted().length === 60, 30_000, "60 accepted");
    expect(to.accepted().map((r) => r.event.data.user)).toEqual(Array.from({ length: 60 }, (_, i) => `u${i}`));
    // Head-of-line: nothing after an event is sent before the event itself was accepted.
    const seen: string[] = [];
    for (const r of to.received) {
      const user = r.event.data.user as string;
      if (seen.at(-1) !== user) seen.push(user);
    }
    expect(seen).toEqual(Array.from({ length: 60 }, (_, i) => `u${i}`));
    expect(to.received.some((r) => r.status === 503)).toBe(true);
  });

  it("a failing room waits; the other rooms keep going", async () => {
    const stuck = freshRoom("stuck");
    const to = await receiver((r) => (r.event.room === stuck ? 500 : 200));
    const outbox = new MemoryOutbox();
    const d = delivery(outbox, to, { firstRetryMs: 1000, maxRetryMs: 1000 });
    await outbox.add(makeEvent(stuck, 1));
    await outbox.add(makeEvent(stuck, 2));
    const others = Array.from({ length: 10 }, () => freshRoom("ok"));
    for (const room of others) for (const n of [1, 2, 3]) await outbox.add(makeEvent(room, n));
    d.start();
    await to.until(() => to.accepted().length === 30, undefined, "30 accepted");
    expect(to.received.filter((r) => r.event.room === stuck).every((r) => r.id === `ev-${stuck}-1`)).toBe(true);
    expect((await outbox.head(stuck, 10)).events).toHaveLength(2);
  });

  it("a worker waiting for its room's next event gives its slot up when another room is due", async () => {
    const to = await receiver(() => 200);
    const outbox = new MemoryOutbox();
    // One slot, and a linger far longer than the test: only giving the slot up lets room b through.
    const d = delivery(outbox, to, { concurrency: 1, lingerMs: 600_000 });
    d.start();
    const sink = outboxSink(outbox, d, silentLogger);
    const [a, b] = [freshRoom("a"), freshRoom("b")];
    sink({ event: "member.joined", room: a, data: { user: "x" } });
    await to.until(() => to.accepted().length === 1, undefined, "room a");
    sink({ event: "member.joined", room: b, data: { user: "y" } });
    await to.until(() => to.accepted().length === 2, undefined, "room b");
    // Room a's worker, if it still waits, takes room a's next event.
    sink({ event: "member.left", room: a, data: { user: "x" } });
    await to.until(() => to.accepted().length === 3, undefined, "room a again");
    expect(to.accepted().map((r) => r.event.room)).toEqual([a, b, a]);
  });

  it("never more requests in flight than the concurrency", async () => {
    // The receiver never answers: each request stays open until the loop's timeout aborts it.
    const to = await receiver(() => "hang");
    let inFlight = 0;
    let most = 0;
    const counting: WebhookPost = async (...args) => {
      most = Math.max(most, ++inFlight);
      try {
        return await post(...args);
      } finally {
        inFlight--;
      }
    };
    const outbox = new MemoryOutbox();
    const d = delivery(outbox, to, { concurrency: 4, timeoutMs: 150, post: counting });
    for (let i = 0; i < 20; i++) await outbox.add(makeEvent(freshRoom(), 1));
    d.start();
    await to.until(() => to.received.length >= 12, undefined, "12 requests");
    expect(most).toBe(4);
  });

  it("gives an event up only once it is old and its room has failed for the whole period; the next goes on", async () => {
    const room = freshRoom();
    const to = await receiver((r) => (r.id === `ev-${room}-1` ? 500 : 200));
    const outbox = new MemoryOutbox();
    const { counts, metrics } = countingMetrics();
    const d = delivery(outbox, to, { giveUpAfterMs: 300, metrics });
    await outbox.add(makeEvent(room, 1, "member.joined", Date.now()));
    await outbox.add(makeEvent(room, 2));
    d.start();
    await to.until(() => to.accepted().length === 1, undefined, "the second event");
    expect(to.accepted()[0]!.id).toBe(`ev-${room}-2`);
    expect(counts.failed).toBe(1);
    const firstTries = to.received.filter((r) => r.id === `ev-${room}-1`);
    expect(firstTries.length).toBeGreaterThan(1);
    await drained(outbox);
  });

  it("stop aborts what is in flight and leaves the event in the outbox", async () => {
    const to = await receiver(() => "hang");
    const outbox = new MemoryOutbox();
    const d = delivery(outbox, to);
    await outbox.add(makeEvent(freshRoom(), 1));
    d.start();
    await to.until(() => to.received.length === 1);
    await d.stop(50);
    expect(await outbox.pending()).toBe(1);
  });

  it("pending events in SQLite are delivered by the next process's loop (restart)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "chat-wh-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, "chat.db");
    const down = await receiver(() => 503);
    const first = new SqliteOutbox(new Database(path));
    const d1 = delivery(first, down, { firstRetryMs: 60_000, maxRetryMs: 60_000 });
    d1.start();
    const room = freshRoom();
    const sink = outboxSink(first, d1, silentLogger);
    for (let i = 0; i < 5; i++) sink({ event: "member.joined", room, data: { user: `u${i}` } });
    await down.until(() => down.received.length === 1);
    // Stopped once the refusal is recorded (a stop before it would abort the attempt instead).
    for (let i = 0; i < 250 && (await first.head(room, 1)).retry.attempts === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await d1.stop();
    await first.close();

    const up = await receiver(() => 200);
    const second = new SqliteOutbox(new Database(path));
    cleanups.push(() => second.close());
    const d2 = delivery(second, up);
    // The first process left the room waiting a minute; a new process keeps that schedule.
    const { retry } = await second.head(room, 1);
    expect(retry.attempts).toBe(1);
    await second.failed(room, { ...retry, nextAt: 0 });
    d2.start();
    await up.until(() => up.accepted().length === 5);
    expect(up.accepted().map((r) => r.event.data.user)).toEqual(["u0", "u1", "u2", "u3", "u4"]);
    expect(up.accepted()[0]!.id).toBe(down.received[0]!.id);
  });
});

const testPrefix = prefixesDeletedAfterAll();

describe.skipIf(redisSkipReason !== null)(`webhook delivery over Redis${redisSkipNote}`, () => {
  async function instance(prefix: string, to: Receiver, options: Partial<WebhookDeliveryOptions> = {}) {
    const redis = await readyClient();
    const owner = crypto.randomUUID();
    const outbox = new RedisOutbox(redis, { prefix, owner, owned: true });
    const lease = new RedisLease(redis, new WebhookKeys(prefix), owner, 2000);
    const d = delivery(outbox, to, { lease, ...options });
    cleanups.push(() => outbox.close());
    return { outbox, delivery: d, sink: outboxSink(outbox, d, silentLogger) };
  }

  it("three instances sharing the outbox deliver each event once, each room in order", async () => {
    const prefix = testPrefix("wh");
    const to = await receiver(() => 200);
    const nodes = await Promise.all([instance(prefix, to), instance(prefix, to), instance(prefix, to)]);
    for (const n of nodes) n.delivery.start();
    const rooms = [freshRoom("a"), freshRoom("b"), freshRoom("c")];
    let i = 0;
    for (let k = 0; k < 30; k++) {
      for (const room of rooms) {
        // Events of one room come from every instance in turn.
        nodes[i++ % 3]!.sink({ event: "member.joined", room, data: { user: `u${k}` } });
      }
      await Promise.all(nodes.map((n) => n.outbox.flush()));
    }
    await to.until(() => to.accepted().length >= 90, 30_000, "90 events");
    const ids = to.received.map((r) => r.id);
    expect(new Set(ids).size).toBe(90);
    expect(ids).toHaveLength(90);
    for (const room of rooms) {
      const users = to
        .accepted()
        .filter((r) => r.event.room === room)
        .map((r) => r.event.data.user);
      expect(users).toEqual(Array.from({ length: 30 }, (_, k) => `u${k}`));
    }
  });

  it("when the delivering instance stops, another takes over the pending events", async () => {
    const prefix = testPrefix("wh");
    let up = false;
    const to = await receiver(() => (up ? 200 : 503));
    const a = await instance(prefix, to, { firstRetryMs: 20, maxRetryMs: 20 });
    const b = await instance(prefix, to, { firstRetryMs: 20, maxRetryMs: 20 });
    a.delivery.start();
    const room = freshRoom();
    for (let k = 0; k < 5; k++) a.sink({ event: "member.left", room, data: { user: `u${k}` } });
    await to.until(() => to.received.length >= 1);
    b.delivery.start();
    await a.delivery.stop();
    up = true;
    await to.until(() => to.accepted().length === 5, 20_000, "5 accepted");
    expect(to.accepted().map((r) => r.event.data.user)).toEqual(["u0", "u1", "u2", "u3", "u4"]);
  });

  it.skipIf(!haveRedisServer)("carries on after Redis was away: pending events go out once it is back", async () => {
    const dir = mkdtempSync(join(tmpdir(), "chat-wh-redis-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const redisServer = new PrivateRedis(await freePort(), dir);
    await redisServer.start();
    cleanups.push(() => redisServer.stop());
    let up = false;
    const to = await receiver(() => (up ? 200 : 503));
    const prefix = uniquePrefix("wh");
    const redis = await readyClient(redisServer.url);
    const owner = crypto.randomUUID();
    const outbox = new RedisOutbox(redis, { prefix, owner, owned: true });
    cleanups.push(() => outbox.close());
    const lease = new RedisLease(redis, new WebhookKeys(prefix), owner, 2000);
    const d = delivery(outbox, to, { lease, pollMs: 50, firstRetryMs: 50, maxRetryMs: 100 });
    const room = freshRoom();
    for (let k = 0; k < 3; k++) await outbox.add(makeEvent(room, k));
    d.start();
    await to.until(() => to.received.length >= 1, undefined, "a refused attempt");
    await redisServer.save();
    await redisServer.stop();
    // Redis is away for a while: the loop's reads fail and it keeps trying.
    await new Promise((r) => setTimeout(r, 300));
    await redisServer.start();
    up = true;
    await to.until(() => to.accepted().length === 3, 20_000, "3 accepted after Redis came back");
    expect(to.accepted().map((r) => r.id)).toEqual([0, 1, 2].map((k) => `ev-${room}-${k}`));
  });
});
