import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.ts";

describe("loadConfig defaults", () => {
  it("an empty environment gives the documented defaults", () => {
    expect(loadConfig({})).toEqual({
      port: 8888,
      host: "0.0.0.0",
      hub: "memory",
      redisUrl: "redis://127.0.0.1:6379",
      redisPrefix: "chat:",
      history: "sqlite",
      historyPath: "./data/chat.db",
      historyLimit: 10000,
      welcomeHistory: 50,
      resumeLimit: 1000,
      maxMessageLength: 2000,
      maxFrameBytes: 65536,
      maxBufferedBytes: 1048576,
      rateLimit: 10,
      rateLimitRefillPerSecond: 1,
      heartbeatMs: 30000,
      allowedOrigins: [],
      authSecret: undefined,
      logLevel: "info",
      logFormat: "text",
      tls: undefined,
      wsCompression: false,
      bunTopics: true,
      shutdownTimeoutMs: 4000,
      maxConnectionsPerIp: 256,
      rateLimitIp: 100,
      rateLimitIpRefillPerSecond: 10,
      trustProxy: { loopback: false, ranges: [] },
      presenceIntervalMs: 250,
      allowedHosts: undefined,
      apiKey: undefined,
      authIssuer: undefined,
      authAudience: undefined,
      webhook: undefined,
      historyTtlMs: 0,
      redisCluster: false,
      redisPresenceTtlMs: 6000,
      redisCommandTimeoutMs: 2000,
      denoServer: "node",
    });
  });

  it("empty strings count as unset", () => {
    expect(loadConfig({ PORT: "", AUTH_SECRET: "", HUB: "" })).toMatchObject({
      port: 8888,
      authSecret: undefined,
      hub: "memory",
    });
  });

  it("unrelated variables are ignored", () => {
    expect(() => loadConfig({ PATH: "/bin", HOME: "/root", npm_config_x: "?" })).not.toThrow();
  });
});

describe("loadConfig values", () => {
  it("reads every setting", () => {
    const c = loadConfig({
      PORT: "0",
      HOST: "127.0.0.1",
      HUB: "redis",
      REDIS_URL: "redis://cache:6380",
      REDIS_PREFIX: "x:",
      HISTORY_LIMIT: "5",
      WELCOME_HISTORY: "0",
      RESUME_LIMIT: "7",
      MAX_MESSAGE_LENGTH: "10",
      MAX_FRAME_BYTES: "1024",
      MAX_BUFFERED_BYTES: "2048",
      RATE_LIMIT: "0",
      RATE_LIMIT_REFILL: "2.5",
      HEARTBEAT_MS: "0",
      ALLOWED_ORIGINS: "https://a.example, http://b.example:8080/ ,",
      AUTH_SECRET: "0123456789abcdef",
      LOG_LEVEL: "silent",
      LOG_FORMAT: "json",
      TLS_CERT: "c.pem",
      TLS_KEY: "k.pem",
      WS_COMPRESSION: "true",
      SHUTDOWN_TIMEOUT_MS: "100",
    });
    expect(c).toMatchObject({
      port: 0,
      host: "127.0.0.1",
      hub: "redis",
      history: "redis",
      redisUrl: "redis://cache:6380",
      redisPrefix: "x:",
      historyLimit: 5,
      welcomeHistory: 0,
      resumeLimit: 7,
      maxMessageLength: 10,
      maxFrameBytes: 1024,
      maxBufferedBytes: 2048,
      rateLimit: 0,
      rateLimitRefillPerSecond: 2.5,
      heartbeatMs: 0,
      allowedOrigins: ["https://a.example", "http://b.example:8080"],
      authSecret: "0123456789abcdef",
      logLevel: "silent",
      logFormat: "json",
      tls: { cert: "c.pem", key: "k.pem" },
      wsCompression: true,
      bunTopics: true,
      shutdownTimeoutMs: 100,
    });
  });

  it.each([
    ["true", true],
    ["1", true],
    ["on", true],
    ["yes", true],
    ["false", false],
    ["0", false],
    ["off", false],
    ["no", false],
  ])("WS_COMPRESSION=%s -> %s", (v, expected) => {
    expect(loadConfig({ WS_COMPRESSION: v }).wsCompression).toBe(expected);
  });

  it("history follows the hub unless set", () => {
    expect(loadConfig({ HUB: "redis" }).history).toBe("redis");
    expect(loadConfig({ HUB: "redis", HISTORY: "sqlite" }).history).toBe("sqlite");
    expect(loadConfig({ HISTORY: "memory" }).history).toBe("memory");
  });
});

describe("loadConfig refuses bad values, naming the variable", () => {
  it.each([
    ["PORT", "abc"],
    ["PORT", "70000"],
    ["PORT", "-1"],
    ["PORT", "80.5"],
    ["HUB", "postgres"],
    ["REDIS_URL", "not a url"],
    ["HISTORY", "disk"],
    ["HISTORY_LIMIT", "0"],
    ["WELCOME_HISTORY", "501"],
    ["RESUME_LIMIT", "0"],
    ["MAX_MESSAGE_LENGTH", "0"],
    ["MAX_FRAME_BYTES", "10"],
    ["MAX_BUFFERED_BYTES", "12"],
    ["RATE_LIMIT", "-1"],
    ["RATE_LIMIT", "ten"],
    ["RATE_LIMIT_REFILL", "0"],
    ["HEARTBEAT_MS", "1.5"],
    ["ALLOWED_ORIGINS", "chat.example.com"],
    ["ALLOWED_ORIGINS", "https://ok.example,nope"],
    ["AUTH_SECRET", "short"],
    ["LOG_LEVEL", "loud"],
    ["LOG_FORMAT", "xml"],
    ["WS_COMPRESSION", "maybe"],
    ["SHUTDOWN_TIMEOUT_MS", "999999"],
  ])("%s=%s", (key, value) => {
    let error: unknown;
    try {
      loadConfig({ [key]: value });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain(`${key}=`);
    expect((error as Error).message).toContain(JSON.stringify(value));
  });

  it("names every bad variable at once", () => {
    let message = "";
    try {
      loadConfig({ PORT: "x", LOG_LEVEL: "y", RATE_LIMIT: "z" });
    } catch (e) {
      message = (e as Error).message;
    }
    for (const key of ["PORT=", "LOG_LEVEL=", "RATE_LIMIT="]) expect(message).toContain(key);
  });

  it("TLS_CERT without TLS_KEY (and the reverse)", () => {
    expect(() => loadConfig({ TLS_CERT: "c.pem" })).toThrow(/TLS_CERT and TLS_KEY/);
    expect(() => loadConfig({ TLS_KEY: "k.pem" })).toThrow(/TLS_CERT and TLS_KEY/);
  });

  it("HISTORY=redis needs HUB=redis", () => {
    expect(() => loadConfig({ HISTORY: "redis" })).toThrow(/HISTORY=redis/);
  });
});

describe("HISTORY_TTL", () => {
  it("takes a duration with a unit, or 0; unset is off", () => {
    expect(loadConfig({}).historyTtlMs).toBe(0);
    expect(loadConfig({ HISTORY_TTL: "0" }).historyTtlMs).toBe(0);
    expect(loadConfig({ HISTORY_TTL: "30d" }).historyTtlMs).toBe(30 * 86_400_000);
    expect(loadConfig({ HISTORY_TTL: "12h" }).historyTtlMs).toBe(12 * 3_600_000);
    expect(loadConfig({ HISTORY_TTL: "1.5h" }).historyTtlMs).toBe(5_400_000);
    expect(loadConfig({ HISTORY_TTL: "90m" }).historyTtlMs).toBe(5_400_000);
    expect(loadConfig({ HISTORY_TTL: "45s" }).historyTtlMs).toBe(45_000);
    expect(loadConfig({ HISTORY_TTL: "2w" }).historyTtlMs).toBe(14 * 86_400_000);
  });

  it("refuses what has no clear meaning, naming the variable", () => {
    for (const value of ["30", "-1d", "abc", "1y", "d"]) {
      expect(() => loadConfig({ HISTORY_TTL: value })).toThrow(/HISTORY_TTL=.*must be a duration like 30d/);
    }
  });
});
