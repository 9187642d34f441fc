/**
 * RedisHub: several instances serve the same rooms as one server (HUB=redis).
 *
 * The hub only composes three parts over each room's {@link LocalRoom}:
 * - the broker (src/redis/broker.ts): ids, order, append + publish,
 *   catch-up, the epoch; it hands over each room's messages in order;
 * - the presence (src/redis/presence.ts): who is online on every instance,
 *   first and last connections (webhook events), the heartbeat;
 * - the log (through the RedisStore): edits, deletes.
 * Fan-out is the LocalRoom's, as with the memory hub: one frame for all
 * members (through the runtime's room broadcaster when it has one),
 * presence merged per interval. The sender's echo (with its cid) is matched
 * locally by message id: the cid never leaves this instance.
 */
import type { Cluster, Redis } from "ioredis";
import type { Config } from "../config.ts";
import type { Logger } from "../observability/logger.ts";
import { type ChatMessage, CloseCode, type DeletedFrame, type EditedFrame, serialize } from "../protocol.ts";
import { RedisBroker } from "../redis/broker.ts";
import { createRedisClient, createRedisCluster, waitReady } from "../redis/client.ts";
import { type ChannelMessage, encode, parseMessageText } from "../redis/codec.ts";
import { RedisLog } from "../redis/log.ts";
import { type PresenceChange, RedisPresence, type ServedRoom } from "../redis/presence.ts";
import { RedisStore } from "../store/redis.ts";
import type { HistoryStore } from "../store/store.ts";
import type { EventSink } from "../webhooks/events.ts";
import type { Broadcaster, Draft, Hub, Member } from "./hub.ts";
import { LocalRoom } from "./room.ts";

/** A publish whose message is stored and not yet delivered here. */
interface Pending {
  member: Member | null;
  cid: string | undefined;
  delivered: () => void;
}

/** Options for {@link RedisHub}. */
export interface RedisHubOptions {
  /** Commands (appends, presence, catch-up reads). */
  redis: Redis | Cluster;
  /** A second connection for pub/sub: a subscribed connection takes no other commands. */
  subscriber: Redis | Cluster;
  /** The rooms' logs (keys, scripts, epoch): appends go through it. */
  log: RedisLog;
  /** Edits and deletes go here (the RedisStore over `log`, possibly wrapped). @default a RedisStore over `log` */
  store?: HistoryStore;
  logger: Logger;
  /** How long a presence entry lives without a heartbeat (REDIS_PRESENCE_TTL_MS). @default 6000 */
  presenceTtlMs?: number;
  /** Most messages read to catch up after a reconnect; past it members are closed to resume. @default 1000 */
  catchUpLimit?: number;
  /** This instance's id in presence entries. @default random */
  instanceId?: string;
  /** Quit both clients on close. @default true */
  ownsClients?: boolean;
  /**
   * A per-instance history (HISTORY=sqlite|memory) that gets a copy of every
   * message delivered here, and its edits and deletes. @default none
   */
  mirror?: HistoryStore | null;
  /** Sharded pub/sub (REDIS_CLUSTER). @default false */
  sharded?: boolean;
  /** The runtime's room fan-out (WsBroadcaster, BunBroadcaster). @default none: one send per member */
  broadcaster?: Broadcaster | null;
  /** The webhooks' sink. @default none */
  events?: EventSink | null;
  /** PRESENCE_INTERVAL_MS (see LocalRoom.presenceChanged). @default 250 */
  presenceIntervalMs?: number;
}

/** See the module comment. */
export class RedisHub implements Hub {
  readonly #redis: Redis | Cluster;
  readonly #sub: Redis | Cluster;
  readonly #store: HistoryStore;
  readonly #log: Logger;
  readonly #broker: RedisBroker;
  readonly #presence: RedisPresence;
  readonly #owns: boolean;
  readonly #mirror: HistoryStore | null;
  readonly #broadcaster: Broadcaster | null;
  readonly #events: EventSink | null;
  readonly #presenceInterval: number;
  readonly #rooms = new Map<string, LocalRoom>();
  /** `room\nid` -> the publish waiting for its own delivery (the echo). */
  readonly #pending = new Map<string, Pending>();
  #closed = false;
  #closing: Promise<void> | null = null;
  /** This instance, in presence entries. */
  readonly instanceId: string;

  constructor(options: RedisHubOptions) {
    this.#redis = options.redis;
    this.#sub = options.subscriber;
    this.#store = options.store ?? new RedisStore(options.redis, { log: options.log });
    this.#log = options.logger;
    this.#owns = options.ownsClients ?? true;
    this.#mirror = options.mirror ?? null;
    this.#broadcaster = options.broadcaster ?? null;
    this.#events = options.events ?? null;
    this.#presenceInterval = options.presenceIntervalMs ?? 250;
    this.instanceId = options.instanceId ?? globalThis.crypto.randomUUID().slice(0, 13);
    this.#broker = new RedisBroker({
      redis: options.redis,
      subscriber: options.subscriber,
      log: options.log,
      logger: options.logger,
      sharded: options.sharded ?? false,
      catchUpLimit: options.catchUpLimit ?? 1000,
    });
    this.#broker.handler = {
      message: (room, id, text) => this.#onMessage(room, id, text),
      notice: (room, m) => this.#onNotice(room, m),
      reset: (room, reason) => this.#onReset(room, reason),
    };
    this.#presence = new RedisPresence({
      redis: options.redis,
      keys: options.log.keys,
      logger: options.logger,
      instanceId: this.instanceId,
      ttlMs: options.presenceTtlMs ?? 6000,
      sharded: options.sharded ?? false,
      served: () => this.#served(),
      changed: (room, change) => this.#reportPresence(room, change),
    });
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
  }

  get healthy(): boolean {
    return !this.#closed && this.#broker.connected && this.#presence.healthy;
  }

  *#served(): Iterable<ServedRoom> {
    for (const [room, local] of this.#rooms) {
      yield { room, names: local.users(), connections: local.members.size };
    }
  }

  #reportPresence(room: string, change: PresenceChange): void {
    const events = this.#events;
    if (!events) return;
    for (const user of change.joined) events({ event: "member.joined", room, data: { user } });
    for (const user of change.left) events({ event: "member.left", room, data: { user } });
  }

  async join(roomName: string, member: Member): Promise<string[]> {
    if (this.#closed) throw new Error("hub is closed");
    let local = this.#rooms.get(roomName);
    if (!local) {
      local = new LocalRoom(roomName, this.#broadcaster, this.#presenceInterval);
      this.#rooms.set(roomName, local);
    }
    // Listed (and counted) before the subscription settles, so a leave
    // meanwhile does not drop the room under it, and its count comes after.
    local.add(member);
    this.#presence.count(roomName, 1);
    try {
      await this.#broker.open(roomName);
    } catch (error) {
      if (this.#remove(roomName, local, member)) this.#presence.count(roomName, -1);
      throw error;
    }
    // Gone while the room opened (the client vanished): its presence entry
    // would outlive it until the TTL, since its leave already ran.
    if (!local.members.has(member)) return this.#presence.list(roomName);
    if (member.name === null) return this.#presence.list(roomName);
    const change = await this.#presence.join(roomName, member.name);
    this.#reportPresence(roomName, change);
    return change.users;
  }

  leave(roomName: string, member: Member): void {
    const local = this.#rooms.get(roomName);
    if (!local || !this.#remove(roomName, local, member)) return;
    this.#presence.count(roomName, -1);
    if (member.name === null) return;
    // Another tab with the same name here keeps the entry.
    const lastHere = local.connections(member.name) === 0;
    this.#presence.leave(roomName, member.name, lastHere).then(
      (change) => this.#reportPresence(roomName, change),
      (error: unknown) => {
        // The entry then expires with the TTL, since no heartbeat renews it.
        this.#log.warn({ room: roomName, err: error }, "presence leave failed");
      },
    );
  }

  /** Takes the member off; the room is dropped (and unsubscribed) once empty. */
  #remove(roomName: string, local: LocalRoom, member: Member): boolean {
    if (!local.remove(member)) return false;
    if (local.empty && this.#rooms.get(roomName) === local) {
      this.#rooms.delete(roomName);
      this.#broker.close(roomName);
    }
    return true;
  }

  async publish(roomName: string, from: Member | null, draft: Draft): Promise<ChatMessage> {
    if (!this.healthy) throw new Error("redis is unavailable");
    let arrived: Promise<void> | null = null;
    const message = await this.#broker.append(roomName, draft.user, draft.message, (stored) => {
      // Served here: the echo goes with the delivery, which cannot come before this.
      if (!this.#rooms.has(roomName)) return;
      arrived = new Promise<void>((delivered) => {
        this.#pending.set(`${roomName}\n${stored.id}`, { member: from, cid: draft.cid, delivered });
      });
    });
    this.#events?.({ event: "message.created", room: roomName, data: message });
    if (arrived) {
      // Resolve once delivered here (the sender's own instance has fanned it
      // out), or soon anyway: a catch-up after a reconnect delivers it later,
      // and the room may have emptied meanwhile.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([arrived, new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000)))]);
      clearTimeout(timer);
      this.#pending.delete(`${roomName}\n${message.id}`);
    }
    return message;
  }

  typing(roomName: string, from: Member): void {
    if (from.name === null || !this.#rooms.has(roomName)) return;
    const payload = encode({ kind: "typing", user: from.name, instance: this.instanceId, socket: from.socket.id });
    this.#broker.publish(roomName, payload).catch(() => {
      // A typing notice is a hint; losing one while Redis is away is fine.
    });
  }

  users(roomName: string): Promise<string[]> {
    return this.#presence.list(roomName);
  }

  async edit(roomName: string, id: string, message: string): Promise<ChatMessage | null> {
    const updated = await this.#store.edit(roomName, id, message, Date.now());
    if (updated === null) return null;
    const edited = updated.edited ?? Date.now();
    await this.#broker.publish(roomName, encode({ kind: "edited", id, message: updated.message, edited }));
    this.#events?.({ event: "message.edited", room: roomName, data: updated });
    return updated;
  }

  async delete(roomName: string, id: string): Promise<boolean> {
    if (!(await this.#store.delete(roomName, id))) return false;
    await this.#broker.publish(roomName, encode({ kind: "deleted", id }));
    this.#events?.({ event: "message.deleted", room: roomName, data: { id } });
    return true;
  }

  async kick(roomName: string, user: string, code: number, reason: string): Promise<void> {
    // Every instance serving the room (this one too, through its subscription) closes them.
    await this.#broker.publish(roomName, encode({ kind: "kick", user, code, reason }));
  }

  rooms(): Promise<{ room: string; online: number }[]> {
    return this.#presence.rooms();
  }

  #onMessage(roomName: string, id: string, text: string): void {
    const local = this.#rooms.get(roomName);
    if (!local) return;
    const key = `${roomName}\n${id}`;
    const pending = this.#pending.get(key);
    if (pending) this.#pending.delete(key);
    const message = parseMessageText(text);
    local.deliverMessage(message, text, pending?.member ?? null, pending?.cid);
    pending?.delivered();
    const mirror = this.#mirror;
    if (mirror) {
      Promise.resolve()
        .then(() => mirror.append(message))
        .catch((error: unknown) => {
          this.#log.warn({ room: roomName, err: error }, "local history copy failed");
        });
    }
  }

  #onNotice(roomName: string, m: Exclude<ChannelMessage, { kind: "message" }>): void {
    const local = this.#rooms.get(roomName);
    if (!local) return;
    switch (m.kind) {
      case "presence":
        local.presenceChanged(m.users, [...m.joined, ...m.repeat.joined], [...m.left, ...m.repeat.left]);
        return;
      case "typing": {
        let typist: Member | null = null;
        if (m.instance === this.instanceId) {
          for (const member of local.members) if (member.socket.id === m.socket) typist = member;
        }
        local.deliverV1(serialize({ type: "typing", user: m.user }), typist);
        return;
      }
      case "edited":
        local.deliverV1(
          serialize({
            type: "edited",
            room: roomName,
            id: m.id,
            message: m.message,
            edited: m.edited,
          } satisfies EditedFrame),
        );
        this.#mirror?.edit(roomName, m.id, m.message, m.edited).catch(() => {});
        return;
      case "deleted":
        local.deliverV1(serialize({ type: "deleted", room: roomName, id: m.id } satisfies DeletedFrame));
        this.#mirror?.delete(roomName, m.id).catch(() => {});
        return;
      case "kick":
        // Left now, not when the close completes: presence and users() are exact at once.
        for (const member of local.kick(m.user, m.code, m.reason)) this.leave(roomName, member);
        return;
    }
  }

  /** The room's members may have missed messages that are gone: they reconnect and resume, which reports it. */
  #onReset(roomName: string, reason: string): void {
    const local = this.#rooms.get(roomName);
    if (!local) return;
    for (const m of [...local.members]) m.socket.close(CloseCode.TryAgainLater, `${reason}; reconnect and resume`);
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#presence.stop([...this.#served()]);
    this.#closed = true;
    this.#broker.stop();
    this.#rooms.clear();
    for (const p of this.#pending.values()) p.delivered();
    this.#pending.clear();
    if (this.#owns) {
      // One client for both on a cluster.
      const clients = this.#sub === this.#redis ? [this.#redis] : [this.#sub, this.#redis];
      await Promise.all(
        clients.map((c) =>
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
 *
 * @param local a per-instance history (HISTORY=sqlite|memory), or null for Redis
 * @param events the webhooks' sink @default null
 * @param broadcaster the runtime's room fan-out (WsBroadcaster, BunBroadcaster) @default null
 */
export async function createRedisParts(
  config: Config,
  logger: Logger,
  local: HistoryStore | null,
  events: EventSink | null = null,
  broadcaster: Broadcaster | null = null,
): Promise<{ hub: Hub; store: HistoryStore }> {
  const instanceId = globalThis.crypto.randomUUID().slice(0, 13);
  const timeout = { commandTimeoutMs: config.redisCommandTimeoutMs };
  let redis: Redis | Cluster;
  let subscriber: Redis | Cluster;
  if (config.redisCluster) {
    redis = createRedisCluster(config.redisUrl, { ...timeout, name: `chat-${instanceId}` });
    subscriber = redis;
  } else {
    redis = createRedisClient(config.redisUrl, { ...timeout, name: `chat-${instanceId}` });
    subscriber = createRedisClient(config.redisUrl, { ...timeout, name: `chat-${instanceId}-sub` });
  }
  const log = new RedisLog(redis, {
    limit: config.historyLimit,
    prefix: config.redisPrefix,
    ttlMs: config.historyTtlMs,
  });
  const stream = new RedisStore(redis, { log });
  const hub = new RedisHub({
    redis,
    subscriber,
    log,
    store: stream,
    logger: logger.child({ instance: instanceId }),
    instanceId,
    mirror: local,
    broadcaster,
    events,
    presenceTtlMs: config.redisPresenceTtlMs,
    presenceIntervalMs: config.presenceIntervalMs,
    sharded: config.redisCluster,
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
