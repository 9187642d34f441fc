/**
 * RedisHub: several instances serve the same rooms as one server (HUB=redis).
 *
 * - Order: each room's Redis stream is the one authority. A message is
 *   appended by RedisStore's script, which XADDs it with its id and PUBLISHes
 *   it on the room's channel in one atomic step, and refuses an id at or
 *   below the stream's top (another instance got there first: the hub takes
 *   a higher id and tries again). So ids only grow, whatever the instances'
 *   clocks say, and pub/sub order is id order on every instance. Appends are
 *   pipelined; after a refusal the room's refused appends are retried one at
 *   a time in publish order, so a sender's messages keep their order.
 * - Fan-out: an instance subscribes to a room's channel only while it has
 *   members there, and hands what arrives to its LocalRoom, in arrival order.
 *   The sender's echo (with its cid) is matched locally by message id: the
 *   cid never leaves this instance.
 * - Presence: a sorted set per room of `<instance>|<name>` scored by expiry
 *   (Redis TIME + TTL), renewed by a heartbeat; a dead instance's names
 *   expire within the TTL and the next heartbeat anywhere in the room tells
 *   the room they left. Presence and typing travel on the room's channel.
 * - Faults: commands fail fast while Redis is away (no offline queue, a
 *   command timeout, no resending after a reconnect, which could store a
 *   message twice), so a send gets `unavailable`; on reconnect the instance
 *   resubscribes by itself and reads what it missed from the stream.
 */
import { Redis } from "ioredis";
import type { Config } from "../config.ts";
import type { Logger } from "../observability/logger.ts";
import { type ChatMessage, CloseCode, type PresenceFrame, serialize } from "../protocol.ts";
import {
  entryToMessage,
  HistoryConflictError,
  RedisKeys,
  RedisStore,
  type StreamEntry,
  toStreamId,
} from "../store/redis.ts";
import type { HistoryStore } from "../store/store.ts";
import type { Draft, Hub, Member } from "./hub.ts";
import { IdClock } from "./memory.ts";
import { LocalRoom } from "./room.ts";

/** Options for the Redis clients the hub and store use. */
export interface RedisClientOptions {
  /** Longest wait for one command before it fails. @default 2000 */
  commandTimeoutMs?: number;
  /** Shown in CLIENT LIST. */
  name?: string;
}

/**
 * A client that fails fast while Redis is away instead of queueing: a
 * message is either stored now or its sender hears `unavailable` now.
 * Reconnects by itself, every 100 ms to 1 s.
 */
export function createRedisClient(url: string, options: RedisClientOptions = {}): Redis {
  const timeout = options.commandTimeoutMs ?? 2000;
  return new Redis(url, {
    enableOfflineQueue: false,
    // Commands in flight when the connection drops fail at once...
    maxRetriesPerRequest: 0,
    // ...and are not sent again after the reconnect: the first try may have
    // run, and a second would store the message twice.
    autoResendUnfulfilledCommands: false,
    // The hub resubscribes itself, so it knows when to read what it missed.
    autoResubscribe: false,
    commandTimeout: timeout,
    connectTimeout: timeout,
    retryStrategy: (attempt) => Math.min(attempt * 100, 1000),
    ...(options.name ? { connectionName: options.name } : {}),
  });
}

/** Resolves true once the client is ready, false after `ms` without. */
export function waitReady(redis: Redis, ms: number): Promise<boolean> {
  if (redis.status === "ready") return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      redis.off("ready", onReady);
      resolve(ok);
    };
    const onReady = () => done(true);
    const timer = setTimeout(() => done(false), ms);
    redis.on("ready", onReady);
  });
}

// Presence in one step: drop expired entries, apply this change, list the
// names online, and tell the room (on its channel) who joined or left.
// KEYS[1] online set; ARGV: channel, ttl ms, action (join|leave|touch|list),
// then for join/leave: entry, name, remove (1|0); for touch: entries.
const PRESENCE_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local action = ARGV[3]
local back = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
if action == 'join' then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
elseif action == 'leave' then
  if ARGV[6] == '1' then redis.call('ZREM', KEYS[1], ARGV[4]) end
elseif action == 'touch' then
  local was = {}
  for _, e in ipairs(expired) do was[e] = true end
  for i = 4, #ARGV do
    -- Missing, and not just expired here: another instance already told the
    -- room this name left (this one stalled past the TTL), so say it is back.
    if redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) == 1 and not was[ARGV[i]] then
      back[#back + 1] = string.sub(ARGV[i], string.find(ARGV[i], '|', 1, true) + 1)
    end
  end
end
if action ~= 'list' and redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ttl) end
local seen, names = {}, {}
for _, e in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local n = string.sub(e, string.find(e, '|', 1, true) + 1)
  if not seen[n] then seen[n] = true; names[#names + 1] = n end
end
local list = table.concat(names, '\\n')
for _, e in ipairs(expired) do
  local n = string.sub(e, string.find(e, '|', 1, true) + 1)
  if not seen[n] then
    seen[n] = true
    redis.call('PUBLISH', ARGV[1], 'p\\nleft\\n' .. n .. '\\n' .. list)
  end
end
for _, n in ipairs(back) do redis.call('PUBLISH', ARGV[1], 'p\\njoined\\n' .. n .. '\\n' .. list) end
if action == 'join' then
  redis.call('PUBLISH', ARGV[1], 'p\\njoined\\n' .. ARGV[5] .. '\\n' .. list)
elseif action == 'leave' then
  redis.call('PUBLISH', ARGV[1], 'p\\nleft\\n' .. ARGV[5] .. '\\n' .. list)
end
return names
`;

type PresenceCommand = (key: string, ...args: string[]) => Promise<string[]>;

/** One room this instance has members in. */
interface RoomState {
  local: LocalRoom;
  clock: IdClock;
  /** Settles once subscribed (and `base` read); joins wait for it. */
  ready: Promise<void>;
  /** True once subscribed: the room is resubscribed after a reconnect. */
  live: boolean;
  /** The newest id delivered here: later frames at or below it are repeats. */
  last: string | null;
  /** The stream's top when this instance subscribed: where a catch-up starts if nothing came since. */
  base: string | null;
  /** Frames that arrived during a catch-up, handled after it. */
  syncing: string[] | null;
  /** Ids of this instance's appends in flight, until their replies say whose those ids are. */
  inflight: Set<string>;
  /**
   * Frames held from the one carrying an in-flight id (`heldFor`) on: another
   * instance may have taken that id first, and only the append's reply tells
   * whether it is our message (which gets the echo) or theirs.
   */
  held: string[] | null;
  /** Where the next held frame is read (frames before it went out). */
  heldAt: number;
  heldFor: string | null;
  /** Publishes numbered in call order. */
  seq: number;
  /** Pipelined appends in flight. */
  pipelined: number;
  /** After a conflict: publishes waiting to be appended one at a time, by seq; null when pipelining. */
  recovery: AppendJob[] | null;
  draining: boolean;
}

/** A stored message, and a promise that settles once it was delivered here. */
interface Appended {
  message: ChatMessage;
  arrived: Promise<void>;
}

/** A publish waiting in a room's backlog. */
interface AppendJob {
  seq: number;
  from: Member;
  draft: Draft;
  resolve: (done: Appended) => void;
  reject: (error: unknown) => void;
}

/** A publish whose message is stored and not yet delivered here. */
interface Pending {
  member: Member;
  cid: string | undefined;
  delivered: () => void;
}

/** Options for {@link RedisHub}. */
export interface RedisHubOptions {
  /** Commands (presence, catch-up reads). */
  redis: Redis;
  /** A second client for pub/sub: a subscribed connection takes no other commands. */
  subscriber: Redis;
  /**
   * Where messages are appended: a {@link RedisStore} with `publish: true`
   * (possibly wrapped), whose append also publishes on the room's channel.
   */
  store: HistoryStore;
  logger: Logger;
  /** REDIS_PREFIX. @default "chat:" */
  prefix?: string;
  /** How long a presence entry lives without a heartbeat; heartbeats come every third of it. @default 6000 */
  presenceTtlMs?: number;
  /** Most messages read to catch up after a reconnect; past it members are closed to resume. @default 1000 */
  catchUpLimit?: number;
  /** This instance's id in presence entries. @default random */
  instanceId?: string;
  /** Quit both clients on close. @default true */
  ownsClients?: boolean;
  /**
   * A per-instance history (HISTORY=sqlite|memory) that gets a copy of every
   * message delivered here; the room's stream still orders them. @default none
   */
  mirror?: HistoryStore | null;
}

/** Attempts at one publish when other instances keep taking the next id. */
const MAX_CONFLICTS = 100;

/** See the module comment. */
export class RedisHub implements Hub {
  readonly #redis: Redis;
  readonly #sub: Redis;
  readonly #store: HistoryStore;
  readonly #log: Logger;
  readonly #keys: RedisKeys;
  readonly #ttl: number;
  readonly #catchUpLimit: number;
  readonly #owns: boolean;
  readonly #mirror: HistoryStore | null;
  readonly #rooms = new Map<string, RoomState>();
  /** `room\nid` -> the publish waiting for its own delivery (the echo). */
  readonly #pending = new Map<string, Pending>();
  readonly #beat: ReturnType<typeof setInterval>;
  #beating = false;
  #beatOk = true;
  #closed = false;
  #closing: Promise<void> | null = null;
  /** This instance, in presence entries. */
  readonly instanceId: string;

  constructor(options: RedisHubOptions) {
    this.#redis = options.redis;
    this.#sub = options.subscriber;
    this.#store = options.store;
    this.#log = options.logger;
    this.#keys = new RedisKeys(options.prefix);
    this.#ttl = options.presenceTtlMs ?? 6000;
    this.#catchUpLimit = options.catchUpLimit ?? 1000;
    this.#owns = options.ownsClients ?? true;
    this.#mirror = options.mirror ?? null;
    this.instanceId = options.instanceId ?? globalThis.crypto.randomUUID().slice(0, 13);
    if (!("chatPresence" in this.#redis)) {
      this.#redis.defineCommand("chatPresence", { numberOfKeys: 1, lua: PRESENCE_SCRIPT });
    }
    this.#sub.on("message", (channel: string, payload: string) => this.#onMessage(channel, payload));
    this.#sub.on("ready", () => void this.#resubscribe());
    for (const [client, role] of [
      [this.#redis, "commands"],
      [this.#sub, "subscriber"],
    ] as const) {
      let wasReady = client.status === "ready";
      client.on("ready", () => {
        if (!wasReady) this.#log.info({ role }, "redis connected");
        wasReady = true;
      });
      client.on("close", () => {
        if (wasReady && !this.#closed) this.#log.warn({ role }, "redis connection lost; reconnecting");
        wasReady = false;
      });
      // ioredis reports every failed reconnect; the close above already said so once.
      client.on("error", () => {});
    }
    this.#beat = setInterval(() => void this.#heartbeat(), Math.max(100, Math.floor(this.#ttl / 3)));
    (this.#beat as { unref?: () => void }).unref?.();
  }

  get healthy(): boolean {
    return !this.#closed && this.#redis.status === "ready" && this.#sub.status === "ready" && this.#beatOk;
  }

  #presence(room: string, action: "join" | "leave" | "touch" | "list", ...args: string[]): Promise<string[]> {
    const command = (this.#redis as unknown as { chatPresence: PresenceCommand }).chatPresence;
    return command
      .call(this.#redis, this.#keys.presence(room), this.#keys.channel(room), String(this.#ttl), action, ...args)
      .then((names) => names.sort());
  }

  #entry(name: string): string {
    return `${this.instanceId}|${name}`;
  }

  #openRoom(name: string): RoomState {
    const state: RoomState = {
      local: new LocalRoom(name),
      clock: new IdClock(),
      ready: Promise.resolve(),
      live: false,
      last: null,
      base: null,
      syncing: null,
      inflight: new Set(),
      held: null,
      heldAt: 0,
      heldFor: null,
      seq: 0,
      pipelined: 0,
      recovery: null,
      draining: false,
    };
    state.ready = (async () => {
      await this.#sub.subscribe(this.#keys.channel(name));
      // Read after subscribing: anything newer arrives on the channel.
      const top = await this.#topId(name);
      state.base = top;
      if (top !== null) state.clock.resumeAfter(top);
      state.live = true;
    })();
    this.#rooms.set(name, state);
    return state;
  }

  async #topId(room: string): Promise<string | null> {
    const entries = (await this.#redis.xrevrange(this.#keys.stream(room), "+", "-", "COUNT", 1)) as StreamEntry[];
    return entries[0] ? entryToMessage(room, entries[0]).id : null;
  }

  #dropRoom(name: string, state: RoomState): void {
    if (this.#rooms.get(name) !== state) return;
    this.#rooms.delete(name);
    state.live = false;
    // A join that comes later subscribes again; Redis runs both in order.
    if (this.#sub.status === "ready") this.#sub.unsubscribe(this.#keys.channel(name)).catch(() => {});
  }

  async join(roomName: string, member: Member): Promise<string[]> {
    if (this.#closed) throw new Error("hub is closed");
    let state: RoomState | undefined;
    // A room left empty while this join waited is dropped: open it again.
    for (let tries = 0; tries < 3 && state === undefined; tries++) {
      const found = this.#rooms.get(roomName) ?? this.#openRoom(roomName);
      try {
        await found.ready;
      } catch (error) {
        if (found.local.empty) this.#dropRoom(roomName, found);
        throw error;
      }
      if (this.#rooms.get(roomName) === found) state = found;
    }
    if (!state) throw new Error(`room ${roomName} kept closing while joining`);
    state.local.add(member);
    if (member.name === null) return this.#presence(roomName, "list");
    return this.#presence(roomName, "join", this.#entry(member.name), member.name, "0");
  }

  leave(roomName: string, member: Member): void {
    const state = this.#rooms.get(roomName);
    if (!state?.local.remove(member)) return;
    if (member.name !== null) {
      // Another tab with the same name here keeps the entry.
      const last = !state.local.users().includes(member.name);
      this.#presence(roomName, "leave", this.#entry(member.name), member.name, last ? "1" : "0").catch(
        (error: unknown) => {
          // The entry then expires with the TTL, since no heartbeat renews it.
          this.#log.warn({ room: roomName, err: String(error) }, "presence leave failed");
        },
      );
    }
    if (state.local.empty) this.#dropRoom(roomName, state);
  }

  async publish(roomName: string, from: Member, draft: Draft): Promise<ChatMessage> {
    if (!this.healthy) throw new Error("redis is unavailable");
    const state = this.#rooms.get(roomName);
    if (!state) {
      // Not served here (an instance may send into any room): nothing to
      // deliver locally, so the append is all there is.
      const { message } = await this.#append(roomName, null, from, draft);
      return message;
    }
    const { message, arrived } = await this.#append(roomName, state, from, draft);
    // Stored and published. Resolve once delivered here (the sender's own
    // instance has fanned it out), or soon anyway: a catch-up after a
    // reconnect delivers it later, and the room may have emptied meanwhile.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([arrived, new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000)))]);
    clearTimeout(timer);
    this.#pending.delete(`${roomName}\n${message.id}`);
    return message;
  }

  /**
   * Stores the message under a fresh id. Appends of a room are pipelined;
   * after a conflict (another instance took an id first) the store refuses
   * every append behind it too, and the room switches to one append at a
   * time, in publish order, until that backlog is through: a sender's
   * messages keep their order whatever happens.
   */
  #append(roomName: string, state: RoomState | null, from: Member, draft: Draft): Promise<Appended> {
    if (!state) return this.#retry(roomName, null, new IdClock(), from, draft);
    return new Promise((resolve, reject) => {
      const job: AppendJob = { seq: ++state.seq, from, draft, resolve, reject };
      if (state.recovery) {
        state.recovery.push(job); // the newest seq: it goes last
        return;
      }
      state.pipelined++;
      this.#attempt(roomName, state, state.clock, from, draft).then(
        (done) => {
          state.pipelined--;
          resolve(done);
          this.#drain(roomName, state);
        },
        (error: unknown) => {
          state.pipelined--;
          if (error instanceof HistoryConflictError) {
            state.recovery ??= [];
            const queue = state.recovery;
            const at = queue.findIndex((j) => j.seq > job.seq);
            queue.splice(at < 0 ? queue.length : at, 0, job);
          } else {
            reject(error);
          }
          this.#drain(roomName, state);
        },
      );
    });
  }

  /** Works through the room's backlog one append at a time, once no pipelined append is in flight. */
  #drain(roomName: string, state: RoomState): void {
    if (state.draining || state.pipelined > 0 || !state.recovery) return;
    state.draining = true;
    void (async () => {
      for (let job = state.recovery?.shift(); job; job = state.recovery?.shift()) {
        await this.#retry(roomName, state, state.clock, job.from, job.draft).then(job.resolve, job.reject);
      }
      state.recovery = null;
      state.draining = false;
    })();
  }

  async #retry(
    roomName: string,
    state: RoomState | null,
    clock: IdClock,
    from: Member,
    draft: Draft,
  ): Promise<Appended> {
    for (let attempt = 0; attempt < MAX_CONFLICTS; attempt++) {
      try {
        return await this.#attempt(roomName, state, clock, from, draft);
      } catch (error) {
        if (!(error instanceof HistoryConflictError)) throw error;
      }
    }
    throw new Error(`room ${roomName} is too busy: no free id after ${MAX_CONFLICTS} tries`);
  }

  /** One try at an id; a conflict rejects with HistoryConflictError after moving the clock past it. */
  async #attempt(
    roomName: string,
    state: RoomState | null,
    clock: IdClock,
    from: Member,
    draft: Draft,
  ): Promise<Appended> {
    if (state?.last) clock.resumeAfter(state.last);
    const ts = Date.now();
    const message: ChatMessage = {
      type: "message",
      id: clock.next(ts),
      room: roomName,
      user: draft.user,
      message: draft.message,
      ts,
    };
    let delivered!: () => void;
    const arrived = new Promise<void>((resolve) => {
      delivered = resolve;
    });
    state?.inflight.add(message.id);
    let ours = false;
    try {
      await this.#store.append(message);
      ours = true;
    } catch (error) {
      if (error instanceof HistoryConflictError) clock.resumeAfter(error.top);
      throw error;
    } finally {
      // Only now is the id known to be ours: register the echo, then let
      // through what was held behind it.
      if (state) {
        if (ours) this.#pending.set(`${roomName}\n${message.id}`, { member: from, cid: draft.cid, delivered });
        this.#settle(state, message.id);
      }
    }
    return { message, arrived };
  }

  typing(roomName: string, from: Member): void {
    if (from.name === null || !this.#rooms.has(roomName)) return;
    const payload = `t\n${this.instanceId}\n${from.socket.id}\n${from.name}`;
    this.#redis.publish(this.#keys.channel(roomName), payload).catch(() => {
      // A typing notice is a hint; losing one while Redis is away is fine.
    });
  }

  users(roomName: string): Promise<string[]> {
    return this.#presence(roomName, "list");
  }

  #onMessage(channel: string, payload: string): void {
    const roomName = this.#keys.roomOfChannel(channel);
    const state = roomName === null ? undefined : this.#rooms.get(roomName);
    if (!state) return;
    if (state.syncing) state.syncing.push(payload);
    else this.#handle(state, payload);
  }

  #settle(state: RoomState, id: string): void {
    state.inflight.delete(id);
    const held = state.held;
    if (state.heldFor !== id || !held) return;
    state.heldFor = null;
    // Frames go out in order until one carries another in-flight id.
    while (state.heldAt < held.length) {
      const payload = held[state.heldAt] as string;
      if (this.#holds(state, payload)) return;
      state.heldAt++;
      this.#process(state, payload);
    }
    state.held = null;
    state.heldAt = 0;
  }

  /** True (and noted in `heldFor`) when the frame is a message with an id this instance is still appending. */
  #holds(state: RoomState, payload: string): boolean {
    if (payload[0] !== "m" || state.inflight.size === 0) return false;
    const a = payload.indexOf("\n");
    const id = payload.slice(a + 1, payload.indexOf("\n", a + 1));
    if (!state.inflight.has(id)) return false;
    state.heldFor = id;
    return true;
  }

  #handle(state: RoomState, payload: string): void {
    if (state.held) {
      state.held.push(payload);
    } else if (this.#holds(state, payload)) {
      state.held = [payload];
      state.heldAt = 0;
    } else {
      this.#process(state, payload);
    }
  }

  #process(state: RoomState, payload: string): void {
    const kind = payload[0];
    if (kind === "m") {
      // m \n id \n ts \n user \n message (the message may hold newlines; it is last)
      const a = payload.indexOf("\n");
      const b = payload.indexOf("\n", a + 1);
      const c = payload.indexOf("\n", b + 1);
      const d = payload.indexOf("\n", c + 1);
      const id = payload.slice(a + 1, b);
      this.#deliver(state, {
        type: "message",
        id,
        room: state.local.name,
        user: payload.slice(c + 1, d),
        message: payload.slice(d + 1),
        ts: Number(payload.slice(b + 1, c)),
      });
    } else if (kind === "p") {
      // p \n joined|left \n name \n users... (names hold no control characters)
      const [, what, name, ...users] = payload.split("\n");
      if (name === undefined) return;
      const list = users.length === 1 && users[0] === "" ? [] : users.sort();
      const frame: PresenceFrame =
        what === "joined"
          ? { type: "presence", users: list, joined: name }
          : { type: "presence", users: list, left: name };
      state.local.deliverV1(serialize(frame));
    } else if (kind === "t") {
      const [, instance, socketId, name] = payload.split("\n");
      if (name === undefined) return;
      const text = serialize({ type: "typing", user: name });
      const mine = instance === this.instanceId;
      for (const m of state.local.members) {
        if (m.mode === "v1" && !(mine && m.socket.id === socketId)) m.deliver(text);
      }
    }
  }

  #deliver(state: RoomState, message: ChatMessage): void {
    // Repeats come only from a catch-up overlapping the channel.
    if (state.last !== null && message.id <= state.last) return;
    state.last = message.id;
    const key = `${message.room}\n${message.id}`;
    const pending = this.#pending.get(key);
    if (pending) this.#pending.delete(key);
    state.local.deliverMessage(message, serialize(message), pending?.member ?? null, pending?.cid);
    pending?.delivered();
    if (this.#mirror) {
      Promise.resolve()
        .then(() => this.#mirror?.append(message))
        .catch((error: unknown) => {
          this.#log.warn({ room: message.room, err: String(error) }, "local history copy failed");
        });
    }
  }

  /** After a reconnect: subscribe every room again, then read what was missed. */
  async #resubscribe(): Promise<void> {
    const rooms = [...this.#rooms.entries()].filter(([, s]) => s.live);
    if (rooms.length === 0 || this.#closed) return;
    for (const [, s] of rooms) s.syncing ??= [];
    try {
      await this.#sub.subscribe(...rooms.map(([name]) => this.#keys.channel(name)));
    } catch (error) {
      // The connection dropped again, and its next "ready" tries again; or
      // it timed out on a live connection, which is then restarted for that.
      this.#log.warn({ err: String(error) }, "resubscribe failed");
      if (this.#sub.status === "ready") this.#sub.disconnect(true);
      return;
    }
    this.#log.info({ rooms: rooms.length }, "resubscribed; catching up");
    // The catch-up reads on the other connection, which may still be reconnecting.
    await waitReady(this.#redis, 5000);
    await Promise.all(rooms.map(([name, s]) => this.#catchUp(name, s)));
  }

  async #catchUp(name: string, state: RoomState): Promise<void> {
    const from = state.last ?? state.base;
    try {
      const entries = (await this.#redis.xrange(
        this.#keys.stream(name),
        from === null ? "-" : `(${toStreamId(from)}`,
        "+",
        "COUNT",
        this.#catchUpLimit,
      )) as StreamEntry[];
      for (const e of entries) this.#deliver(state, entryToMessage(name, e));
      if (entries.length >= this.#catchUpLimit) throw new Error(`more than ${this.#catchUpLimit} messages missed`);
    } catch (error) {
      // What the members missed is unknown: close them so their clients
      // reconnect and resume with `since`, which reports any gap.
      this.#log.warn({ room: name, err: String(error) }, "catch-up failed; asking clients to resume");
      for (const m of [...state.local.members]) m.socket.close(CloseCode.TryAgainLater, "reconnect and resume");
    }
    const queued = state.syncing ?? [];
    state.syncing = null;
    for (const payload of queued) this.#handle(state, payload);
  }

  /** Renews this instance's presence entries, and checks that Redis answers. */
  async #heartbeat(): Promise<void> {
    if (this.#beating || this.#closed) return;
    this.#beating = true;
    try {
      const jobs: Promise<unknown>[] = [];
      for (const [name, state] of this.#rooms) {
        if (!state.live) continue;
        // Also for rooms with unnamed members only: the touch is where a dead
        // instance's names are found expired and announced as left.
        jobs.push(this.#presence(name, "touch", ...state.local.users().map((n) => this.#entry(n))));
      }
      if (jobs.length === 0) jobs.push(this.#redis.ping());
      await Promise.all(jobs);
      if (!this.#beatOk) this.#log.info({}, "redis answers again");
      this.#beatOk = true;
    } catch (error) {
      if (this.#beatOk) this.#log.warn({ err: String(error) }, "redis heartbeat failed");
      this.#beatOk = false;
    } finally {
      this.#beating = false;
    }
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    clearInterval(this.#beat);
    // Take this instance's names off the online lists now rather than at expiry.
    const leaving: Promise<unknown>[] = [];
    for (const [name, state] of this.#rooms) {
      for (const user of state.local.users()) {
        leaving.push(this.#presence(name, "leave", this.#entry(user), user, "1").catch(() => {}));
      }
    }
    await Promise.all(leaving);
    this.#closed = true;
    this.#rooms.clear();
    for (const p of this.#pending.values()) p.delivered();
    this.#pending.clear();
    if (this.#owns) {
      await Promise.all(
        [this.#sub, this.#redis].map((c) =>
          c.status === "ready" ? c.quit().catch(() => c.disconnect()) : Promise.resolve(c.disconnect()),
        ),
      );
    }
  }
}

/**
 * Builds the hub and the store for HUB=redis. Starts even when Redis does not
 * answer yet: the instance is then degraded (healthz 503, sends answered
 * `unavailable`) until the clients connect.
 */
export async function createRedisParts(
  config: Config,
  logger: Logger,
  local: HistoryStore | null,
): Promise<{ hub: Hub; store: HistoryStore }> {
  const instanceId = globalThis.crypto.randomUUID().slice(0, 13);
  const redis = createRedisClient(config.redisUrl, { name: `chat-${instanceId}` });
  const subscriber = createRedisClient(config.redisUrl, { name: `chat-${instanceId}-sub` });
  // The room's stream orders its messages whatever HISTORY says.
  const stream = new RedisStore(redis, { limit: config.historyLimit, prefix: config.redisPrefix, publish: true });
  const hub = new RedisHub({
    redis,
    subscriber,
    store: stream,
    logger: logger.child({ instance: instanceId }),
    prefix: config.redisPrefix,
    instanceId,
    mirror: local,
  });
  if (local) {
    logger.warn(
      { history: config.history },
      "HUB=redis with a per-instance history: each instance keeps only the rooms it serves, so a client resuming on another instance may miss messages; leave HISTORY unset (redis) for that",
    );
  }
  const [a, b] = await Promise.all([waitReady(redis, 3000), waitReady(subscriber, 3000)]);
  // The host only: the URL may carry a password.
  if (!a || !b) logger.warn({ redis: new URL(config.redisUrl).host }, "redis does not answer yet; starting degraded");
  return { hub, store: local ?? stream };
}
