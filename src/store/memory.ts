import type { ChatMessage } from "../protocol.ts";
import {
  type HistoryStore,
  type PageResult,
  pruneIntervalMs,
  type ResumeResult,
  type RetentionOptions,
} from "./store.ts";

/** What a deleted message leaves behind: its place in the order, for `since` and `lastId`. */
interface Tombstone {
  type: "deleted";
  id: string;
  ts: number;
}

type Slot = ChatMessage | Tombstone;

interface RoomHistory {
  /** Sorted by id: appends arrive in id order from the hub. */
  list: Slot[];
  /** Tombstones in `list`, so rooms without any take the plain slice paths. */
  deleted: number;
}

/** Index of the first slot whose id is above `id` (ids are ordered strings). */
function upperBound(list: Slot[], id: string, from: number): number {
  let lo = from;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((list[mid] as Slot).id <= id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const banKey = (room: string, user: string) => `${room}\u0000${user}`;

/**
 * History kept in memory (HISTORY=memory), capped per room. Appends arrive in
 * id order from the hub, so each room's list stays sorted.
 *
 * Retention (`ttlMs`): reads drop expired messages from the head of the
 * room they read, and an unref'd timer does the same for every room, so a
 * room whose messages have all expired leaves nothing behind. Bans live in
 * one map and expired ones go on the same timer (and on every `ban`).
 */
export class MemoryStore implements HistoryStore {
  readonly #rooms = new Map<string, RoomHistory>();
  /** Ban end (ms, Infinity = until lifted) by room and user. */
  readonly #bans = new Map<string, number>();
  readonly #ttlMs: number;
  readonly #now: () => number;
  #timer: ReturnType<typeof setInterval> | null = null;

  /**
   * @param limit messages kept per room @default 10000
   * @param options retention (HISTORY_TTL) and the clock
   */
  constructor(
    readonly limit = 10000,
    options: RetentionOptions = {},
  ) {
    this.#ttlMs = options.ttlMs ?? 0;
    this.#now = options.now ?? Date.now;
    if (this.#ttlMs > 0) {
      this.#timer = setInterval(() => this.prune(), pruneIntervalMs(this.#ttlMs));
      // Node and Bun: the timer must not keep a finished process alive (Deno's
      // timers are numbers without unref; close() clears it there).
      (this.#timer as { unref?: () => void }).unref?.();
    }
  }

  append(message: ChatMessage): void {
    let room = this.#rooms.get(message.room);
    if (!room) {
      room = { list: [], deleted: 0 };
      this.#rooms.set(message.room, room);
    }
    const { list } = room;
    list.push(message);
    // Trim in chunks so a full room does not shift the array on every append.
    if (list.length > this.limit + Math.max(1, this.limit >> 3)) this.#dropHead(room, list.length - this.limit);
  }

  #dropHead(room: RoomHistory, n: number): void {
    if (room.deleted > 0) {
      for (let i = 0; i < n; i++) if ((room.list[i] as Slot).type === "deleted") room.deleted--;
    }
    room.list.splice(0, n);
  }

  /** Drops expired messages from the head of every room, and expired bans. */
  prune(): void {
    for (const name of this.#rooms.keys()) this.#room(name);
    const now = this.#now();
    for (const [key, until] of this.#bans) if (until <= now) this.#bans.delete(key);
  }

  /**
   * The room's history with expired messages dropped (a room left empty is
   * forgotten), and the index where its readable window starts (the count
   * limit is applied in chunks, so the list may run a little over).
   */
  #room(name: string): { room: RoomHistory; from: number } | null {
    const room = this.#rooms.get(name);
    if (!room) return null;
    if (this.#ttlMs > 0) {
      const cutoff = this.#now() - this.#ttlMs;
      const { list } = room;
      let n = 0;
      // Ids are time-based, so the oldest messages are at the head.
      while (n < list.length && (list[n] as Slot).ts < cutoff) n++;
      if (n === list.length) {
        this.#rooms.delete(name);
        return null;
      }
      if (n > 0) this.#dropHead(room, n);
    }
    return { room, from: Math.max(0, room.list.length - this.limit) };
  }

  /** Up to `limit` messages of `list[from, to)`, the newest ones, oldest first. */
  #newest(room: RoomHistory, from: number, to: number, limit: number): ChatMessage[] {
    if (limit <= 0 || to <= from) return [];
    if (room.deleted === 0) return room.list.slice(Math.max(from, to - limit), to) as ChatMessage[];
    const out: ChatMessage[] = [];
    for (let i = to - 1; i >= from && out.length < limit; i--) {
      const s = room.list[i] as Slot;
      if (s.type === "message") out.push(s);
    }
    return out.reverse();
  }

  /** Up to `limit` messages of `list[from, ...)`, the oldest ones. */
  #oldest(room: RoomHistory, from: number, limit: number): ChatMessage[] {
    if (limit <= 0) return [];
    if (room.deleted === 0) return room.list.slice(from, from + limit) as ChatMessage[];
    const out: ChatMessage[] = [];
    for (let i = from; i < room.list.length && out.length < limit; i++) {
      const s = room.list[i] as Slot;
      if (s.type === "message") out.push(s);
    }
    return out;
  }

  /** Index of the slot with this id in the readable window, or -1. */
  #find(name: string, id: string): { room: RoomHistory; at: number } | null {
    const r = this.#room(name);
    if (!r) return null;
    const at = upperBound(r.room.list, id, r.from) - 1;
    return at >= r.from && (r.room.list[at] as Slot).id === id ? { room: r.room, at } : null;
  }

  async latest(room: string, limit: number): Promise<ChatMessage[]> {
    const r = this.#room(room);
    return r ? this.#newest(r.room, r.from, r.room.list.length, limit) : [];
  }

  async before(room: string, before: string, limit: number): Promise<ChatMessage[]> {
    const r = this.#room(room);
    if (!r) return [];
    let end = upperBound(r.room.list, before, r.from);
    if (end > r.from && (r.room.list[end - 1] as Slot).id === before) end--;
    return this.#newest(r.room, r.from, end, limit);
  }

  async since(room: string, since: string, limit: number): Promise<ResumeResult> {
    const r = this.#room(room);
    if (!r) return { messages: [], complete: false };
    const { list } = r.room;
    const start = upperBound(list, since, r.from);
    const known = start > r.from && (list[start - 1] as Slot).id === since;
    const newest = this.#newest(r.room, start, list.length, limit + 1);
    if (newest.length <= limit) return { messages: newest, complete: known };
    return { messages: newest.slice(1), complete: false };
  }

  async after(room: string, after: string, limit: number): Promise<PageResult> {
    const r = this.#room(room);
    if (!r || limit <= 0) return { messages: [], more: false };
    const page = this.#oldest(r.room, upperBound(r.room.list, after, r.from), limit + 1);
    return page.length > limit ? { messages: page.slice(0, limit), more: true } : { messages: page, more: false };
  }

  async get(room: string, id: string): Promise<ChatMessage | null> {
    const f = this.#find(room, id);
    const s = f?.room.list[f.at];
    return s?.type === "message" ? s : null;
  }

  async edit(room: string, id: string, message: string, edited: number): Promise<ChatMessage | null> {
    const f = this.#find(room, id);
    const s = f?.room.list[f.at];
    if (!f || s?.type !== "message") return null;
    // A new object: the old one may still be on its way to members.
    const updated: ChatMessage = { ...s, message, edited };
    f.room.list[f.at] = updated;
    return updated;
  }

  async delete(room: string, id: string): Promise<boolean> {
    const f = this.#find(room, id);
    const s = f?.room.list[f.at];
    if (!f || s?.type !== "message") return false;
    f.room.list[f.at] = { type: "deleted", id: s.id, ts: s.ts };
    f.room.deleted++;
    return true;
  }

  async ban(room: string, user: string, until: number | null): Promise<void> {
    const now = this.#now();
    for (const [key, end] of this.#bans) if (end <= now) this.#bans.delete(key);
    this.#bans.set(banKey(room, user), until ?? Number.POSITIVE_INFINITY);
  }

  async unban(room: string, user: string): Promise<void> {
    this.#bans.delete(banKey(room, user));
  }

  async bannedUntil(room: string, user: string, now: number): Promise<number | null> {
    const until = this.#bans.get(banKey(room, user));
    return until !== undefined && until > now ? until : null;
  }

  async lastId(room: string): Promise<string | null> {
    const r = this.#room(room);
    return r?.room.list.at(-1)?.id ?? null;
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }
}
