/**
 * Configuration: environment variables -> one typed, validated object.
 * Every setting, its default and its meaning is listed in README.md; a bad
 * value stops start-up with a message that names the variable.
 */
import { en } from "zod/locales";
import * as z from "zod/mini";

// zod/mini (a fraction of full zod's size in the Worker bundle) ships no
// messages of its own: English ones keep the operator's errors readable.
z.config(en());

const int = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number({ error: "must be a number" }).check(z.int("must be a whole number"), z.minimum(min), z.maximum(max));

const flag = z.pipe(
  z.enum(["true", "false", "1", "0", "on", "off", "yes", "no"], { error: "must be true or false" }),
  z.transform((v) => v === "true" || v === "1" || v === "on" || v === "yes"),
);

const origins = z.pipe(
  z.string(),
  z.transform((value: string, ctx) => {
    const out: string[] = [];
    for (const raw of value.split(",")) {
      const item = raw.trim();
      if (!item) continue;
      try {
        const url = new URL(item);
        if (url.origin === "null") throw new Error("opaque origin");
        out.push(url.origin);
      } catch {
        ctx.issues.push({
          code: "custom",
          message: `"${item}" is not an origin like https://chat.example.com`,
          input: item,
        });
        return z.NEVER;
      }
    }
    return out;
  }),
);

const schema = z.object({
  /** TCP port. @default 8888 (the original tutorial's) */
  PORT: z._default(int(0, 65535), 8888),
  /** Address to listen on. @default "0.0.0.0" (every interface, as the tutorial) */
  HOST: z._default(z.string().check(z.minLength(1)), "0.0.0.0"),
  /** `memory` (one process) or `redis` (several instances share rooms). @default "memory" */
  HUB: z._default(z.enum(["memory", "redis"]), "memory"),
  /** Redis for `HUB=redis`. @default "redis://127.0.0.1:6379" */
  REDIS_URL: z._default(z.string().check(z.url("must be a URL like redis://host:6379")), "redis://127.0.0.1:6379"),
  /** Prefix of every Redis key, so instances of different chats can share one Redis. @default "chat:" */
  REDIS_PREFIX: z._default(z.string(), "chat:"),
  /** `sqlite` (embedded file) or `memory`; with `HUB=redis` history is in Redis. @default "sqlite" */
  HISTORY: z.optional(z.enum(["sqlite", "memory", "redis"])),
  /** SQLite file for `HISTORY=sqlite`. @default "./data/chat.db" */
  HISTORY_PATH: z._default(z.string().check(z.minLength(1)), "./data/chat.db"),
  /** Messages kept per room; older ones are pruned. @default 10000 */
  HISTORY_LIMIT: z._default(int(1), 10000),
  /** Messages in the welcome frame when the client does not resume. @default 50 */
  WELCOME_HISTORY: z._default(int(0, 500), 50),
  /** Most messages a `since` resume returns before it reports a gap. @default 1000 */
  RESUME_LIMIT: z._default(int(1, 100000), 1000),
  /** Longest message, in characters. @default 2000 */
  MAX_MESSAGE_LENGTH: z._default(int(1, 1_000_000), 2000),
  /** Largest WebSocket frame accepted; larger closes with 1009. @default 65536 */
  MAX_FRAME_BYTES: z._default(int(128, 64 * 1024 * 1024), 64 * 1024),
  /** Bytes queued to one client before it is closed with 1013. @default 1048576 */
  MAX_BUFFERED_BYTES: z._default(int(1024), 1024 * 1024),
  /** Rate limit bucket size in messages per connection; 0 turns it off. @default 10 */
  RATE_LIMIT: z._default(int(0), 10),
  /** Messages added back to the bucket per second. @default 1 */
  RATE_LIMIT_REFILL: z._default(z.coerce.number().check(z.positive("must be above 0")), 1),
  /** Interval of server pings; two missed pongs end the connection. 0 turns it off. @default 30000 */
  HEARTBEAT_MS: z._default(int(0), 30000),
  /** Extra origins allowed to open WebSockets, comma-separated. @default "" */
  ALLOWED_ORIGINS: z._default(origins, []),
  /** HS256 secret; when set, connections need a JWT. @default unset */
  AUTH_SECRET: z.optional(z.string().check(z.minLength(16, "must be at least 16 characters"))),
  /** `trace` ... `fatal`, or `silent`. @default "info" */
  LOG_LEVEL: z._default(z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]), "info"),
  /** `text` (readable lines) or `json` (JSON lines). @default "text" */
  LOG_FORMAT: z._default(z.enum(["text", "json"]), "text"),
  /** PEM certificate file; with TLS_KEY, serves https and wss directly. @default unset */
  TLS_CERT: z.optional(z.string().check(z.minLength(1))),
  /** PEM private key file for TLS_CERT. @default unset */
  TLS_KEY: z.optional(z.string().check(z.minLength(1))),
  /** permessage-deflate for WebSocket frames. @default false */
  WS_COMPRESSION: z._default(flag, false),
  /** Bun only: room fan-out through Bun's topic publish (framed once); false sends to each member. @default true */
  BUN_TOPICS: z._default(flag, true),
  /** Longest a graceful shutdown waits before it exits anyway. @default 4000 */
  SHUTDOWN_TIMEOUT_MS: z._default(int(0, 60000), 4000),
});

/** The validated configuration. */
export interface Config {
  port: number;
  host: string;
  hub: "memory" | "redis";
  redisUrl: string;
  redisPrefix: string;
  history: "sqlite" | "memory" | "redis";
  historyPath: string;
  historyLimit: number;
  welcomeHistory: number;
  resumeLimit: number;
  maxMessageLength: number;
  maxFrameBytes: number;
  maxBufferedBytes: number;
  /** Bucket size; 0 when rate limiting is off. */
  rateLimit: number;
  rateLimitRefillPerSecond: number;
  heartbeatMs: number;
  allowedOrigins: string[];
  authSecret: string | undefined;
  logLevel: "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent";
  logFormat: "text" | "json";
  tls: { cert: string; key: string } | undefined;
  wsCompression: boolean;
  /** Bun only: fan-out through Bun's topic publish. */
  bunTopics: boolean;
  shutdownTimeoutMs: number;
}

/** Thrown for a bad setting; the message names every bad variable. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/**
 * Reads the configuration from an environment (process.env, Deno.env, a
 * Worker's env). Empty strings count as unset.
 */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const input: Record<string, string> = {};
  for (const key of Object.keys(schema.shape)) {
    const value = env[key];
    if (value !== undefined && value !== "") input[key] = value;
  }
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => {
      const key = String(i.path[0] ?? "config");
      return `  ${key}=${JSON.stringify(input[key] ?? "")}: ${i.message}`;
    });
    throw new ConfigError(`invalid configuration:\n${lines.join("\n")}`);
  }
  const e = parsed.data;
  if ((e.TLS_CERT === undefined) !== (e.TLS_KEY === undefined)) {
    throw new ConfigError("invalid configuration:\n  TLS_CERT and TLS_KEY must be set together");
  }
  const history = e.HISTORY ?? (e.HUB === "redis" ? "redis" : "sqlite");
  if (history === "redis" && e.HUB !== "redis") {
    throw new ConfigError("invalid configuration:\n  HISTORY=redis needs HUB=redis");
  }
  return {
    port: e.PORT,
    host: e.HOST,
    hub: e.HUB,
    redisUrl: e.REDIS_URL,
    redisPrefix: e.REDIS_PREFIX,
    history,
    historyPath: e.HISTORY_PATH,
    historyLimit: e.HISTORY_LIMIT,
    welcomeHistory: e.WELCOME_HISTORY,
    resumeLimit: e.RESUME_LIMIT,
    maxMessageLength: e.MAX_MESSAGE_LENGTH,
    maxFrameBytes: e.MAX_FRAME_BYTES,
    maxBufferedBytes: e.MAX_BUFFERED_BYTES,
    rateLimit: e.RATE_LIMIT,
    rateLimitRefillPerSecond: e.RATE_LIMIT_REFILL,
    heartbeatMs: e.HEARTBEAT_MS,
    allowedOrigins: e.ALLOWED_ORIGINS,
    authSecret: e.AUTH_SECRET,
    logLevel: e.LOG_LEVEL,
    logFormat: e.LOG_FORMAT,
    tls: e.TLS_CERT && e.TLS_KEY ? { cert: e.TLS_CERT, key: e.TLS_KEY } : undefined,
    wsCompression: e.WS_COMPRESSION,
    bunTopics: e.BUN_TOPICS,
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
  };
}

/**
 * {@link loadConfig} for a runtime entry: a bad setting prints its message
 * and exits 1 instead of throwing a stack trace at the operator.
 */
export function loadConfigOrExit(env: Record<string, string | undefined>, exit: (code: number) => never): Config {
  try {
    return loadConfig(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(error.message);
    return exit(1);
  }
}
