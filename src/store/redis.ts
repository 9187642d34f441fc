/**
 * History in Redis streams (HUB=redis): one stream per room, so `since` and
 * paging answer the same whichever instance a client reconnects to.
 *
 * Stream entry ids ARE the message ids: message `1732800000000-000042` is
 * stream entry `1732800000000-42` (same milliseconds and sequence, without
 * the zero padding). The append script XADDs with that explicit id, so
 * `since`/`before` are plain XRANGE/XREVRANGE ranges, Redis itself refuses an
 * id below the stream's top, and no separate index is needed. Fields: `u`
 * (user), `m` (message), `t` (ts, ms since the epoch), `s` (which store
 * wrote it, so pipelined appends can each follow the previous one).
 */
import type { Redis } from "ioredis";
import { type ChatMessage, formatMessageId, parseMessageId } from "../protocol.ts";
import type { HistoryStore, ResumeResult } from "./store.ts";

/**
 * Where a room lives in Redis. The `{room}` hash tag keeps a room's keys in
 * one slot, should the keys ever move to a Redis Cluster.
 */
export class RedisKeys {
  /** @param prefix REDIS_PREFIX @default "chat:" */
  constructor(readonly prefix = "chat:") {}

  /** The room's history stream. */
  stream(room: string): string {
    return `${this.prefix}{${room}}:log`;
  }

  /** The room's online set: `<instance>|<name>` scored by expiry time (ms). */
  presence(room: string): string {
    return `${this.prefix}{${room}}:online`;
  }

  /** The room's pub/sub channel. */
  channel(room: string): string {
    return `${this.prefix}{${room}}:ch`;
  }

  /** The room a channel belongs to, or null for a channel of another prefix. */
  roomOfChannel(channel: string): string | null {
    const head = `${this.prefix}{`;
    if (!channel.startsWith(head) || !channel.endsWith("}:ch")) return null;
    return channel.slice(head.length, -4);
  }
}

/** The stream entry id for a message id (`ms-seq` without padding). */
export function toStreamId(messageId: string): string {
  const parsed = parseMessageId(messageId);
  if (!parsed) throw new Error(`not a message id: ${messageId}`);
  return `${parsed.ms}-${parsed.seq}`;
}

/** The message id for a stream entry id. */
export function fromStreamId(streamId: string): string {
  const dash = streamId.indexOf("-");
  return formatMessageId(Number(streamId.slice(0, dash)), Number(streamId.slice(dash + 1)));
}

/** One entry as ioredis returns it from XRANGE: `[id, [field, value, ...]]`. */
export type StreamEntry = [string, string[]];

/** Rebuilds a message from its stream entry; field order does not matter. */
export function entryToMessage(room: string, [streamId, fields]: StreamEntry): ChatMessage {
  let user = "";
  let message = "";
  let ts = 0;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const value = fields[i + 1] as string;
    switch (fields[i]) {
      case "u":
        user = value;
        break;
      case "m":
        message = value;
        break;
      case "t":
        ts = Number(value);
        break;
    }
  }
  return { type: "message", id: fromStreamId(streamId), room, user, message, ts };
}

/** The XADD trimming arguments for a history limit. */
export function trimArgs(limit: number): string[] {
  // `~` trims whole stream nodes (~100 entries) and is much cheaper; below
  // 1000 messages that slack would be a large share, so trim exactly there.
  return limit >= 1000 ? ["MAXLEN", "~", String(limit)] : ["MAXLEN", String(limit)];
}

// Appends with the message's own id, and when ARGV[7] names a channel also
// PUBLISHes it there in the same step: stream order is then delivery order on
// every instance (the RedisHub's fan-out). Any id at or below the stream's
// top (another instance took it first) cannot go into the stream: the reply
// is `CONFLICT <top>` and the caller picks a higher id. Without a channel, the
// same message again (same id and content) is a repeat and is ignored, as
// SQLite's INSERT OR IGNORE; with one, two instances may pick the same id for
// equal texts, so an existing id is always a conflict (the hub never resends).
// ARGV[9], when set, is the stream id this append must follow: the previous
// append of the same room from this store (ARGV[10], the `s` field of its
// entries; another instance may have stored the same id), still in flight.
// If that one was refused, this one is too, so a pipeline of appends lands in
// order or not at all.
const APPEND_SCRIPT = `
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if ARGV[9] ~= '' then
  local ok = false
  if top and top[1] == ARGV[9] then
    for i = 1, #top[2], 2 do
      if top[2][i] == 's' and top[2][i + 1] == ARGV[10] then ok = true end
    end
  end
  if not ok then return redis.error_reply('CONFLICT ' .. (top and top[1] or '0-0')) end
end
if top then
  local sep = string.find(top[1], '-', 1, true)
  local tms, tseq = tonumber(string.sub(top[1], 1, sep - 1)), tonumber(string.sub(top[1], sep + 1))
  local ms, seq = tonumber(ARGV[1]), tonumber(ARGV[2])
  if ms < tms or (ms == tms and seq <= tseq) then
    local same = ARGV[7] == '' and redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])[1]
    if same then
      local f = {}
      for i = 1, #same[2], 2 do f[same[2][i]] = same[2][i + 1] end
      if f.u == ARGV[4] and f.m == ARGV[5] and f.t == ARGV[6] then return 0 end
    end
    return redis.error_reply('CONFLICT ' .. top[1])
  end
end
local args = {'XADD', KEYS[1]}
for i = 11, #ARGV do args[#args + 1] = ARGV[i] end
args[#args + 1] = ARGV[3]
args[#args + 1] = 'u'
args[#args + 1] = ARGV[4]
args[#args + 1] = 'm'
args[#args + 1] = ARGV[5]
args[#args + 1] = 't'
args[#args + 1] = ARGV[6]
args[#args + 1] = 's'
args[#args + 1] = ARGV[10]
redis.call(unpack(args))
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[7], 'm\\n' .. ARGV[8] .. '\\n' .. ARGV[6] .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[5])
end
return 1
`;

/**
 * An append refused because the room's history already holds a higher id
 * (another instance appended first). Nothing was stored or published; retry
 * with an id above {@link top}.
 */
export class HistoryConflictError extends Error {
  override name = "HistoryConflictError";
  constructor(
    readonly room: string,
    /** The room's newest message id. */
    readonly top: string,
  ) {
    super(`room ${room} already holds a message up to ${top}`);
  }
}

type AppendCommand = (key: string, ...args: string[]) => Promise<number>;

/** A room's appends in flight from one store, for linking them in order. */
interface AppendTrack {
  /** Bumped by a refused append: what was issued before it is doomed, and new appends must not link to it. */
  generation: number;
  /** The last append issued, and its generation. */
  tail: { streamId: string; generation: number } | null;
  inFlight: number;
}

/**
 * The HistoryStore contract over Redis streams. Every call is one round trip
 * (or one pipeline); appends are durable as far as Redis is once they
 * resolve, so `flush` has nothing to wait for.
 */
export class RedisStore implements HistoryStore {
  readonly #redis: Redis;
  readonly #owned: boolean;
  readonly #publish: boolean;
  readonly keys: RedisKeys;
  /** Messages kept per room. */
  readonly limit: number;
  readonly #tracks = new Map<string, AppendTrack>();
  /** Marks this store's entries (field `s`), so an append can follow its own previous one. */
  readonly #writer = globalThis.crypto.randomUUID().slice(0, 8);
  #closed = false;

  /**
   * @param redis a connected client (commands should fail fast while Redis is
   *   down: no offline queue, a command timeout)
   * @param options.limit messages kept per room (HISTORY_LIMIT) @default 10000
   * @param options.prefix key prefix (REDIS_PREFIX) @default "chat:"
   * @param options.owned quit the client on close @default false
   * @param options.publish also PUBLISH each appended message on its room's
   *   channel, atomically with the XADD (what RedisHub fans out) @default false
   */
  constructor(redis: Redis, options: { limit?: number; prefix?: string; owned?: boolean; publish?: boolean } = {}) {
    this.#redis = redis;
    this.limit = options.limit ?? 10000;
    this.keys = new RedisKeys(options.prefix);
    this.#owned = options.owned ?? false;
    this.#publish = options.publish ?? false;
    if (!("chatAppend" in redis)) redis.defineCommand("chatAppend", { numberOfKeys: 1, lua: APPEND_SCRIPT });
  }

  async append(message: ChatMessage): Promise<void> {
    if (this.#closed) throw new Error("history store is closed");
    const id = parseMessageId(message.id);
    if (!id) throw new Error(`not a message id: ${message.id}`);
    const append = (this.#redis as unknown as { chatAppend: AppendCommand }).chatAppend;
    let track = this.#tracks.get(message.room);
    if (!track) {
      track = { generation: 0, tail: null, inFlight: 0 };
      this.#tracks.set(message.room, track);
    }
    // Replies come in order, so while any append of the room is in flight the
    // last one issued is: link to it unless a refusal has doomed it.
    const follows =
      track.inFlight > 0 && track.tail !== null && track.tail.generation === track.generation
        ? track.tail.streamId
        : "";
    const generation = track.generation;
    const streamId = `${id.ms}-${id.seq}`;
    track.tail = { streamId, generation };
    track.inFlight++;
    try {
      await append.call(
        this.#redis,
        this.keys.stream(message.room),
        String(id.ms),
        String(id.seq),
        streamId,
        message.user,
        message.message,
        String(Math.trunc(message.ts)),
        this.#publish ? this.keys.channel(message.room) : "",
        message.id,
        follows,
        this.#writer,
        ...trimArgs(this.limit),
      );
    } catch (error) {
      if (track.generation === generation) track.generation++;
      const top = error instanceof Error ? /^CONFLICT (\d+-\d+)/.exec(error.message)?.[1] : undefined;
      if (top !== undefined) throw new HistoryConflictError(message.room, fromStreamId(top));
      throw error;
    } finally {
      if (--track.inFlight === 0 && this.#tracks.get(message.room) === track) this.#tracks.delete(message.room);
    }
  }

  async latest(room: string, limit: number): Promise<ChatMessage[]> {
    const n = Math.min(limit, this.limit);
    if (n <= 0) return [];
    const entries = (await this.#redis.xrevrange(this.keys.stream(room), "+", "-", "COUNT", n)) as StreamEntry[];
    return entries.reverse().map((e) => entryToMessage(room, e));
  }

  async before(room: string, before: string, limit: number): Promise<ChatMessage[]> {
    if (limit <= 0) return [];
    const entries = (await this.#redis.xrevrange(
      this.keys.stream(room),
      `(${toStreamId(before)}`,
      "-",
      "COUNT",
      limit,
    )) as StreamEntry[];
    return entries.reverse().map((e) => entryToMessage(room, e));
  }

  async since(room: string, since: string, limit: number): Promise<ResumeResult> {
    const key = this.keys.stream(room);
    const sid = toStreamId(since);
    // One pipeline: whether `since` is still held, and what follows it.
    const replies = await this.#redis
      .pipeline()
      .xrange(key, sid, sid)
      .xrange(key, `(${sid}`, "+", "COUNT", limit + 1)
      .exec();
    const [known, after] = (replies ?? []).map(([error, value]) => {
      if (error) throw error;
      return value as StreamEntry[];
    });
    const rows = after ?? [];
    if (rows.length <= limit) {
      return { messages: rows.map((e) => entryToMessage(room, e)), complete: (known ?? []).length > 0 };
    }
    const newest = (await this.#redis.xrevrange(key, "+", `(${sid}`, "COUNT", limit)) as StreamEntry[];
    return { messages: newest.reverse().map((e) => entryToMessage(room, e)), complete: false };
  }

  async lastId(room: string): Promise<string | null> {
    const entries = (await this.#redis.xrevrange(this.keys.stream(room), "+", "-", "COUNT", 1)) as StreamEntry[];
    const top = entries[0];
    return top ? fromStreamId(top[0]) : null;
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#owned) await this.#redis.quit().catch(() => this.#redis.disconnect());
  }
}
