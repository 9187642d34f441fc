/**
 * Session cases a real server cannot show on demand: a store that fails while
 * a message is sent or a room is joined, frames that arrive before the join
 * has finished, throttles measured in time.
 */
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.ts";
import { MemoryHub } from "../../src/hub/memory.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { noopMetrics } from "../../src/observability/metrics.ts";
import { Session, type SessionInit } from "../../src/session.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { FailingStore } from "../helpers/failing-store.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";

function setup(env: Record<string, string> = {}) {
  const config = loadConfig({ RATE_LIMIT: "0", ...env });
  const store = new FailingStore(new MemoryStore());
  const hub = new MemoryHub(store, silentLogger);
  const deps = { hub, store, config, logger: silentLogger, metrics: noopMetrics };
  const open = async (init: Partial<SessionInit> = {}) => {
    const session = new Session(deps, { room: "r", name: null, mode: "v1", since: null, ...init });
    const socket = new FakeSocket();
    await session.open(socket);
    return { session, socket };
  };
  return { config, store, hub, open };
}

const j = JSON.stringify;

describe("Session", () => {
  it("v1: the welcome is the first frame, then the presence of the joiner", async () => {
    const { open } = setup();
    const { socket } = await open({ name: "alice" });
    expect(socket.frames[0]).toMatchObject({
      type: "welcome",
      room: "r",
      user: "alice",
      users: ["alice"],
      history: [],
    });
  });

  it("seed: no welcome, no presence; messages only", async () => {
    const { open } = setup();
    const { session, socket } = await open({ mode: "seed", name: "sue" });
    session.message(j({ message: "hi" }));
    await socket.waitFor("message");
    expect(socket.frames.map((f) => f.type)).toEqual(["message"]);
  });

  it("frames that arrive before the join finished are handled after the welcome, in order", async () => {
    const { hub, store } = setup();
    const config = loadConfig({ RATE_LIMIT: "0" });
    const session = new Session(
      { hub, store, config, logger: silentLogger, metrics: noopMetrics },
      { room: "r", name: "eve", mode: "v1", since: null },
    );
    const socket = new FakeSocket();
    const opened = session.open(socket);
    session.message(j({ message: "one" }));
    session.message(j({ type: "ping" }));
    session.message(j({ message: "two" }));
    await opened;
    await socket.waitFor("message", 2);
    expect(socket.frames.map((f) => (f.type === "message" ? f.message : f.type))).toEqual([
      "welcome",
      "presence",
      "one",
      "pong",
      "two",
    ]);
  });

  for (const mode of ["reject", "throw"] as const) {
    it(`a store that fails (${mode}) answers the sender with unavailable and its cid; nobody gets the message`, async () => {
      const { open, store } = setup();
      const a = await open({ name: "alice" });
      const b = await open({ name: "bob" });
      store.failAppends = mode;
      a.session.message(j({ message: "lost", cid: "c-1" }));
      const [err] = await a.socket.waitFor("error");
      expect(err).toEqual({ type: "error", code: "unavailable", message: expect.any(String), cid: "c-1" });
      store.failAppends = "none";
      a.session.message(j({ message: "kept" }));
      await b.socket.waitFor("message");
      expect(b.socket.ofType("message").map((f) => f.message)).toEqual(["kept"]);
      expect(b.socket.ofType("error")).toEqual([]);
    });
  }

  it("a welcome that cannot be read closes with 1013 and leaves the room at once", async () => {
    const { open, store, hub } = setup();
    store.failReads = true;
    const { socket } = await open({ name: "ghost" });
    expect(socket.closes).toEqual([{ code: 1013, reason: expect.any(String) }]);
    expect(socket.sent).toEqual([]);
    expect(await hub.users("r")).toEqual([]);
  });

  it("a history request the store cannot answer gets unavailable", async () => {
    const { open, store } = setup();
    const { session, socket } = await open({ name: "hank" });
    store.failReads = true;
    session.message(j({ type: "history", limit: 5 }));
    expect((await socket.waitFor("error"))[0]).toMatchObject({ code: "unavailable" });
  });

  it("binary frames: unsupported_data, or 1009 past the frame limit", async () => {
    const { open } = setup({ MAX_FRAME_BYTES: "1024" });
    const { session, socket } = await open({ name: "bin" });
    session.message(new Uint8Array(10).buffer);
    expect((await socket.waitFor("error"))[0]).toMatchObject({ code: "unsupported_data" });
    session.message(new Uint8Array(1025).buffer);
    expect(socket.closes).toEqual([{ code: 1009, reason: expect.any(String) }]);
  });

  it("text frames past the frame limit close with 1009, counting UTF-8 bytes", async () => {
    const { open } = setup({ MAX_FRAME_BYTES: "1024" });
    const ok = await open({ name: "a" });
    ok.session.message(j({ message: "é".repeat(500) })); // 1000 bytes of message
    await ok.socket.waitFor("message");
    expect(ok.socket.closes).toEqual([]);
    const big = await open({ name: "b" });
    big.session.message(j({ message: "é".repeat(510) })); // 510 characters, 1034 bytes
    expect(big.socket.closes).toEqual([{ code: 1009, reason: expect.any(String) }]);
  });

  it("typing is relayed at most once a second per connection", async () => {
    const { open } = setup();
    const a = await open({ name: "alice" });
    const b = await open({ name: "bob" });
    a.session.message(j({ type: "typing" }));
    a.session.message(j({ type: "typing" }));
    a.session.message(j({ type: "typing" }));
    expect(b.socket.ofType("typing")).toEqual([{ type: "typing", user: "alice" }]);
  });

  it("the rate limit drops the excess with rate_limited and the frame's cid", async () => {
    const { open } = setup({ RATE_LIMIT: "3" });
    const { session, socket } = await open({ name: "spam" });
    for (let i = 0; i < 5; i++) session.message(j({ message: `m${i}`, cid: `c${i}` }));
    await socket.waitFor("message", 3);
    expect(socket.ofType("error").map((f) => [f.code, f.cid])).toEqual([
      ["rate_limited", "c3"],
      ["rate_limited", "c4"],
    ]);
  });

  it("a message stored before the welcome is read but fanned out after the release reaches the joiner once", async () => {
    const inner = new MemoryStore();
    let commit!: () => void;
    const committed = new Promise<void>((r) => {
      commit = r;
    });
    // Readable at once, acknowledged later: the window between a batch's
    // commit and its fan-out, held open.
    const store = new (class extends FailingStore {
      override append(m: Parameters<MemoryStore["append"]>[0]): Promise<void> {
        inner.append(m);
        return committed;
      }
    })(inner);
    const hub = new MemoryHub(store, silentLogger);
    const deps = { hub, store, config: loadConfig({ RATE_LIMIT: "0" }), logger: silentLogger, metrics: noopMetrics };
    const a = new Session(deps, { room: "r", name: "alice", mode: "v1", since: null });
    await a.open(new FakeSocket());
    a.message(j({ message: "in the window" }));
    const b = new Session(deps, { room: "r", name: "bob", mode: "v1", since: null });
    const socket = new FakeSocket();
    await b.open(socket);
    expect((socket.frames[0]!.history as { message: string }[]).map((m) => m.message)).toEqual(["in the window"]);
    commit();
    await hub.close();
    expect(socket.ofType("message")).toEqual([]);
  });

  it("closed before the join finished: the member leaves and gets nothing", async () => {
    const { hub, store } = setup();
    const config = loadConfig({});
    const session = new Session(
      { hub, store, config, logger: silentLogger, metrics: noopMetrics },
      { room: "r", name: "quick", mode: "v1", since: null },
    );
    const socket = new FakeSocket();
    const opened = session.open(socket);
    session.closed(1000);
    await opened;
    expect(await hub.users("r")).toEqual([]);
    session.message(j({ message: "late" }));
    session.closed(1000); // twice is fine
    expect(socket.ofType("message")).toEqual([]);
  });
});
