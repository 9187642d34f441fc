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
  /** The Prometheus exposition, or null where /metrics is not served. */
  render(): Promise<{ contentType: string; body: string }> | null;
}

export const noopMetrics: Metrics = {
  connectionOpened() {},
  connectionClosed() {},
  messageAccepted() {},
  errorSent() {},
  slowConsumerClosed() {},
  render: () => null,
};
