import type { WebhookEvent } from "./events.ts";

/** One undelivered event as the delivery loop reads it. */
export interface PendingEvent {
  /** Its place in the outbox (the implementation's own, opaque to the loop). */
  key: string;
  /** The event id (X-Chat-Event-Id). */
  id: string;
  /** When the event happened (ms): an event is given up only once it is old enough. */
  ts: number;
  /** The JSON body as POSTed: stored once, so every retry signs the same bytes. */
  body: string;
}

/**
 * A room's delivery state: its head event is retried until it is delivered,
 * and the room's later events wait behind it (per-room order).
 */
export interface RoomRetry {
  /** Failed attempts since the room's last successful delivery. */
  attempts: number;
  /** When the first of those failed (ms), or null while nothing is failing. */
  failingSince: number | null;
  /** Earliest time of the next attempt (ms); 0 when due now. */
  nextAt: number;
}

/** The state of a room with nothing failing. */
export const FRESH: Readonly<RoomRetry> = Object.freeze({ attempts: 0, failingSince: null, nextAt: 0 });

/**
 * Where undelivered webhook events wait, durable where the history is: a
 * table in the SQLite file (or a Durable Object's SQL storage), Redis streams
 * with HUB=redis, process memory with HISTORY=memory. Every implementation
 * passes the same contract (test/unit/webhooks-outbox.contract.ts).
 *
 * Only the delivery loop that holds the outbox (one per process, one per
 * Durable Object, or the lease holder with Redis) calls anything but `add`;
 * `add` may be called from anywhere at any time.
 */
export interface Outbox {
  /** Stores one event at the end of its room's queue; resolves once it is stored. */
  add(event: WebhookEvent): Promise<void>;
  /**
   * Rooms whose next attempt is due at `now` (events waiting and `nextAt <=
   * now`), soonest first, at most `limit`.
   */
  due(now: number, limit: number): Promise<string[]>;
  /** The earliest `nextAt` of any room with events, or null when nothing waits. */
  nextDue(): Promise<number | null>;
  /**
   * Up to `limit` of the room's events, oldest first, and its retry state;
   * with `after`, only events after that key (delivered ones the loop has
   * not removed yet are skipped).
   */
  head(room: string, limit: number, after?: string): Promise<{ events: PendingEvent[]; retry: RoomRetry }>;
  /**
   * Removes the room's events up to and including `key` (delivered, or the
   * last one given up), in one write. `retry` is the room's state from now
   * on: {@link FRESH} after a delivery.
   */
  remove(room: string, key: string, retry: RoomRetry): Promise<void>;
  /** Records a failed attempt: the room's head waits until `retry.nextAt`. */
  failed(room: string, retry: RoomRetry): Promise<void>;
  /** Events waiting, in every room. */
  pending(): Promise<number>;
  /** Resolves once every accepted `add` is stored. */
  flush(): Promise<void>;
  /** Flushes and releases what the outbox owns. */
  close(): Promise<void>;
}

/** The JSON body of an event, as every outbox stores it. */
export function eventBody(event: WebhookEvent): string {
  return JSON.stringify({ id: event.id, event: event.event, room: event.room, ts: event.ts, data: event.data });
}

interface MemoryRoomQueue {
  events: PendingEvent[];
  /** Index of the head in `events` (removal from the front without shifting). */
  start: number;
  retry: RoomRetry;
}

/**
 * The outbox for HISTORY=memory: as durable as the history (gone with the
 * process). Bounded: past `maxPending` events the oldest are dropped and
 * reported through `onDrop`, so a receiver that is down for long cannot
 * take the process's memory.
 */
export class MemoryOutbox implements Outbox {
  readonly #rooms = new Map<string, MemoryRoomQueue>();
  #pending = 0;
  #seq = 0;

  /**
   * @param maxPending events kept before the oldest are dropped @default 100000
   * @param onDrop told of each event dropped for room @default nothing
   */
  constructor(
    readonly maxPending = 100_000,
    readonly onDrop: (event: PendingEvent, room: string) => void = () => {},
  ) {}

  async add(event: WebhookEvent): Promise<void> {
    let q = this.#rooms.get(event.room);
    if (!q) {
      q = { events: [], start: 0, retry: { ...FRESH } };
      this.#rooms.set(event.room, q);
    }
    q.events.push({ key: String(++this.#seq), id: event.id, ts: event.ts, body: eventBody(event) });
    this.#pending++;
    if (this.#pending > this.maxPending) this.#dropOldest();
  }

  /** Drops the oldest event of all (O(rooms), only ever on overflow). */
  #dropOldest(): void {
    let oldest: [string, MemoryRoomQueue] | null = null;
    for (const entry of this.#rooms) {
      const head = entry[1].events[entry[1].start];
      const best = oldest?.[1].events[oldest[1].start];
      if (head && (!best || Number(head.key) < Number(best.key))) oldest = entry;
    }
    if (!oldest) return;
    const [room, q] = oldest;
    const head = q.events[q.start]!;
    this.#shift(room, q, q.retry);
    this.onDrop(head, room);
  }

  async due(now: number, limit: number): Promise<string[]> {
    const due: [string, number][] = [];
    for (const [room, q] of this.#rooms) if (q.retry.nextAt <= now) due.push([room, q.retry.nextAt]);
    due.sort((a, b) => a[1] - b[1]);
    return due.slice(0, limit).map(([room]) => room);
  }

  async nextDue(): Promise<number | null> {
    let next: number | null = null;
    for (const q of this.#rooms.values()) if (next === null || q.retry.nextAt < next) next = q.retry.nextAt;
    return next;
  }

  async head(room: string, limit: number, after?: string): Promise<{ events: PendingEvent[]; retry: RoomRetry }> {
    const q = this.#rooms.get(room);
    if (!q) return { events: [], retry: { ...FRESH } };
    let from = q.start;
    if (after !== undefined) {
      // Keys grow along the queue: skip to the first one above `after` (binary search).
      const key = Number(after);
      let hi = q.events.length;
      while (from < hi) {
        const mid = (from + hi) >> 1;
        if (Number(q.events[mid]!.key) <= key) from = mid + 1;
        else hi = mid;
      }
    }
    return { events: q.events.slice(from, from + limit), retry: { ...q.retry } };
  }

  async remove(room: string, key: string, retry: RoomRetry): Promise<void> {
    const q = this.#rooms.get(room);
    if (!q) return;
    const through = Number(key);
    // Bounded: at most the room's queue.
    while (this.#rooms.get(room) === q) {
      const head = q.events[q.start];
      if (!head || Number(head.key) > through) break;
      this.#shift(room, q, retry);
    }
  }

  #shift(room: string, q: MemoryRoomQueue, retry: RoomRetry): void {
    q.events[q.start] = undefined as unknown as PendingEvent;
    q.start++;
    this.#pending--;
    q.retry = { ...retry };
    if (q.start === q.events.length) {
      this.#rooms.delete(room);
    } else if (q.start > 1024 && q.start * 2 > q.events.length) {
      // Compact now and then, so a long queue's delivered half is freed.
      q.events = q.events.slice(q.start);
      q.start = 0;
    }
  }

  async failed(room: string, retry: RoomRetry): Promise<void> {
    const q = this.#rooms.get(room);
    if (q) q.retry = { ...retry };
  }

  async pending(): Promise<number> {
    return this.#pending;
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}
