import type { Logger } from "../observability/logger.ts";
import { type Metrics, noopMetrics } from "../observability/metrics.ts";
import { FRESH, type Outbox, type PendingEvent } from "./outbox.ts";
import { WebhookSigner } from "./signing.ts";
import { fetchPost, type WebhookPost } from "./transport.ts";

/**
 * Who may deliver, when several instances share one outbox (HUB=redis): only
 * the holder of the lease, so each event is POSTed once per attempt, not once
 * per instance, and a room's events go out in order from one place.
 */
export interface Lease {
  /** True while this instance holds the lease (acquiring or renewing it as needed). */
  hold(): Promise<boolean>;
  /** Gives it up, so another instance takes over at once instead of after the expiry. */
  release(): Promise<void>;
}

/** Options of {@link WebhookDelivery}. */
export interface WebhookDeliveryOptions {
  /** WEBHOOK_URL. */
  url: string;
  /** WEBHOOK_SECRET: the HMAC key of X-Chat-Signature. */
  secret: string;
  outbox: Outbox;
  logger: Logger;
  /** @default noopMetrics */
  metrics?: Metrics;
  /** Longest wait for the receiver's answer (docs/api.md, webhooks: 5 s). @default 5000 */
  timeoutMs?: number;
  /** Rooms delivered at the same time (each in order, one request at a time). @default 32 */
  concurrency?: number;
  /** Events read from the outbox at a time per room: what bounds the loop's memory. @default 100 */
  pageSize?: number;
  /** Delay before the first retry (then doubling, with jitter: the first within 2 s). @default 1000 */
  firstRetryMs?: number;
  /** Longest delay between two attempts. @default 600000 (10 min) */
  maxRetryMs?: number;
  /**
   * An event is given up (dropped, logged, counted failed) only when it is at
   * least this old and its room's deliveries have failed for this long.
   * @default 86400000 (24 h)
   */
  giveUpAfterMs?: number;
  /**
   * Longest sleep of the loop: how soon it sees events another instance added
   * or a lease another instance let go. Events added here wake it at once.
   * @default 1000
   */
  pollMs?: number;
  /** Several instances share the outbox: deliver only while holding this. @default null (always) */
  lease?: Lease | null;
  /**
   * How long a room's worker that caught up waits for the room's next event
   * before it gives its slot back: a busy room keeps one worker (no start,
   * no outbox scan per event) and its delivered events leave the outbox in
   * batches. 0 ends workers at once (the Durable Object's alarm pass).
   * @default 50
   */
  lingerMs?: number;
  /** How often the pending gauge is sampled. @default 5000 */
  gaugeMs?: number;
  /** How a POST goes out (Node: nodePost, cheaper than fetch). @default fetchPost */
  post?: WebhookPost;
  /** Makes X-Chat-Signature for a body (Node: nodeSigner). @default WebCrypto with `secret` */
  sign?: (body: string) => string | Promise<string>;
  /** For tests: jitter source. @default Math.random */
  random?: () => number;
}

/** Delivered events removed from the outbox together, at most this many... */
const REMOVE_EVERY = 32;
/** ...or after this long. */
const REMOVE_AFTER_MS = 500;

/**
 * The webhook delivery loop (docs/api.md: webhooks): one per instance (or per Durable
 * Object), never one timer per event. It finds rooms whose head event is due,
 * and delivers each such room's events in order, one request at a time, up to
 * `concurrency` rooms at once; a room whose head fails waits (head-of-line:
 * its later events wait too) with growing delays while the other rooms keep
 * going. Events leave the outbox only after a 2xx: at least once.
 *
 * Two ways to drive it: {@link start} (a loop with one timer, on Node, Bun and
 * Deno) or {@link runDue} (one pass, from a Durable Object alarm).
 */
export class WebhookDelivery {
  readonly #o: Required<Omit<WebhookDeliveryOptions, "lease" | "metrics" | "sign">> & {
    lease: Lease | null;
    metrics: Metrics;
  };
  readonly #sign: (body: string) => string | Promise<string>;
  /** Rooms being delivered now, and their workers. */
  readonly #active = new Map<string, Promise<void>>();
  /** Workers that caught up and wait for their room's next event: told true (more) or false (give up the slot). */
  readonly #lingering = new Map<string, (more: boolean) => void>();
  /** Rooms that got an event while their worker was busy: it looks again before it lingers. */
  readonly #dirty = new Set<string>();
  /** Requests in flight and when each times out (ms); aborted by a stop. */
  readonly #inFlight = new Map<AbortController, number>();
  /** One timer for every request's timeout, running while any is in flight. */
  #sweep: ReturnType<typeof setInterval> | null = null;
  #running: Promise<void> | null = null;
  #stopped = false;
  #wake: (() => void) | null = null;
  #woken = false;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #gaugeAt = 0;
  #leaseHeld = true;
  /** When the loop's outbox reads started failing (0: they work), and when that was last logged. */
  #failingSince = 0;
  #loggedFailureAt = 0;

  constructor(options: WebhookDeliveryOptions) {
    this.#o = {
      timeoutMs: 5000,
      concurrency: 32,
      pageSize: 100,
      firstRetryMs: 1000,
      maxRetryMs: 600_000,
      giveUpAfterMs: 86_400_000,
      pollMs: 1000,
      gaugeMs: 5000,
      lingerMs: 50,
      post: fetchPost,
      random: Math.random,
      ...options,
      lease: options.lease ?? null,
      metrics: options.metrics ?? noopMetrics,
    };
    if (options.sign) {
      this.#sign = options.sign;
    } else {
      const signer = new WebhookSigner(options.secret);
      this.#sign = (body) => signer.sign(body);
    }
  }

  /** Starts the loop (Node, Bun, Deno). */
  start(): void {
    if (this.#running || this.#stopped) return;
    this.#running = this.#loop();
  }

  /**
   * An event was added here (to `room`): its room's worker, if one runs,
   * reads it next; otherwise the loop looks for due rooms now rather than at
   * the next poll.
   */
  notify(room?: string): void {
    if (room !== undefined && this.#active.has(room)) {
      const lingering = this.#lingering.get(room);
      if (lingering) lingering(true);
      else this.#dirty.add(room);
      return;
    }
    const wake = this.#wake;
    if (wake) wake();
    else this.#woken = true;
  }

  /**
   * One pass for a Durable Object alarm: delivers every room due now until
   * none is (or each waits for a retry), and resolves with the time the next
   * attempt is due, or null when the outbox is empty.
   */
  async runDue(): Promise<number | null> {
    // Bounded: a room that keeps getting events is left for the next alarm.
    for (let pass = 0; pass < 100 && !this.#stopped; pass++) {
      const started = await this.#fill();
      await Promise.all(this.#active.values());
      if (started === 0) break;
    }
    await this.#sampleGauge(true);
    return this.#o.outbox.nextDue();
  }

  /**
   * Stops the loop: no new request starts; requests in flight get `graceMs`
   * to finish, then are aborted (their events stay in the outbox and go out
   * after the restart); then the outbox is flushed and the lease let go.
   */
  async stop(graceMs = 1000): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#endLingers();
    this.notify();
    if (this.#timer) clearTimeout(this.#timer);
    const workers = Promise.all(this.#active.values());
    let grace: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([workers, new Promise((r) => (grace = setTimeout(r, graceMs)))]);
    clearTimeout(grace);
    for (const c of this.#inFlight.keys()) c.abort();
    await workers;
    if (this.#sweep !== null) clearInterval(this.#sweep);
    this.#sweep = null;
    await this.#running;
    await this.#o.outbox.flush();
    await this.#sampleGauge(true).catch(() => {});
    if (this.#o.lease) await this.#o.lease.release().catch(() => {});
  }

  async #loop(): Promise<void> {
    while (!this.#stopped) {
      try {
        await this.#fill();
        await this.#sampleGauge(false);
        await this.#sleep(await this.#nextWait());
        if (this.#failingSince !== 0) {
          this.#o.logger.info({ downMs: Date.now() - this.#failingSince }, "webhook outbox readable again");
          this.#failingSince = 0;
        }
      } catch (error) {
        // The outbox's backend is away (Redis down): try again after a poll,
        // logging the first failure and then one line a minute, not one per poll.
        const now = Date.now();
        if (this.#failingSince === 0) this.#failingSince = now;
        if (now - this.#loggedFailureAt >= 60_000) {
          this.#loggedFailureAt = now;
          this.#o.logger.warn(
            { err: error, downMs: now - this.#failingSince },
            "webhook delivery loop could not read the outbox; retrying",
          );
        }
        await this.#sleep(this.#o.pollMs);
      }
    }
  }

  /** Starts a worker for each due room not being delivered yet; returns how many. */
  async #fill(): Promise<number> {
    if (this.#stopped) return 0;
    const free = this.#o.concurrency - this.#active.size;
    if (free <= 0) {
      // Every slot is taken: workers waiting for their room's next event give theirs up if another room is due.
      if (this.#lingering.size > 0) {
        const due = await this.#o.outbox.due(Date.now(), this.#active.size + 1);
        if (due.some((room) => !this.#active.has(room))) this.#endLingers();
      }
      return 0;
    }
    if (this.#o.lease) {
      this.#leaseHeld = await this.#o.lease.hold();
      if (!this.#leaseHeld) return 0;
    }
    // Asking for the active rooms too guarantees `free` others when that many are due.
    const rooms = await this.#o.outbox.due(Date.now(), this.#active.size + free);
    let started = 0;
    for (const room of rooms) {
      if (started >= free || this.#stopped) break;
      if (this.#active.has(room)) continue;
      started++;
      const worker = this.#deliverRoom(room)
        .catch((error: unknown) => {
          this.#o.logger.warn({ err: error, room }, "webhook delivery for a room stopped; it is retried");
        })
        .finally(() => {
          this.#active.delete(room);
          this.notify();
        });
      this.#active.set(room, worker);
    }
    return started;
  }

  #endLingers(): void {
    for (const end of [...this.#lingering.values()]) end(false);
  }

  /** Waits (at most lingerMs) for the room's next event: true when one came. */
  #linger(room: string): Promise<boolean> {
    if (this.#dirty.delete(room)) return Promise.resolve(true);
    if (this.#stopped || this.#o.lingerMs <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const end = (more: boolean) => {
        clearTimeout(timer);
        this.#lingering.delete(room);
        resolve(more);
      };
      const timer = setTimeout(() => end(false), this.#o.lingerMs);
      this.#lingering.set(room, end);
    });
  }

  /** How long the loop may sleep: until the next retry is due, at most a poll. */
  async #nextWait(): Promise<number> {
    if (!this.#leaseHeld) return this.#o.pollMs;
    const next = await this.#o.outbox.nextDue();
    const now = Date.now();
    // A due time in the past belongs to a room being delivered: its worker wakes the loop when done.
    return next !== null && next > now ? Math.min(next - now, this.#o.pollMs) : this.#o.pollMs;
  }

  #sleep(ms: number): Promise<void> {
    if (this.#woken || this.#stopped) {
      this.#woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        if (this.#timer) clearTimeout(this.#timer);
        this.#timer = null;
        this.#wake = null;
        this.#woken = false;
        resolve();
      };
      this.#wake = done;
      this.#timer = setTimeout(done, ms);
      // The loop must not keep a process alive that is otherwise done.
      (this.#timer as { unref?: () => void }).unref?.();
    });
  }

  async #sampleGauge(force: boolean): Promise<void> {
    const now = Date.now();
    if (!force && now - this.#gaugeAt < this.#o.gaugeMs) return;
    this.#gaugeAt = now;
    this.#o.metrics.webhookPending(await this.#o.outbox.pending());
  }

  /**
   * Delivers one room's events in order until it is empty, waits for a
   * retry, or the loop stops. Delivered events leave the outbox in batches
   * (at most {@link REMOVE_EVERY} events or {@link REMOVE_AFTER_MS}), not one
   * commit each: a crash in between sends those few again (at least once;
   * receivers dedupe by id), and the outbox's write cost per event drops.
   */
  async #deliverRoom(room: string): Promise<void> {
    const { outbox, logger, metrics, lease } = this.#o;
    /** The newest delivered event not yet removed from the outbox. */
    let delivered: string | null = null;
    let unremoved = 0;
    let firstUnremovedAt = 0;
    const removeDelivered = async () => {
      if (delivered === null) return;
      const through = delivered;
      delivered = null;
      unremoved = 0;
      await outbox.remove(room, through, FRESH);
    };
    try {
      let { events, retry } = await outbox.head(room, this.#o.pageSize);
      if (events.length === 0) return;
      for (;;) {
        // The stored state is older than a delivery this worker has not removed yet.
        if (delivered !== null) retry = { ...FRESH };
        if (events.length > 0 && retry.nextAt > Date.now()) return;
        for (const event of events) {
          if (this.#stopped) return;
          if (lease && !(await lease.hold())) {
            this.#leaseHeld = false;
            return;
          }
          const outcome = await this.#post(event);
          // A request the stop aborted is not a failure of the receiver.
          if (this.#stopped && outcome !== true) return;
          if (outcome === true) {
            metrics.webhookDelivered();
            retry = { ...FRESH };
            delivered = event.key;
            if (unremoved++ === 0) firstUnremovedAt = Date.now();
            if (unremoved >= REMOVE_EVERY) await removeDelivered();
            continue;
          }
          await removeDelivered();
          metrics.webhookAttemptFailed();
          const now = Date.now();
          const attempts = retry.attempts + 1;
          const failingSince = retry.failingSince ?? now;
          if (now - event.ts >= this.#o.giveUpAfterMs && now - failingSince >= this.#o.giveUpAfterMs) {
            logger.error(
              { room, event: event.id, attempts, failingSince, reason: outcome },
              "webhook event given up: its room's deliveries have failed for the whole retry period",
            );
            metrics.webhookFailed();
            retry = { attempts, failingSince, nextAt: 0 };
            delivered = event.key;
            await outbox.remove(room, event.key, retry);
            delivered = null;
            continue;
          }
          retry = { attempts, failingSince, nextAt: now + this.#backoff(attempts) };
          logger.warn(
            { room, event: event.id, attempts, retryInMs: retry.nextAt - now, reason: outcome },
            "webhook delivery failed; retrying",
          );
          await outbox.failed(room, retry);
          return;
        }
        if (unremoved > 0 && Date.now() - firstUnremovedAt >= REMOVE_AFTER_MS) await removeDelivered();
        // A short page means the room had no more when it was read: wait a little for its next event.
        const more = events.length < this.#o.pageSize ? await this.#linger(room) : true;
        // The next page starts after what was delivered, removed or not yet.
        ({ events, retry } = await outbox.head(room, this.#o.pageSize, delivered ?? undefined));
        if (events.length === 0 && (!more || this.#stopped)) return;
      }
    } finally {
      this.#dirty.delete(room);
      await removeDelivered();
    }
  }

  /** Doubling from firstRetryMs, capped, and spread over its upper half so receivers are not hit in waves. */
  #backoff(attempts: number): number {
    const base = Math.min(this.#o.firstRetryMs * 2 ** Math.min(attempts - 1, 30), this.#o.maxRetryMs);
    return Math.round(base / 2 + (this.#o.random() * base) / 2);
  }

  /**
   * One POST: true on a 2xx, else why it failed (for the log). Timeouts are
   * enforced by one sweeping timer (see {@link #sweepTimeouts}), not a
   * timer per request: at 1000 events/s a setTimeout/clearTimeout pair per
   * request showed in the profile, and a late answer is cut at most a
   * quarter of a second (or a quarter of the timeout) past the timeout.
   */
  async #post(event: PendingEvent): Promise<true | string> {
    const controller = new AbortController();
    this.#inFlight.set(controller, Date.now() + this.#o.timeoutMs);
    if (this.#sweep === null) {
      const every = Math.max(5, Math.min(250, Math.floor(this.#o.timeoutMs / 4)));
      this.#sweep = setInterval(() => this.#sweepTimeouts(), every);
      // A request in flight keeps the process alive by its socket, not by this timer.
      (this.#sweep as { unref?: () => void }).unref?.();
    }
    try {
      const headers = {
        "content-type": "application/json",
        "x-chat-event-id": event.id,
        "x-chat-signature": await this.#sign(event.body),
      };
      const status = await this.#o.post(this.#o.url, headers, event.body, controller.signal);
      return status >= 200 && status < 300 ? true : `status ${status}`;
    } catch (error) {
      if (controller.signal.aborted) return this.#stopped ? "stopped" : `no answer within ${this.#o.timeoutMs} ms`;
      if (!(error instanceof Error)) return "request failed";
      // fetch's own message is generic ("fetch failed"); the cause says why (ECONNREFUSED...).
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      return cause ? `${error.message}: ${cause.code ?? cause.message}` : error.message;
    } finally {
      this.#inFlight.delete(controller);
    }
  }

  /** Aborts the requests past their timeout; the timer ends when none is in flight. */
  #sweepTimeouts(): void {
    const now = Date.now();
    // Bounded: at most `concurrency` requests are in flight.
    for (const [controller, deadline] of this.#inFlight) if (deadline <= now) controller.abort();
    if (this.#inFlight.size === 0 && this.#sweep !== null) {
      clearInterval(this.#sweep);
      this.#sweep = null;
    }
  }
}
