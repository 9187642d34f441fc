/**
 * The broker: how a room's messages get their order and reach every
 * instance (centrifuge calls this part the Broker). It owns
 *
 * - the append: a message gets an id from this instance's clock (never below
 *   the last id it has seen) and the log's script stores it and publishes it
 *   on the room's channel in one atomic step, so pub/sub order is id order;
 * - conflict recovery: an id another instance took first is refused and
 *   retried above the top; appends of a room are pipelined, and after a
 *   refusal the refused ones are retried one at a time in publish order, so
 *   a sender's messages keep their order;
 * - frames held behind an append in flight: a message carrying an id this
 *   instance is still appending may be ours or another instance's, and only
 *   the append's reply says which (ours gets the echo);
 * - subscriptions: a room's channel is subscribed while the hub serves it,
 *   and after a reconnect every room is subscribed again and what was
 *   missed meanwhile is read from the log (catch-up);
 * - the epoch: a message of another epoch than the room's, or a log found
 *   behind what this instance saw, means Redis lost history: the hub is told
 *   to make its members resume (which reports the gap).
 *
 * Channel messages are built and read by codec.ts only.
 */
import type { Cluster, Redis } from "ioredis";
import { IdClock } from "../hub/memory.ts";
import type { Logger } from "../observability/logger.ts";
import { type ChatMessage, parseMessageId, serialize } from "../protocol.ts";
import { type ChannelMessage, decode, encodeMessage, newEpoch } from "./codec.ts";
import { EpochError, HistoryConflictError, type RedisCommands, type RedisLog } from "./log.ts";

/** What the broker hands to the hub. */
export interface BrokerHandler {
  /** A chat message of a served room, in id order, once; `text` is the frame members get. */
  message(room: string, id: string, text: string): void;
  /** Any other channel message of a served room. */
  notice(room: string, m: Exclude<ChannelMessage, { kind: "message" }>): void;
  /**
   * The room's members may have missed messages this instance cannot give
   * them (Redis lost history, or a catch-up failed): they should resume.
   */
  reset(room: string, reason: string): void;
}

/** Options for {@link RedisBroker}. */
export interface RedisBrokerOptions {
  /** Commands. */
  redis: RedisCommands;
  /** A second connection for pub/sub: a subscribed connection takes no other commands. */
  subscriber: Redis | Cluster;
  log: RedisLog;
  logger: Logger;
  /** Sharded pub/sub (SSUBSCRIBE/SPUBLISH, Redis 7; REDIS_CLUSTER). @default false */
  sharded?: boolean;
  /** Most messages read to catch up after a reconnect; past it members are told to resume. @default 1000 */
  catchUpLimit?: number;
}

/** Attempts at one publish when other instances keep taking the next id. */
const MAX_CONFLICTS = 100;

/** A publish waiting in a room's backlog. */
interface AppendJob {
  seq: number;
  user: string;
  text: string;
  onStored: (message: ChatMessage) => void;
  resolve: (message: ChatMessage) => void;
  reject: (error: unknown) => void;
}

/** One room this instance serves. */
interface BrokerRoom {
  name: string;
  clock: IdClock;
  /** Settles once subscribed and the epoch read; opens wait for it. */
  ready: Promise<void>;
  /** True once subscribed: the room is resubscribed after a reconnect. */
  live: boolean;
  /** The room's epoch as this instance knows it; null before its first message. */
  epoch: string | null;
  /** The newest id delivered here: later frames at or below it are repeats. */
  last: string | null;
  /** The log's top when this instance subscribed: where a catch-up starts if nothing came since. */
  base: string | null;
  /** Frames that arrived during a catch-up, handled after it. */
  syncing: string[] | null;
  /** Ids of this instance's appends in flight, until their replies say whose those ids are. */
  inflight: Set<string>;
  /** Frames held from the one carrying an in-flight id (`heldFor`) on. */
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

/** See the module comment. */
export class RedisBroker {
  readonly #redis: RedisCommands;
  readonly #sub: Redis | Cluster;
  readonly #log: RedisLog;
  readonly #logger: Logger;
  readonly #sharded: boolean;
  readonly #catchUpLimit: number;
  readonly #rooms = new Map<string, BrokerRoom>();
  #handler: BrokerHandler | null = null;
  #closed = false;
  #catchUpTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: RedisBrokerOptions) {
    this.#redis = options.redis;
    this.#sub = options.subscriber;
    this.#log = options.log;
    this.#logger = options.logger;
    this.#sharded = options.sharded ?? false;
    this.#catchUpLimit = options.catchUpLimit ?? 1000;
    const onMessage = (channel: string, payload: string) => this.#onMessage(channel, payload);
    this.#sub.on(this.#sharded ? "smessage" : "message", onMessage);
    if (this.#sharded) {
      // A cluster client subscribes again by itself after a failover; what
      // was published meanwhile is read from the streams. Until that read,
      // what arrives waits behind it (so order holds). A node lost may or
      // may not move subscriptions (a replica's does not): read soon anyway,
      // and again once ioredis says the subscriptions are back (it issues
      // the SSUBSCRIBEs without waiting for them, hence the delay).
      const behind = (ms: number) => {
        for (const r of this.#rooms.values()) if (r.live) r.syncing ??= [];
        clearTimeout(this.#catchUpTimer);
        this.#catchUpTimer = setTimeout(() => void this.#catchUpAll(), ms);
      };
      this.#sub.on("-node", () => behind(1000));
      this.#sub.on("-subscriber", () => behind(1000));
      this.#sub.on("subscribersReady", () => behind(250));
    } else {
      this.#sub.on("ready", () => void this.#resubscribe());
    }
  }

  /** Catches up every room whose messages wait behind a catch-up. */
  async #catchUpAll(): Promise<void> {
    const rooms = [...this.#rooms.values()].filter((r) => r.live && r.syncing !== null);
    if (rooms.length === 0 || this.#closed) return;
    this.#logger.info({ rooms: rooms.length }, "cluster subscriptions moved; catching up");
    await Promise.all(rooms.map((r) => this.#catchUp(r)));
  }

  /** Where delivered messages go (the hub, set once). */
  set handler(h: BrokerHandler) {
    this.#handler = h;
  }

  /** True while both connections are up. */
  get connected(): boolean {
    return !this.#closed && this.#redis.status === "ready" && this.#sub.status === "ready";
  }

  #subscribe(...channels: string[]): Promise<unknown> {
    // A cluster routes an SSUBSCRIBE by slot: one channel (one room) per call.
    if (this.#sharded) return Promise.all(channels.map((c) => this.#sub.ssubscribe(c)));
    return this.#sub.subscribe(...channels);
  }

  /** Publishes a channel message (codec.ts) on the room's channel. */
  async publish(room: string, payload: string): Promise<void> {
    const channel = this.#log.keys.channel(room);
    await (this.#sharded ? this.#redis.spublish(channel, payload) : this.#redis.publish(channel, payload));
  }

  /** Subscribes to the room (once; later calls wait for the first). */
  async open(name: string): Promise<void> {
    if (this.#closed) throw new Error("broker is closed");
    // A room closed while this open waited is opened again.
    for (let tries = 0; tries < 3; tries++) {
      const room = this.#rooms.get(name) ?? this.#create(name);
      try {
        await room.ready;
      } catch (error) {
        this.#drop(name, room);
        throw error;
      }
      if (this.#rooms.get(name) === room) return;
    }
    throw new Error(`room ${name} kept closing while opening`);
  }

  #create(name: string): BrokerRoom {
    const room: BrokerRoom = {
      name,
      clock: new IdClock(),
      ready: Promise.resolve(),
      live: false,
      epoch: null,
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
    room.ready = (async () => {
      await this.#subscribe(this.#log.keys.channel(name));
      // Read after subscribing: anything newer arrives on the channel.
      const { epoch, top } = await this.#log.epoch(name);
      room.epoch = epoch;
      room.base = top;
      if (top !== null) room.clock.resumeAfter(top);
      room.live = true;
    })();
    this.#rooms.set(name, room);
    return room;
  }

  /** Stops serving the room (its last member left). */
  close(name: string): void {
    const room = this.#rooms.get(name);
    if (room) this.#drop(name, room);
  }

  #drop(name: string, room: BrokerRoom): void {
    if (this.#rooms.get(name) !== room) return;
    this.#rooms.delete(name);
    room.live = false;
    // An open that comes later subscribes again; Redis runs both in order.
    if (this.#sub.status !== "ready") return;
    const channel = this.#log.keys.channel(name);
    (this.#sharded ? this.#sub.sunsubscribe(channel) : this.#sub.unsubscribe(channel)).catch(() => {});
  }

  /**
   * Gives the message its id, stores and publishes it. `onStored` runs once
   * the id is known to be this message's, before the message can be
   * delivered here (so the hub can match its echo). Resolves with the
   * stored message; rejects when it was not stored (or, after a connection
   * error, may have been: the caller says `unavailable` either way).
   */
  append(name: string, user: string, text: string, onStored: (message: ChatMessage) => void): Promise<ChatMessage> {
    const room = this.#rooms.get(name);
    // A room not served here (an instance may send into any room): nothing
    // to deliver locally, so there is nothing to keep in order with.
    if (!room) return this.#retry(name, null, new IdClock(), user, text, onStored);
    return new Promise((resolve, reject) => {
      const job: AppendJob = { seq: ++room.seq, user, text, onStored, resolve, reject };
      if (room.recovery) {
        room.recovery.push(job); // the newest seq: it goes last
        return;
      }
      room.pipelined++;
      this.#attempt(name, room, room.clock, user, text, onStored).then(
        (message) => {
          room.pipelined--;
          resolve(message);
          this.#drain(room);
        },
        (error: unknown) => {
          room.pipelined--;
          if (error instanceof HistoryConflictError || error instanceof EpochError) {
            room.recovery ??= [];
            const queue = room.recovery;
            const at = queue.findIndex((j) => j.seq > job.seq);
            queue.splice(at < 0 ? queue.length : at, 0, job);
          } else {
            reject(error);
          }
          this.#drain(room);
        },
      );
    });
  }

  /** Works through the room's backlog one append at a time, once no pipelined append is in flight. */
  #drain(room: BrokerRoom): void {
    if (room.draining || room.pipelined > 0 || !room.recovery) return;
    room.draining = true;
    void (async () => {
      for (let job = room.recovery?.shift(); job; job = room.recovery?.shift()) {
        await this.#retry(room.name, room, room.clock, job.user, job.text, job.onStored).then(job.resolve, job.reject);
      }
      room.recovery = null;
      room.draining = false;
    })();
  }

  async #retry(
    name: string,
    room: BrokerRoom | null,
    clock: IdClock,
    user: string,
    text: string,
    onStored: (message: ChatMessage) => void,
  ): Promise<ChatMessage> {
    // An unserved room learns the epoch from the first refusal.
    const epochOf = { epoch: room?.epoch ?? null };
    for (let attempt = 0; attempt < MAX_CONFLICTS; attempt++) {
      try {
        return await this.#attempt(name, room, clock, user, text, onStored, epochOf);
      } catch (error) {
        if (!(error instanceof HistoryConflictError || error instanceof EpochError)) throw error;
      }
    }
    throw new Error(`room ${name} is too busy: no free id after ${MAX_CONFLICTS} tries`);
  }

  /** One try at an id; a refusal rejects after moving the clock (or the epoch) past it. */
  async #attempt(
    name: string,
    room: BrokerRoom | null,
    clock: IdClock,
    user: string,
    text: string,
    onStored: (message: ChatMessage) => void,
    unserved: { epoch: string | null } = { epoch: null },
  ): Promise<ChatMessage> {
    if (room?.last) clock.resumeAfter(room.last);
    const ts = Date.now();
    const message: ChatMessage = { type: "message", id: clock.next(ts), room: name, user, message: text, ts };
    const known = room ? room.epoch : unserved.epoch;
    const epoch = known ?? newEpoch();
    const payload = encodeMessage(epoch, message, serialize(message));
    room?.inflight.add(message.id);
    let ours = false;
    try {
      await this.#log.append(
        message,
        known === null
          ? { mode: "create", epoch }
          : { mode: "expect", epoch, known: room ? (room.last ?? room.base) : null },
        { command: this.#sharded ? "SPUBLISH" : "PUBLISH", channel: this.#log.keys.channel(name), payload },
      );
      ours = true;
      if (room && room.epoch === null) room.epoch = epoch;
    } catch (error) {
      if (error instanceof HistoryConflictError) clock.resumeAfter(error.top);
      if (error instanceof EpochError) {
        if (room) this.#epochSeen(room, error.epoch, error.base);
        else unserved.epoch = error.epoch;
      }
      throw error;
    } finally {
      // Only now is the id known to be ours: tell the hub, then let
      // through what was held behind it.
      if (ours) onStored(message);
      if (room) this.#settle(room, message.id);
    }
    return message;
  }

  /**
   * The room's epoch is `epoch` (null: it has none, its history is gone).
   * Different from the one known: the members may have missed messages that
   * are lost, so they are told to resume.
   */
  #epochSeen(room: BrokerRoom, epoch: string | null, base: string | null): void {
    if (epoch === room.epoch) return;
    const before = room.epoch;
    room.epoch = epoch;
    if (before === null) return; // first sight, not a change
    if (this.#expired(room)) {
      // HISTORY_TTL expired the room's keys while it was idle: everything
      // delivered here is past the TTL anyway, so nothing the members saw is
      // missing from what a resume can give. Not a loss.
      room.last = null;
      return;
    }
    this.#logger.warn({ room: room.name, from: before, to: epoch }, "room history was lost in Redis: new epoch");
    // Ids of the new epoch may be below what was delivered here; nobody
    // here has seen any of them yet.
    room.last = null;
    if (base !== null) room.clock.resumeAfter(base);
    this.#handler?.reset(room.name, "history was reset");
  }

  /** True when every message delivered here is older than the log's HISTORY_TTL. */
  #expired(room: BrokerRoom): boolean {
    const ttl = this.#log.ttlMs;
    const seen = room.last ?? room.base;
    if (ttl <= 0 || seen === null) return false;
    const at = parseMessageId(seen);
    return at !== null && at.ms < Date.now() - ttl;
  }

  #onMessage(channel: string, payload: string): void {
    const name = this.#log.keys.roomOfChannel(channel);
    const room = name === null ? undefined : this.#rooms.get(name);
    if (!room) return;
    if (room.syncing) room.syncing.push(payload);
    else this.#handle(room, payload);
  }

  #settle(room: BrokerRoom, id: string): void {
    room.inflight.delete(id);
    const held = room.held;
    if (room.heldFor !== id || !held) return;
    room.heldFor = null;
    // Frames go out in order until one carries another in-flight id.
    while (room.heldAt < held.length) {
      const payload = held[room.heldAt] as string;
      if (this.#holds(room, payload)) return;
      room.heldAt++;
      this.#process(room, payload);
    }
    room.held = null;
    room.heldAt = 0;
  }

  /** True (and noted in `heldFor`) when the frame is a message with an id this instance is still appending. */
  #holds(room: BrokerRoom, payload: string): boolean {
    if (room.inflight.size === 0) return false;
    const m = decode(payload);
    if (m?.kind !== "message" || !room.inflight.has(m.id)) return false;
    room.heldFor = m.id;
    return true;
  }

  #handle(room: BrokerRoom, payload: string): void {
    if (room.held) {
      room.held.push(payload);
    } else if (this.#holds(room, payload)) {
      room.held = [payload];
      room.heldAt = 0;
    } else {
      this.#process(room, payload);
    }
  }

  #process(room: BrokerRoom, payload: string): void {
    const m = decode(payload);
    if (m === null) {
      this.#logger.warn({ room: room.name, kind: payload.slice(0, 1) }, "unknown channel message dropped");
      return;
    }
    if (m.kind !== "message") {
      this.#handler?.notice(room.name, m);
      return;
    }
    if (m.epoch !== room.epoch) this.#epochSeen(room, m.epoch, null);
    this.#deliver(room, m.id, m.text);
  }

  #deliver(room: BrokerRoom, id: string, text: string): void {
    // Repeats come only from a catch-up overlapping the channel.
    if (room.last !== null && id <= room.last) return;
    room.last = id;
    this.#handler?.message(room.name, id, text);
  }

  /** After a reconnect: subscribe every room again, then read what was missed. */
  async #resubscribe(): Promise<void> {
    const rooms = [...this.#rooms.values()].filter((r) => r.live);
    if (rooms.length === 0 || this.#closed) return;
    for (const r of rooms) r.syncing ??= [];
    try {
      await this.#subscribe(...rooms.map((r) => this.#log.keys.channel(r.name)));
    } catch (error) {
      // The connection dropped again, and its next "ready" tries again; or
      // it timed out on a live connection, which is then restarted for that.
      this.#logger.warn({ err: error }, "resubscribe failed");
      if (this.#sub.status === "ready") this.#sub.disconnect(true);
      return;
    }
    this.#logger.info({ rooms: rooms.length }, "resubscribed; catching up");
    await Promise.all(rooms.map((r) => this.#catchUp(r)));
  }

  async #catchUp(room: BrokerRoom): Promise<void> {
    // A cluster's shard may still be failing over: its reads fail until a
    // replica takes over (~2 s with cluster-node-timeout 1000). Try for 5 s.
    const attempts = this.#sharded ? 20 : 1;
    for (let attempt = 1; attempt <= attempts && !this.#closed; attempt++) {
      try {
        await this.#catchUpOnce(room);
        break;
      } catch (error) {
        if (attempt < attempts) {
          await new Promise((r) => setTimeout(r, 250));
          continue;
        }
        // What the members missed is unknown: they resume, which reports any gap.
        this.#logger.warn({ room: room.name, err: error }, "catch-up failed; asking clients to resume");
        this.#handler?.reset(room.name, "catch-up failed");
      }
    }
    const queued = room.syncing ?? [];
    room.syncing = null;
    for (const payload of queued) this.#handle(room, payload);
  }

  async #catchUpOnce(room: BrokerRoom): Promise<void> {
    // The catch-up reads on the other connection, which may still be reconnecting.
    for (let i = 0; i < 50 && this.#redis.status !== "ready" && !this.#closed; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const seen = room.last ?? room.base;
    const { epoch, base } = await this.#log.epoch(room.name, seen);
    if (epoch !== room.epoch && room.epoch !== null) {
      this.#epochSeen(room, epoch, base);
    } else {
      room.epoch = epoch;
      const { messages, more } = await this.#log.after(room.name, seen, this.#catchUpLimit);
      for (const m of messages) this.#deliver(room, m.id, serialize(m));
      if (more) {
        this.#logger.warn(
          { room: room.name },
          `more than ${this.#catchUpLimit} messages missed; asking clients to resume`,
        );
        this.#handler?.reset(room.name, "too much missed");
      }
    }
  }

  /** Stops: no more deliveries. The clients are the caller's. */
  stop(): void {
    this.#closed = true;
    clearTimeout(this.#catchUpTimer);
    this.#rooms.clear();
  }
}
