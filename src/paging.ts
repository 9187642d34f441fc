/**
 * Paged replies (docs/protocol.md): a welcome, a resume or a `history` answer of
 * any size reaches a client that reads, and costs bounded memory for one
 * that does not.
 *
 * - A reply that fits {@link PagingOptions.firstBytes} (half of
 *   MAX_BUFFERED_BYTES: 512 KiB by default, so a resume of 1000 ordinary chat
 *   messages) is one frame, as docs/protocol.md's resume promise needs.
 *   Only a larger one is paged: its first frame (the welcome, or a `history`
 *   answer's first) carries that much with `more: true`; the rest follows in
 *   pages of about {@link PagingOptions.pageSize} as
 *   `{"type":"history","messages":[...],"more":...}` frames (a `history`
 *   answer's pages also carry the request's `before`), the last with
 *   `more: false`.
 * - Each page goes out only once the socket's `bufferedAmount` is under the
 *   low-water mark, polled with a timer (the core knows no runtime, and no
 *   runtime here has a "drained" event in common). On Workers
 *   `bufferedAmount` is always 0, so pages go out in turn, one store read
 *   apart; the runtime queues them itself.
 * - Only a bounded read-ahead is kept per reply ({@link PagingOptions.readAhead});
 *   the rest is read again from the store page by page (`after`), so a
 *   client that stops reading holds at most that, plus the room's live frames
 *   held meanwhile, which Member bounds by MAX_BUFFERED_BYTES (then 1013).
 * - While a welcome's pages go out the member stays held: live frames wait
 *   and follow the last page, minus the messages the pages already carried
 *   (Member's dedupe by id). Replies of one connection go out one at a time,
 *   in the order they were asked.
 */
import type { Member } from "./hub/hub.ts";
import { type ChatMessage, type HistoryFrame, serialize, type WelcomeFrame } from "./protocol.ts";
import type { HistoryStore, ResumeResult } from "./store/store.ts";

/** How replies are cut and paced. */
export interface PagingOptions {
  /**
   * Bytes of history (its JSON, UTF-8) the welcome, or a `history` answer's
   * first frame, carries before the rest is paged. @default 524288 (half of MAX_BUFFERED_BYTES)
   */
  firstBytes?: number;
  /** About this many UTF-16 units of messages per page (at least one message). @default 65536 */
  pageSize?: number;
  /** A page is sent once the socket has less than this many bytes queued. @default 65536 */
  lowWater?: number;
  /** Messages kept read ahead per reply, in UTF-16 units; the rest is read again later. @default 131072 */
  readAhead?: number;
  /** Longest wait for one page's turn before the client counts as not reading (1013). @default 60000 */
  stallMs?: number;
  /**
   * Most `history` requests waiting behind the one being answered (a burst
   * of small ones arrives in one read; what they cost is charged by the
   * fair-use limits, this only bounds the queue). @default 32
   */
  maxQueued?: number;
}

/** The last defaults made: every connection of a server has the same MAX_BUFFERED_BYTES. */
let lastDefaults: { maxBuffered: number; options: Required<PagingOptions> } | null = null;

/** Defaults for a connection whose MAX_BUFFERED_BYTES is `maxBuffered` (shared, not copied per connection). */
export function pagingFor(maxBuffered: number): Required<PagingOptions> {
  if (lastDefaults?.maxBuffered === maxBuffered) return lastDefaults.options;
  // A page and the low-water mark together stay well under the slow-consumer
  // bound, even when a page's UTF-8 is three times its UTF-16 length.
  const page = Math.max(1024, Math.min(64 * 1024, Math.floor(maxBuffered / 8)));
  const options = Object.freeze({
    // Sent onto an empty queue (a welcome) or one under the low-water mark, so
    // the first frame leaves at least half the slow-consumer bound free.
    firstBytes: Math.max(page, Math.floor(maxBuffered / 2)),
    pageSize: page,
    lowWater: page,
    readAhead: 2 * page,
    stallMs: 60_000,
    maxQueued: 32,
  });
  lastDefaults = { maxBuffered, options };
  return options;
}

/** A message's share of a page: its free text and the fixed fields' JSON. */
function sizeOf(m: ChatMessage): number {
  return m.message.length + m.user.length + m.room.length + 96;
}

/** Characters that JSON or UTF-8 makes longer than one byte (ASCII other than controls, `"` and `\\` is one). */
const WIDE = /[^\x20\x21\x23-\x5b\x5d-\x7f]/;

/**
 * A string's bytes in a frame: its UTF-8 with JSON's escapes. Counted by hand
 * because encoding every message to measure it would copy it; the regex
 * skips the loop for plain ASCII, the usual chat message.
 */
function jsonBytes(s: string): number {
  if (!WIDE.test(s)) return s.length;
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20)
      n += 5; // \u00XX (\n and a few others take 2: counted high)
    else if (c === 0x22 || c === 0x5c) n += 1;
    else if (c >= 0x80) n += c < 0x800 || (c >= 0xd800 && c < 0xe000) ? 1 : 2; // a surrogate pair is 4
  }
  return n;
}

/** A message's bytes in a frame: never less than {@link sizeOf}. */
function bytesOf(m: ChatMessage): number {
  return jsonBytes(m.message) + jsonBytes(m.user) + jsonBytes(m.room) + 96;
}

/**
 * How many of `list` (from `from`) fit in `budget` as `size` measures them
 * ({@link sizeOf} units or {@link bytesOf} bytes); at least one when any are left.
 */
function countFitting(
  list: readonly ChatMessage[],
  from: number,
  budget: number,
  size: (m: ChatMessage) => number,
): number {
  let n = 0;
  let used = 0;
  while (from + n < list.length) {
    used += size(list[from + n] as ChatMessage);
    if (n > 0 && used > budget) break;
    n++;
  }
  return n;
}

/**
 * A reply's messages, oldest first, read page by page: what a first read
 * returned (kept only up to the read-ahead), then `store.after` from where
 * that stopped, up to and including the first read's newest id. Messages
 * deleted meanwhile are skipped; edits show their new text.
 */
class PageSource {
  #buffer: ChatMessage[];
  #at = 0;
  #cursor: string | null;
  readonly #until: string | null;
  /** False while the store may hold more up to `#until` than the buffer. */
  #readAll: boolean;
  /** Average message size seen, to size the next read. */
  #avg: number;

  /**
   * @param first what the first read returned, oldest first
   * @param firstBytes what {@link first} may take from it (bytes); the rest is
   *   kept only up to the read-ahead
   * @param rest set when that read stopped early (a resume's `sinceFirst`):
   *   the rest is read later, up to `until` (the room's newest id then)
   */
  constructor(
    readonly store: HistoryStore,
    readonly room: string,
    first: ChatMessage[],
    firstBytes: number,
    readonly readAhead: number,
    rest: ResumeRest | null = null,
  ) {
    this.#buffer = first;
    this.#readAll = rest === null || first.length === 0;
    this.#until = rest && first.length > 0 ? rest.until : (first.at(-1)?.id ?? null);
    this.#cursor = first.at(-1)?.id ?? null;
    let total = 0;
    for (const m of first) total += sizeOf(m);
    this.#avg = first.length > 0 ? total / first.length : 256;
    // Bytes are never fewer than units: this keeps all the first frame can take.
    this.#keep(0, firstBytes + readAhead);
  }

  /** Keeps `units` of the buffer from `from` on; what is dropped is read again later. */
  #keep(from: number, units: number): void {
    const list = this.#buffer;
    const end = from + (from < list.length ? countFitting(list, from, units, sizeOf) : 0);
    if (end < list.length) {
      this.#readAll = false;
      this.#cursor = (list[end - 1] as ChatMessage).id;
    }
    this.#buffer = from === 0 && end === list.length ? list : list.slice(from, end);
    this.#at = 0;
  }

  /** The reply's first frame: as much as fits `bytes` (at least one message); then only the read-ahead is kept. */
  first(bytes: number): ChatMessage[] {
    const n = countFitting(this.#buffer, this.#at, bytes, bytesOf);
    const page = this.#buffer.slice(this.#at, this.#at + n);
    this.#keep(this.#at + n, this.readAhead);
    return page;
  }

  /** The newest id this reply carries (null when empty). */
  get until(): string | null {
    return this.#until;
  }

  /** True while messages are left to send. */
  get more(): boolean {
    return this.#at < this.#buffer.length || !this.#readAll;
  }

  /** The next page from what is read already (may be empty when a read is due). */
  take(pageSize: number): ChatMessage[] {
    const n = countFitting(this.#buffer, this.#at, pageSize, sizeOf);
    const page = this.#buffer.slice(this.#at, this.#at + n);
    this.#at += n;
    return page;
  }

  /** The next page, reading from the store when the read-ahead is used up. */
  async next(pageSize: number): Promise<ChatMessage[]> {
    if (this.#at >= this.#buffer.length && !this.#readAll) await this.#refill();
    return this.take(pageSize);
  }

  async #refill(): Promise<void> {
    const until = this.#until;
    const cursor = this.#cursor;
    if (until === null || cursor === null) {
      this.#readAll = true;
      return;
    }
    const count = Math.max(1, Math.min(500, Math.ceil(this.readAhead / this.#avg)));
    const read = await this.store.after(this.room, cursor, count);
    const list = read.messages;
    let end = list.length;
    while (end > 0 && (list[end - 1] as ChatMessage).id > until) end--;
    this.#buffer = end === list.length ? list : list.slice(0, end);
    this.#at = 0;
    this.#readAll = !read.more || end < list.length || end === 0 || (list[end - 1] as ChatMessage).id >= until;
    this.#cursor = this.#buffer.at(-1)?.id ?? cursor;
    if (this.#buffer.length > 0) {
      let total = 0;
      for (const m of this.#buffer) total += sizeOf(m);
      this.#avg = total / this.#buffer.length;
    }
  }
}

/** Where a resume that was not read whole ends: the room's newest id when it started. */
export interface ResumeRest {
  until: string | null;
}

/** Most `after` reads a resume makes to fill its welcome (each asks for what the budget has left). */
const RESUME_FILL_READS = 16;

/**
 * Reads a resume (`since`) for the welcome. With a store that has
 * `sinceFirst`, only about `firstBytes` of it (what the welcome carries, so
 * a resume of 1000 chat messages is read whole and one of 1000 x 8 KB is not
 * 8 MB of strings at once): a first `sinceFirst` read sized for 8 KB
 * messages, then `after` reads sized by the average seen, up to the room's
 * newest id when the resume started; the rest is paged from the store later
 * (see `rest`). Otherwise all of it, as `since` returns it.
 */
export async function readResume(
  store: HistoryStore,
  room: string,
  since: string,
  limit: number,
  firstBytes: number,
): Promise<ResumeResult & { rest: ResumeRest | null }> {
  if (!store.sinceFirst) return { ...(await store.since(room, since, limit)), rest: null };
  const page = Math.max(16, Math.min(limit, Math.floor(firstBytes / 8192)));
  const first = await store.sinceFirst(room, since, limit, page);
  const { complete } = first;
  if (!first.more) return { messages: first.messages, complete, rest: null };
  const until = await store.lastId(room);
  const messages = [...first.messages];
  let bytes = 0;
  for (const m of messages) bytes += bytesOf(m);
  for (let reads = 0; reads < RESUME_FILL_READS && bytes <= firstBytes; reads++) {
    const cursor = messages.at(-1)?.id;
    if (until === null || cursor === undefined || cursor >= until) return { messages, complete, rest: null };
    const count = Math.min(1000, Math.ceil((firstBytes - bytes) / (bytes / messages.length)) + 1);
    const read = await store.after(room, cursor, count);
    let end = 0;
    for (const m of read.messages) {
      if (m.id > until) break; // newer than the resume: the member holds it as a live frame
      messages.push(m);
      bytes += bytesOf(m);
      end++;
    }
    if (!read.more || end < read.messages.length) return { messages, complete, rest: null };
  }
  const last = messages.at(-1)?.id;
  return { messages, complete, rest: until !== null && last !== undefined && last < until ? { until } : null };
}

/** What the session hears from its replies. */
export interface RepliesEvents {
  /** A store read failed after the reply had started (logged by the session). */
  readFailed(error: unknown, what: "welcome" | "history"): void;
  /** The history answer failed: tell the client (an `unavailable` error). */
  historyUnavailable(): void;
  /** A `history` answer's read came back: the session charges its size (fair use). @default none */
  read?(messages: readonly ChatMessage[], limit: number): void;
}

/**
 * One connection's paged replies: its welcome, then each `history` answer
 * in the order asked, one at a time.
 */
export class Replies {
  readonly #opts: Required<PagingOptions>;
  /** The reply being sent and those behind it; null when idle (nothing kept per idle connection). */
  #tail: Promise<void> | null = null;
  #queued = 0;

  constructor(
    readonly member: Member,
    readonly store: HistoryStore,
    readonly room: string,
    readonly events: RepliesEvents,
    options?: PagingOptions,
  ) {
    const defaults = pagingFor(member.maxBuffered);
    this.#opts = options ? { ...defaults, ...options } : defaults;
  }

  /**
   * Sends the welcome (its `history` is everything the welcome read, oldest
   * first, or the start of it with `rest` from {@link readResume}) as its
   * first page now, and the rest in the background; the member goes live
   * after the last page. Returns once the welcome frame is sent.
   */
  welcome(welcome: WelcomeFrame, rest: ResumeRest | null = null): void {
    const { member } = this;
    const { firstBytes, readAhead } = this.#opts;
    const source = new PageSource(this.store, this.room, welcome.history, firstBytes, readAhead, rest);
    welcome.history = source.first(firstBytes);
    if (source.more) welcome.more = true;
    if (!member.sendAhead(serialize(welcome))) return;
    // The usual case, one page and little held, ends here without a timer.
    if (!source.more) {
      member.cover(source.until);
      if (member.releaseSome(this.#opts.pageSize)) return;
    }
    this.#enqueue(() => this.#pageWelcome(source));
  }

  async #pageWelcome(source: PageSource): Promise<void> {
    const { member } = this;
    const { pageSize } = this.#opts;
    while (source.more) {
      let messages: ChatMessage[];
      try {
        messages = await source.next(pageSize);
      } catch (error) {
        this.events.readFailed(error, "welcome");
        // The client resumes from the last id it got, with nothing lost.
        member.socket.close(1013, "history is unavailable, try again");
        return;
      }
      if (!(await this.#turn())) return;
      const page: HistoryFrame = { type: "history", messages, more: source.more };
      if (!member.sendAhead(serialize(page))) return;
    }
    member.cover(source.until);
    // Then what the room sent meanwhile, paced the same way.
    while (!member.releaseSome(pageSize)) {
      if (!(await this.#turn())) return;
    }
  }

  /**
   * Queues a `history` answer (latest `limit`, or `limit` before `before`).
   * Returns false, and queues nothing, when too many are waiting already.
   */
  history(before: string | undefined, limit: number): boolean {
    if (this.#queued >= this.#opts.maxQueued) return false;
    this.#queued++;
    this.#enqueue(async () => {
      this.#queued--;
      await this.#pageHistory(before, limit);
    });
    return true;
  }

  async #pageHistory(before: string | undefined, limit: number): Promise<void> {
    const { member, store, room } = this;
    if (!member.open) return;
    const frame = (messages: ChatMessage[], more: boolean): string =>
      serialize(
        before === undefined
          ? ({ type: "history", messages, more } satisfies HistoryFrame)
          : ({ type: "history", messages, before, more } satisfies HistoryFrame),
      );
    let source: PageSource;
    try {
      const first = before === undefined ? await store.latest(room, limit) : await store.before(room, before, limit);
      this.events.read?.(first, limit);
      source = new PageSource(store, room, first, this.#opts.firstBytes, this.#opts.readAhead);
    } catch (error) {
      this.events.readFailed(error, "history");
      this.events.historyUnavailable();
      return;
    }
    // One frame when it fits firstBytes, like the welcome; pages after that.
    if (!(await this.#turn())) return;
    member.deliver(frame(source.first(this.#opts.firstBytes), source.more));
    while (source.more && member.open) {
      let messages: ChatMessage[];
      try {
        messages = await source.next(this.#opts.pageSize);
      } catch (error) {
        this.events.readFailed(error, "history");
        this.events.historyUnavailable();
        // Ends the paged answer, so a client waiting for `more: false` stops.
        member.deliver(frame([], false));
        return;
      }
      if (!(await this.#turn())) return;
      member.deliver(frame(messages, source.more));
    }
  }

  #enqueue(job: () => Promise<void>): void {
    // A job's own failures are handled inside it; the catch only keeps the chain going.
    const tail: Promise<void> = (this.#tail ?? Promise.resolve())
      .then(job)
      .catch((error: unknown) => this.events.readFailed(error, "history"))
      .then(() => {
        if (this.#tail === tail) this.#tail = null;
      });
    this.#tail = tail;
  }

  /**
   * Resolves true once the socket's queue is under the low-water mark, false
   * when the member closed first. Polled: 2 ms, doubling up to 50 ms. A
   * client that takes nothing for `stallMs` is closed as a slow consumer.
   */
  #turn(): Promise<boolean> {
    const { member } = this;
    const { lowWater, stallMs } = this.#opts;
    if (!member.open) return Promise.resolve(false);
    if (member.socket.bufferedAmount() <= lowWater) return Promise.resolve(true);
    return new Promise((resolve) => {
      let delay = 2;
      let last = member.socket.bufferedAmount();
      let stalledSince = Date.now();
      const poll = () => {
        if (!member.open) return resolve(false);
        const queued = member.socket.bufferedAmount();
        if (queued <= lowWater) return resolve(true);
        const now = Date.now();
        if (queued < last) stalledSince = now;
        last = queued;
        if (now - stalledSince >= stallMs) {
          member.closeSlow();
          return resolve(false);
        }
        delay = Math.min(delay * 2, 50);
        setTimeout(poll, delay);
      };
      setTimeout(poll, delay);
    });
  }
}
