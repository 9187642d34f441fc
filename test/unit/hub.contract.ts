/**
 * The hub contract: what every {@link Hub} does, whether it is one MemoryHub
 * or several RedisHubs sharing rooms. `makeHubs` returns one or more hubs that
 * serve the same rooms (members are spread over them round-robin), so the
 * same cases check cross-instance delivery when there are several.
 *
 * Frames cross hubs asynchronously, so every "did not get X" check first
 * waits for a later frame on the same hub (a sentinel) that must come after X.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type Hub, Member } from "../../src/hub/hub.ts";
import type { Mode } from "../../src/protocol.ts";
import type { HistoryStore } from "../../src/store/store.ts";
import { FailingStore } from "../helpers/failing-store.ts";
import { FakeSocket } from "../helpers/fake-socket.ts";

/** What the contract asks of a hub factory. */
export interface HubFactoryOptions {
  /**
   * Wraps the store the hubs append to (one call per store), so the contract
   * can make it fail. Factories must apply it when given.
   */
  wrapStore?: (store: HistoryStore) => HistoryStore;
  /**
   * The presence merge interval (PRESENCE_INTERVAL_MS) the hubs use.
   * Factories must apply it; the contract passes 0 (every change at once)
   * except in the merging cases at the end.
   */
  presenceIntervalMs?: number;
}

/** Builds one or more hubs serving the same rooms; `cleanup` closes them. */
export type MakeHubs = (options?: HubFactoryOptions) => Promise<{ hubs: Hub[]; cleanup(): Promise<void> }>;

const isMessage = (f: Record<string, unknown>) => f.type === "message";

let roomSeq = 0;
/** Room names unique per test and per process, since a shared Redis outlives tests. */
function freshRoom(): string {
  return `hc-${process.pid}-${Date.now().toString(36)}-${++roomSeq}`;
}

/**
 * Registers the hub contract for one implementation. Run it with one hub
 * (MemoryHub) or several sharing a backend (RedisHub): members are spread
 * over the hubs round-robin.
 */
export function hubContract(name: string, makeHubs: MakeHubs): void {
  describe(`Hub contract: ${name}`, () => {
    let hubs: Hub[];
    let cleanup: () => Promise<void>;
    let joined: { hub: Hub; room: string; member: Member }[];
    let room: string;

    beforeEach(async () => {
      ({ hubs, cleanup } = await makeHubs({ presenceIntervalMs: 0 }));
      expect(hubs.length).toBeGreaterThan(0);
      joined = [];
      room = freshRoom();
    });

    afterEach(async () => {
      for (const j of joined) j.hub.leave(j.room, j.member);
      await cleanup();
    });

    /** Joins a released member (as a session does after its welcome) on hub `i % n`. */
    async function join(
      i: number,
      name: string | null,
      mode: Mode = "v1",
      inRoom = room,
    ): Promise<{ socket: FakeSocket; member: Member; hub: Hub; users: string[] }> {
      const socket = new FakeSocket();
      const member = new Member(socket, name, mode);
      const hub = hubs[i % hubs.length]!;
      const users = await hub.join(inRoom, member);
      member.release(null, null);
      joined.push({ hub, room: inRoom, member });
      return { socket, member, hub, users };
    }

    function leave(j: { hub: Hub; member: Member }, inRoom = room): void {
      j.hub.leave(inRoom, j.member);
      joined = joined.filter((x) => x.member !== j.member);
    }

    it("join resolves with the names online, the joiner included, unnamed connections not listed", async () => {
      const a = await join(0, "alice");
      expect(a.users).toEqual(["alice"]);
      const anon = await join(1, null);
      expect(anon.users).toEqual(["alice"]);
      const b = await join(2, "bob");
      expect([...b.users].sort()).toEqual(["alice", "bob"]);
      expect([...(await hubs[0]!.users(room))].sort()).toEqual(["alice", "bob"]);
    });

    it("presence joined and left goes to v1 members only, with the users list", async () => {
      const a = await join(0, "alice", "v1");
      const seed = await join(1, "sam", "seed");
      const watcher = await join(1, null, "v1"); // same hub as the seed member: the sentinel
      const b = await join(2, "bob", "v1");
      const [joinedFrame] = await a.socket.waitFor((f) => f.type === "presence" && f.joined === "bob");
      expect([...(joinedFrame!.users as string[])].sort()).toEqual(["alice", "bob", "sam"]);
      await watcher.socket.waitFor((f) => f.type === "presence" && f.joined === "bob");
      leave(b);
      const [leftFrame] = await a.socket.waitFor((f) => f.type === "presence" && f.left === "bob");
      expect([...(leftFrame!.users as string[])].sort()).toEqual(["alice", "sam"]);
      await watcher.socket.waitFor((f) => f.type === "presence" && f.left === "bob");
      expect(seed.socket.sent).toEqual([]);
    });

    it("a name with two connections stays listed until both have left", async () => {
      const a = await join(0, "alice");
      const tab1 = await join(1, "bob");
      const tab2 = await join(2, "bob");
      await a.socket.waitFor((f) => f.type === "presence" && f.joined === "bob", 2);
      leave(tab1);
      const [first] = await a.socket.waitFor((f) => f.type === "presence" && f.left === "bob");
      expect([...(first!.users as string[])].sort()).toEqual(["alice", "bob"]);
      expect([...(await hubs[0]!.users(room))].sort()).toEqual(["alice", "bob"]);
      leave(tab2);
      const lefts = await a.socket.waitFor((f) => f.type === "presence" && f.left === "bob", 2);
      expect(lefts[1]!.users).toEqual(["alice"]);
      expect(await hubs[0]!.users(room)).toEqual(["alice"]);
    });

    it("an unnamed connection joining or leaving sends no presence", async () => {
      const a = await join(0, "alice");
      const anon = await join(1, null);
      leave(anon);
      const b = await join(2, "bob"); // sentinel: its presence comes after any for anon
      await a.socket.waitFor((f) => f.type === "presence" && f.joined === "bob");
      const others = a.socket.ofType("presence").filter((f) => f.joined !== "alice");
      expect(others.map((f) => f.joined ?? `left ${f.left}`)).toEqual(["bob"]);
      leave(b);
    });

    it("typing goes to the other v1 members only, never back to the typist nor to seed members", async () => {
      const a = await join(0, "alice", "v1");
      const b = await join(1, "bob", "v1");
      const seed = await join(0, "sam", "seed");
      const watcher = await join(0, "wes", "v1"); // same hub as seed and typist
      hubs[0]!.typing(room, a.member);
      const [t] = await b.socket.waitFor("typing");
      expect(t).toEqual({ type: "typing", user: "alice" });
      await watcher.socket.waitFor("typing");
      // Sentinel: a message published after the typing notice reaches alice's hub after it.
      await hubs[0]!.publish(room, watcher.member, { user: "wes", message: "after" });
      await a.socket.waitFor(isMessage);
      await seed.socket.waitFor(isMessage);
      expect(a.socket.ofType("typing")).toEqual([]);
      expect(seed.socket.frames.map((f) => f.type)).toEqual(["message"]);
    });

    it("an unnamed connection's typing is not relayed", async () => {
      const a = await join(0, "alice");
      const anon = await join(1, null);
      hubs[1 % hubs.length]!.typing(room, anon.member);
      await hubs[1 % hubs.length]!.publish(room, anon.member, { user: "x", message: "sentinel" });
      await a.socket.waitFor(isMessage);
      expect(a.socket.ofType("typing")).toEqual([]);
    });

    it("publish resolves with the message: server id and ts, the draft's user and text, the room", async () => {
      const a = await join(0, "alice");
      const before = Date.now();
      const m = await hubs[0]!.publish(room, a.member, { user: "alice", message: "hello" });
      expect(m).toMatchObject({ type: "message", room, user: "alice", message: "hello" });
      expect(typeof m.id).toBe("string");
      expect(m.ts).toBeGreaterThanOrEqual(before - 1000);
      expect(m.ts).toBeLessThanOrEqual(Date.now() + 1000);
      const [got] = await a.socket.waitFor(isMessage);
      expect(got).toEqual(m);
    });

    it("interleaved publishers: every member on every hub gets the same ids in the same increasing order", async () => {
      const members = await Promise.all(
        [0, 1, 2, 3, 4, 5].map((i) => join(i, i % 3 === 0 ? null : `u${i}`, i % 2 ? "seed" : "v1")),
      );
      const senders = members.slice(0, 3);
      const perSender = 15;
      const publishes: Promise<{ id: string }>[] = [];
      // Not awaited one by one: the publishes overlap, as concurrent clients would.
      for (let k = 0; k < perSender; k++) {
        for (const [s, sender] of senders.entries()) {
          publishes.push(sender.hub.publish(room, sender.member, { user: `s${s}`, message: `${s}:${k}` }));
        }
      }
      const resolved = await Promise.all(publishes);
      const total = perSender * senders.length;
      const sequences = await Promise.all(
        members.map(async (m) => (await m.socket.waitFor(isMessage, total)).map((f) => f.id as string)),
      );
      const first = sequences[0]!;
      expect(first).toHaveLength(total);
      for (const seq of sequences) expect(seq).toEqual(first);
      expect(new Set(first).size).toBe(total);
      expect([...first].sort()).toEqual(first); // string order is delivery order
      expect(new Set(resolved.map((m) => m.id))).toEqual(new Set(first));
      // Each sender's own messages keep their send order.
      for (const s of [0, 1, 2]) {
        const texts = members[0]!.socket
          .ofType("message")
          .filter((f) => f.user === `s${s}`)
          .map((f) => f.message);
        expect(texts).toEqual(Array.from({ length: perSender }, (_, k) => `${s}:${k}`));
      }
    });

    it("ids keep increasing across successive publishes", async () => {
      const a = await join(0, "alice");
      let last = "";
      for (let i = 0; i < 20; i++) {
        const m = await hubs[i % hubs.length]!.publish(room, a.member, { user: "alice", message: `m${i}` });
        expect(m.id > last).toBe(true);
        last = m.id;
      }
    });

    it("the echo carries the cid to the sender only", async () => {
      const a = await join(0, "alice");
      const b = await join(1, "bob");
      const seed = await join(2, null, "seed");
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "hi", cid: "c-1" });
      const [mine] = await a.socket.waitFor(isMessage);
      const [theirs] = await b.socket.waitFor(isMessage);
      const [seeds] = await seed.socket.waitFor(isMessage);
      expect(mine).toMatchObject({ message: "hi", cid: "c-1" });
      expect(theirs).not.toHaveProperty("cid");
      expect(seeds).not.toHaveProperty("cid");
      expect({ ...mine, cid: undefined }).toEqual({ ...theirs, cid: undefined });
    });

    it("seed members get every message with type, id, room, user, message and ts, and nothing else", async () => {
      const seed = await join(0, null, "seed");
      const named = await join(1, "sue", "seed");
      const a = await join(2, "alice", "v1");
      hubs[2 % hubs.length]!.typing(room, a.member);
      const b = await join(1, "bob", "v1");
      await hubs[2 % hubs.length]!.publish(room, a.member, { user: "alice", message: "one" });
      leave(b);
      await hubs[0]!.publish(room, seed.member, { user: "sam", message: "two" });
      for (const s of [seed, named]) {
        const frames = await s.socket.waitFor(isMessage, 2);
        expect(s.socket.frames.map((f) => f.type)).toEqual(["message", "message"]);
        expect(frames.map((f) => [f.user, f.message])).toEqual([
          ["alice", "one"],
          ["sam", "two"],
        ]);
        for (const f of frames) {
          expect(f).toMatchObject({ type: "message", room });
          expect(typeof f.id).toBe("string");
          expect(typeof f.ts).toBe("number");
        }
      }
    });

    it("rooms are kept apart", async () => {
      const other = freshRoom();
      const a = await join(0, "alice");
      const b = await join(1, "bob", "v1", other);
      await hubs[1 % hubs.length]!.publish(other, b.member, { user: "bob", message: "elsewhere" });
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "here" });
      await b.socket.waitFor(isMessage);
      await a.socket.waitFor((f) => f.message === "here");
      expect(a.socket.ofType("message").map((f) => f.message)).toEqual(["here"]);
      expect(b.socket.ofType("message").map((f) => f.message)).toEqual(["elsewhere"]);
      expect(a.socket.frames.some((f) => f.type === "presence" && f.joined === "bob")).toBe(false);
      expect(await hubs[0]!.users(other)).toEqual(["bob"]);
      leave(b, other);
    });

    it("after leave a member gets nothing more, and is no longer listed", async () => {
      const a = await join(0, "alice");
      const b = await join(1, "bob");
      leave(b);
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "gone?" });
      await a.socket.waitFor(isMessage);
      // Sentinel on bob's hub: another member there receives the message.
      const c = await join(1, "carol");
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "again" });
      await c.socket.waitFor(isMessage);
      expect(b.socket.ofType("message")).toEqual([]);
      expect(await hubs[0]!.users(room)).toEqual(["alice", "carol"]);
      // Leaving twice (close after an error) is harmless.
      hubs[1 % hubs.length]!.leave(room, b.member);
    });

    for (const mode of ["reject", "throw"] as const) {
      it(`publish rejects when the store fails (${mode}), and nobody gets the message`, async () => {
        await cleanup();
        const stores: FailingStore[] = [];
        ({ hubs, cleanup } = await makeHubs({
          presenceIntervalMs: 0,
          wrapStore: (s) => {
            const f = new FailingStore(s);
            stores.push(f);
            return f;
          },
        }));
        expect(stores.length, "makeHubs must apply options.wrapStore to its store").toBeGreaterThan(0);
        const a = await join(0, "alice");
        const b = await join(1, "bob");
        for (const s of stores) s.failAppends = mode;
        // A rejected promise, never a synchronous throw: sessions chain .then on it.
        let published: Promise<unknown> | undefined;
        expect(() => {
          published = hubs[0]!.publish(room, a.member, { user: "alice", message: "lost", cid: "c-9" });
        }).not.toThrow();
        await expect(published).rejects.toBeInstanceOf(Error);
        for (const s of stores) s.failAppends = "none";
        const ok = await hubs[0]!.publish(room, a.member, { user: "alice", message: "kept" });
        await a.socket.waitFor(isMessage);
        await b.socket.waitFor(isMessage);
        expect(a.socket.ofType("message").map((f) => f.message)).toEqual(["kept"]);
        expect(b.socket.ofType("message").map((f) => f.message)).toEqual(["kept"]);
        expect(ok.message).toBe("kept");
      });
    }

    it("a held member gets no duplicates: frames before release minus what its welcome covered", async () => {
      const a = await join(0, "alice");
      const socket = new FakeSocket();
      const held = new Member(socket, "hal", "v1");
      await hubs[1 % hubs.length]!.join(room, held);
      joined.push({ hub: hubs[1 % hubs.length]!, room, member: held });
      const w = await join(1, null); // sentinel on the held member's hub
      const m1 = await hubs[0]!.publish(room, a.member, { user: "alice", message: "one" });
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "two" });
      await w.socket.waitFor(isMessage, 2);
      expect(socket.sent).toEqual([]); // held: nothing before release
      held.release(JSON.stringify({ type: "welcome", history: [m1] }), m1.id);
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "three" });
      await socket.waitFor(isMessage, 2);
      const shown = socket.frames.filter((f) => f.type === "welcome" || f.type === "message");
      expect(shown.map((f) => (f.type === "message" ? f.message : f.type))).toEqual(["welcome", "two", "three"]);
    });

    it("users() is empty for a room nobody is in", async () => {
      expect(await hubs[0]!.users(freshRoom())).toEqual([]);
    });

    // Governance (docs/protocol.md, docs/api.md): server-API publish, edit, delete, kick, rooms.

    /** Waits (bounded) until `socket` was closed; frames cross hubs asynchronously. */
    async function closedWith(socket: FakeSocket): Promise<{ code: number; reason: string }> {
      for (let i = 0; i < 300 && socket.closes.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(socket.closes.length, `${socket.id} was not closed within 3 s`).toBeGreaterThan(0);
      return socket.closes[0]!;
    }

    it("publish from the server (null member): every member on every hub gets it, with no cid", async () => {
      const a = await join(0, "alice");
      const b = await join(1, "bob");
      const seed = await join(2, null, "seed");
      const m = await hubs[hubs.length - 1]!.publish(room, null, { user: "system", message: "from the backend" });
      expect(m).toMatchObject({ type: "message", room, user: "system", message: "from the backend" });
      for (const s of [a, b, seed]) {
        const [got] = await s.socket.waitFor(isMessage);
        expect(got).toEqual(m);
      }
    });

    it("publish from the server into a room with nobody online is stored; ids continue after it", async () => {
      const first = await hubs[0]!.publish(room, null, { user: "system", message: "nobody here" });
      expect((await hubs[0]!.rooms()).some((r) => r.room === room)).toBe(false);
      const a = await join(1, "alice");
      const second = await hubs[1 % hubs.length]!.publish(room, a.member, { user: "alice", message: "now" });
      expect(second.id > first.id).toBe(true);
      // It was stored: an edit finds it.
      expect(await hubs[0]!.edit(room, first.id, "still here")).toMatchObject({ id: first.id, message: "still here" });
    });

    it("edit: v1 members on every hub get `edited`, seed members nothing; unknown ids give null", async () => {
      const a = await join(0, "alice");
      const b = await join(1, "bob");
      const seed = await join(2, "sam", "seed");
      const m = await hubs[0]!.publish(room, a.member, { user: "alice", message: "typo" });
      await b.socket.waitFor(isMessage);
      const updated = await hubs[1 % hubs.length]!.edit(room, m.id, "fixed");
      expect(updated).toMatchObject({ id: m.id, user: "alice", message: "fixed", ts: m.ts });
      expect(typeof updated!.edited).toBe("number");
      for (const s of [a, b]) {
        const [e] = await s.socket.waitFor("edited");
        expect(e).toEqual({ type: "edited", room, id: m.id, message: "fixed", edited: updated!.edited });
      }
      expect(await hubs[0]!.edit(room, "0000000000001-000000", "nothing")).toBeNull();
      // Sentinel: a later message reaches the seed member after any edited frame would have.
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "after" });
      await seed.socket.waitFor(isMessage, 2);
      expect(seed.socket.frames.map((f) => f.type)).toEqual(["message", "message"]);
      expect(a.socket.ofType("edited")).toHaveLength(1);
    });

    it("delete: v1 members on every hub get `deleted`; a second delete and unknown ids give false", async () => {
      const a = await join(0, "alice");
      const b = await join(1, "bob");
      const seed = await join(2, null, "seed");
      const m = await hubs[0]!.publish(room, a.member, { user: "alice", message: "oops" });
      await b.socket.waitFor(isMessage);
      expect(await hubs[hubs.length - 1]!.delete(room, m.id)).toBe(true);
      for (const s of [a, b]) {
        const [d] = await s.socket.waitFor("deleted");
        expect(d).toEqual({ type: "deleted", room, id: m.id });
      }
      expect(await hubs[0]!.delete(room, m.id)).toBe(false);
      expect(await hubs[0]!.delete(room, "0000000000001-000000")).toBe(false);
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "after" });
      await seed.socket.waitFor(isMessage, 2);
      expect(seed.socket.frames.map((f) => f.type)).toEqual(["message", "message"]);
      await b.socket.waitFor(isMessage, 2);
      expect(b.socket.ofType("deleted")).toHaveLength(1);
    });

    it("kick closes every connection of that name on every hub, and only those; they are listed no more", async () => {
      const a = await join(0, "alice");
      const tabs = [await join(0, "mallory"), await join(1, "mallory"), await join(2, "mallory", "seed")];
      const b = await join(1, "bob");
      await a.socket.waitFor((f) => f.type === "presence" && f.joined === "bob");
      await hubs[hubs.length - 1]!.kick(room, "mallory", 4003, "banned");
      for (const t of tabs) expect(await closedWith(t.socket)).toEqual({ code: 4003, reason: "banned" });
      await a.socket.waitFor((f) => f.type === "presence" && Array.isArray(f.users) && !f.users.includes("mallory"));
      expect(a.socket.closes).toEqual([]);
      expect(b.socket.closes).toEqual([]);
      for (let i = 0; i < 100 && (await hubs[0]!.users(room)).includes("mallory"); i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(await hubs[0]!.users(room)).toEqual(["alice", "bob"]);
      // A kicked member gets nothing more.
      const before = tabs[0]!.socket.sent.length;
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "after" });
      await b.socket.waitFor(isMessage);
      expect(tabs[0]!.socket.sent.length).toBe(before);
    });

    it("rooms() lists rooms with someone online and their connections on every hub", async () => {
      const other = freshRoom();
      await join(0, "alice");
      await join(1, null);
      await join(2, "alice");
      await join(1, "bob", "v1", other);
      const mine = async () => (await hubs[0]!.rooms()).filter((r) => r.room === room || r.room === other);
      for (let i = 0; i < 100 && (await mine()).length < 2; i++) await new Promise((r) => setTimeout(r, 20));
      const listed = await mine();
      expect(listed.sort((x, y) => (x.room < y.room ? -1 : 1))).toEqual(
        [
          { room, online: 3 },
          { room: other, online: 1 },
        ].sort((x, y) => (x.room < y.room ? -1 : 1)),
      );
      for (const j of [...joined]) leave(j, j.room);
      for (let i = 0; i < 100 && (await mine()).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(await mine()).toEqual([]);
    });

    // Presence merging (docs/protocol.md: presence, fair use): a member gets at most one
    // presence frame per PRESENCE_INTERVAL_MS however fast others come and go.

    /** Presence frames of a socket, with `joined` / `left` as arrays. */
    const presence = (s: FakeSocket) =>
      s.ofType("presence").map((f) => ({
        users: f.users as string[],
        joined: f.joined === undefined ? [] : ([] as string[]).concat(f.joined as string | string[]),
        left: f.left === undefined ? [] : ([] as string[]).concat(f.left as string | string[]),
      }));

    it("presence under churn: at most one frame per interval, users exact, joined and left merged", async () => {
      await cleanup();
      const interval = 200;
      ({ hubs, cleanup } = await makeHubs({ presenceIntervalMs: interval }));
      const watcher = await join(0, "watcher");
      const t0 = Date.now();
      const churn = [];
      for (let i = 0; i < 30; i++) churn.push(await join(i, `p${i}`));
      for (const c of churn.slice(10)) leave(c);
      const stayed = ["watcher", ...churn.slice(0, 10).map((c) => c.member.name!)].sort();
      // The last frame comes once the changes have settled; its list is the room's, exactly.
      const [last] = await watcher.socket.waitFor(
        (f) => f.type === "presence" && [...(f.users as string[])].sort().join() === stayed.join(),
        1,
        10_000,
      );
      const elapsed = Date.now() - t0;
      const frames = presence(watcher.socket);
      // 61 changes (its own join, 30 joins, 20 leaves): one frame each without merging.
      expect(frames.length).toBeLessThanOrEqual(2 + Math.ceil(elapsed / interval));
      expect(frames.length).toBeLessThan(61);
      expect(frames.at(-1)!.users).toEqual(last!.users as string[]);
      const joined = new Set(frames.flatMap((f) => f.joined));
      for (const name of stayed) expect(joined.has(name), name).toBe(true);
      // Everyone who left was announced as gone, even within one interval of their join.
      const left = new Set(frames.flatMap((f) => f.left));
      for (const c of churn.slice(10)) expect(left.has(c.member.name!), c.member.name!).toBe(true);
      expect(
        frames.some((f) => f.joined.length > 1 || f.left.length > 1),
        "some frame merged several names",
      ).toBe(true);
    });

    it("presence: the first change after a quiet interval goes out at once, the next waits for the interval", async () => {
      await cleanup();
      // Long enough that "later" cannot pass during the test.
      ({ hubs, cleanup } = await makeHubs({ presenceIntervalMs: 60_000 }));
      const a = await join(0, "alice");
      // The room was quiet: alice's own join is announced at once.
      await a.socket.waitFor((f) => f.type === "presence" && f.joined === "alice");
      await join(1, "bob");
      await join(2, "carol");
      expect([...(await hubs[0]!.users(room))].sort()).toEqual(["alice", "bob", "carol"]);
      // A message sent after they joined arrives; their presence is held for the interval.
      await hubs[0]!.publish(room, a.member, { user: "alice", message: "sentinel" });
      await a.socket.waitFor((f) => f.type === "message" && f.message === "sentinel");
      expect(presence(a.socket).map((f) => f.joined)).toEqual([["alice"]]);
    });
  });
}
