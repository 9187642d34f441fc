/**
 * Wraps a real {@link HistoryStore} so a test can make it fail on demand, the
 * way a full disk or an unreachable Redis would.
 */
import type { ChatMessage } from "../../src/protocol.ts";
import type { HistoryStore, PageResult, ResumeResult } from "../../src/store/store.ts";

/** How appends fail: `reject` returns a rejected promise, `throw` throws synchronously. */
export type FailMode = "none" | "reject" | "throw";

/** A HistoryStore whose appends and reads fail while a test says so. */
export class FailingStore implements HistoryStore {
  /** How `append` fails; reads fail too unless `reads` is false. */
  failAppends: FailMode = "none";
  failReads = false;

  /** Present when the inner store has it, so paging takes the same path as with that store. */
  readonly sinceFirst?: HistoryStore["sinceFirst"];

  constructor(readonly inner: HistoryStore) {
    const sinceFirst = inner.sinceFirst?.bind(inner);
    if (sinceFirst) this.sinceFirst = (...args) => this.#read(() => sinceFirst(...args));
  }

  append(message: ChatMessage): void | Promise<void> {
    if (this.failAppends === "throw") throw new Error("store unavailable (test)");
    if (this.failAppends === "reject") return Promise.reject(new Error("store unavailable (test)"));
    return this.inner.append(message);
  }

  #read<T>(fn: () => Promise<T>): Promise<T> {
    return this.failReads ? Promise.reject(new Error("store unavailable (test)")) : fn();
  }

  latest(room: string, limit: number): Promise<ChatMessage[]> {
    return this.#read(() => this.inner.latest(room, limit));
  }
  before(room: string, before: string, limit: number): Promise<ChatMessage[]> {
    return this.#read(() => this.inner.before(room, before, limit));
  }
  since(room: string, since: string, limit: number): Promise<ResumeResult> {
    return this.#read(() => this.inner.since(room, since, limit));
  }
  lastId(room: string): Promise<string | null> {
    return this.#read(() => this.inner.lastId(room));
  }
  after(room: string, after: string, limit: number): Promise<PageResult> {
    return this.#read(() => this.inner.after(room, after, limit));
  }
  get(room: string, id: string): Promise<ChatMessage | null> {
    return this.#read(() => this.inner.get(room, id));
  }
  bannedUntil(room: string, user: string, now: number): Promise<number | null> {
    return this.#read(() => this.inner.bannedUntil(room, user, now));
  }
  // Writes other than append fail with the reads: a store that cannot be
  // read is down for them too.
  edit(room: string, id: string, message: string, edited: number): Promise<ChatMessage | null> {
    return this.#read(() => this.inner.edit(room, id, message, edited));
  }
  delete(room: string, id: string): Promise<boolean> {
    return this.#read(() => this.inner.delete(room, id));
  }
  ban(room: string, user: string, until: number | null): Promise<void> {
    return this.#read(() => this.inner.ban(room, user, until));
  }
  unban(room: string, user: string): Promise<void> {
    return this.#read(() => this.inner.unban(room, user));
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
