/**
 * Fair use inside one session, where a real server cannot show the case on
 * demand: frames that pile up before the welcome because the join is slow
 * (Redis paused, in the issue), the per-address connection count, and the
 * bounded error log lines.
 */
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.ts";
import { MemoryHub } from "../../src/hub/memory.ts";
import { AddressLimits } from "../../src/limits/limiter.ts";
import type { Logger } from "../../src/observability/logger.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { noopMetrics } from "../../src/observability/metrics.ts";
import { CloseCode } from "../../src/protocol.ts";
import { ERROR_LINES_PER_CONNECTION, INBOX_MAX_FRAMES, Session } from "../../src/session.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";

/** A hub whose joins wait until `open()` is called, as a join behind a paused Redis does. */
function slowHub() {
  const hub = new MemoryHub(new MemoryStore(), silentLogger, null, null, 0);
  const join = hub.join.bind(hub);
  let open!: () => void;
  const gate = new Promise<void>((r) => {
    open = r;
  });
  hub.join = async (room, member) => {
    await gate;
    return join(room, member);
  };
  return { hub, open };
}

function lines(): { logger: Logger; msgs: { fields: Record<string, unknown>; msg: string }[] } {
  const msgs: { fields: Record<string, unknown>; msg: string }[] = [];
  const at = (fields: object, msg?: string) => msgs.push({ fields: fields as Record<string, unknown>, msg: msg ?? "" });
  const logger: Logger = { debug: at, info: at, warn: at, error: at, child: () => logger };
  return { logger, msgs };
}

const init = { room: "r", name: "eve", mode: "v1" as const, since: null };

describe("inbox before the welcome", () => {
  it(`holds ${INBOX_MAX_FRAMES} frames, then closes with 1008 and sends no welcome`, async () => {
    const { hub, open } = slowHub();
    const config = loadConfig({ RATE_LIMIT: "0" });
    const session = new Session({ hub, store: hub.store, config, logger: silentLogger, metrics: noopMetrics }, init);
    const socket = new FakeSocket();
    const opening = session.open(socket);
    for (let i = 0; i < INBOX_MAX_FRAMES; i++) session.message(JSON.stringify({ message: `m${i}` }));
    expect(socket.closes).toEqual([]);
    session.message(JSON.stringify({ message: "one too many" }));
    expect(socket.closes).toEqual([{ code: CloseCode.PolicyViolation, reason: "too many frames before the welcome" }]);
    open();
    await opening;
    expect(socket.sent).toEqual([]);
    expect(await hub.users("r")).toEqual([]); // it left when the join settled
  });

  it("holds at most 256 KiB: four frames of 60 KB pass, the fifth closes with 1008", async () => {
    const { hub, open } = slowHub();
    const config = loadConfig({ RATE_LIMIT: "0", MAX_MESSAGE_LENGTH: "100000" });
    const session = new Session({ hub, store: hub.store, config, logger: silentLogger, metrics: noopMetrics }, init);
    const socket = new FakeSocket();
    const opening = session.open(socket);
    const big = JSON.stringify({ message: "x".repeat(60_000) });
    for (let i = 0; i < 4; i++) session.message(big);
    expect(socket.closes).toEqual([]);
    session.message(big);
    expect(socket.closes.map((c) => c.code)).toEqual([1008]);
    open();
    await opening;
  });

  it("a client that stays within the bound gets every held frame handled after the welcome", async () => {
    const { hub, open } = slowHub();
    const config = loadConfig({ RATE_LIMIT: "0" });
    const session = new Session({ hub, store: hub.store, config, logger: silentLogger, metrics: noopMetrics }, init);
    const socket = new FakeSocket();
    const opening = session.open(socket);
    for (let i = 0; i < 10; i++) session.message(JSON.stringify({ message: `m${i}` }));
    open();
    await opening;
    const got = await socket.waitFor("message", 10);
    expect(got.map((f) => f.message)).toEqual([...Array(10).keys()].map((i) => `m${i}`));
    expect(socket.frames[0]!.type).toBe("welcome");
  });
});

describe("per-address connection count", () => {
  it("a session counts while open and is released at close; past the cap it is closed with 1008", async () => {
    const config = loadConfig({ MAX_CONNECTIONS_PER_IP: "2" });
    const hub = new MemoryHub(new MemoryStore(), silentLogger, null, null, 0);
    const addresses = new AddressLimits(config);
    const deps = { hub, store: hub.store, config, logger: silentLogger, metrics: noopMetrics, addresses };
    const sessions = [];
    for (let i = 0; i < 3; i++) {
      const s = new Session(deps, { ...init, name: `u${i}`, address: "10.0.0.1" });
      const socket = new FakeSocket();
      await s.open(socket);
      sessions.push({ s, socket });
    }
    expect(addresses.connections("10.0.0.1")).toBe(2);
    expect(sessions[2]!.socket.closes.map((c) => c.code)).toEqual([1008]);
    sessions[2]!.s.closed(1008);
    expect(addresses.connections("10.0.0.1")).toBe(2);
    sessions[0]!.s.closed(1000);
    sessions[0]!.s.closed(1000); // twice is harmless
    expect(addresses.connections("10.0.0.1")).toBe(1);
  });
});

describe("error lines", () => {
  it(`logs the first ${ERROR_LINES_PER_CONNECTION} errors of a connection, then only a count at close`, async () => {
    const { logger, msgs } = lines();
    const config = loadConfig({ RATE_LIMIT: "0" });
    const hub = new MemoryHub(new MemoryStore(), silentLogger, null, null, 0);
    const session = new Session({ hub, store: hub.store, config, logger, metrics: noopMetrics }, init);
    const socket = new FakeSocket();
    await session.open(socket);
    for (let i = 0; i < 1000; i++) session.message("not json");
    expect(socket.ofType("error")).toHaveLength(1000);
    expect(msgs.filter((m) => m.msg === "error sent to client")).toHaveLength(ERROR_LINES_PER_CONNECTION);
    session.closed(1000);
    const closed = msgs.find((m) => m.msg === "connection closed");
    expect(closed?.fields.errorsNotLogged).toBe(1000 - ERROR_LINES_PER_CONNECTION);
    expect(msgs.length).toBeLessThan(10);
  });
});

describe("invalid-frame budget", () => {
  it("answers 1000 bad frames, then one rate_limited, then drops every frame for retryAfterMs (at least 1 s); then frames work", async () => {
    const config = loadConfig({});
    const hub = new MemoryHub(new MemoryStore(), silentLogger, null, null, 0);
    const session = new Session({ hub, store: hub.store, config, logger: silentLogger, metrics: noopMetrics }, init);
    const socket = new FakeSocket();
    await session.open(socket);
    const t0 = Date.now();
    for (let i = 0; i < 5000; i++) session.message("x");
    const refilled = Math.ceil(((Date.now() - t0) / 1000) * 100);
    const errors = socket.ofType("error");
    const answered = errors.filter((e) => e.code === "invalid_json").length;
    expect(answered).toBeGreaterThanOrEqual(1000);
    expect(answered).toBeLessThanOrEqual(1000 + refilled);
    expect(answered + 1).toBe(errors.length);
    const limited = errors.filter((e) => e.code === "rate_limited");
    // One when the budget ran out; then the connection is muted for a second.
    expect(limited).toHaveLength(1);
    expect(errors.length).toBeLessThan(5000);
    // Muted: every frame, a valid one too, is dropped unread for the retryAfterMs it was told.
    const wait = limited.at(-1)!.retryAfterMs as number;
    expect(wait).toBeGreaterThanOrEqual(1000);
    session.message(JSON.stringify({ type: "ping" }));
    expect(socket.ofType("pong")).toHaveLength(0);
    await new Promise((r) => setTimeout(r, wait));
    session.message(JSON.stringify({ type: "ping" }));
    expect(socket.ofType("pong")).toHaveLength(1);
  });
});
