/**
 * Presence across instances (centrifuge's PresenceManager): who is online in
 * a room, kept in Redis as a sorted set of `<instance>|<name>` entries
 * scored by expiry (Redis TIME + TTL). Each instance renews its entries with
 * a heartbeat (every third of the TTL); the entries of an instance that died
 * expire, and the next script run in the room (any instance's heartbeat)
 * announces those names as left.
 *
 * One script does every change: it drops expired entries, applies the join,
 * leave or renewal, and compares the names online before and after, so it
 * alone knows a name's first connection to the room (`joined`) and its last
 * (`left`), once across all instances; the caller reports those as webhook
 * events. It publishes the change on the room's channel (codec.ts' presence
 * kind) in the same step, so presence frames keep the order of the changes.
 *
 * Also here: connection counts per room and instance (`rooms()` of the
 * server API), a hash per instance that expires with it.
 */
import type { Logger } from "../observability/logger.ts";
import type { RoomKeys } from "./keys.ts";
import type { RedisCommands } from "./log.ts";

// KEYS[1] the room's online set. ARGV: 1 publish command (PUBLISH |
// SPUBLISH), 2 channel, 3 ttl ms, 4 action (join | leave | touch | list),
// then for join/leave: 5 entry, 6 name, 7 remove (leave: 1 when it was the
// instance's last connection of that name); for touch: 5.. entries.
// Replies { users, joined, left }: names online after, names that came
// online, names that went offline (first and last connections anywhere).
const PRESENCE_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local action = ARGV[4]
local function nameOf(e) return string.sub(e, string.find(e, '|', 1, true) + 1) end
local function online()
  local set, list = {}, {}
  for _, e in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local n = nameOf(e)
    if not set[n] then set[n] = true; list[#list + 1] = n end
  end
  return set, list
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
-- Before: what the room was last told, expired names included (they are
-- announced as left now unless renewed below).
local before = online()
for _, e in ipairs(expired) do before[nameOf(e)] = true end
if action == 'join' then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[5])
elseif action == 'leave' then
  if ARGV[7] == '1' then redis.call('ZREM', KEYS[1], ARGV[5]) end
elseif action == 'touch' then
  for i = 5, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
end
local after, users = online()
local joined, left, rj, rl = {}, {}, {}, {}
for _, n in ipairs(users) do if not before[n] then joined[#joined + 1] = n end end
for n in pairs(before) do if not after[n] then left[#left + 1] = n end end
table.sort(left)
if action == 'join' and before[ARGV[6]] then rj[1] = ARGV[6] end
if action == 'leave' and after[ARGV[6]] then rl[1] = ARGV[6] end
if #joined + #left + #rj + #rl > 0 then
  redis.call(ARGV[1], ARGV[2], 'p' .. cjson.encode({ j = joined, l = left, rj = rj, rl = rl, u = users }))
end
if action ~= 'list' and redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ttl) end
return { users, joined, left }
`;

/** What a presence change did: the names online after it, and who came and went (first and last connections). */
export interface PresenceChange {
  users: string[];
  joined: string[];
  left: string[];
}

/** One room as the heartbeat sees it. */
export interface ServedRoom {
  room: string;
  /** Names with a connection here. */
  names: string[];
  /** Connections here, named or not. */
  connections: number;
}

/** Options for {@link RedisPresence}. */
export interface RedisPresenceOptions {
  redis: RedisCommands;
  keys: RoomKeys;
  logger: Logger;
  /** This instance in presence entries. */
  instanceId: string;
  /** How long an entry lives without a heartbeat (REDIS_PRESENCE_TTL_MS); heartbeats come every third of it. @default 6000 */
  ttlMs?: number;
  /** Sharded pub/sub (REDIS_CLUSTER). @default false */
  sharded?: boolean;
  /** The rooms this instance serves, read by each heartbeat. */
  served: () => Iterable<ServedRoom>;
  /** Names that came online or went offline found by a heartbeat (expired entries). */
  changed: (room: string, change: PresenceChange) => void;
}

type PresenceScript = (key: string, ...args: string[]) => Promise<[string[], string[], string[]]>;

/** See the module comment. */
export class RedisPresence {
  readonly #redis: RedisCommands;
  readonly #keys: RoomKeys;
  readonly #log: Logger;
  readonly #ttl: number;
  readonly #publish: string;
  readonly #served: () => Iterable<ServedRoom>;
  readonly #changed: (room: string, change: PresenceChange) => void;
  readonly #beat: ReturnType<typeof setInterval>;
  #beating = false;
  #beatOk = true;
  #stopped = false;
  readonly instanceId: string;

  constructor(options: RedisPresenceOptions) {
    this.#redis = options.redis;
    this.#keys = options.keys;
    this.#log = options.logger;
    this.#ttl = options.ttlMs ?? 6000;
    this.#publish = options.sharded ? "SPUBLISH" : "PUBLISH";
    this.#served = options.served;
    this.#changed = options.changed;
    this.instanceId = options.instanceId;
    if (!("chatPresence" in this.#redis)) {
      this.#redis.defineCommand("chatPresence", { numberOfKeys: 1, lua: PRESENCE_SCRIPT });
    }
    this.#beat = setInterval(() => void this.#heartbeat(), Math.max(100, Math.floor(this.#ttl / 3)));
    (this.#beat as { unref?: () => void }).unref?.();
  }

  /** False after a heartbeat failed, until one succeeds. */
  get healthy(): boolean {
    return this.#beatOk;
  }

  async #run(room: string, action: "join" | "leave" | "touch" | "list", ...args: string[]): Promise<PresenceChange> {
    const script = (this.#redis as unknown as { chatPresence: PresenceScript }).chatPresence;
    const [users, joined, left] = await script.call(
      this.#redis,
      this.#keys.presence(room),
      this.#publish,
      this.#keys.channel(room),
      String(this.#ttl),
      action,
      ...args,
    );
    return { users: users.sort(), joined, left };
  }

  #entry(name: string): string {
    return `${this.instanceId}|${name}`;
  }

  /** A named connection joined here. */
  join(room: string, name: string): Promise<PresenceChange> {
    return this.#run(room, "join", this.#entry(name), name);
  }

  /** A named connection left here; `lastHere` when no other connection here has that name. */
  leave(room: string, name: string, lastHere: boolean): Promise<PresenceChange> {
    return this.#run(room, "leave", this.#entry(name), name, lastHere ? "1" : "0");
  }

  /** Names online in the room, every instance, sorted. */
  async list(room: string): Promise<string[]> {
    return (await this.#run(room, "list")).users;
  }

  /** Counts a connection in (delta 1) or out (-1) of `room` on this instance, for `rooms()`. */
  count(room: string, delta: 1 | -1): void {
    const key = this.#keys.instanceRooms(this.instanceId);
    const done = this.#redis
      .hincrby(key, room, delta)
      .then((n) => (n <= 0 ? this.#redis.hdel(key, room) : this.#redis.pexpire(key, this.#ttl)))
      .then(() => (delta > 0 ? this.#redis.sadd(this.#keys.instances(), this.instanceId) : 0));
    // The heartbeat rewrites the counts: one lost here is repaired within a beat.
    done.catch(() => {});
  }

  /** Rooms with a connection on any instance, and their connection counts. */
  async rooms(): Promise<{ room: string; online: number }[]> {
    const instances = await this.#redis.smembers(this.#keys.instances());
    const counts = new Map<string, number>();
    await Promise.all(
      instances.map(async (id) => {
        const rooms = await this.#redis.hgetall(this.#keys.instanceRooms(id));
        // Gone (expired with its instance): forget it.
        if (Object.keys(rooms).length === 0 && id !== this.instanceId) {
          await this.#redis.srem(this.#keys.instances(), id);
        }
        for (const [room, n] of Object.entries(rooms)) {
          if (Number(n) > 0) counts.set(room, (counts.get(room) ?? 0) + Number(n));
        }
      }),
    );
    return [...counts].map(([room, online]) => ({ room, online })).sort((a, b) => (a.room < b.room ? -1 : 1));
  }

  /** Renews this instance's entries and counts, and checks that Redis answers. */
  async #heartbeat(): Promise<void> {
    if (this.#beating || this.#stopped) return;
    this.#beating = true;
    try {
      const jobs: Promise<unknown>[] = [];
      const counts: string[] = [];
      for (const { room, names, connections } of this.#served()) {
        // Also for rooms with unnamed members only: the touch is where a dead
        // instance's names are found expired and announced as left.
        jobs.push(
          this.#run(room, "touch", ...names.map((n) => this.#entry(n))).then((change) => {
            if (change.joined.length > 0 || change.left.length > 0) this.#changed(room, change);
          }),
        );
        if (connections > 0) counts.push(room, String(connections));
      }
      const key = this.#keys.instanceRooms(this.instanceId);
      if (counts.length > 0) {
        jobs.push(
          this.#redis
            .multi()
            .del(key)
            .hset(key, ...counts)
            .pexpire(key, this.#ttl)
            .exec(),
          this.#redis.sadd(this.#keys.instances(), this.instanceId),
        );
      } else {
        jobs.push(this.#redis.del(key));
      }
      await Promise.all(jobs);
      if (!this.#beatOk) this.#log.info({}, "redis answers again");
      this.#beatOk = true;
    } catch (error) {
      if (this.#beatOk) this.#log.warn({ err: error }, "redis heartbeat failed");
      this.#beatOk = false;
    } finally {
      this.#beating = false;
    }
  }

  /** Stops the heartbeat and takes this instance's names and counts off now rather than at expiry. */
  async stop(served: Iterable<ServedRoom>): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#beat);
    const leaving: Promise<unknown>[] = [this.#redis.del(this.#keys.instanceRooms(this.instanceId))];
    for (const { room, names } of served) {
      for (const name of names) {
        leaving.push(
          this.leave(room, name, true).then(
            (change) => {
              if (change.left.length > 0) this.#changed(room, change);
            },
            () => {},
          ),
        );
      }
    }
    await Promise.allSettled(leaving);
  }
}
