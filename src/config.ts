/**
 * Configuration: environment variables -> one typed, validated object.
 * Every setting, its default and its meaning is listed in README.md; a bad
 * value stops start-up with a message that names the variable.
 */
import { en } from "zod/locales";
import * as z from "zod/mini";
import { parseTrustProxy, TRUST_NONE, type TrustProxy } from "./limits/address.ts";
import { type AllowedHosts, parseAllowedHosts } from "./limits/hosts.ts";

// zod/mini (a fraction of full zod's size in the Worker bundle) ships no
// messages of its own: English ones keep the operator's errors readable.
z.config(en());

const int = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number({ error: "must be a number" }).check(z.int("must be a whole number"), z.minimum(min), z.maximum(max));

const isHttpUrl = (value: string): boolean => {
  try {
    const { protocol } = new URL(value);
    return protocol === "http:" || protocol === "https:";
  } catch {
    return false;
  }
};

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
  /** Bun only: room fan-out through BunBroadcaster (a turn's messages, one corked write per client); false sends to each member. @default true */
  BUN_TOPICS: z._default(flag, true),
  /** Longest a graceful shutdown waits before it exits anyway. @default 4000 */
  SHUTDOWN_TIMEOUT_MS: z._default(int(0, 60000), 4000),
  /** Open connections per client address; the next handshake gets 429. 0 turns the cap off. @default 256 */
  MAX_CONNECTIONS_PER_IP: z._default(int(0), 256),
  /** Bucket shared by all of an address's connections and REST reads, in units (a message is 1). 0: off. @default 100 */
  RATE_LIMIT_IP: z._default(int(0), 100),
  /** Units added back to an address's bucket per second. @default 10 */
  RATE_LIMIT_IP_REFILL: z._default(z.coerce.number().check(z.positive("must be above 0")), 10),
  /** Proxies whose X-Forwarded-For is believed: addresses, CIDRs, `loopback`; comma-separated. @default none */
  TRUST_PROXY: z._default(
    z.pipe(
      z.string(),
      z.transform((value: string, ctx) => {
        try {
          return parseTrustProxy(value);
        } catch (error) {
          ctx.issues.push({ code: "custom", message: (error as Error).message, input: value });
          return z.NEVER;
        }
      }),
    ),
    TRUST_NONE,
  ),
  /** Presence frames to one member at most once per this many ms (merged); 0 sends every change. @default 250 */
  PRESENCE_INTERVAL_MS: z._default(int(0, 60000), 250),
  /** Host names the server answers to (DNS rebinding); `*` for any. @default unset: see hosts.ts */
  ALLOWED_HOSTS: z.optional(z.pipe(z.string(), z.transform(parseAllowedHosts))),
  /** Enables the server API under /api; callers send `Authorization: Bearer <API_KEY>`. @default unset (/api is 404) */
  API_KEY: z.optional(z.string().check(z.minLength(16, "must be at least 16 characters"))),
  /** With AUTH_SECRET: tokens must carry this `iss`. @default unset (not checked) */
  AUTH_ISSUER: z.optional(z.string().check(z.minLength(1))),
  /** With AUTH_SECRET: tokens' `aud` must be (or contain) this. @default unset (not checked) */
  AUTH_AUDIENCE: z.optional(z.string().check(z.minLength(1))),
  /** Receiver of the webhooks (docs/api.md: webhooks); needs WEBHOOK_SECRET. @default unset (no webhooks) */
  WEBHOOK_URL: z.optional(
    z.string().check(z.refine(isHttpUrl, "must be an http(s) URL like https://app.example.com/chat-events")),
  ),
  /** HMAC key of X-Chat-Signature; required with WEBHOOK_URL. @default unset */
  WEBHOOK_SECRET: z.optional(z.string().check(z.minLength(16, "must be at least 16 characters"))),
  /** Longest wait for the webhook receiver's answer before the attempt counts as failed. @default 5000 */
  WEBHOOK_TIMEOUT_MS: z._default(int(100, 60000), 5000),
  /** Longest delay between two attempts at a failing webhook event (the delays double up to it). @default 600000 */
  WEBHOOK_RETRY_MAX_MS: z._default(int(1000, 3_600_000), 600_000),
  /** Messages older than this are pruned by every store: `30d`, `12h`, `90m`, `45s`; `0` off. @default unset (off) */
  HISTORY_TTL: z._default(
    z.pipe(
      z.string(),
      z.transform((value: string, ctx) => {
        const ms = parseDuration(value);
        if (ms !== null) return ms;
        ctx.issues.push({ code: "custom", message: "must be a duration like 30d, 12h, 90m, 45s, or 0", input: value });
        return z.NEVER;
      }),
    ),
    0,
  ),
  /** HUB=redis on a Redis Cluster: REDIS_URL names any node; sharded pub/sub (Redis 7). @default false */
  REDIS_CLUSTER: z._default(flag, false),
  /** How long a presence entry lives in Redis without a heartbeat (an instance that died leaves the lists within it). @default 6000 */
  REDIS_PRESENCE_TTL_MS: z._default(int(300, 600_000), 6000),
  /** Longest wait for one Redis command (and a connection) before it fails with `unavailable`. @default 2000 */
  REDIS_COMMAND_TIMEOUT_MS: z._default(int(50, 60_000), 2000),
  /** Deno only: `node` serves through node:http + ws (framed once, 1007 on bad UTF-8); `deno` through Deno.serve. @default "node" */
  DENO_SERVER: z._default(z.enum(["node", "deno"]), "node"),
});

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** `30d`, `12h`, `1.5h`, `90m`, `45s`, `500ms`, `2w` -> milliseconds; `0` -> 0; anything else -> null. */
export function parseDuration(value: string): number | null {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$/i.exec(value);
  if (!match) return null;
  const n = Number(match[1]);
  const unit = match[2]?.toLowerCase();
  if (unit === undefined) return n === 0 ? 0 : null; // a bare number has no obvious unit
  const ms = Math.round(n * (DURATION_UNITS[unit] as number));
  return Number.isSafeInteger(ms) ? ms : null;
}

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
  /** Bun only: room fan-out through BunBroadcaster (src/runtime/bun-ws.ts). */
  bunTopics: boolean;
  shutdownTimeoutMs: number;
  /** Open connections per client address; 0 when there is no cap. */
  maxConnectionsPerIp: number;
  /** Per-address bucket size in units; 0 when per-address rate limits are off. */
  rateLimitIp: number;
  rateLimitIpRefillPerSecond: number;
  /** Proxies whose X-Forwarded-For is believed. */
  trustProxy: TrustProxy;
  /** Presence merge interval; 0 sends every change at once. */
  presenceIntervalMs: number;
  /** ALLOWED_HOSTS; undefined when unset (see limits/hosts.ts for what that allows). */
  allowedHosts: AllowedHosts | undefined;
  /** The server API's key; undefined: /api is 404. */
  apiKey: string | undefined;
  /** Required token `iss`, when set. */
  authIssuer: string | undefined;
  /** Required token `aud`, when set. */
  authAudience: string | undefined;
  /** Webhooks (WEBHOOK_URL, WEBHOOK_SECRET, WEBHOOK_TIMEOUT_MS, WEBHOOK_RETRY_MAX_MS); undefined when WEBHOOK_URL is unset. */
  webhook: { url: string; secret: string; timeoutMs: number; retryMaxMs: number } | undefined;
  /** HISTORY_TTL in ms: every store prunes messages older than this; 0 keeps them by count only. */
  historyTtlMs: number;
  /** HUB=redis on a Redis Cluster (sharded pub/sub). */
  redisCluster: boolean;
  /** Presence entry lifetime without a heartbeat (heartbeats every third of it). */
  redisPresenceTtlMs: number;
  /** Redis command and connect timeout. */
  redisCommandTimeoutMs: number;
  /** Deno only: which server serves the app (node:http + ws, or Deno.serve). */
  denoServer: "node" | "deno";
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
  if (e.WEBHOOK_URL && !e.WEBHOOK_SECRET) {
    throw new ConfigError(
      "invalid configuration:\n  WEBHOOK_SECRET must be set when WEBHOOK_URL is (it signs every delivery)",
    );
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
    maxConnectionsPerIp: e.MAX_CONNECTIONS_PER_IP,
    rateLimitIp: e.RATE_LIMIT_IP,
    rateLimitIpRefillPerSecond: e.RATE_LIMIT_IP_REFILL,
    trustProxy: e.TRUST_PROXY,
    presenceIntervalMs: e.PRESENCE_INTERVAL_MS,
    allowedHosts: e.ALLOWED_HOSTS,
    apiKey: e.API_KEY,
    authIssuer: e.AUTH_ISSUER,
    authAudience: e.AUTH_AUDIENCE,
    webhook: e.WEBHOOK_URL
      ? {
          url: e.WEBHOOK_URL,
          secret: e.WEBHOOK_SECRET!,
          timeoutMs: e.WEBHOOK_TIMEOUT_MS,
          retryMaxMs: e.WEBHOOK_RETRY_MAX_MS,
        }
      : undefined,
    historyTtlMs: e.HISTORY_TTL,
    redisCluster: e.REDIS_CLUSTER,
    redisPresenceTtlMs: e.REDIS_PRESENCE_TTL_MS,
    redisCommandTimeoutMs: e.REDIS_COMMAND_TIMEOUT_MS,
    denoServer: e.DENO_SERVER,
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
