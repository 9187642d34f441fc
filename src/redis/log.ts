/**
 * A room's log in Redis: its stream of messages, the stream's epoch, edits,
 * deletes and bans. The one module that reads and writes those keys; the
 * HistoryStore (store/redis.ts) and the broker (broker.ts) both go through it.
 *
 * - Stream `{room}:log`: entry id = message id without padding (message
 *   `1732800000000-000042` is entry `1732800000000-42`), fields `u` user,
 *   `m` text, `t` ts. `since`/`before`/`after` are XRANGE/XREVRANGE ranges.
 * - Hash `{room}:meta`, written with every append:
 *   `e` the epoch (8 characters), `b` the base (the first id of the epoch:
 *   a resume from an id below it crosses a loss), `t` the top (the highest
 *   id ever appended or seen; a delete does not lower it), `w` which writer
 *   appended the top (so a writer's pipelined appends can each follow the
 *   previous one).
 * - Hash `{room}:changes`: stream id -> `<edited ms>\n<text>` (an edit,
 *   applied on every read) or `d` (a tombstone: the entry was XDELed, and
 *   `since` that id is still a known place).
 * - Hash `{room}:bans`: user -> end of the ban (ms) or `inf`.
 *
 * The epoch is why a resume never hides a loss: the stream and its meta are
 * written by one script, so Redis loses them together (restart without
 * persistence, FLUSHALL, a key evicted): the next append finds no meta and
 * starts a new epoch whose base is its own id, and every older cursor is
 * below it. When Redis goes back in time but keeps the meta (a failover to
 * a replica that lagged, a restart from an older snapshot), an instance that
 * saw a higher id than the top (`known`) starts the new epoch itself.
 */
import type { Cluster, Redis } from "ioredis";
import { type ChatMessage, formatMessageId, parseMessageId } from "../protocol.ts";
import { newEpoch } from "./codec.ts";
import { RoomKeys } from "./keys.ts";

/** A client to one Redis or to a cluster. */
export type RedisCommands = Redis | Cluster;

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

/** The smallest message id above `id` (a base no real message sits on). */
export function nextId(id: string): string {
  const p = parseMessageId(id);
  if (!p) throw new Error(`not a message id: ${id}`);
  return p.seq < 999_999 ? formatMessageId(p.ms, p.seq + 1) : formatMessageId(p.ms + 1, 0);
}

/** One entry as ioredis returns it from XRANGE: `[id, [field, value, ...]]`. */
type StreamEntry = [string, string[]];

/** Rebuilds a message from its entry and its change (`''` none). */
function toMessage(room: string, [streamId, fields]: StreamEntry, change: string): ChatMessage {
  let user = "";
  let text = "";
  let ts = 0;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const value = fields[i + 1] as string;
    if (fields[i] === "u") user = value;
    else if (fields[i] === "m") text = value;
    else if (fields[i] === "t") ts = Number(value);
  }
  const message: ChatMessage = { type: "message", id: fromStreamId(streamId), room, user, message: text, ts };
  const nl = change.indexOf("\n");
  if (nl > 0) {
    message.message = change.slice(nl + 1);
    message.edited = Number(change.slice(0, nl));
  }
  return message;
}

/** The XADD trimming arguments for a history limit. */
function trimArgs(limit: number): string[] {
  // `~` trims whole stream nodes (~100 entries) and is much cheaper; below
  // 1000 messages that slack would be a large share, so trim exactly there.
  return limit >= 1000 ? ["MAXLEN", "~", String(limit)] : ["MAXLEN", String(limit)];
}

// Shared by the scripts: a stream id as a padded message id.
const PAD = `
local function pad(sid)
  local d = string.find(sid, '-', 1, true)
  return string.format('%013d-%06d', tonumber(string.sub(sid, 1, d - 1)), tonumber(string.sub(sid, d + 1)))
end
`;

// KEYS: stream, meta, changes. ARGV: 1 id (padded), 2 stream id, 3 user,
// 4 text, 5 ts, 6 writer, 7 follows (padded id of this writer's previous
// append still in flight, or ''), 8 known (the highest id the caller has
// seen in the room, or ''), 9 epoch mode (`any`: adopt the room's epoch;
// `expect`: the room's epoch must be ARGV 10; `create`: the caller knows
// none, and ARGV 10 is its candidate), 10 epoch, 11 a fresh epoch for a
// reset, 12 the base of that reset (just above `known`), 13 publish command
// ('' | PUBLISH | SPUBLISH), 14 channel, 15 payload, 16 ttl ms ('0': none),
// 17 the oldest stream id the TTL keeps, 18.. XADD trim arguments.
// Replies 1 (stored), 0 (`any` only: the same message again, ignored), or
// an error: `CONFLICT <top>` (take an id above top), `EPOCH <epoch> <base>`
// (the room's epoch is not the one expected; `-` when it has none).
const APPEND_SCRIPT = `${PAD}
local m = redis.call('HMGET', KEYS[2], 'e', 'b', 't', 'w')
local e, b, t, w = m[1], m[2], m[3], m[4]
local id, mode = ARGV[1], ARGV[9]
if not e then
  if mode == 'expect' then return redis.error_reply('EPOCH - -') end
  e = ARGV[10]
  -- A stream without meta was written before epochs existed: keep its cursors.
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if top then b = '0'; t = pad(top[1]) else b = id; t = '' end
  redis.call('HSET', KEYS[2], 'e', e, 'b', b, 't', t)
elseif mode ~= 'any' and e ~= ARGV[10] then
  return redis.error_reply('EPOCH ' .. e .. ' ' .. b)
end
if ARGV[8] ~= '' and t < ARGV[8] then
  -- The caller saw ids above the top: Redis lost writes. New epoch.
  redis.call('HSET', KEYS[2], 'e', ARGV[11], 'b', ARGV[12], 't', ARGV[8], 'w', '')
  return redis.error_reply('EPOCH ' .. ARGV[11] .. ' ' .. ARGV[12])
end
if ARGV[7] ~= '' and not (t == ARGV[7] and w == ARGV[6]) then
  return redis.error_reply('CONFLICT ' .. t)
end
if t ~= '' and id <= t then
  if mode == 'any' then
    local same = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])[1]
    if same then
      local f = {}
      for i = 1, #same[2], 2 do f[same[2][i]] = same[2][i + 1] end
      if f.u == ARGV[3] and f.m == ARGV[4] and f.t == ARGV[5] then return 0 end
    end
  end
  return redis.error_reply('CONFLICT ' .. t)
end
local args = {'XADD', KEYS[1]}
for i = 18, #ARGV do args[#args + 1] = ARGV[i] end
args[#args + 1] = ARGV[2]
args[#args + 1] = 'u'
args[#args + 1] = ARGV[3]
args[#args + 1] = 'm'
args[#args + 1] = ARGV[4]
args[#args + 1] = 't'
args[#args + 1] = ARGV[5]
redis.call(unpack(args))
redis.call('HSET', KEYS[2], 't', id, 'w', ARGV[6])
local ttl = tonumber(ARGV[16])
if ttl > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[17])
  for i = 1, 3 do if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ttl) end end
end
if ARGV[13] ~= '' then redis.call(ARGV[13], ARGV[14], ARGV[15]) end
return 1
`;

// Compares stream ids (`ms-seq`) by number.
const LT = `
local function split(s)
  local d = string.find(s, '-', 1, true)
  return tonumber(string.sub(s, 1, d - 1)), tonumber(string.sub(s, d + 1))
end
local function lt(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  return am < bm or (am == bm and as < bs)
end
`;

// Reads entries with their changes. KEYS: stream, changes, meta.
// ARGV 1 `range` | `revrange` | `since`, 5 floor (with HISTORY_TTL, the
// oldest stream id still alive; '' none): older entries are not read.
// range/revrange: 2 lower bound (`-`, `id`, `(id`), 3 upper (`+`, `id`,
// `(id`), 4 count -> { entries, changes } (revrange: newest first).
// since: 2 stream id, 3 padded id, 4 limit, 6 page ('' none) -> { entries,
// changes, complete, more } where entries are everything after the id when
// at most `limit` follow, else the newest `limit` (and complete is 0); with a
// page, only the first `page` of them (more: 1 when others follow).
const READ_SCRIPT = `${LT}
local function changes(entries)
  local out = {}
  if #entries == 0 or redis.call('EXISTS', KEYS[2]) == 0 then
    for i = 1, #entries do out[i] = '' end
    return out
  end
  local ids = {}
  for i, en in ipairs(entries) do ids[i] = en[1] end
  local got = redis.call('HMGET', KEYS[2], unpack(ids))
  for i = 1, #entries do out[i] = got[i] or '' end
  return out
end
local floor = ARGV[5]
-- The lower bound, raised to the floor when it is below it.
local function lower(bound)
  if floor == '' then return bound end
  if bound == '-' then return floor end
  local id = bound
  if string.sub(bound, 1, 1) == '(' then id = string.sub(bound, 2) end
  if lt(id, floor) then return floor end
  return bound
end
local op = ARGV[1]
if op == 'range' then
  local entries = redis.call('XRANGE', KEYS[1], lower(ARGV[2]), ARGV[3], 'COUNT', tonumber(ARGV[4]))
  return { entries, changes(entries) }
elseif op == 'revrange' then
  local entries = redis.call('XREVRANGE', KEYS[1], ARGV[3], lower(ARGV[2]), 'COUNT', tonumber(ARGV[4]))
  return { entries, changes(entries) }
end
local sid, limit = ARGV[2], tonumber(ARGV[4])
local known = #redis.call('XRANGE', KEYS[1], sid, sid) > 0 or redis.call('HGET', KEYS[2], sid) == 'd'
if floor ~= '' and lt(sid, floor) then known = false end
local base = redis.call('HGET', KEYS[3], 'b')
-- A cursor below the epoch's base was handed out before Redis lost history.
local complete = known and base and ARGV[3] >= base
local from = lower('(' .. sid)
local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', limit + 1)
if #entries > limit then
  complete = false
  entries = redis.call('XREVRANGE', KEYS[1], '+', from, 'COUNT', limit)
  local n = #entries
  for i = 1, math.floor(n / 2) do entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i] end
end
-- With a page size: only the first page goes back, and whether more follow.
local more = 0
local page = tonumber(ARGV[6])
if page and #entries > page then
  more = 1
  local first = {}
  for i = 1, page do first[i] = entries[i] end
  entries = first
end
return { entries, changes(entries), complete and 1 or 0, more }
`;

// KEYS: stream, changes. ARGV: 1 stream id, 2 `edit` | `delete`, 3 edited
// ms, 4 text, 5 most changes kept before pruning those of trimmed entries,
// 6 floor (as for reads: an older entry counts as gone).
// edit -> the entry, or nil when unknown; delete -> 1, or 0 when unknown.
const CHANGE_SCRIPT = `${LT}
local sid = ARGV[1]
local entry = redis.call('XRANGE', KEYS[1], sid, sid)[1]
if entry and ARGV[6] ~= '' and lt(sid, ARGV[6]) then entry = nil end
if not entry then
  if ARGV[2] == 'edit' then return false end
  return 0
end
if ARGV[2] == 'edit' then
  redis.call('HSET', KEYS[2], sid, ARGV[3] .. '\\n' .. ARGV[4])
else
  redis.call('XDEL', KEYS[1], sid)
  redis.call('HSET', KEYS[2], sid, 'd')
end
if redis.call('HLEN', KEYS[2]) > tonumber(ARGV[5]) then
  -- Changes of entries trimmed away serve nothing: drop them.
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if first then
    for _, k in ipairs(redis.call('HKEYS', KEYS[2])) do
      if lt(k, first[1]) then redis.call('HDEL', KEYS[2], k) end
    end
  end
end
if ARGV[2] == 'edit' then return entry end
return 1
`;

// KEYS: meta. ARGV: 1 known (padded), 2 fresh epoch, 3 base for it.
// When the top is below `known` (Redis lost writes the caller saw), starts a
// new epoch. Replies { epoch, base, top } after the check ('' when none).
const META_SCRIPT = `
local m = redis.call('HMGET', KEYS[1], 'e', 'b', 't')
if m[1] and ARGV[1] ~= '' and m[3] < ARGV[1] then
  redis.call('HSET', KEYS[1], 'e', ARGV[2], 'b', ARGV[3], 't', ARGV[1], 'w', '')
  return { ARGV[2], ARGV[3], ARGV[1] }
end
return { m[1] or '', m[2] or '', m[3] or '' }
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

/**
 * An append refused because the room's stream is in another epoch than the
 * caller expected: it was lost and restarted, or the caller had not read it
 * yet. Nothing was stored or published.
 */
export class EpochError extends Error {
  override name = "EpochError";
  constructor(
    readonly room: string,
    /** The room's epoch now, or null when it has none (its history was lost). */
    readonly epoch: string | null,
    /** Where that epoch starts. */
    readonly base: string | null,
  ) {
    super(`room ${room} is in epoch ${epoch ?? "(none)"}`);
  }
}

/** The epoch of a room's stream (see the module comment). */
export interface RoomEpoch {
  /** null for a room never written to (or whose history was lost). */
  epoch: string | null;
  base: string | null;
  /** The highest id appended in the room, or null. */
  top: string | null;
}

/** Where an append goes besides the stream: a channel, atomically. */
export interface AppendPublish {
  /** PUBLISH, or SPUBLISH for a sharded channel (Redis Cluster). */
  command: "PUBLISH" | "SPUBLISH";
  channel: string;
  payload: string;
}

/** How an append treats the room's epoch. */
export type EpochCheck =
  /** Adopt whatever the room has (the HistoryStore alone). */
  | { mode: "any" }
  /** The room must be in this epoch (the payload carries it). */
  | { mode: "expect"; epoch: string; known: string | null }
  /** The caller knows no epoch: start this one if the room has none. */
  | { mode: "create"; epoch: string };

/** A room's appends in flight from one log, for linking them in order. */
interface AppendTrack {
  /** Bumped by a refused append: what was issued before it is doomed, and new appends must not link to it. */
  generation: number;
  /** The last append issued, and its generation. */
  tail: { id: string; generation: number } | null;
  inFlight: number;
}

type Script<R> = (...args: (string | number)[]) => Promise<R>;

/** Options for {@link RedisLog}. */
export interface RedisLogOptions {
  /** Messages kept per room (HISTORY_LIMIT). @default 10000 */
  limit?: number;
  /** Messages older than this are pruned, and a room's keys expire this long after its last message (HISTORY_TTL); 0 keeps them. @default 0 */
  ttlMs?: number;
  /** The clock that decides what the TTL removed from reads. @default Date.now */
  now?: () => number;
  /** REDIS_PREFIX. @default "chat:" */
  prefix?: string;
}

/** See the module comment. Every call is one round trip. */
export class RedisLog {
  readonly keys: RoomKeys;
  readonly limit: number;
  readonly ttlMs: number;
  readonly #redis: RedisCommands;
  readonly #now: () => number;
  readonly #tracks = new Map<string, AppendTrack>();
  /** Marks this log's appends in the meta, so an append can follow its own previous one. */
  readonly #writer = globalThis.crypto.randomUUID().slice(0, 8);

  constructor(redis: RedisCommands, options: RedisLogOptions = {}) {
    this.#redis = redis;
    this.keys = new RoomKeys(options.prefix);
    this.limit = options.limit ?? 10000;
    this.ttlMs = options.ttlMs ?? 0;
    this.#now = options.now ?? Date.now;
    const define = (name: string, keys: number, lua: string) => {
      if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: keys, lua });
    };
    define("chatLogAppend", 3, APPEND_SCRIPT);
    define("chatLogRead", 3, READ_SCRIPT);
    define("chatLogChange", 2, CHANGE_SCRIPT);
    define("chatLogMeta", 1, META_SCRIPT);
  }

  #script<R>(name: string): Script<R> {
    const fn = (this.#redis as unknown as Record<string, Script<R>>)[name] as Script<R>;
    return fn.bind(this.#redis);
  }

  /**
   * Appends a message under its own id, and publishes `publish` in the same
   * step. Appends of a room issued before the previous one's reply follow
   * it: if one is refused, those behind it are refused too, so a pipeline
   * lands in order or not at all. Rejects with {@link HistoryConflictError}
   * or {@link EpochError} (nothing stored), or a connection error (unknown).
   * Resolves false for an `any` append of a message already stored.
   */
  async append(message: ChatMessage, check: EpochCheck = { mode: "any" }, publish?: AppendPublish): Promise<boolean> {
    const streamId = toStreamId(message.id);
    let track = this.#tracks.get(message.room);
    if (!track) {
      track = { generation: 0, tail: null, inFlight: 0 };
      this.#tracks.set(message.room, track);
    }
    // Replies come in order, so while any append of the room is in flight the
    // last one issued is: link to it unless a refusal has doomed it.
    const follows =
      track.inFlight > 0 && track.tail !== null && track.tail.generation === track.generation ? track.tail.id : "";
    const generation = track.generation;
    track.tail = { id: message.id, generation };
    track.inFlight++;
    const known = check.mode === "expect" ? check.known : null;
    const k = this.keys;
    const room = message.room;
    try {
      const stored = await this.#script<number>("chatLogAppend")(
        k.stream(room),
        k.meta(room),
        k.changes(room),
        message.id,
        streamId,
        message.user,
        message.message,
        String(Math.trunc(message.ts)),
        this.#writer,
        follows,
        known ?? "",
        check.mode,
        check.mode === "any" ? newEpoch() : check.epoch,
        check.mode === "expect" && known !== null ? newEpoch() : "",
        known !== null ? nextId(known) : "",
        publish?.command ?? "",
        publish?.channel ?? "",
        publish?.payload ?? "",
        String(this.ttlMs),
        this.#floor() || "0",
        ...trimArgs(this.limit),
      );
      return stored === 1;
    } catch (error) {
      if (track.generation === generation) track.generation++;
      const text = error instanceof Error ? error.message : "";
      const conflict = /^CONFLICT (\S*)/.exec(text);
      if (conflict) throw new HistoryConflictError(room, conflict[1] ?? "");
      const epoch = /^EPOCH (\S+) (\S+)/.exec(text);
      if (epoch) {
        const e = epoch[1] === "-" ? null : (epoch[1] as string);
        throw new EpochError(room, e, e === null ? null : (epoch[2] as string));
      }
      throw error;
    } finally {
      if (--track.inFlight === 0 && this.#tracks.get(room) === track) this.#tracks.delete(room);
    }
  }

  /**
   * The room's epoch. With `known` (the highest id the caller saw), a top
   * below it means Redis lost writes: a new epoch starts, just above `known`.
   */
  async epoch(room: string, known: string | null = null): Promise<RoomEpoch> {
    const [epoch, base, top] = await this.#script<[string, string, string]>("chatLogMeta")(
      this.keys.meta(room),
      known ?? "",
      known !== null ? newEpoch() : "",
      known !== null ? nextId(known) : "",
    );
    return { epoch: epoch || null, base: base || null, top: top || null };
  }

  /** With a TTL, the oldest stream id still alive: reads skip older entries before the prune removes them. */
  #floor(): string {
    return this.ttlMs > 0 ? `${Math.max(0, Math.trunc(this.#now() - this.ttlMs))}-0` : "";
  }

  /** Entries between `lower` and `upper` (XRANGE bounds), oldest first unless `op` is revrange. */
  async #range(room: string, op: "range" | "revrange", lower: string, upper: string, count: number) {
    const k = this.keys;
    const [entries, changes] = await this.#script<[StreamEntry[], string[]]>("chatLogRead")(
      k.stream(room),
      k.changes(room),
      k.meta(room),
      op,
      lower,
      upper,
      count,
      this.#floor(),
    );
    return entries.map((e, i) => toMessage(room, e, changes[i] ?? ""));
  }

  /** The last `limit` messages, oldest first. */
  async latest(room: string, limit: number): Promise<ChatMessage[]> {
    const n = Math.min(limit, this.limit);
    if (n <= 0) return [];
    return (await this.#range(room, "revrange", "-", "+", n)).reverse();
  }

  /** Up to `limit` messages older than `before`, oldest first. */
  async before(room: string, before: string, limit: number): Promise<ChatMessage[]> {
    if (limit <= 0) return [];
    return (await this.#range(room, "revrange", "-", `(${toStreamId(before)}`, limit)).reverse();
  }

  /** Up to `limit` messages after `after`, oldest first; `more` when others follow. */
  async after(room: string, after: string | null, limit: number): Promise<{ messages: ChatMessage[]; more: boolean }> {
    if (limit <= 0) return { messages: [], more: false };
    const from = after === null ? "-" : `(${toStreamId(after)}`;
    const messages = await this.#range(room, "range", from, "+", limit + 1);
    const more = messages.length > limit;
    if (more) messages.length = limit;
    return { messages, more };
  }

  /** Messages after `since`; `complete` when that is all of them and `since` is in this epoch. */
  async since(room: string, since: string, limit: number): Promise<{ messages: ChatMessage[]; complete: boolean }> {
    const { messages, complete } = await this.sinceFirst(room, since, limit, null);
    return { messages, complete };
  }

  /**
   * The first `page` messages of what {@link since} returns, its `complete`,
   * and whether more follow (read those with {@link after}): a resume of
   * 1000 large messages is not one 8 MB reply. `page` null: all of them.
   */
  async sinceFirst(
    room: string,
    since: string,
    limit: number,
    page: number | null,
  ): Promise<{ messages: ChatMessage[]; complete: boolean; more: boolean }> {
    const k = this.keys;
    const [entries, changes, complete, more] = await this.#script<[StreamEntry[], string[], number, number]>(
      "chatLogRead",
    )(
      k.stream(room),
      k.changes(room),
      k.meta(room),
      "since",
      toStreamId(since),
      since,
      limit,
      this.#floor(),
      page ?? "",
    );
    return {
      messages: entries.map((e, i) => toMessage(room, e, changes[i] ?? "")),
      complete: complete === 1,
      more: more === 1,
    };
  }

  /** One message, or null. */
  async get(room: string, id: string): Promise<ChatMessage | null> {
    const sid = toStreamId(id);
    return (await this.#range(room, "range", sid, sid, 1))[0] ?? null;
  }

  /** The room's newest id (deleted or not: ids keep growing after it), or null. */
  async lastId(room: string): Promise<string | null> {
    const { top } = await this.epoch(room);
    if (top !== null) return top;
    // A stream written before epochs existed.
    return (await this.#range(room, "revrange", "-", "+", 1))[0]?.id ?? null;
  }

  /** Replaces a message's text; the updated message, or null when unknown. */
  async edit(room: string, id: string, message: string, edited: number): Promise<ChatMessage | null> {
    const k = this.keys;
    const entry = await this.#script<StreamEntry | null>("chatLogChange")(
      k.stream(room),
      k.changes(room),
      toStreamId(id),
      "edit",
      Math.trunc(edited),
      message,
      this.#changesKept(),
      this.#floor(),
    );
    return entry ? toMessage(room, entry, `${Math.trunc(edited)}\n${message}`) : null;
  }

  /** Removes a message from every read; false when unknown. */
  async delete(room: string, id: string): Promise<boolean> {
    const k = this.keys;
    const n = await this.#script<number>("chatLogChange")(
      k.stream(room),
      k.changes(room),
      toStreamId(id),
      "delete",
      0,
      "",
      this.#changesKept(),
      this.#floor(),
    );
    return n === 1;
  }

  #changesKept(): number {
    return Math.max(1000, this.limit);
  }

  /** Bans `user` until `until` (ms) or forever (null). */
  async ban(room: string, user: string, until: number | null): Promise<void> {
    await this.#redis.hset(this.keys.bans(room), user, until === null ? "inf" : String(Math.trunc(until)));
  }

  async unban(room: string, user: string): Promise<void> {
    await this.#redis.hdel(this.keys.bans(room), user);
  }

  /** The ban's end (ms, Infinity for forever) when `user` is banned at `now`, else null. */
  async bannedUntil(room: string, user: string, now: number): Promise<number | null> {
    const value = await this.#redis.hget(this.keys.bans(room), user);
    if (value === null) return null;
    const until = value === "inf" ? Number.POSITIVE_INFINITY : Number(value);
    if (until > now) return until;
    // Expired: the entry stays until the next ban or unban of that user.
    return null;
  }
}
