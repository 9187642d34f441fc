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
  /** HISTORY_TTL in ms (the store's `ttlMs` option). @default 0 */
  ttlMs?: number;
  /** The clock the store must read (its `now` option); tests move it. @default Date.now */
  now?: () => number;
}

/** A store under test, and how to reopen it over the same data. */
export interface StoreUnderTest {
  store: HistoryStore;
  /** Closes the store and opens a new one over the same data (file, Redis keys); absent for memory. */
  reopen?(): Promise<HistoryStore>;
  /**
   * For a store in another process, which cannot be handed `now`: sets its
   * clock to `ms` (every later call reads it).
   */
  setNow?(ms: number): Promise<void>;
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

/** A message at server time `ts` (ids follow ts, as the hub makes them). */
function msgAt(room: string, ts: number, text = `t${ts}`): ChatMessage {
  return { type: "message", id: formatMessageId(ts, 0), room, user: "alice", message: text, ts };
}

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

    it("after pages forward from an id, oldest first, and says when more follow", async () => {
      const all = range(0, 10);
      await appendAll(store, all);
      expect(await store.after(room, all[2]!.id, 3)).toEqual({ messages: all.slice(3, 6), more: true });
      expect(await store.after(room, all[6]!.id, 3)).toEqual({ messages: all.slice(7), more: false });
      expect(await store.after(room, all[9]!.id, 5)).toEqual({ messages: [], more: false });
      // From an id the store never held, and from before the first message.
      const between = formatMessageId(BASE + 4, 999_999);
      expect(await store.after(room, between, 2)).toEqual({ messages: all.slice(5, 7), more: true });
      expect(await store.after(room, formatMessageId(BASE - 1000, 0), 100)).toEqual({ messages: all, more: false });
      // Paging to the end visits every message once.
      const seen: ChatMessage[] = [];
      let cursor = formatMessageId(BASE - 1, 0);
      for (let page = 0; page < 20; page++) {
        const r = await store.after(room, cursor, 4);
        seen.push(...r.messages);
        if (!r.more) break;
        cursor = r.messages.at(-1)!.id;
      }
      expect(seen).toEqual(all);
      expect(await store.after(freshRoom(), cursor, 10)).toEqual({ messages: [], more: false });
    });

    it("sinceFirst (where a store has it) is the start of what since returns, with the same complete", async (ctx) => {
      if (!store.sinceFirst) return ctx.skip("this store has no sinceFirst (resumes read with since)");
      const all = range(0, 12);
      await appendAll(store, all);
      await store.delete(room, all[5]!.id);
      const unknown = formatMessageId(BASE + 3, 999_999);
      for (const since of [all[0]!.id, all[2]!.id, all[5]!.id, all[11]!.id, unknown, formatMessageId(BASE - 5, 0)]) {
        for (const limit of [3, 10, 100]) {
          const full = await store.since(room, since, limit);
          for (const page of [1, 2, 4, 50]) {
            const first = await store.sinceFirst(room, since, limit, page);
            expect(first, `since ${since} limit ${limit} page ${page}`).toEqual({
              messages: full.messages.slice(0, page),
              complete: full.complete,
              more: full.messages.length > page,
            });
          }
        }
      }
    });

    it("get returns one message of the room, or null", async () => {
      const all = range(0, 5);
      const other = freshRoom();
      await appendAll(store, [...all, msg(other, 50)]);
      expect(await store.get(room, all[3]!.id)).toEqual(all[3]);
      expect(await store.get(room, formatMessageId(BASE + 3, 999))).toBeNull();
      expect(await store.get(room, msg(other, 50).id)).toBeNull();
      expect(await store.get(other, msg(other, 50).id)).toEqual(msg(other, 50));
    });

    it("edit replaces the text in every read and sets edited; unknown ids give null", async () => {
      const all = range(0, 6);
      await appendAll(store, all);
      const target = all[2]!;
      const edited = { ...target, message: "fixed typo ✓", edited: BASE + 500 };
      expect(await store.edit(room, target.id, "fixed typo ✓", BASE + 500)).toEqual(edited);
      const expected = all.map((m) => (m.id === target.id ? edited : m));
      expect(await store.latest(room, 100)).toEqual(expected);
      expect(await store.before(room, all[4]!.id, 10)).toEqual(expected.slice(0, 4));
      expect(await store.since(room, all[0]!.id, 100)).toEqual({ messages: expected.slice(1), complete: true });
      expect(await store.after(room, all[1]!.id, 2)).toEqual({ messages: expected.slice(2, 4), more: true });
      expect(await store.get(room, target.id)).toEqual(edited);
      // A second edit wins; other messages are untouched and carry no `edited`.
      await store.edit(room, target.id, "again", BASE + 600);
      expect(await store.get(room, target.id)).toEqual({ ...target, message: "again", edited: BASE + 600 });
      expect(Object.hasOwn((await store.get(room, all[3]!.id))!, "edited")).toBe(false);
      expect(await store.edit(room, formatMessageId(BASE + 2, 999), "x", BASE)).toBeNull();
      expect(await store.edit(freshRoom(), target.id, "x", BASE)).toBeNull();
    });

    it("delete removes a message from every read; since still knows its id", async () => {
      const all = range(0, 8);
      await appendAll(store, all);
      const gone = all[4]!;
      expect(await store.delete(room, gone.id)).toBe(true);
      expect(await store.delete(room, gone.id)).toBe(false); // already gone
      expect(await store.delete(room, formatMessageId(BASE + 4, 999))).toBe(false);
      const left = all.filter((m) => m.id !== gone.id);
      expect(await store.latest(room, 100)).toEqual(left);
      expect(await store.latest(room, 4)).toEqual(left.slice(-4)); // four live ones, not three
      expect(await store.before(room, all[6]!.id, 3)).toEqual([all[2], all[3], all[5]]);
      expect(await store.after(room, all[3]!.id, 2)).toEqual({ messages: [all[5], all[6]], more: true });
      expect(await store.get(room, gone.id)).toBeNull();
      expect(await store.edit(room, gone.id, "back?", BASE)).toBeNull();
      // A client whose last message was deleted resumes without a false gap.
      expect(await store.since(room, gone.id, 100)).toEqual({ messages: all.slice(5), complete: true });
      expect(await store.since(room, all[2]!.id, 100)).toEqual({ messages: left.slice(3), complete: true });
      // The limit counts messages, not deleted ones.
      expect(await store.since(room, all[0]!.id, 3)).toEqual({ messages: left.slice(-3), complete: false });
      // The newest id stays the newest even once deleted: ids keep growing after a restart.
      expect(await store.delete(room, all[7]!.id)).toBe(true);
      expect(await store.lastId(room)).toBe(all[7]!.id);
      expect(await store.latest(room, 2)).toEqual([all[5], all[6]]);
    });

    it("bans: until a time or until lifted, per room and user", async () => {
      const other = freshRoom();
      const t = BASE + 10_000;
      await store.ban(room, "bob", null);
      await store.ban(room, "eve", t + 1000);
      expect(await store.bannedUntil(room, "bob", t)).toBe(Number.POSITIVE_INFINITY);
      expect(await store.bannedUntil(room, "eve", t)).toBe(t + 1000);
      expect(await store.bannedUntil(room, "eve", t + 999)).toBe(t + 1000);
      expect(await store.bannedUntil(room, "eve", t + 1000)).toBeNull(); // over at its end
      expect(await store.bannedUntil(other, "bob", t)).toBeNull();
      expect(await store.bannedUntil(room, "alice", t)).toBeNull();
      // A new ban replaces the old one; unban lifts it; unban of nobody is fine.
      await store.ban(room, "eve", null);
      expect(await store.bannedUntil(room, "eve", t + 5000)).toBe(Number.POSITIVE_INFINITY);
      await store.ban(room, "bob", t + 50);
      expect(await store.bannedUntil(room, "bob", t)).toBe(t + 50);
      await store.unban(room, "bob");
      await store.unban(room, "nobody");
      expect(await store.bannedUntil(room, "bob", t)).toBeNull();
      expect(await store.bannedUntil(room, "eve", t)).toBe(Number.POSITIVE_INFINITY);
    });

    it("edits, deletes and bans survive a reopen", async (ctx) => {
      if (!subject.reopen) return ctx.skip("this store keeps nothing across a reopen");
      const all = range(0, 5);
      await appendAll(store, all);
      await store.edit(room, all[1]!.id, "edited text", BASE + 99);
      await store.delete(room, all[3]!.id);
      await store.ban(room, "mallory", null);
      await store.ban(room, "trudy", BASE + 20_000);
      const reopened = await subject.reopen();
      expect(await reopened.latest(room, 100)).toEqual([
        all[0],
        { ...all[1]!, message: "edited text", edited: BASE + 99 },
        all[2],
        all[4],
      ]);
      expect(await reopened.since(room, all[3]!.id, 10)).toEqual({ messages: [all[4]], complete: true });
      expect(await reopened.bannedUntil(room, "mallory", BASE)).toBe(Number.POSITIVE_INFINITY);
      expect(await reopened.bannedUntil(room, "trudy", BASE)).toBe(BASE + 20_000);
    });

    it("HISTORY_TTL: messages older than the TTL leave every read", async () => {
      const ttlMs = 60_000;
      let clock = BASE;
      const timed = await makeStore({ ttlMs, now: () => clock });
      extra.push(timed);
      const setNow = async (ms: number) => {
        clock = ms;
        await timed.setNow?.(ms);
      };
      await setNow(BASE);
      const t = timed.store;
      const old = [msgAt(room, BASE - 50_000), msgAt(room, BASE - 40_000)];
      const fresh = [msgAt(room, BASE - 1000), msgAt(room, BASE)];
      await appendAll(t, [...old, ...fresh]);
      expect(await t.latest(room, 10)).toEqual([...old, ...fresh]);
      // 25 s later the first two are past the TTL (their ts is over 60 s old).
      await setNow(BASE + 25_000);
      expect(await t.latest(room, 10)).toEqual(fresh);
      expect(await t.before(room, formatMessageId(BASE + 1, 0), 10)).toEqual(fresh);
      expect(await t.after(room, formatMessageId(BASE - 100_000, 0), 10)).toEqual({ messages: fresh, more: false });
      expect(await t.get(room, old[1]!.id)).toBeNull();
      expect(await t.edit(room, old[1]!.id, "x", BASE)).toBeNull();
      expect(await t.delete(room, old[1]!.id)).toBe(false);
      // Resuming from an expired message is a gap; from a kept one it is not.
      expect(await t.since(room, old[1]!.id, 10)).toEqual({ messages: fresh, complete: false });
      expect(await t.since(room, fresh[0]!.id, 10)).toEqual({ messages: [fresh[1]], complete: true });
      // New writes go on; once everything expired the room reads as empty.
      const later = msgAt(room, BASE + 30_000);
      await appendAll(t, [later]);
      expect(await t.latest(room, 10)).toEqual([...fresh, later]);
      await setNow(BASE + 200_000);
      expect(await t.latest(room, 10)).toEqual([]);
      expect(await t.since(room, later.id, 10)).toEqual({ messages: [], complete: false });
    });

    it("close can be called twice", async () => {
      await store.close();
      await store.close();
    });
  });
}
