/**
 * Bun's room fan-out (BunBroadcaster, src/runtime/bun-ws.ts) over a fake of
 * Bun's ServerWebSocket that records every write (a corked batch is one
 * write), through a real MemoryHub and its rooms: a turn's broadcasts reach
 * each subscriber in one write, in the order everything was sent, and the
 * slow-consumer rule (1013) still holds, whether the broadcasts come from a
 * frame being read (flushed at setImmediate) or from elsewhere, such as a
 * store batch's fan-out (flushed in a microtask of the same job). The same
 * code runs against real Bun in test/integration/bun.test.ts.
 */
import type { WSContext } from "hono/ws";
import { describe, expect, it, vi } from "vitest";
import type { Config } from "../../src/config.ts";
import { type ChatSocket, Member } from "../../src/hub/hub.ts";
import { MemoryHub } from "../../src/hub/memory.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import type { ChatMessage } from "../../src/protocol.ts";
import { BunBroadcaster, type BunSocket, toSocket, websocketOptions } from "../../src/runtime/bun-ws.ts";
import { MemoryStore } from "../../src/store/memory.ts";

/** What the broadcaster uses of Bun's socket; `writes` holds one entry per system call it would make. */
class FakeBunSocket {
  readyState = 1;
  readonly data = {} as BunSocket["data"];
  buffered = 0;
  readonly writes: string[][] = [];
  readonly closes: { code?: number; reason?: string }[] = [];
  #corked: string[] | null = null;

  send(text: string): number {
    if (this.#corked) this.#corked.push(text);
    else this.writes.push([text]);
    return text.length;
  }
  cork(fn: (ws: BunSocket) => void): void {
    this.#corked = [];
    fn(this as unknown as BunSocket);
    const batch = this.#corked;
    this.#corked = null;
    if (batch.length > 0) this.writes.push(batch);
  }
  close(code?: number, reason?: string): void {
    this.closes.push({ code, reason });
    this.readyState = 2;
  }
  terminate(): void {}
  ping(): number {
    return 0;
  }
  getBufferedAmount(): number {
    return this.buffered;
  }

  /** Every frame in order, parsed. */
  get frames(): Record<string, unknown>[] {
    return this.writes.flat().map((t) => JSON.parse(t) as Record<string, unknown>);
  }
  /** Message texts but the warm-up's. */
  messages(): unknown[] {
    return this.frames.filter((f) => f.type === "message" && f.message !== "warm").map((f) => f.message);
  }
}

/** Past the check phase: whichever way a flush was scheduled, it has run. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Runs the microtasks queued so far (and those they queue), not the next check phase. */
async function microtasks(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

const { options } = websocketOptions({
  heartbeatMs: 0,
  maxFrameBytes: 1 << 20,
  maxBufferedBytes: 1 << 20,
  wsCompression: false,
} as Config);

/** Runs `fn` as the app's handler of a frame Bun's `message` handler hands over. */
function inFrame(fn: () => void): void {
  const ws = {
    data: { events: { onMessage: fn }, protocol: "", ctx: null, init: null, session: null, pongRound: 0 },
  } as unknown as BunSocket;
  options.message(ws, "{}");
}

/** Runs `fn` in a job of its own that is not a frame handler (a store batch's fan-out, a timer). */
function outside(fn: () => void): void {
  fn();
}

/**
 * A store whose appends settle together, as SQLite's do: one promise per
 * batch, resolved after its commit in a setImmediate.
 */
class BatchStore extends MemoryStore {
  #batch: Promise<void> | null = null;

  override append(message: ChatMessage): Promise<void> {
    super.append(message);
    this.#batch ??= new Promise((resolve) =>
      setImmediate(() => {
        this.#batch = null;
        resolve();
      }),
    );
    return this.#batch;
  }
}

let seq = 0;
async function setup(maxBuffered = 1000, store = new MemoryStore()) {
  const broadcaster = new BunBroadcaster(maxBuffered);
  const hub = new MemoryHub(store, silentLogger, broadcaster, null, 0);
  const join = async (name: string | null, mode: "v1" | "seed" = "v1", release = true) => {
    const raw = new FakeBunSocket();
    const socket: ChatSocket = toSocket({ raw } as unknown as WSContext, `b${++seq}`);
    const member = new Member(socket, name, mode, maxBuffered);
    await hub.join("r", member);
    if (release) member.release(null, null);
    return { raw, socket, member };
  };
  /**
   * Rooms subscribe released members on their next delivery (until then they
   * get frames one by one): one message, flushed, makes every member live.
   */
  const warm = async (from: Member) => {
    await hub.publish("r", from, { user: "w", message: "warm" });
    await settle();
  };
  return { broadcaster, hub, join, warm };
}

describe("BunBroadcaster: when a turn is flushed", () => {
  it("broadcasts made outside a frame handler are written once the job's microtasks run, in one write", async () => {
    const { hub, join, warm } = await setup();
    const a = await join("a");
    const s = await join(null, "seed");
    await warm(a.member);
    const [aBefore, sBefore] = [a.raw.writes.length, s.raw.writes.length];
    for (const message of ["one", "two", "three"]) void hub.publish("r", a.member, { user: "a", message });
    expect(s.raw.messages()).toEqual([]); // queued
    await microtasks();
    expect(a.raw.writes.slice(aBefore)).toHaveLength(1);
    expect(s.raw.writes.slice(sBefore)).toHaveLength(1);
    expect(s.raw.messages()).toEqual(["one", "two", "three"]);
  });

  it("broadcasts made while frames are read wait for the check phase, across frames", async () => {
    const { hub, join, warm } = await setup();
    const a = await join("a");
    const s = await join(null, "seed");
    await warm(a.member);
    const [aBefore, sBefore] = [a.raw.writes.length, s.raw.writes.length];
    inFrame(() => void hub.publish("r", a.member, { user: "a", message: "one" }));
    await microtasks(); // Bun runs microtasks between two frames' handlers
    inFrame(() => void hub.publish("r", a.member, { user: "a", message: "two" }));
    await microtasks();
    expect(s.raw.messages()).toEqual([]); // still queued
    await settle();
    expect(a.raw.writes.slice(aBefore)).toHaveLength(1);
    expect(s.raw.writes.slice(sBefore)).toHaveLength(1);
    expect(s.raw.messages()).toEqual(["one", "two"]);
  });

  it("the frame handler's flag is cleared when it returns, even when the app throws", async () => {
    const { hub, join, warm } = await setup();
    const a = await join("a");
    const b = await join("b");
    await warm(a.member);
    const error = vi.spyOn(console, "error").mockImplementation(() => {});
    inFrame(() => {
      throw new Error("app failed");
    });
    error.mockRestore();
    void hub.publish("r", a.member, { user: "a", message: "after" });
    await microtasks();
    expect(b.raw.messages()).toEqual(["after"]);
  });

  it("a store batch read in frame handlers fans out after its commit and is written in the same job, in one write", async () => {
    const { hub, join, warm } = await setup(1000, new BatchStore());
    const a = await join("a");
    const b = await join("b");
    await warm(a.member);
    const [aBefore, bBefore] = [a.raw.writes.length, b.raw.writes.length];
    const sent: Promise<unknown>[] = [];
    inFrame(() => sent.push(hub.publish("r", a.member, { user: "a", message: "one" })));
    inFrame(() => sent.push(hub.publish("r", a.member, { user: "a", message: "two", cid: "c2" })));
    await microtasks();
    expect(b.raw.messages()).toEqual([]); // not committed yet
    // The callers' promises settle in the job of the batch's fan-out, after
    // its flush: a setImmediate flush would leave the batch for a later turn.
    await Promise.all(sent);
    expect(b.raw.writes.slice(bBefore)).toHaveLength(1);
    expect(b.raw.messages()).toEqual(["one", "two"]);
    expect(a.raw.writes.slice(aBefore)).toHaveLength(1);
    expect(a.raw.frames.slice(-2).map((f) => [f.message, f.cid])).toEqual([
      ["one", undefined],
      ["two", "c2"],
    ]);
  });
});

describe.each([
  { where: "outside a frame handler", turn: outside },
  { where: "in a frame handler", turn: inFrame },
])("BunBroadcaster: broadcasts made $where", ({ turn }) => {
  it("sends a turn's broadcasts to each subscriber in one write, in order", async () => {
    const { hub, join, warm } = await setup();
    const a = await join("a");
    const s = await join(null, "seed");
    await warm(a.member);
    const seedWrites = s.raw.writes.length;
    const before = a.raw.writes.length;
    turn(() => {
      for (const message of ["one", "two", "three"]) void hub.publish("r", a.member, { user: "a", message });
    });
    expect(s.raw.messages()).toEqual([]); // queued until the turn's flush
    await settle();
    expect(a.raw.writes.slice(before)).toHaveLength(1);
    expect(a.raw.messages()).toEqual(["one", "two", "three"]);
    expect(s.raw.writes.slice(seedWrites)).toHaveLength(1);
    expect(s.raw.messages()).toEqual(["one", "two", "three"]);
    // A seed member is not on the v1 channel: no presence.
    expect(s.raw.frames.some((f) => f.type === "presence")).toBe(false);
  });

  it("a turn with one broadcast sends it as one plain write, not to its sender when it has an echo", async () => {
    const { hub, join, warm } = await setup();
    const a = await join("a");
    const b = await join("b");
    await warm(a.member);
    const [aBefore, bBefore] = [a.raw.writes.length, b.raw.writes.length];
    turn(() => void hub.publish("r", a.member, { user: "a", message: "alone", cid: "c1" }));
    await settle();
    expect(a.raw.writes.slice(aBefore).map((w) => w.map((t) => JSON.parse(t).cid))).toEqual([["c1"]]);
    expect(b.raw.writes.slice(bBefore)).toEqual([[expect.stringContaining('"alone"')]]);
  });

  it("a socket's own frame goes out after the broadcasts queued before it, in the same write", async () => {
    const { hub, join, warm } = await setup();
    const a = await join("a");
    const b = await join("b");
    await warm(a.member);
    const before = b.raw.writes.length;
    turn(() => {
      void hub.publish("r", a.member, { user: "a", message: "queued" });
      b.member.deliver('{"type":"pong"}');
    });
    expect(b.raw.writes.slice(before)).toEqual([[expect.stringContaining('"queued"'), '{"type":"pong"}']]);
    await settle();
    expect(b.raw.frames.slice(-2).map((f) => f.type)).toEqual(["message", "pong"]); // not sent twice
  });

  it("the sender's echo with a cid replaces its copy of the broadcast, in order", async () => {
    const { hub, join, warm } = await setup();
    const a = await join("a");
    const b = await join("b");
    await warm(a.member);
    turn(() => {
      void hub.publish("r", a.member, { user: "a", message: "first" });
      void hub.publish("r", a.member, { user: "a", message: "second", cid: "c2" });
      void hub.publish("r", a.member, { user: "a", message: "third" });
    });
    await settle();
    const own = a.raw.frames.filter((f) => f.type === "message" && f.message !== "warm");
    expect(own.map((f) => [f.message, f.cid])).toEqual([
      ["first", undefined],
      ["second", "c2"],
      ["third", undefined],
    ]);
    expect(
      b.raw.frames.filter((f) => f.type === "message" && f.message !== "warm").map((f) => [f.message, f.cid]),
    ).toEqual([
      ["first", undefined],
      ["second", undefined],
      ["third", undefined],
    ]);
  });

  it("a member released mid-turn gets only what is queued after it subscribed", async () => {
    const { hub, join } = await setup();
    const a = await join("a");
    const late = await join("l", "v1", false);
    const first = await hub.publish("r", a.member, { user: "a", message: "in its history" });
    await settle();
    late.member.release('{"type":"welcome"}', first.id);
    turn(() => {
      void hub.publish("r", a.member, { user: "a", message: "after" }); // subscribes it, with "after" queued
      void hub.publish("r", a.member, { user: "a", message: "broadcast" });
    });
    await settle();
    expect(late.raw.frames[0]?.type).toBe("welcome");
    expect(late.raw.messages()).toEqual(["after", "broadcast"]);
    expect(a.raw.messages()).toEqual(["in its history", "after", "broadcast"]);
  });

  it("a member that leaves mid-turn still gets what was queued before, then nothing", async () => {
    const { hub, join, warm } = await setup();
    const a = await join("a");
    const b = await join("b");
    await warm(a.member);
    turn(() => {
      void hub.publish("r", a.member, { user: "a", message: "before" });
      hub.leave("r", b.member);
      void hub.publish("r", a.member, { user: "a", message: "after" });
    });
    await settle();
    expect(b.raw.messages()).toEqual(["before"]);
    expect(a.raw.messages()).toEqual(["before", "after"]);
  });

  it("a close goes out after the broadcasts queued before it", async () => {
    const { hub, join, warm } = await setup();
    const a = await join("a");
    const b = await join("b");
    await warm(a.member);
    turn(() => {
      void hub.publish("r", a.member, { user: "a", message: "last" });
      b.socket.close(4003, "banned");
    });
    expect(b.raw.messages()).toEqual(["last"]);
    expect(b.raw.closes).toEqual([{ code: 4003, reason: "banned" }]);
    await settle();
    expect(b.raw.messages()).toEqual(["last"]);
  });

  it("closes a subscriber left past the buffer limit with 1013 and sends it nothing more", async () => {
    const { hub, join, warm } = await setup(1000);
    const a = await join("a");
    const slow = await join(null);
    await warm(a.member);
    slow.raw.buffered = 5000;
    turn(() => void hub.publish("r", a.member, { user: "a", message: "x" }));
    await settle(); // the flush finds it past the limit
    expect(slow.raw.closes).toEqual([]);
    turn(() => void hub.publish("r", a.member, { user: "a", message: "y" })); // ... and this publish says so
    expect(slow.raw.closes).toEqual([{ code: 1013, reason: expect.any(String) }]);
    turn(() => void hub.publish("r", a.member, { user: "a", message: "z" }));
    await settle();
    expect(slow.raw.messages()).toEqual(["x"]);
    expect(a.raw.messages()).toEqual(["x", "y", "z"]);
  });

  it("flushes early when a turn queues much, so the limit is checked within the turn", async () => {
    const { hub, join, warm } = await setup(1000);
    const a = await join("a");
    const slow = await join(null);
    await warm(a.member);
    slow.raw.buffered = 5000;
    const big = "b".repeat(40_000);
    turn(() => {
      void hub.publish("r", a.member, { user: "a", message: big });
      void hub.publish("r", a.member, { user: "a", message: big }); // past 64 Ki units: flushed now
      expect(slow.raw.messages()).toEqual([big, big]);
      void hub.publish("r", a.member, { user: "a", message: "next" });
    });
    expect(slow.raw.closes).toEqual([{ code: 1013, reason: expect.any(String) }]);
    await settle();
    expect(slow.raw.messages()).toEqual([big, big]);
    expect(a.raw.messages()).toEqual([big, big, "next"]);
  });
});

describe("BunBroadcaster", () => {
  it("refuses sockets it cannot write to", () => {
    const broadcaster = new BunBroadcaster(1000);
    const foreign = { id: "x", send() {}, close() {}, bufferedAmount: () => 0 } satisfies ChatSocket;
    expect(() => broadcaster.subscribe(foreign, "m:r")).toThrow(TypeError);
    expect(broadcaster.publish("m:r", "{}", null)).toBe(false);
  });
});
