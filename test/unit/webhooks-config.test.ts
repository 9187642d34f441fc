import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.ts";

const SECRET = "webhook-secret-0123456789";

describe("webhook settings", () => {
  it("are off by default", () => {
    expect(loadConfig({}).webhook).toBeUndefined();
    // A secret alone turns nothing on.
    expect(loadConfig({ WEBHOOK_SECRET: SECRET }).webhook).toBeUndefined();
  });

  it("WEBHOOK_URL with WEBHOOK_SECRET turns them on, with a 5 s timeout unless set", () => {
    expect(loadConfig({ WEBHOOK_URL: "https://app.example.com/hook", WEBHOOK_SECRET: SECRET }).webhook).toEqual({
      url: "https://app.example.com/hook",
      secret: SECRET,
      timeoutMs: 5000,
      retryMaxMs: 600_000,
    });
    expect(
      loadConfig({ WEBHOOK_URL: "http://127.0.0.1:9/x", WEBHOOK_SECRET: SECRET, WEBHOOK_TIMEOUT_MS: "800" }).webhook
        ?.timeoutMs,
    ).toBe(800);
  });

  it("refuses a URL without a secret, a short secret, a non-http URL and a bad timeout, naming the variable", () => {
    const bad: [Record<string, string>, RegExp][] = [
      [{ WEBHOOK_URL: "https://app.example.com/hook" }, /WEBHOOK_SECRET must be set when WEBHOOK_URL is/],
      [{ WEBHOOK_URL: "https://app.example.com/hook", WEBHOOK_SECRET: "short" }, /WEBHOOK_SECRET=.*16 characters/],
      [{ WEBHOOK_URL: "ftp://app.example.com/hook", WEBHOOK_SECRET: SECRET }, /WEBHOOK_URL=.*http\(s\) URL/],
      [{ WEBHOOK_URL: "not a url", WEBHOOK_SECRET: SECRET }, /WEBHOOK_URL=.*http\(s\) URL/],
      [{ WEBHOOK_URL: "https://a.example/h", WEBHOOK_SECRET: SECRET, WEBHOOK_TIMEOUT_MS: "10" }, /WEBHOOK_TIMEOUT_MS/],
      [
        { WEBHOOK_URL: "https://a.example/h", WEBHOOK_SECRET: SECRET, WEBHOOK_TIMEOUT_MS: "soon" },
        /WEBHOOK_TIMEOUT_MS/,
      ],
    ];
    for (const [env, message] of bad) {
      expect(() => loadConfig(env), JSON.stringify(env)).toThrow(ConfigError);
      expect(() => loadConfig(env), JSON.stringify(env)).toThrow(message);
    }
  });
});
