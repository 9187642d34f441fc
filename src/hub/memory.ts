import type { Logger } from "../observability/logger.ts";
import { type ChatMessage, formatMessageId, type PresenceFrame, parseMessageId, serialize } from "../protocol.ts";
import type { HistoryStore } from "../store/store.ts";
import type { Broadcaster, Draft, Hub, Member } from "./hub.ts";
import { LocalRoom } from "./room.ts";

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
