/**
 * What the core reports. The Prometheus implementation serves /metrics on
 * Node, Bun and Deno; Workers use {@link noopMetrics}.
 */
export interface Metrics {
  connectionOpened(mode: string): void;
  connectionClosed(mode: string): void;
  messageAccepted(): void;
  errorSent(code: string): void;
  /** A slow consumer closed with 1013. */
  slowConsumerClosed(): void;
  /** Webhook events waiting in the outbox (sampled by the delivery loop). */
  webhookPending(count: number): void;
  /** A webhook event delivered (the receiver answered 2xx). */
  webhookDelivered(): void;
  /** A webhook attempt that failed (non-2xx, no answer in time, error): it is retried. */
  webhookAttemptFailed(): void;
  /** A webhook event given up after its retry period and dropped. */
  webhookFailed(): void;
  /** The Prometheus exposition, or null where /metrics is not served. */
  render(): Promise<{ contentType: string; body: string }> | null;
}

export const noopMetrics: Metrics = {
  connectionOpened() {},
  connectionClosed() {},
  messageAccepted() {},
  errorSent() {},
  slowConsumerClosed() {},
  webhookPending() {},
  webhookDelivered() {},
  webhookAttemptFailed() {},
  webhookFailed() {},
  render: () => null,
};
