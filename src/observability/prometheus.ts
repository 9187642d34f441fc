import { Counter, collectDefaultMetrics, Gauge, Registry } from "prom-client";
import type { Metrics } from "./metrics.ts";

/** Metrics in a prom-client registry of their own (one per server instance). */
export class PrometheusMetrics implements Metrics {
  readonly registry = new Registry();
  readonly #connections = new Gauge({
    name: "chat_connections",
    help: "Open WebSocket connections",
    labelNames: ["mode"],
    registers: [this.registry],
  });
  readonly #messages = new Counter({
    name: "chat_messages_total",
    help: "Chat messages accepted from clients on this instance",
    registers: [this.registry],
  });
  readonly #errors = new Counter({
    name: "chat_errors_total",
    help: "Error frames sent to clients, by code",
    labelNames: ["code"],
    registers: [this.registry],
  });
  readonly #slow = new Counter({
    name: "chat_slow_consumers_total",
    help: "Connections closed with 1013 because they did not read",
    registers: [this.registry],
  });
  readonly #webhookPending = new Gauge({
    name: "chat_webhook_pending",
    help: "Webhook events waiting in the outbox (undelivered, retried)",
    registers: [this.registry],
  });
  readonly #webhookDelivered = new Counter({
    name: "chat_webhook_delivered_total",
    help: "Webhook events delivered (2xx)",
    registers: [this.registry],
  });
  readonly #webhookAttemptFailed = new Counter({
    name: "chat_webhook_attempt_failures_total",
    help: "Webhook attempts that failed (non-2xx, timeout, error) and are retried",
    registers: [this.registry],
  });
  readonly #webhookFailed = new Counter({
    name: "chat_webhook_failed_total",
    help: "Webhook events given up after the retry period (dropped)",
    registers: [this.registry],
  });

  /** @param defaults also export process metrics (CPU, memory, event loop) @default true */
  constructor(defaults = true) {
    if (defaults) collectDefaultMetrics({ register: this.registry });
    // Both modes exist from the start so dashboards see 0, not a gap.
    this.#connections.set({ mode: "seed" }, 0);
    this.#connections.set({ mode: "v1" }, 0);
  }

  connectionOpened(mode: string): void {
    this.#connections.inc({ mode });
  }
  connectionClosed(mode: string): void {
    this.#connections.dec({ mode });
  }
  messageAccepted(): void {
    this.#messages.inc();
  }
  errorSent(code: string): void {
    this.#errors.inc({ code });
  }
  slowConsumerClosed(): void {
    this.#slow.inc();
  }
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
  webhookPending(count: number): void {
    this.#webhookPending.set(count);
  }
  webhookDelivered(): void {
    this.#webhookDelivered.inc();
  }
  webhookAttemptFailed(): void {
    this.#webhookAttemptFailed.inc();
  }
  webhookFailed(): void {
    this.#webhookFailed.inc();
  }
}
