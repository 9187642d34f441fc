import type { Config } from "../config.ts";
import type { Logger } from "../observability/logger.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { SqliteDatabase } from "../store/sqlite.ts";
import { type Lease, WebhookDelivery, type WebhookDeliveryOptions } from "./delivery.ts";
import { type EventSink, toWebhookEvent } from "./events.ts";
import { MemoryOutbox, type Outbox } from "./outbox.ts";
import { fetchPost } from "./transport.ts";

/** Running webhooks: the sink for the hub, and their stop. */
export interface Webhooks {
  /** What the hub is constructed with (`events`). */
  readonly sink: EventSink;
  readonly outbox: Outbox;
  readonly delivery: WebhookDelivery;
  /** Stops the delivery loop, flushes the outbox and closes it. */
  stop(): Promise<void>;
}

/** What {@link startWebhooks} needs beside the config. */
export interface WebhookDeps {
  logger: Logger;
  metrics: Metrics;
  /**
   * Opens the SQLite file with the runtime's driver: with HISTORY=sqlite the
   * outbox is a table in the history's file. @default none: memory outbox
   */
  openSqlite?: (path: string) => SqliteDatabase;
  /** Overrides of the delivery loop's options (tests: short retry delays). */
  delivery?: Partial<WebhookDeliveryOptions>;
}

/**
 * A sink that stores each event in `outbox` and wakes the loop. An event the
 * outbox could not take (its backend is down) is logged as lost: the action
 * itself has happened and is not undone.
 */
export function outboxSink(outbox: Outbox, delivery: { notify(room?: string): void }, logger: Logger): EventSink {
  return (e) => {
    const event = toWebhookEvent(e);
    outbox.add(event).then(
      () => delivery.notify(e.room),
      (error: unknown) => {
        logger.error(
          { err: error, room: e.room, event: e.event, id: event.id },
          "webhook event could not be stored; lost",
        );
      },
    );
  };
}

/** How POSTs go out and are signed: Node's own http and crypto on Node (node-transport.ts says why), else fetch and WebCrypto. */
async function cheapestTransport(
  secret: string,
  maxSockets: number,
): Promise<Pick<WebhookDeliveryOptions, "post" | "sign">> {
  const g = globalThis as { Bun?: unknown; Deno?: unknown; process?: { release?: { name?: string } } };
  // Bun and Deno also answer to process.release; their fetch is their own (native) client.
  if (g.Bun === undefined && g.Deno === undefined && g.process?.release?.name === "node") {
    const { nodePost, nodeSigner } = await import("./node-transport.ts");
    return { post: nodePost(maxSockets), sign: nodeSigner(secret) };
  }
  return { post: fetchPost };
}

/**
 * Builds the outbox where the history is (HUB=redis: Redis streams shared by
 * every instance; HISTORY=sqlite: a table in the history's file; otherwise
 * memory) and starts the delivery loop. Null when WEBHOOK_URL is unset: then
 * nothing is built and the hub gets no sink, at no cost per message.
 */
export async function startWebhooks(config: Config, deps: WebhookDeps): Promise<Webhooks | null> {
  const hook = config.webhook;
  if (!hook) return null;
  const logger = deps.logger.child({ part: "webhooks" });
  let outbox: Outbox;
  let lease: Lease | null = null;
  let kind: string;
  /** How often the loop looks for events it was not told of. */
  let pollMs = 1000;
  if (config.hub === "redis") {
    // Loaded only when asked for, so the default start needs no Redis client.
    const [{ createRedisClient, waitReady }, { RedisLease, RedisOutbox, WebhookKeys }] = await Promise.all([
      import("../redis/client.ts"),
      import("./redis-outbox.ts"),
    ]);
    const owner = globalThis.crypto.randomUUID();
    const redis = createRedisClient(config.redisUrl, { name: `chat-webhooks-${owner.slice(0, 8)}` });
    // Errors show in the loop's log lines; an unhandled 'error' event would crash the process.
    redis.on("error", () => {});
    // As the hub: start even when Redis does not answer yet; the loop retries every poll.
    await waitReady(redis, 3000);
    lease = new RedisLease(redis, new WebhookKeys(config.redisPrefix), owner);
    outbox = new RedisOutbox(redis, { prefix: config.redisPrefix, owner, owned: true });
    kind = "redis";
    // Other instances add events without telling this one: a due room is found within a poll.
    pollMs = 250;
  } else if (config.history === "sqlite" && config.historyPath !== ":memory:" && deps.openSqlite) {
    const { SqliteOutbox } = await import("./sqlite-outbox.ts");
    outbox = new SqliteOutbox(deps.openSqlite(config.historyPath));
    kind = "sqlite";
  } else {
    outbox = new MemoryOutbox(100_000, (event, room) => {
      deps.metrics.webhookFailed();
      logger.error({ room, event: event.id }, "webhook outbox full (100000 events in memory); oldest event dropped");
    });
    kind = "memory";
  }
  const concurrency = deps.delivery?.concurrency ?? 32;
  const delivery = new WebhookDelivery({
    ...(await cheapestTransport(hook.secret, concurrency)),
    concurrency,
    url: hook.url,
    secret: hook.secret,
    timeoutMs: hook.timeoutMs,
    maxRetryMs: hook.retryMaxMs,
    outbox,
    lease,
    pollMs,
    logger,
    metrics: deps.metrics,
    ...deps.delivery,
  });
  delivery.start();
  // The host only: the URL's path or query may carry a token.
  logger.info({ outbox: kind, receiver: new URL(hook.url).host }, "webhooks on");
  return {
    sink: outboxSink(outbox, delivery, logger),
    outbox,
    delivery,
    async stop() {
      await delivery.stop();
      await outbox.close();
    },
  };
}
