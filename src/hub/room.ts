import { type ChatMessage, type EchoFrame, serialize } from "../protocol.ts";
import { type Broadcaster, type Member, SharedFrame } from "./hub.ts";

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
