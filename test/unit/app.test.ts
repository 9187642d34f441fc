/**
 * The app in-process (Hono's app.request): what a real server shows only for
 * an instant, like answers while draining, and routes that need no socket.
 */
import type { UpgradeWebSocket } from "hono/ws";
import { describe, expect, it } from "vitest";
import { createChat } from "../../src/app.ts";
import { loadConfig } from "../../src/config.ts";
import { MemoryHub } from "../../src/hub/memory.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { noopMetrics } from "../../src/observability/metrics.ts";
import { formatMessageId } from "../../src/protocol.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { FailingStore } from "../helpers/failing-store.ts";

/** Stands in for a runtime's upgrade helper: answers 299 where the real one would upgrade (101 cannot be built). */
const UPGRADED = 299;
const fakeUpgrade = (() => async () => new Response(null, { status: UPGRADED })) as unknown as UpgradeWebSocket;

function build(env: Record<string, string> = {}) {
  const store = new FailingStore(new MemoryStore());
  const hub = new MemoryHub(store, silentLogger);
  const chat = createChat({
    // chat.test is the Host of these requests (ALLOWED_HOSTS: see limits.test.ts and the fair-use cases).
    config: loadConfig({ ALLOWED_HOSTS: "chat.test", ...env }),
    hub,
    store,
    logger: silentLogger,
    metrics: noopMetrics,
    upgradeWebSocket: fakeUpgrade,
  });
  return { chat, store };
}

const upgrade = { Upgrade: "websocket", Connection: "Upgrade", Host: "chat.test" };

describe("createChat routes", () => {
  it("/healthz turns 503 once draining, and /websocket refuses new connections with 503 JSON", async () => {
    const { chat } = build();
    expect((await chat.app.request("/healthz")).status).toBe(200);
    expect((await chat.app.request("/websocket", { headers: upgrade })).status).toBe(UPGRADED);
    chat.drain();
    const health = await chat.app.request("/healthz");
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ status: "draining" });
    const ws = await chat.app.request("/websocket", { headers: upgrade });
    expect(ws.status).toBe(503);
    expect(await ws.json()).toEqual({ error: expect.any(String) });
  });

  it("a plain GET on /websocket is 426 JSON", async () => {
    const res = await build().chat.app.request("/websocket");
    expect(res.status).toBe(426);
    expect(await res.json()).toEqual({ error: expect.any(String) });
  });

  it("/metrics is 404 JSON where the runtime serves no metrics", async () => {
    const res = await build().chat.app.request("/metrics");
    expect(res.status).toBe(404);
  });

  it("/rooms/:room/messages caps limit at 500 and answers 503 JSON when the store cannot read", async () => {
    const { chat, store } = build();
    for (let i = 0; i < 600; i++) {
      await store.append({
        type: "message",
        id: formatMessageId(1000 + i, 0),
        room: "big",
        user: "u",
        message: `${i}`,
        ts: 1,
      });
    }
    const res = await chat.app.request("/rooms/big/messages?limit=100000");
    expect(((await res.json()) as { messages: unknown[] }).messages).toHaveLength(500);
    for (const bad of ["0", "-1", "1.5", "x", ""]) {
      expect((await chat.app.request(`/rooms/big/messages?limit=${bad}`)).status, bad).toBe(400);
    }
    store.failReads = true;
    const down = await chat.app.request("/rooms/big/messages");
    expect(down.status).toBe(503);
    expect(await down.json()).toEqual({ error: expect.any(String) });
  });

  it("unknown paths are 404 JSON; every answer carries the security headers", async () => {
    const res = await build().chat.app.request("/nope");
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ error: "not found" });
    expect(res.headers.get("content-security-policy")).toContain("default-src 'self'");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
  });

  it("a Host that is not allowed is refused 403 before anything else (DNS rebinding)", async () => {
    const { chat } = build({ ALLOWED_HOSTS: "other.test" });
    const res = await chat.app.request("/websocket", { headers: upgrade });
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ error: expect.stringMatching(/host/) });
    expect((await chat.app.request("/rooms/lobby/messages", { headers: { Host: "chat.test" } })).status).toBe(403);
    expect((await chat.app.request("/rooms/lobby/messages", { headers: { Host: "other.test" } })).status).toBe(200);
  });

  it("the origin rule compares host and port with Host", async () => {
    const { chat } = build({ ALLOWED_ORIGINS: "https://ok.example" });
    const status = async (origin: string, host = "chat.test:8888") =>
      (await chat.app.request("/websocket", { headers: { ...upgrade, Host: host, Origin: origin } })).status;
    expect(await status("http://chat.test:8888")).toBe(UPGRADED);
    expect(await status("https://CHAT.test:8888")).toBe(UPGRADED);
    expect(await status("http://chat.test:8889")).toBe(403);
    expect(await status("http://chat.test")).toBe(403);
    expect(await status("https://ok.example")).toBe(UPGRADED);
    expect(await status("https://ok.example:444")).toBe(403);
    expect(await status("not a url")).toBe(403);
    expect(await status("null")).toBe(403);
  });
});
