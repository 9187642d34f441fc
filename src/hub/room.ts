import { type ChatMessage, type EchoFrame, type PresenceFrame, serialize } from "../protocol.ts";
import type { Broadcaster, Member } from "./hub.ts";

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
  /** Presence changes not sent yet (merged, see {@link presenceChanged}). */
  #joined: string[] = [];
  #left: string[] = [];
  /** The newest full list a hub handed in with a change; null: this room's own {@link users}. */
  #pendingUsers: string[] | null = null;
  #presenceAt = Number.NEGATIVE_INFINITY;
  #presenceTimer: ReturnType<typeof setTimeout> | null = null;
  /** The `users` of the last presence frame, to skip a merged frame that would say nothing. */
  #lastUsers = "";

  /**
   * @param broadcaster the runtime's fan-out (WsBroadcaster, BunBroadcaster) @default null: one send per member
   * @param presenceIntervalMs at most one presence frame per this many ms
   *   (PRESENCE_INTERVAL_MS); 0 sends every change at once @default 250
   */
  constructor(
    readonly name: string,
    readonly broadcaster: Broadcaster | null = null,
    readonly presenceIntervalMs = 250,
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

  /** This instance's connections named `name`. */
  connections(name: string): number {
    return this.#names.get(name) ?? 0;
  }

  /**
   * Closes every member named `user` with `code` and `reason` (a ban: 4003)
   * and returns them, still listed, for the hub to remove as it removes any
   * leaver (presence, events). Nothing more is sent to them.
   */
  kick(user: string, code: number, reason: string): Member[] {
    const kicked: Member[] = [];
    for (const m of this.members) {
      if (m.name !== user) continue;
      m.detach();
      m.socket.close(code, reason);
      kicked.push(m);
    }
    return kicked;
  }

  /**
   * Tells the room's v1 members that names joined or left, merged so that a
   * member gets at most one presence frame per `presenceIntervalMs` however
   * fast people come and go (docs/protocol.md: presence, fair use). The first change after a
   * quiet interval goes out at once; later ones wait for the interval's end
   * and go out as one frame. A frame's `users` is exact when it is sent, and
   * `joined` / `left` name everyone since the last frame (a string for one
   * name, an array for several; a name that joined and left again in between
   * is in both, and `users` says which came last).
   *
   * Every hub calls this for each named join and leave, instead of sending
   * presence frames itself: the memory hub after {@link add} / {@link remove},
   * the Redis hub for changes announced by any instance.
   *
   * @param users the room's full list of names after this change when the
   *   hub keeps it elsewhere (Redis: every instance's names); the newest one
   *   given is sent. Null: this room's own {@link users} at send time.
   * @param joined names that joined (one connection of theirs)
   * @param left names that left
   */
  presenceChanged(users: string[] | null, joined: readonly string[], left: readonly string[]): void {
    // Every name is reported, even one that joined and left again within
    // the interval (then it is in both lists and `users` says where it is):
    // a client waiting for someone's `left` must see it.
    for (const name of joined) if (!this.#joined.includes(name)) this.#joined.push(name);
    for (const name of left) if (!this.#left.includes(name)) this.#left.push(name);
    if (users !== null) this.#pendingUsers = users;
    if (this.#presenceTimer !== null) return; // the interval's end sends it
    const wait = this.#presenceAt + this.presenceIntervalMs - Date.now();
    if (wait <= 0) {
      this.#flushPresence();
      return;
    }
    this.#presenceTimer = setTimeout(() => {
      this.#presenceTimer = null;
      this.#flushPresence();
    }, wait);
    // Never what keeps a process alive (Node); other runtimes have no unref.
    (this.#presenceTimer as { unref?: () => void }).unref?.();
  }

  #flushPresence(): void {
    const users = this.#pendingUsers ?? this.users();
    const joined = this.#joined;
    const left = this.#left;
    this.#joined = [];
    this.#left = [];
    this.#pendingUsers = null;
    const list = users.join("\n");
    if (joined.length === 0 && left.length === 0 && list === this.#lastUsers) return;
    this.#lastUsers = list;
    this.#presenceAt = Date.now();
    if (this.members.size === 0) return;
    const frame: PresenceFrame = { type: "presence", users };
    if (joined.length > 0) frame.joined = joined.length === 1 ? joined[0]! : joined;
    if (left.length > 0) frame.left = left.length === 1 ? left[0]! : left;
    this.deliverV1(serialize(frame));
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
      for (const m of this.members) m.deliver(echo !== null && m === sender ? echo : text, message.id);
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
