import type { ChatMessage } from "../protocol.ts";
import type { HistoryStore, ResumeResult } from "./store.ts";

/** Index of the first message whose id is above `id` (ids are ordered strings). */
function upperBound(list: ChatMessage[], id: string): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((list[mid] as ChatMessage).id <= id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * History kept in memory (HISTORY=memory), capped per room. Appends arrive in
 * id order from the hub, so each room's list stays sorted.
 */
export class MemoryStore implements HistoryStore {
  readonly #rooms = new Map<string, ChatMessage[]>();

  /** @param limit messages kept per room @default 10000 */
  constructor(readonly limit = 10000) {}

  append(message: ChatMessage): void {
    let list = this.#rooms.get(message.room);
    if (!list) {
      list = [];
      this.#rooms.set(message.room, list);
    }
    list.push(message);
    // Trim in chunks so a full room does not shift the array on every append.
    if (list.length > this.limit + Math.max(1, this.limit >> 3)) {
      list.splice(0, list.length - this.limit);
    }
  }

  #list(room: string): ChatMessage[] {
    const list = this.#rooms.get(room) ?? [];
    return list.length > this.limit ? list.slice(list.length - this.limit) : list;
  }

  async latest(room: string, limit: number): Promise<ChatMessage[]> {
    const list = this.#list(room);
    return limit <= 0 ? [] : list.slice(Math.max(0, list.length - limit));
  }

  async before(room: string, before: string, limit: number): Promise<ChatMessage[]> {
    const list = this.#list(room);
    let end = upperBound(list, before);
    if (end > 0 && (list[end - 1] as ChatMessage).id === before) end--;
    return list.slice(Math.max(0, end - limit), end);
  }

  async since(room: string, since: string, limit: number): Promise<ResumeResult> {
    const list = this.#list(room);
    const start = upperBound(list, since);
    const known = start > 0 && (list[start - 1] as ChatMessage).id === since;
    const after = list.length - start;
    const from = after > limit ? list.length - limit : start;
    return { messages: list.slice(from), complete: known && after <= limit };
  }

  async lastId(room: string): Promise<string | null> {
    const list = this.#rooms.get(room);
    return list?.at(-1)?.id ?? null;
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}
