/**
 * MemoryHub with a {@link Broadcaster} (the seam the runtimes' room
 * broadcasters plug into: WsBroadcaster on Node, BunBroadcaster on Bun) must
 * keep the whole hub contract: the same suite runs over an in-process topic
 * table (publish skips `except`, reports backpressure), plus the cases only a
 * broadcaster has.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { type Broadcaster, type ChatSocket, Member } from "../../src/hub/hub.ts";
import { MemoryHub } from "../../src/hub/memory.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { formatMessageId } from "../../src/protocol.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";
import { hubContract } from "./hub.contract.ts";

/** Topics as Bun keeps them: channel -> subscribed sockets. */
class TopicTable implements Broadcaster {
  readonly topics = new Map<string, Set<ChatSocket>>();
  /** Channels published to, in order. */
  readonly published: string[] = [];

  subscribe(socket: ChatSocket, channel: string): void {
    let set = this.topics.get(channel);
    if (!set) {
      set = new Set();
      this.topics.set(channel, set);
    }
    set.add(socket);
  }
  unsubscribe(socket: ChatSocket, channel: string): void {
    this.topics.get(channel)?.delete(socket);
  }
  publish(channel: string, text: string, except: ChatSocket | null): boolean {
    this.published.push(channel);
    let backed = false;
    for (const s of this.topics.get(channel) ?? []) {
      if (s === except) continue;
      s.send(text);
      backed ||= s.bufferedAmount() > 0;
    }
    return backed;
  }
}

hubContract("MemoryHub + topic broadcaster", async (options = {}) => {
  const base = new MemoryStore();
  const store = options.wrapStore ? options.wrapStore(base) : base;
  const hub = new MemoryHub(store, silentLogger, new TopicTable(), null, options.presenceIntervalMs);
  return { hubs: [hub], cleanup: () => hub.close() };
});

describe("MemoryHub + topic broadcaster", () => {
  async function setup() {
    const topics = new TopicTable();
    const hub = new MemoryHub(new MemoryStore(), silentLogger, topics, null, 0);
    const join = async (name: string | null, mode: "v1" | "seed" = "v1", release = true) => {
      const socket = new FakeSocket();
      const member = new Member(socket, name, mode, 1000);
      await hub.join("r", member);
      if (release) member.release(null, null);
      return { socket, member };
    };
    return { topics, hub, join };
  }

  it("sends room frames to released members through the broadcaster, not one by one", async () => {
    const { topics, hub, join } = await setup();
    const a = await join("a");
    const s = await join(null, "seed");
    await hub.publish("r", a.member, { user: "a", message: "hi" });
    expect(topics.published.filter((c) => c === "m:r")).toHaveLength(1);
    expect(topics.topics.get("m:r")?.size).toBe(2);
    expect(topics.topics.get("v:r")?.size).toBe(1); // the seed member gets no presence or typing
    expect(s.socket.frames.map((f) => f.message)).toEqual(["hi"]);
  });

  it("queues frames for a held member and subscribes it only once released, welcome first", async () => {
    const { topics, hub, join } = await setup();
    const a = await join("a");
    const held = await join("h", "v1", false);
    const first = await hub.publish("r", a.member, { user: "a", message: "one" });
    expect(held.socket.sent).toEqual([]);
    expect(topics.topics.get("m:r")?.has(held.socket)).toBe(false);
    held.member.release('{"type":"welcome"}', first.id); // its history held "one"
    await hub.publish("r", a.member, { user: "a", message: "two" });
    expect(held.socket.frames.map((f) => f.type)).toEqual(["welcome", "presence", "message"]);
    expect(held.socket.frames[2]?.message).toBe("two");
  });

  it("closes a subscriber past the buffer limit with 1013 and broadcasts nothing more to it", async () => {
    const { topics, hub, join } = await setup();
    const a = await join("a");
    const slow = await join(null);
    slow.socket.buffered = 5000;
    await hub.publish("r", a.member, { user: "a", message: "x" });
    expect(slow.socket.closes).toEqual([{ code: 1013, reason: expect.any(String) }]);
    expect(topics.topics.get("m:r")?.has(slow.socket)).toBe(false);
    await hub.publish("r", a.member, { user: "a", message: "y" });
    expect(slow.socket.ofType("message").map((f) => f.message)).toEqual(["x"]);
    expect(a.socket.frames.filter((f) => f.type === "message").map((f) => f.message)).toEqual(["x", "y"]);
    expect(slow.socket.closes).toHaveLength(1);
  });

  afterEach(() => {
    vi.useRealTimers();
  });

  it("a fan-out landing just after the release, of a message the welcome held, is not sent again", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(1_800_000_000_000);
    const { hub, join } = await setup();
    const a = await join("a");
    const late = await join("l", "v1", false);
    // Its welcome's history already holds the next message (the store was
    // read after the write, before the fan-out).
    late.member.release('{"type":"welcome"}', formatMessageId(1_800_000_000_000, 0));
    await hub.publish("r", a.member, { user: "a", message: "in the welcome" });
    await hub.publish("r", a.member, { user: "a", message: "after it" });
    expect(late.socket.ofType("message").map((f) => f.message)).toEqual(["after it"]);
  });

  it("unsubscribes a member that leaves", async () => {
    const { topics, hub, join } = await setup();
    const a = await join("a");
    const b = await join("b");
    await hub.publish("r", a.member, { user: "a", message: "x" });
    hub.leave("r", b.member);
    expect(topics.topics.get("m:r")?.has(b.socket)).toBe(false);
    expect(topics.topics.get("v:r")?.has(b.socket)).toBe(false);
  });
});
