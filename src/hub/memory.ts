import type { Logger } from "../observability/logger.ts";
import {
  type ChatMessage,
  type EchoFrame,
  formatMessageId,
  type PresenceFrame,
  parseMessageId,
  serialize,
} from "../protocol.ts";
import type { HistoryStore } from "../store/store.ts";
import { type Broadcaster, type Draft, type Hub, type Member, SharedFrame } from "./hub.ts";

/** One room's members on this instance. */
export class LocalRoom {
  readonly members = new Set<Member>();
  /** Connections per name, so a name with two tabs stays online until both leave. */
  readonly #names = new Map<string, number>();
  /** With a broadcaster: members subscribed to the room's channels. */
  readonly #live = new Set<Member>();
  /** With a broadcaster: members not subscribed yet (held for their welcome). */
  readonly #waiting = new Set<Member>();
  readonly #allChannel: string;
  readonly #v1Channel: string;

  /** @param broadcaster native fan-out (Bun's topics) @default null: one send per member */
  constructor(
    readonly name: string,
    readonly broadcaster: Broadcaster | null = null,
  ) {
    // ":" is not allowed in room names, so these never collide.
    this.#allChannel = `m:${name}`;
    this.#v1Channel = `v:${name}`;
  }

  add(member: Member): void {
    this.members.add(member);
    if (this.broadcaster) this.#waiting.add(member);
    if (member.name !== null) this.#names.set(member.name, (this.#names.get(member.name) ?? 0) + 1);
  }

  /** Returns false when the member was not here. */
  remove(member: Member): boolean {
    if (!this.members.delete(member)) return false;
    this.#waiting.delete(member);
    if (this.#live.delete(member)) this.#unsubscribe(member);
    if (member.name !== null) {
      const n = (this.#names.get(member.name) ?? 1) - 1;
      if (n > 0) this.#names.set(member.name, n);
      else this.#names.delete(member.name);
    }
    return true;
  }

  /** Names online here, sorted. */
  users(): string[] {
    return [...this.#names.keys()].sort();
  }

  get empty(): boolean {
    return this.members.size === 0;
  }

  /**
   * Delivers a message to every member: one serialization for all, one more
   * for the sender's echo when it carries a `cid`.
   */
  deliverMessage(message: ChatMessage, text: string, sender: Member | null, cid: string | undefined): void {
    const echo = sender !== null && cid !== undefined ? serialize({ ...message, cid } satisfies EchoFrame) : null;
    const b = this.broadcaster;
    if (!b) {
      const shared = new SharedFrame(text);
      for (const m of this.members) m.deliver(echo !== null && m === sender ? echo : shared, message.id);
      return;
    }
    const except = echo !== null && sender !== null && this.#live.has(sender) ? sender : null;
    except?.deliver(echo!, message.id);
    if (b.publish(this.#allChannel, text, except?.socket ?? null)) this.#checkLive();
    for (const m of this.#waiting) m.deliver(echo !== null && m === sender ? echo : text, message.id);
    this.#promote();
  }

  /** Delivers a v1-only frame (presence, typing) to the v1 members, maybe minus one. */
  deliverV1(text: string, except: Member | null = null): void {
    const b = this.broadcaster;
    if (!b) {
      for (const m of this.members) if (m.mode === "v1" && m !== except) m.deliver(text);
      return;
    }
    const skip = except !== null && this.#live.has(except) ? except.socket : null;
    if (b.publish(this.#v1Channel, text, skip)) this.#checkLive();
    for (const m of this.#waiting) if (m.mode === "v1" && m !== except) m.deliver(text);
    this.#promote();
  }

  /**
   * Subscribes the members released since they joined. Called after a
   * delivery, which reached them one by one through Member.deliver (held
   * before the welcome, and skipped when the welcome's history already had
   * it), so they get the next broadcast and nothing twice.
   */
  #promote(): void {
    const b = this.broadcaster!;
    for (const m of this.#waiting) {
      if (m.held || !m.open) continue;
      this.#waiting.delete(m);
      this.#live.add(m);
      b.subscribe(m.socket, this.#allChannel);
      if (m.mode === "v1") b.subscribe(m.socket, this.#v1Channel);
    }
  }

  /** A broadcast bypasses Member.deliver, so the slow-consumer rule is applied here. */
  #checkLive(): void {
    for (const m of this.#live) {
      if (m.checkBacklog()) continue;
      this.#live.delete(m);
      this.#waiting.add(m); // closing: no more broadcasts, until it leaves
      this.#unsubscribe(m);
    }
  }

  #unsubscribe(m: Member): void {
    this.broadcaster!.unsubscribe(m.socket, this.#allChannel);
    if (m.mode === "v1") this.broadcaster!.unsubscribe(m.socket, this.#v1Channel);
  }
}

/** Hands out ids in order: never below the last one, even if the clock steps back. */
export class IdClock {
  #ms = 0;
  #seq = -1;

  /** Continues after `lastId` (the store's newest id for the room). */
  resumeAfter(lastId: string | null): void {
    const last = lastId === null ? null : parseMessageId(lastId);
    if (last && (last.ms > this.#ms || (last.ms === this.#ms && last.seq > this.#seq))) {
      this.#ms = last.ms;
      this.#seq = last.seq;
    }
  }

  next(now: number): string {
    if (now > this.#ms) {
      this.#ms = now;
      this.#seq = 0;
    } else if (this.#seq < 999_999) {
      this.#seq++;
    } else {
      this.#ms++;
      this.#seq = 0;
    }
    return formatMessageId(this.#ms, this.#seq);
  }
}

interface MemoryRoom extends LocalRoom {
  clock: IdClock;
  ready: Promise<void>;
  /** Settles after the room's latest fan-out, so deliveries keep id order. */
  tail: Promise<void>;
}

/**
 * The default hub: one process is the authority for every room. Rooms live
 * while they have members; ids continue after the store's last one.
 */
export class MemoryHub implements Hub {
  readonly #rooms = new Map<string, MemoryRoom>();
  readonly healthy = true;

  /**
   * @param broadcaster native fan-out for the rooms (Bun's topic publish)
   *   @default null: one send per member
   */
  constructor(
    readonly store: HistoryStore,
    readonly logger: Logger,
    readonly broadcaster: Broadcaster | null = null,
  ) {}

  #room(name: string): MemoryRoom {
    let room = this.#rooms.get(name);
    if (!room) {
      const created = Object.assign(new LocalRoom(name, this.broadcaster), {
        clock: new IdClock(),
        ready: Promise.resolve(),
        tail: Promise.resolve(),
      });
      created.ready = this.store.lastId(name).then(
        (last) => created.clock.resumeAfter(last),
        (error: unknown) => {
          // Ids still only grow within this process; log that a restart
          // could not check them against the store.
          this.logger.warn({ room: name, err: String(error) }, "could not read the room's last id");
        },
      );
      this.#rooms.set(name, created);
      room = created;
    }
    return room;
  }

  async join(roomName: string, member: Member): Promise<string[]> {
    const room = this.#room(roomName);
    await room.ready;
    room.add(member);
    if (member.name !== null) {
      const users = room.users();
      room.deliverV1(serialize({ type: "presence", users, joined: member.name } satisfies PresenceFrame));
      return users;
    }
    return room.users();
  }

  leave(roomName: string, member: Member): void {
    const room = this.#rooms.get(roomName);
    if (!room?.remove(member)) return;
    if (member.name !== null) {
      room.deliverV1(serialize({ type: "presence", users: room.users(), left: member.name } satisfies PresenceFrame));
    }
    if (room.empty) {
      // Deliveries still queued finish first; the room is dropped after.
      void room.tail.then(() => {
        if (room.empty && this.#rooms.get(roomName) === room) this.#rooms.delete(roomName);
      });
    }
  }

  publish(roomName: string, from: Member, draft: Draft): Promise<ChatMessage> {
    const room = this.#rooms.get(roomName);
    if (!room) return Promise.reject(new Error(`not a member of room ${roomName}`));
    const ts = Date.now();
    const message: ChatMessage = {
      type: "message",
      id: room.clock.next(ts),
      room: roomName,
      user: draft.user,
      message: draft.message,
      ts,
    };
    let written: void | Promise<void>;
    try {
      written = this.store.append(message);
    } catch (error) {
      // Sessions chain on the promise; a store that throws must not throw through them.
      return Promise.reject(error);
    }
    const fanout = () => room.deliverMessage(message, serialize(message), from, draft.cid);
    if (!written) {
      fanout();
      return Promise.resolve(message);
    }
    // Writes of one batch settle together; chaining on the previous fan-out
    // keeps deliveries in id order whatever order the promises settle in.
    const done = Promise.all([written, room.tail]).then(() => {
      fanout();
      return message;
    });
    room.tail = done.then(
      () => {},
      () => {},
    );
    return done;
  }

  typing(roomName: string, from: Member): void {
    if (from.name === null) return;
    this.#rooms.get(roomName)?.deliverV1(serialize({ type: "typing", user: from.name }), from);
  }

  async users(roomName: string): Promise<string[]> {
    return this.#rooms.get(roomName)?.users() ?? [];
  }

  async close(): Promise<void> {
    await Promise.all([...this.#rooms.values()].map((r) => r.tail));
  }
}
