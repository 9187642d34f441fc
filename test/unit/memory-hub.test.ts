import { describe, expect, it } from "vitest";
import { Member } from "../../src/hub/hub.ts";
import { IdClock, MemoryHub } from "../../src/hub/memory.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { formatMessageId } from "../../src/protocol.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";
import { hubContract } from "./hub.contract.ts";

hubContract("MemoryHub", async (options = {}) => {
  const base = new MemoryStore();
  const store = options.wrapStore ? options.wrapStore(base) : base;
  const hub = new MemoryHub(store, silentLogger, null, null, options.presenceIntervalMs);
  return { hubs: [hub], cleanup: () => hub.close() };
});

describe("IdClock", () => {
  it("uses the time, then a sequence within one millisecond", () => {
    const clock = new IdClock();
    expect(clock.next(1000)).toBe(formatMessageId(1000, 0));
    expect(clock.next(1000)).toBe(formatMessageId(1000, 1));
    expect(clock.next(1001)).toBe(formatMessageId(1001, 0));
  });

  it("never goes back when the clock steps back", () => {
    const clock = new IdClock();
    const a = clock.next(5000);
    const b = clock.next(4000);
    const c = clock.next(4500);
    expect(b > a).toBe(true);
    expect(c > b).toBe(true);
    expect(b).toBe(formatMessageId(5000, 1));
  });

  it("moves to the next millisecond when the sequence is full", () => {
    const clock = new IdClock();
    clock.resumeAfter(formatMessageId(7000, 999_999));
    expect(clock.next(7000)).toBe(formatMessageId(7001, 0));
  });

  it("resumeAfter continues above the store's last id, even from the future", () => {
    const clock = new IdClock();
    clock.resumeAfter(formatMessageId(9000, 5));
    expect(clock.next(8000)).toBe(formatMessageId(9000, 6));
    clock.resumeAfter(formatMessageId(100, 0)); // older: ignored
    expect(clock.next(8000)).toBe(formatMessageId(9000, 7));
    clock.resumeAfter(null);
    expect(clock.next(9500)).toBe(formatMessageId(9500, 0));
  });

  it("ids of increasing values compare as strings in the same order", () => {
    const clock = new IdClock();
    const ids = [1, 9, 10, 99, 100, 1e12, 1e12 + 1].flatMap((t) => [clock.next(t), clock.next(t)]);
    expect([...ids].sort()).toEqual(ids);
  });
});

describe("MemoryHub", () => {
  it("continues after the store's last id (a restart with the same history)", async () => {
    const store = new MemoryStore();
    const future = Date.now() + 60_000;
    store.append({ type: "message", id: formatMessageId(future, 3), room: "r", user: "u", message: "old", ts: future });
    const hub = new MemoryHub(store, silentLogger);
    const member = new Member(new FakeSocket(), "u", "v1");
    await hub.join("r", member);
    const m = await hub.publish("r", member, { user: "u", message: "new" });
    expect(m.id > formatMessageId(future, 3)).toBe(true);
    await hub.close();
  });

  it("refuses to publish to a room the sender is not in", async () => {
    const hub = new MemoryHub(new MemoryStore(), silentLogger);
    const member = new Member(new FakeSocket(), "u", "v1");
    await expect(hub.publish("nowhere", member, { user: "u", message: "x" })).rejects.toThrow();
  });

  it("a room emptied and joined again keeps its ids increasing", async () => {
    const hub = new MemoryHub(new MemoryStore(), silentLogger);
    const a = new Member(new FakeSocket(), "a", "v1");
    await hub.join("r", a);
    a.release(null, null);
    const first = await hub.publish("r", a, { user: "a", message: "1" });
    hub.leave("r", a);
    await hub.close();
    const b = new Member(new FakeSocket(), "b", "v1");
    await hub.join("r", b);
    b.release(null, null);
    const second = await hub.publish("r", b, { user: "b", message: "2" });
    expect(second.id > first.id).toBe(true);
  });
});

describe("Member", () => {
  it("closes a client that does not read with 1013, once, and sends it nothing more", () => {
    const socket = new FakeSocket();
    let slow = 0;
    const member = new Member(socket, "s", "v1", 1000, () => slow++);
    member.release(null, null);
    member.deliver("a");
    socket.buffered = 1001;
    member.deliver("b");
    member.deliver("c");
    expect(socket.sent).toEqual(["a", "b"]);
    expect(socket.closes).toEqual([{ code: 1013, reason: expect.any(String) }]);
    expect(slow).toBe(1);
    expect(member.open).toBe(false);
  });

  it("holds frames until release, and sends the first frame before them", () => {
    const socket = new FakeSocket();
    const member = new Member(socket, null, "v1");
    member.deliver("x", "0000000000001-000000");
    member.deliver("y", "0000000000002-000000");
    member.deliver("z");
    member.release("first", "0000000000001-000000");
    expect(socket.sent).toEqual(["first", "y", "z"]);
  });

  it("a message the welcome covered is not sent again when its fan-out lands after the release", () => {
    const socket = new FakeSocket();
    const member = new Member(socket, null, "v1");
    member.release("welcome", "0000000000005-000000");
    member.deliver("late copy", "0000000000005-000000");
    member.deliver("older", "0000000000004-000000");
    member.deliver("new", "0000000000006-000000");
    member.deliver("again", "0000000000006-000000");
    member.deliver("pong"); // frames without an id are never deduplicated
    member.deliver("pong");
    expect(socket.sent).toEqual(["welcome", "new", "pong", "pong"]);
  });

  it("after detach nothing is delivered", () => {
    const socket = new FakeSocket();
    const member = new Member(socket, null, "v1");
    member.release(null, null);
    member.detach();
    member.deliver("x");
    expect(socket.sent).toEqual([]);
  });
});
