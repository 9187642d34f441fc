/**
 * The history store contract: what every {@link HistoryStore} does (memory,
 * SQLite under better-sqlite3 / bun:sqlite / node:sqlite, Redis, Durable
 * Object storage). Imports nothing but vitest and the project's own modules,
 * so Bun and Deno can run it too.
 *
 * Reads are only required to see appends whose promise has settled (stores
 * batch their writes), so every case awaits its appends or calls flush().
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type ChatMessage, formatMessageId } from "../../src/protocol.ts";
import type { HistoryStore } from "../../src/store/store.ts";

/** What the contract asks of a store factory. */
export interface StoreFactoryOptions {
  /** Messages kept per room (HISTORY_LIMIT). @default 10000 */
  limit?: number;
}

/** A store under test, and how to reopen it over the same data. */
export interface StoreUnderTest {
  store: HistoryStore;
  /** Closes the store and opens a new one over the same data (file, Redis keys); absent for memory. */
  reopen?(): Promise<HistoryStore>;
  cleanup(): Promise<void>;
}

/** Builds a fresh, empty store (per test). */
export type MakeStore = (options?: StoreFactoryOptions) => Promise<StoreUnderTest>;

let roomSeq = 0;
/** Room names unique per test and per process, since a shared Redis outlives tests. */
function freshRoom(): string {
  const pid = typeof process === "object" ? process.pid : 0;
  return `sc-${pid}-${Date.now().toString(36)}-${++roomSeq}`;
}

const BASE = 1_700_000_000_000;

/** Message `i` of a room: ids grow with i, as the hub hands them out. */
function msg(room: string, i: number, text = `m${i}`, user = "alice"): ChatMessage {
  return { type: "message", id: formatMessageId(BASE + i, i % 3), room, user, message: text, ts: BASE + i };
}

async function appendAll(store: HistoryStore, messages: ChatMessage[]): Promise<void> {
  // Issued together, as a burst from the hub would be, then awaited.
  await Promise.all(messages.map((m) => store.append(m)));
}

const ids = (list: ChatMessage[]) => list.map((m) => m.id);

/** Registers the history store contract for one implementation. */
export function storeContract(name: string, makeStore: MakeStore): void {
  describe(`HistoryStore contract: ${name}`, () => {
    let subject: StoreUnderTest;
    let store: HistoryStore;
    let room: string;
    let extra: StoreUnderTest[];

    beforeEach(async () => {
      subject = await makeStore();
      store = subject.store;
      room = freshRoom();
      extra = [];
    });

    afterEach(async () => {
      for (const s of extra) await s.cleanup();
      await subject.cleanup();
    });

    const range = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => msg(room, from + k));

    it("an empty room has no messages and no last id", async () => {
      expect(await store.latest(room, 10)).toEqual([]);
      expect(await store.lastId(room)).toBeNull();
      expect(await store.before(room, formatMessageId(BASE, 0), 10)).toEqual([]);
      const resumed = await store.since(room, formatMessageId(BASE, 0), 10);
      expect(resumed.messages).toEqual([]);
      expect(resumed.complete).toBe(false); // an id the store does not know
    });

    it("latest returns the newest messages, oldest first, exactly as appended", async () => {
      const all = range(0, 10);
      await appendAll(store, all);
      expect(await store.latest(room, 3)).toEqual(all.slice(7));
      expect(await store.latest(room, 100)).toEqual(all);
      expect(await store.latest(room, 0)).toEqual([]);
      expect(await store.lastId(room)).toBe(all[9]!.id);
    });

    it("appends awaited one at a time are all kept, in order", async () => {
      const all = range(0, 5);
      for (const m of all) await store.append(m);
      expect(await store.latest(room, 10)).toEqual(all);
    });

    it("before returns up to limit messages older than the id, oldest first", async () => {
      const all = range(0, 10);
      await appendAll(store, all);
      expect(ids(await store.before(room, all[5]!.id, 3))).toEqual(ids(all.slice(2, 5)));
      expect(ids(await store.before(room, all[2]!.id, 10))).toEqual(ids(all.slice(0, 2)));
      expect(await store.before(room, all[0]!.id, 10)).toEqual([]);
      // An id the store never held still pages by order.
      expect(ids(await store.before(room, formatMessageId(BASE + 100, 0), 2))).toEqual(ids(all.slice(8)));
      expect(await store.before(room, all[9]!.id, 1)).toEqual([all[8]]);
    });

    it("since a known id returns everything after it, complete", async () => {
      const all = range(0, 10);
      await appendAll(store, all);
      expect(await store.since(room, all[6]!.id, 100)).toEqual({ messages: all.slice(7), complete: true });
      expect(await store.since(room, all[0]!.id, 9)).toEqual({ messages: all.slice(1), complete: true });
    });

    it("since the newest id returns nothing, complete", async () => {
      const all = range(0, 4);
      await appendAll(store, all);
      expect(await store.since(room, all[3]!.id, 10)).toEqual({ messages: [], complete: true });
    });

    it("since an unknown id returns what follows it but is not complete", async () => {
      const all = range(0, 6);
      await appendAll(store, all);
      const between = formatMessageId(BASE + 2, 999_999); // between ids 2 and 3, never stored
      const resumed = await store.since(room, between, 100);
      expect(resumed.messages).toEqual(all.slice(3));
      expect(resumed.complete).toBe(false);
    });

    it("since with more than limit after it returns the newest limit, not complete", async () => {
      const all = range(0, 10);
      await appendAll(store, all);
      const resumed = await store.since(room, all[1]!.id, 3);
      expect(resumed.messages).toEqual(all.slice(7));
      expect(resumed.complete).toBe(false);
      // Exactly limit after it is complete.
      expect(await store.since(room, all[6]!.id, 3)).toEqual({ messages: all.slice(7), complete: true });
    });

    it("rooms are kept apart", async () => {
      const other = freshRoom();
      const mine = range(0, 3);
      const theirs = [msg(other, 101, "x"), msg(other, 105, "y")];
      await appendAll(store, [...mine, ...theirs]);
      expect(await store.latest(room, 10)).toEqual(mine);
      expect(await store.latest(other, 10)).toEqual(theirs);
      expect(await store.lastId(other)).toBe(theirs[1]!.id);
      expect(await store.before(other, theirs[1]!.id, 10)).toEqual([theirs[0]]);
      expect(await store.since(room, theirs[0]!.id, 10)).toMatchObject({ complete: false });
    });

    it("keeps about `limit` messages per room and reports pruned ids as a gap", async () => {
      const limit = 5;
      const small = await makeStore({ limit });
      extra.push(small);
      const all = range(0, 20);
      for (const m of all.slice(0, 10)) await small.store.append(m); // one by one
      await appendAll(small.store, all.slice(10)); // and as one burst
      expect(await small.store.latest(room, 100)).toEqual(all.slice(-limit));
      const kept = await small.store.before(room, formatMessageId(BASE + 1000, 0), 100);
      // Stores may prune in steps; they never keep much more than the limit.
      expect(kept.length).toBeGreaterThanOrEqual(limit);
      expect(kept.length).toBeLessThanOrEqual(Math.ceil(limit * 1.1) + 1);
      expect(kept).toEqual(all.slice(-kept.length));
      const resumed = await small.store.since(room, all[0]!.id, 1000);
      expect(resumed.complete).toBe(false);
      expect(resumed.messages).toEqual(kept.slice(0));
      expect(await small.store.lastId(room)).toBe(all[19]!.id);
    });

    it("text round-trips exactly: every plane, combining marks, RTL, NUL, quotes, SQL-ish text", async () => {
      const texts = [
        "héllo wörld",
        "👋🏽 family: 👨‍👩‍👧‍👦 flag: 🇳🇴",
        "中文 日本語 한국어",
        "e\u0301 (combining) \u200d zwj",
        "مرحبا بالعالم",
        "nul:\u0000:end",
        "tab\tnew\nline",
        "quote ' \" \\ backslash",
        "'); DROP TABLE messages; --",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 \u{10FFFF}",
        "x".repeat(2000),
      ];
      const all = texts.map((t, i) => msg(room, i, t, i % 2 ? "Zoë 👩‍💻" : "名前"));
      await appendAll(store, all);
      const back = await store.latest(room, 100);
      expect(back).toEqual(all);
      for (const m of back) expect(typeof m.ts).toBe("number");
    });

    it("flush makes every accepted append readable", async () => {
      const all = range(0, 8);
      const pending = all.map((m) => store.append(m));
      await store.flush();
      expect(await store.latest(room, 100)).toEqual(all);
      await Promise.all(pending);
    });

    it("close flushes what was accepted", async (ctx) => {
      if (!subject.reopen) return ctx.skip("nothing outlives this store's close");
      const all = range(0, 5);
      // Not awaited: reopen closes the store, and close must flush them.
      const accepted = all.map((m) => Promise.resolve(store.append(m)));
      const reopened = await subject.reopen();
      await Promise.all(accepted);
      expect(await reopened.latest(room, 100)).toEqual(all);
    });

    it("reopening over the same data keeps history and the last id", async (ctx) => {
      if (!subject.reopen) return ctx.skip("this store keeps nothing across a reopen");
      const all = range(0, 7);
      await appendAll(store, all);
      const reopened = await subject.reopen();
      expect(await reopened.latest(room, 100)).toEqual(all);
      expect(await reopened.lastId(room)).toBe(all[6]!.id);
      expect(await reopened.since(room, all[3]!.id, 100)).toEqual({ messages: all.slice(4), complete: true });
      await appendAll(reopened, [msg(room, 50)]);
      expect(await reopened.lastId(room)).toBe(msg(room, 50).id);
    });

    it("close can be called twice", async () => {
      await store.close();
      await store.close();
    });
  });
}
