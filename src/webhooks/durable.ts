/**
 * Webhooks in a room's Durable Object (Workers): the outbox is a table in the
 * object's SQL storage (the same {@link SqliteOutbox} as the SQLite file
 * elsewhere) and the delivery loop runs from the object's alarm, so pending
 * events survive eviction, hibernation and restarts: the alarm wakes the
 * object and delivers. One loop per room's object, one alarm (never a timer
 * per event).
 *
 * Types only from workers-types' module form, as in src/store/durable.ts.
 */
import type { DurableObjectStorage } from "@cloudflare/workers-types/index.ts";
import type { Config } from "../config.ts";
import type { Logger } from "../observability/logger.ts";
import { type Metrics, noopMetrics } from "../observability/metrics.ts";
import { durableSqlite } from "../store/durable.ts";
import { WebhookDelivery, type WebhookDeliveryOptions } from "./delivery.ts";
import { type EventSink, toWebhookEvent } from "./events.ts";
import { SqliteOutbox } from "./sqlite-outbox.ts";

/** A room object's webhooks: the sink for its hub, and what its `alarm()` calls. */
export class DurableWebhooks {
  readonly outbox: SqliteOutbox;
  readonly delivery: WebhookDelivery;
  readonly #storage: DurableObjectStorage;
  readonly #logger: Logger;
  /** Settles after the latest alarm check, so checks run one at a time. */
  #scheduling: Promise<void> = Promise.resolve();

  /**
   * @param webhook the config's webhook settings (WEBHOOK_URL is set)
   * @param options overrides of the delivery loop's options (tests)
   */
  constructor(
    storage: DurableObjectStorage,
    webhook: NonNullable<Config["webhook"]>,
    logger: Logger,
    metrics: Metrics = noopMetrics,
    options: Partial<WebhookDeliveryOptions> = {},
  ) {
    this.#storage = storage;
    this.#logger = logger.child({ part: "webhooks" });
    // The storage is the object's: nothing to close.
    this.outbox = new SqliteOutbox(durableSqlite(storage), false);
    this.delivery = new WebhookDelivery({
      url: webhook.url,
      secret: webhook.secret,
      timeoutMs: webhook.timeoutMs,
      maxRetryMs: webhook.retryMaxMs,
      outbox: this.outbox,
      logger: this.#logger,
      metrics,
      // One room per object: its events go one at a time anyway.
      concurrency: 1,
      // An alarm pass ends when the room is caught up (the next event sets the alarm again).
      lingerMs: 0,
      ...options,
    });
  }

  /** What the room's hub is constructed with: store the event, then make sure the alarm comes. */
  readonly sink: EventSink = (e) => {
    const event = toWebhookEvent(e);
    this.outbox.add(event).then(
      () => this.#alarmBy(Date.now()),
      (error: unknown) => {
        this.#logger.error(
          { err: error, room: e.room, event: e.event, id: event.id },
          "webhook event could not be stored; lost",
        );
      },
    );
  };

  /** The object's `alarm()`: delivers what is due, then sets the alarm for the next retry (if any). */
  async alarm(): Promise<void> {
    const next = await this.delivery.runDue();
    if (next !== null) await this.#alarmBy(next);
  }

  /**
   * Sets the alarm to `at` unless one is already set for that time or
   * sooner. The object has one alarm: whoever else uses it must keep to the
   * same rule, and its `alarm()` calls every user's handler.
   */
  #alarmBy(at: number): Promise<void> {
    this.#scheduling = this.#scheduling.then(async () => {
      try {
        const current = await this.#storage.getAlarm();
        if (current === null || current > at) await this.#storage.setAlarm(at);
      } catch (error) {
        this.#logger.error({ err: error }, "could not set the webhook alarm");
      }
    });
    return this.#scheduling;
  }
}
