/**
 * Where a room lives in Redis: the one module that names keys and channels.
 * The history, the broker and the presence all take their names from here.
 *
 * Every key of a room carries the `{room}` hash tag, so in a Redis Cluster
 * they all hash to one slot: a script may touch several of them (XADD, the
 * epoch, PUBLISH) atomically, and the room's sharded channel lives on the
 * same shard. REDIS_PREFIX goes outside the tag, so it must not contain `{`.
 */
export class RoomKeys {
  /** @param prefix REDIS_PREFIX @default "chat:" */
  constructor(readonly prefix = "chat:") {
    if (prefix.includes("{") || prefix.includes("}")) throw new Error("REDIS_PREFIX must not contain { or }");
  }

  /** Stream: the room's messages, entry id = message id without padding. */
  stream(room: string): string {
    return `${this.prefix}{${room}}:log`;
  }

  /** Hash: the stream's epoch, base, top and last writer (see log.ts). */
  meta(room: string): string {
    return `${this.prefix}{${room}}:meta`;
  }

  /** Hash: message id -> edit (`<edited ms>\n<text>`) or tombstone (`d`). */
  changes(room: string): string {
    return `${this.prefix}{${room}}:changes`;
  }

  /** Hash: user -> ban end (ms since the epoch, or `inf`). */
  bans(room: string): string {
    return `${this.prefix}{${room}}:bans`;
  }

  /** Sorted set: `<instance>|<name>` scored by expiry (ms). */
  presence(room: string): string {
    return `${this.prefix}{${room}}:online`;
  }

  /** Pub/sub channel (sharded under Redis Cluster) of the room's channel messages (codec.ts). */
  channel(room: string): string {
    return `${this.prefix}{${room}}:ch`;
  }

  /** The room a channel belongs to, or null for a channel of another prefix. */
  roomOfChannel(channel: string): string | null {
    const head = `${this.prefix}{`;
    if (!channel.startsWith(head) || !channel.endsWith("}:ch")) return null;
    return channel.slice(head.length, -4);
  }

  /** Sorted set of live instances, scored by expiry (ms); not per room, so no hash tag. */
  instances(): string {
    return `${this.prefix}instances`;
  }

  /** Hash: room -> connections on one instance (for `rooms()`), renewed by its heartbeat. */
  instanceRooms(instance: string): string {
    return `${this.prefix}instance:${instance}:rooms`;
  }
}
