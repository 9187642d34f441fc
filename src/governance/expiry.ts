/**
 * What wakes a connection up when its token expires (docs/protocol.md): a timer on
 * Node, Bun and Deno; the object's alarm in a Durable Object, where a pending
 * `setTimeout` keeps the object from hibernating (Cloudflare's lifecycle:
 * hibernation needs no scheduled timer callbacks), so a room with signed-in
 * users would be billed as awake for as long as their tokens last.
 */

/** Schedules the expiry of connections. */
export interface ExpiryClock {
  /** Calls `fn` at `at` (ms since the epoch) or soon after; the result cancels it. */
  schedule(at: number, fn: () => void): () => void;
}

/** Longest single wait of a timer (setTimeout's limit is 2^31-1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** One timer per scheduled expiry, unref'd (an open connection must not keep a draining process up). */
export const timerClock: ExpiryClock = {
  schedule(at, fn) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      const wait = at - Date.now();
      if (wait <= 0) {
        fn();
        return;
      }
      // Past the limit the timer would fire at once: wait in steps.
      timer = setTimeout(arm, Math.min(wait, MAX_TIMER_MS));
      (timer as { unref?: () => void }).unref?.();
    };
    arm();
    return () => clearTimeout(timer);
  },
};

/**
 * A Durable Object's alarm as the clock. Expiries wait in memory; the object's
 * one alarm is asked for the soonest (`requestAlarm`: the object sets it
 * unless one is already set sooner, since the webhooks share it), and the
 * object's `alarm()` calls {@link fire}. After hibernation the alarm wakes
 * the object, whose rebuild schedules every connection's expiry again before
 * `alarm()` runs.
 */
export class AlarmClock implements ExpiryClock {
  readonly #pending = new Map<number, { at: number; fn: () => void }>();
  #nextId = 0;

  /** @param requestAlarm sets the object's alarm to `at` unless one is set sooner */
  constructor(readonly requestAlarm: (at: number) => void) {}

  schedule(at: number, fn: () => void): () => void {
    const id = ++this.#nextId;
    this.#pending.set(id, { at, fn });
    this.requestAlarm(at);
    return () => this.#pending.delete(id);
  }

  /** Runs every expiry due at `now`; returns the soonest still pending (for the next alarm), or null. */
  fire(now: number): number | null {
    let soonest: number | null = null;
    for (const [id, e] of this.#pending) {
      if (e.at <= now) {
        this.#pending.delete(id);
        e.fn();
      } else if (soonest === null || e.at < soonest) {
        soonest = e.at;
      }
    }
    return soonest;
  }

  /** Expiries waiting. */
  get size(): number {
    return this.#pending.size;
  }
}
