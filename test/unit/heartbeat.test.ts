/**
 * The shared heartbeat (runtime/start.ts) on fake timers: which sockets it
 * pings and which it terminates, round by round.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { Heartbeat } from "../../src/runtime/start.ts";

class FakePingable {
  pings = 0;
  terminated = false;
  ping(): void {
    this.pings++;
  }
  terminate(): void {
    this.terminated = true;
  }
}

afterEach(() => {
  vi.useRealTimers();
});

describe("Heartbeat", () => {
  it("pings every interval; a socket that answered none of the last two pings is terminated, one that answers stays", () => {
    vi.useFakeTimers();
    const silent = new FakePingable();
    const answering = new FakePingable();
    const sockets = new Set([silent, answering]);
    const heartbeat = new Heartbeat(() => sockets, 1000);
    heartbeat.opened(silent);
    heartbeat.opened(answering);
    for (let round = 1; round <= 2; round++) {
      vi.advanceTimersByTime(1000);
      heartbeat.ponged(answering);
    }
    expect(silent.pings).toBe(2);
    expect(silent.terminated).toBe(false);
    vi.advanceTimersByTime(1000);
    expect(silent.terminated).toBe(true);
    expect(silent.pings).toBe(2);
    sockets.delete(silent);
    for (let round = 0; round < 10; round++) {
      heartbeat.ponged(answering);
      vi.advanceTimersByTime(1000);
    }
    expect(answering.terminated).toBe(false);
    expect(answering.pings).toBe(13);
    heartbeat.stop();
  });

  it("a socket opened just before a ping is terminated more than two intervals after it opened; 0 turns the heartbeat off", () => {
    vi.useFakeTimers();
    const late = new FakePingable();
    const heartbeat = new Heartbeat(() => [late], 1000);
    vi.advanceTimersByTime(999);
    heartbeat.opened(late);
    vi.advanceTimersByTime(1 + 1000);
    expect(late.terminated).toBe(false);
    expect(late.pings).toBe(2);
    vi.advanceTimersByTime(1000);
    expect(late.terminated).toBe(true);
    heartbeat.stop();

    const off = new FakePingable();
    const none = new Heartbeat(() => [off], 0);
    none.opened(off);
    vi.advanceTimersByTime(60_000);
    expect(off.pings).toBe(0);
    expect(off.terminated).toBe(false);
  });
});
