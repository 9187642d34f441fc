/**
 * The webhook outbox contract: what every {@link Outbox} does (memory,
 * SQLite in a file, Redis streams, Durable Object SQL storage). Imports only
 * vitest and the project's modules, so it can run inside workerd too.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { HubEventName, WebhookEvent } from "../../src/webhooks/events.ts";
import { FRESH, type Outbox } from "../../src/webhooks/outbox.ts";

/** An outbox under test, and how to reopen it over the same data. */
export interface OutboxUnderTest {
  outbox: Outbox;
  /** Closes it and opens a new one over the same data; absent where nothing outlives the process. */
  reopen?(): Promise<Outbox>;
  cleanup(): Promise<void>;
}

let seq = 0;
/** A room name no other case uses (outboxes in Redis share a prefix per file). */
export const freshRoom = (tag = "r"): string => `${tag}-${++seq}-${Math.random().toString(36).slice(2, 8)}`;

/** An event of `room` with a unique id. */
export function makeEvent(
  room: string,
  n: number,
  event: HubEventName = "member.joined",
  ts = Date.now(),
): WebhookEvent {
  return { id: `ev-${room}-${n}`, event, room, ts, data: { user: `u${n}` } };
}

/** Runs the contract against outboxes from `make` (one fresh outbox per case). */
export function outboxContract(name: string, make: () => Promise<OutboxUnderTest>): void {
  describe(`Outbox contract: ${name}`, () => {
    let sut: OutboxUnderTest;
    beforeEach(async () => {
      sut = await make();
    });
    afterEach(async () => {
      await sut.cleanup();
    });

    it("keeps a room's events in the order they were added, with the body as POSTed", async () => {
      const room = freshRoom();
      const events = [1, 2, 3, 4, 5].map((n) => makeEvent(room, n, "member.joined", 1000 + n));
      await Promise.all(events.map((e) => sut.outbox.add(e)));
      const { events: head, retry } = await sut.outbox.head(room, 10);
      expect(head.map((e) => e.id)).toEqual(events.map((e) => e.id));
      expect(head.map((e) => e.ts)).toEqual([1001, 1002, 1003, 1004, 1005]);
      expect(JSON.parse(head[0]!.body)).toEqual({
        id: events[0]!.id,
        event: "member.joined",
        room,
        ts: 1001,
        data: { user: "u1" },
      });
      expect(retry).toEqual(FRESH);
      expect((await sut.outbox.head(room, 2)).events.map((e) => e.id)).toEqual([events[0]!.id, events[1]!.id]);
    });

    it("keeps any text in the body (quotes, newlines, NUL, emoji) byte for byte", async () => {
      const room = freshRoom();
      const message = 'a "quoted"\nline\u0000with NUL, émoji 🎉 and \\ backslash';
      const e: WebhookEvent = {
        id: "ev-text",
        event: "message.created",
        room,
        ts: 5,
        data: { type: "message", id: "0000000000005-000000", room, user: "ann", message, ts: 5 },
      };
      await sut.outbox.add(e);
      const [head] = (await sut.outbox.head(room, 1)).events;
      expect((JSON.parse(head!.body) as { data: { message: string } }).data.message).toBe(message);
    });

    it("lists due rooms, and only rooms with events", async () => {
      const a = freshRoom("a");
      const b = freshRoom("b");
      expect(await sut.outbox.due(Date.now(), 100)).not.toContain(a);
      await sut.outbox.add(makeEvent(a, 1));
      await sut.outbox.add(makeEvent(b, 1));
      const due = await sut.outbox.due(Date.now(), 100);
      expect(due).toContain(a);
      expect(due).toContain(b);
      expect(await sut.outbox.due(Date.now(), 1)).toHaveLength(1);
      expect(await sut.outbox.nextDue()).toBe(0);
    });

    it("removing the head exposes the next; removing the last forgets the room", async () => {
      const room = freshRoom();
      await sut.outbox.add(makeEvent(room, 1));
      await sut.outbox.add(makeEvent(room, 2));
      expect(await sut.outbox.pending()).toBe(2);
      let { events } = await sut.outbox.head(room, 10);
      await sut.outbox.remove(room, events[0]!.key, FRESH);
      ({ events } = await sut.outbox.head(room, 10));
      expect(events.map((e) => e.id)).toEqual([`ev-${room}-2`]);
      expect(await sut.outbox.pending()).toBe(1);
      await sut.outbox.remove(room, events[0]!.key, FRESH);
      expect((await sut.outbox.head(room, 10)).events).toEqual([]);
      expect(await sut.outbox.due(Date.now(), 100)).not.toContain(room);
      expect(await sut.outbox.nextDue()).toBeNull();
      expect(await sut.outbox.pending()).toBe(0);
    });

    it("head after a key skips the events up to it", async () => {
      const room = freshRoom();
      for (const n of [1, 2, 3, 4]) await sut.outbox.add(makeEvent(room, n));
      const { events } = await sut.outbox.head(room, 10);
      expect((await sut.outbox.head(room, 10, events[1]!.key)).events.map((e) => e.id)).toEqual([
        `ev-${room}-3`,
        `ev-${room}-4`,
      ]);
      expect((await sut.outbox.head(room, 1, events[1]!.key)).events.map((e) => e.id)).toEqual([`ev-${room}-3`]);
      expect((await sut.outbox.head(room, 10, events[3]!.key)).events).toEqual([]);
    });

    it("remove takes every event up to and including the key, in one step", async () => {
      const room = freshRoom();
      for (const n of [1, 2, 3, 4]) await sut.outbox.add(makeEvent(room, n));
      const { events } = await sut.outbox.head(room, 10);
      await sut.outbox.remove(room, events[2]!.key, FRESH);
      expect((await sut.outbox.head(room, 10)).events.map((e) => e.id)).toEqual([`ev-${room}-4`]);
      expect(await sut.outbox.pending()).toBe(1);
      // A key already removed changes nothing.
      await sut.outbox.remove(room, events[1]!.key, FRESH);
      expect(await sut.outbox.pending()).toBe(1);
      await sut.outbox.remove(room, events[3]!.key, FRESH);
      expect(await sut.outbox.pending()).toBe(0);
      expect(await sut.outbox.due(Date.now(), 100)).not.toContain(room);
    });

    it("a failed room waits until its retry time; other rooms stay due", async () => {
      const slow = freshRoom("slow");
      const fine = freshRoom("fine");
      await sut.outbox.add(makeEvent(slow, 1));
      await sut.outbox.add(makeEvent(fine, 1));
      const now = Date.now();
      const retry = { attempts: 1, failingSince: now, nextAt: now + 60_000 };
      await sut.outbox.failed(slow, retry);
      const due = await sut.outbox.due(now, 100);
      expect(due).toContain(fine);
      expect(due).not.toContain(slow);
      expect(await sut.outbox.due(now + 60_000, 100)).toContain(slow);
      expect((await sut.outbox.head(slow, 1)).retry).toEqual(retry);
      // A new event behind a failing head does not make the room due sooner.
      await sut.outbox.add(makeEvent(slow, 2));
      expect(await sut.outbox.due(now, 100)).not.toContain(slow);
      const { events } = await sut.outbox.head(fine, 1);
      await sut.outbox.remove(fine, events[0]!.key, FRESH);
      expect(await sut.outbox.nextDue()).toBe(now + 60_000);
    });

    it("a delivery resets the room's retry state; a give-up keeps it for the next event", async () => {
      const room = freshRoom();
      for (const n of [1, 2, 3]) await sut.outbox.add(makeEvent(room, n));
      const now = Date.now();
      await sut.outbox.failed(room, { attempts: 3, failingSince: now - 5000, nextAt: now + 1000 });
      let { events } = await sut.outbox.head(room, 1);
      const gaveUp = { attempts: 4, failingSince: now - 5000, nextAt: 0 };
      await sut.outbox.remove(room, events[0]!.key, gaveUp);
      let state = await sut.outbox.head(room, 1);
      expect(state.retry).toEqual(gaveUp);
      expect(await sut.outbox.due(now, 100)).toContain(room);
      ({ events } = state);
      await sut.outbox.remove(room, events[0]!.key, FRESH);
      state = await sut.outbox.head(room, 1);
      expect(state.retry).toEqual(FRESH);
      expect(state.events.map((e) => e.id)).toEqual([`ev-${room}-3`]);
    });

    it("rooms are independent queues", async () => {
      const a = freshRoom("a");
      const b = freshRoom("b");
      await sut.outbox.add(makeEvent(a, 1));
      await sut.outbox.add(makeEvent(b, 1));
      await sut.outbox.add(makeEvent(a, 2));
      expect((await sut.outbox.head(a, 10)).events.map((e) => e.id)).toEqual([`ev-${a}-1`, `ev-${a}-2`]);
      expect((await sut.outbox.head(b, 10)).events.map((e) => e.id)).toEqual([`ev-${b}-1`]);
    });

    it("flush resolves once every add is stored", async () => {
      const room = freshRoom();
      const adds = [1, 2, 3].map((n) => sut.outbox.add(makeEvent(room, n)));
      await sut.outbox.flush();
      expect((await sut.outbox.head(room, 10)).events).toHaveLength(3);
      await Promise.all(adds);
    });

    it("pending events and retry state survive a reopen (where the outbox is durable)", async (ctx) => {
      if (!sut.reopen) ctx.skip();
      const room = freshRoom();
      for (const n of [1, 2]) await sut.outbox.add(makeEvent(room, n));
      const retry = { attempts: 2, failingSince: 1234, nextAt: Date.now() + 5000 };
      await sut.outbox.failed(room, retry);
      const reopened = await sut.reopen!();
      const state = await reopened.head(room, 10);
      expect(state.events.map((e) => e.id)).toEqual([`ev-${room}-1`, `ev-${room}-2`]);
      expect(state.retry).toEqual(retry);
      await reopened.add(makeEvent(room, 3));
      expect((await reopened.head(room, 10)).events.map((e) => e.id)).toEqual([
        `ev-${room}-1`,
        `ev-${room}-2`,
        `ev-${room}-3`,
      ]);
    });
  });
}
