/**
 * Paged replies (src/paging.ts, docs/protocol.md) through a real Session, MemoryHub
 * and MemoryStore, with the one fake a real server cannot give on demand: a
 * socket whose client stops reading (FakeSocket.buffered) and starts again.
 * No timing: "nothing more was sent" is checked after the pager has polled
 * the socket a number of times.
 */
import Database from "better-sqlite3";
import { beforeEach, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.ts";
import { MemoryHub } from "../../src/hub/memory.ts";
import { silentLogger } from "../../src/observability/logger.ts";
import { noopMetrics } from "../../src/observability/metrics.ts";
import { type ChatMessage, formatMessageId } from "../../src/protocol.ts";
import { Session, type SessionInit } from "../../src/session.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { SqliteStore } from "../../src/store/sqlite.ts";
import type { HistoryStore } from "../../src/store/store.ts";
import { FailingStore } from "../helpers/failing-store.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";

/** A FakeSocket that counts how often the server looked at its queue. */
class PolledSocket extends FakeSocket {
  polls = 0;
  override bufferedAmount(): number {
    this.polls++;
    return super.bufferedAmount();
  }

  /** Resolves after the server polled `n` more times (the pager's timer ran). */
  async polledAgain(n = 5): Promise<void> {
    const target = this.polls + n;
    for (let i = 0; i < 1000 && this.polls < target; i++) await new Promise((r) => setTimeout(r, 5));
    if (this.polls < target) throw new Error(`the pager polled ${this.polls} times, not ${target}`);
  }
}

const ROOM = "r";
const BIG = "x".repeat(2000);

/** The store under the pages: memory (since reads all), SQLite (sinceFirst reads the start only). */
let kind: "memory" | "sqlite" = "memory";
const makeStore = (): HistoryStore =>
  kind === "memory" ? new MemoryStore() : new SqliteStore(new Database(":memory:"));

function setup(env: Record<string, string> = {}) {
  const config = loadConfig({ RATE_LIMIT: "0", MAX_CONNECTIONS_PER_IP: "0", ...env });
  const store = new FailingStore(makeStore());
  const hub = new MemoryHub(store, silentLogger);
  const deps = { hub, store, config, logger: silentLogger, metrics: noopMetrics };
  const start = (init: Partial<SessionInit> = {}, socket = new PolledSocket()) => {
    const session = new Session(deps, { room: ROOM, name: null, mode: "v1", since: null, ...init });
    return { session, socket, opened: session.open(socket) };
  };
  const open = async (init: Partial<SessionInit> = {}, socket = new PolledSocket()) => {
    const s = start(init, socket);
    await s.opened;
    return s;
  };
  return { config, store, hub, start, open };
}

/**
 * `n` stored messages of ~2 KB (or `text`), ids in the past so the hub's next
 * ones follow them. 600 of them (1.2 MB) are more than a welcome carries.
 */
async function seed(store: HistoryStore, n: number, text = BIG): Promise<ChatMessage[]> {
  const t0 = Date.now() - 10 * 60_000;
  const all: ChatMessage[] = [];
  for (let i = 0; i < n; i++) {
    const m: ChatMessage = {
      type: "message",
      id: formatMessageId(t0 + i, 0),
      room: ROOM,
      user: "old",
      message: `${i} ${text}`,
      ts: t0 + i,
    };
    all.push(m);
    await store.append(m);
  }
  return all;
}

type Frame = Record<string, unknown>;
const messagesOf = (f: Frame) => (f.type === "welcome" ? f.history : f.messages) as ChatMessage[];

/** Frames of the welcome's reply: the welcome and its history pages up to `more: false`. */
function welcomeReply(frames: Frame[]): Frame[] {
  const out: Frame[] = [];
  for (const f of frames) {
    if (out.length === 0 ? f.type !== "welcome" : f.type !== "history" || "before" in f) continue;
    out.push(f);
    if (f.more !== true) break;
  }
  return out;
}

const isLastPage = (f: Frame) => f.type === "history" && f.more === false;
const pageBytes = (f: Frame) => Buffer.byteLength(JSON.stringify(f));
/** What a welcome or a `history` answer's first frame carries at most (half of MAX_BUFFERED_BYTES). */
const FIRST_BYTES = 512 * 1024;

for (const k of ["memory", "sqlite"] as const)
  describe(`paged replies (${k})`, () => {
    beforeEach(() => {
      kind = k;
    });

    it("a resume of 1000 chat messages is one welcome frame, whole (docs/protocol.md: resume)", async () => {
      const { store, open } = setup();
      const all = await seed(store, 1001, "an ordinary chat message, a line or two of text: nothing paged".repeat(2));
      const { socket } = await open({ since: all[0]!.id });
      const welcome = socket.frames[0]!;
      expect(welcome).toMatchObject({ type: "welcome", recovered: true });
      expect("more" in welcome).toBe(false);
      expect(messagesOf(welcome)).toEqual(all.slice(1));
      expect(socket.frames.filter((f) => f.type === "history")).toEqual([]);
    });

    it("past RESUME_LIMIT the welcome holds the newest 1000 and recovered: false, paged or not", async () => {
      const { store, open } = setup();
      const small = await seed(store, 1100, "short");
      const one = await open({ since: small[0]!.id });
      expect(one.socket.frames[0]).toMatchObject({ type: "welcome", recovered: false });
      expect("more" in one.socket.frames[0]!).toBe(false);
      expect(messagesOf(one.socket.frames[0]!)).toEqual(small.slice(-1000));
      // Large ones: paged, still the newest 1000 (not the oldest).
      const { store: bigStore, open: openBig } = setup();
      const big = await seed(bigStore, 1100);
      const paged = await openBig({ since: big[0]!.id });
      await paged.socket.waitFor(isLastPage);
      const reply = welcomeReply(paged.socket.frames);
      expect(reply[0]).toMatchObject({ type: "welcome", recovered: false, more: true });
      expect(reply.flatMap(messagesOf)).toEqual(big.slice(-1000));
    });

    it("a resume of 600 x 2 KB arrives whole: the welcome carries up to 512 KiB, pages of about 64 KiB follow", async () => {
      const { store, open } = setup();
      const all = await seed(store, 601);
      const { socket } = await open({ since: all[0]!.id });
      await socket.waitFor(isLastPage);
      const reply = welcomeReply(socket.frames);
      expect(reply[0]).toMatchObject({ type: "welcome", recovered: true, more: true });
      expect(pageBytes(reply[0]!)).toBeLessThanOrEqual(FIRST_BYTES + 1024);
      expect(pageBytes(reply[0]!)).toBeGreaterThan(FIRST_BYTES - 4 * 1024);
      expect(reply.length).toBeGreaterThan(5);
      for (const f of reply.slice(1)) expect(pageBytes(f)).toBeLessThan(80 * 1024);
      expect(reply.slice(1, -1).every((f) => f.more === true && !("before" in f))).toBe(true);
      expect(reply.flatMap(messagesOf)).toEqual(all.slice(1));
      expect(socket.closes).toEqual([]);
    });

    it("a small welcome is one frame without `more`, as before", async () => {
      const { store, open } = setup();
      await seed(store, 3);
      const { socket } = await open();
      const welcome = socket.frames[0]!;
      expect(welcome.type).toBe("welcome");
      expect(messagesOf(welcome)).toHaveLength(3);
      expect("more" in welcome).toBe(false);
    });

    it("pages wait while the client does not read; live messages wait behind them, then come once each", async () => {
      const { store, open, hub } = setup();
      const all = await seed(store, 600);
      const socket = new PolledSocket();
      socket.buffered = 200 * 1024; // over the low-water mark, under MAX_BUFFERED_BYTES
      const { session } = await open({ since: all[0]!.id, name: "slow" }, socket);
      expect(socket.frames.map((f) => f.type)).toEqual(["welcome"]);
      // Others talk meanwhile: held, not sent.
      const other = await open({ name: "talker" });
      for (const text of ["live 1", "live 2", "live 3"]) {
        other.session.message(JSON.stringify({ message: text }));
      }
      await other.socket.waitFor((f) => f.message === "live 3");
      await socket.polledAgain();
      expect(socket.frames.map((f) => f.type)).toEqual(["welcome"]);
      // The client reads again: every page, then the held frames.
      socket.buffered = 0;
      await socket.waitFor((f) => f.message === "live 3");
      const types = socket.frames.map((f) => f.type);
      const lastPage = socket.frames.findIndex(isLastPage);
      expect(lastPage).toBeGreaterThan(0);
      expect(types.slice(lastPage + 1).filter((t) => t !== "presence")).toEqual(["message", "message", "message"]);
      const ids = [...welcomeReply(socket.frames).flatMap(messagesOf), ...socket.ofType("message")].map(
        (m) => (m as ChatMessage).id,
      );
      expect(new Set(ids).size).toBe(ids.length); // nothing twice
      expect(ids).toEqual([...ids].sort());
      expect(ids.length).toBe(599 + 3);
      expect(socket.closes).toEqual([]);
      session.closed();
      other.session.closed();
      void hub;
    });

    it("a client that stops reading is closed with 1013 once the held live frames pass MAX_BUFFERED_BYTES", async () => {
      const { store, open } = setup({ MAX_BUFFERED_BYTES: "65536" });
      const all = await seed(store, 100);
      const socket = new PolledSocket();
      socket.buffered = 30_000; // over the low-water mark (8 KiB here), under the bound
      await open({ since: all[0]!.id, name: "stuck" }, socket);
      const sentBefore = socket.sent.length;
      const other = await open({ name: "talker" });
      // ~2 KB each: past 64 KiB of held frames within about 33 messages.
      for (let i = 0; i < 40 && socket.closes.length === 0; i++) {
        other.session.message(JSON.stringify({ message: `${i} ${BIG.slice(10)}` }));
        await other.socket.waitFor((f) => typeof f.message === "string" && f.message.startsWith(`${i} `));
      }
      expect(socket.closes).toEqual([{ code: 1013, reason: "client is not reading fast enough" }]);
      expect(socket.sent.length).toBe(sentBefore); // nothing more was queued to it
      expect(other.socket.closes).toEqual([]);
    });

    it("a history request with a large limit is paged: `before` and `more` on every page, oldest first", async () => {
      const { store, open } = setup();
      const all = await seed(store, 500);
      const { session, socket } = await open({ name: "reader" });
      session.message(JSON.stringify({ type: "history", before: all[450]!.id, limit: 400 }));
      const answer = (f: Frame) => f.type === "history" && "before" in f;
      await socket.waitFor((f) => answer(f) && f.more === false);
      const pages = socket.frames.filter(answer);
      expect(pages.length).toBeGreaterThan(3);
      // The first frame carries up to 512 KiB, as a welcome does; the rest ~64 KiB each.
      expect(pageBytes(pages[0]!)).toBeGreaterThan(FIRST_BYTES - 4 * 1024);
      expect(pageBytes(pages[0]!)).toBeLessThanOrEqual(FIRST_BYTES + 1024);
      for (const p of pages.slice(1)) expect(pageBytes(p)).toBeLessThan(80 * 1024);
      for (const p of pages) expect(p.before).toBe(all[450]!.id);
      expect(pages.slice(0, -1).every((p) => p.more === true)).toBe(true);
      expect(pages.flatMap(messagesOf)).toEqual(all.slice(50, 450));
      // One that fits 512 KiB (200 x 2 KB) is one frame, `more: false`.
      session.message(JSON.stringify({ type: "history", before: all[450]!.id, limit: 200 }));
      const n = socket.ofType("history").length;
      const one = await socket.waitFor("history", n + 1);
      expect(one.at(-1)).toEqual({ type: "history", messages: all.slice(250, 450), before: all[450]!.id, more: false });
      // A small one too.
      session.message(JSON.stringify({ type: "history", limit: 2 }));
      const small = await socket.waitFor("history", n + 2);
      expect(small.at(-1)).toEqual({ type: "history", messages: all.slice(-2), more: false });
    });

    it("history requests are answered in the order asked, after the welcome's pages; too many waiting get rate_limited", async () => {
      const { store, start } = setup();
      const all = await seed(store, 600);
      const socket = new PolledSocket();
      socket.buffered = 100 * 1024;
      const { session, opened } = start({ since: all[0]!.id }, socket);
      await opened;
      const MAX_QUEUED = 32;
      for (let i = 0; i < MAX_QUEUED + 2; i++) {
        session.message(JSON.stringify({ type: "history", before: all[100 + i]!.id, limit: 1 }));
      }
      // Nothing but the welcome yet: answers and errors all wait behind its pages.
      expect(socket.frames.map((f) => f.type)).toEqual(["welcome"]);
      socket.buffered = 0;
      await socket.waitFor((f) => f.type === "history" && "before" in f, MAX_QUEUED);
      // 32 waited; the other two were refused at once (the pager was stuck on the welcome).
      const refused = socket.ofType("error");
      expect(refused).toHaveLength(2);
      expect(refused[0]).toMatchObject({ code: "rate_limited", retryAfterMs: 1000 });
      const order = socket.frames.filter((f) => f.type === "history");
      const lastWelcomePage = order.findIndex((f) => f.more === false && !("before" in f));
      const answers = order.slice(lastWelcomePage + 1);
      const asked = all.slice(100, 100 + MAX_QUEUED);
      expect(answers.map((f) => f.before)).toEqual(asked.map((m) => m.id));
      expect(answers.map((f) => messagesOf(f).map((m) => m.id))).toEqual(
        all.slice(99, 99 + MAX_QUEUED).map((m) => [m.id]),
      );
    });

    it("messages deleted while a reply is paged are left out; edits show their new text", async () => {
      const { store, open } = setup();
      const all = await seed(store, 600);
      const socket = new PolledSocket();
      socket.buffered = 100 * 1024;
      await open({ since: all[0]!.id }, socket);
      await store.delete(ROOM, all[590]!.id);
      await store.edit(ROOM, all[591]!.id, "new text", 1);
      socket.buffered = 0;
      await socket.waitFor(isLastPage);
      const got = welcomeReply(socket.frames).flatMap(messagesOf);
      expect(got.map((m) => m.id)).not.toContain(all[590]!.id);
      expect(got.find((m) => m.id === all[591]!.id)?.message).toBe("new text");
      expect(got).toHaveLength(598);
    });

    it("a store that fails between pages closes the connection with 1013 (the client resumes from its last id)", async () => {
      const { store, open } = setup();
      const all = await seed(store, 600);
      const socket = new PolledSocket();
      socket.buffered = 100 * 1024;
      await open({ since: all[0]!.id }, socket);
      store.failReads = true;
      socket.buffered = 0;
      for (let i = 0; i < 400 && socket.closes.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
      expect(socket.closes).toEqual([{ code: 1013, reason: "history is unavailable, try again" }]);
      expect(socket.frames.some(isLastPage)).toBe(false);
    });

    it("seed mode is unchanged: no welcome, no pages", async () => {
      const { store, open } = setup();
      await seed(store, 300);
      const { session, socket } = await open({ mode: "seed", name: "sue" });
      session.message(JSON.stringify({ message: "hi" }));
      await socket.waitFor("message");
      expect(socket.frames.map((f) => f.type)).toEqual(["message"]);
    });
  });
