import { type ChatMessage, CloseCode, type Mode } from "../protocol.ts";

/**
 * The one thing the core knows of a connection. Runtime glue adapts its own
 * socket (ws, Bun's ServerWebSocket, Deno's and Workers' WebSocket) to this.
 */
export interface ChatSocket {
  /** Unique per connection within this process. */
  readonly id: string;
  send(text: string): void;
  close(code: number, reason: string): void;
  /** Bytes queued for this client and not yet written to the network. */
  bufferedAmount(): number;
  /**
   * Optional: stop reading this client's frames for `ms` (TCP backpressure
   * then slows the client itself). The session calls it for a connection
   * that floods invalid frames: dropping them unread still costs the
   * WebSocket layer their framing, a pause does not. Without it the frames
   * are only dropped.
   */
  pause?(ms: number): void;
  /**
   * Optional: keeps a small value with the connection where the runtime
   * rebuilds connections from (Workers: the socket's attachment, read again
   * after hibernation). Without it the value lives only as long as the process.
   */
  persist?(key: string, value: string): void;
}

interface Held {
  id: string | null;
  text: string;
}

/**
 * A connection as the hub sees it: where frames go, under which name and
 * mode. Frames are held back while the session prepares its welcome (which
 * must be the first frame) and sends its history pages (src/paging.ts), and
 * released after them, minus what that history already held. Held frames
 * count against `maxBuffered` like queued ones: a member that stays held
 * (its pages wait for a client that does not read) is closed with 1013.
 */
export class Member {
  #held: Held[] | null = [];
  /** Where {@link releaseSome} goes on from (no shifting of a long array). */
  #heldAt = 0;
  /** UTF-16 units held: cheap to count, and within 3x of the bytes. */
  #heldSize = 0;
  #closing = false;
  /**
   * The newest message id this member has had (sent, or carried by its
   * welcome). Ids of a room only grow, so anything at or below it is a
   * duplicate: a message whose fan-out lands just after the release although
   * the welcome's history already held it.
   */
  #lastId: string | null = null;

  /**
   * @param maxBuffered bytes queued to this client before it is closed with
   *   1013 (MAX_BUFFERED_BYTES) @default 1048576
   * @param onSlow told once when the member is closed for not reading
   */
  constructor(
    readonly socket: ChatSocket,
    readonly name: string | null,
    readonly mode: Mode,
    readonly maxBuffered = 1024 * 1024,
    readonly onSlow: (() => void) | { memberSlow(): void } = () => {},
  ) {}

  /** False once the member was closed for not reading, or has left. */
  get open(): boolean {
    return !this.#closing;
  }

  /**
   * Sends one pre-serialized frame (the same string for every member of a
   * room); `id` is the message id it carries, if any.
   */
  deliver(text: string, id: string | null = null): void {
    if (this.#closing) return;
    if (this.#held) {
      this.#held.push({ id, text });
      this.#heldSize += text.length;
      if (this.#heldSize > this.maxBuffered) this.closeSlow();
      return;
    }
    this.#send(text, id);
  }

  #send(text: string, id: string | null): void {
    if (id !== null) {
      if (this.#lastId !== null && id <= this.#lastId) return;
      this.#lastId = id;
    }
    this.socket.send(text);
    this.checkBacklog();
  }

  /** True until the session releases it: frames are queued, not sent. */
  get held(): boolean {
    return this.#held !== null;
  }

  /**
   * A client that does not read must not make the server buffer without
   * bound, nor slow the others: past the limit it is closed (1013). Called
   * after every send (and by a room after a native broadcast); returns false
   * when the member is closed or closing.
   */
  checkBacklog(): boolean {
    if (this.#closing) return false;
    if (this.socket.bufferedAmount() <= this.maxBuffered) return true;
    this.closeSlow();
    return false;
  }

  /** Closes the member as a client that does not read (1013), once. */
  closeSlow(): void {
    if (this.#closing) return;
    this.#closing = true;
    // Still held (so a room keeps it out of native broadcasts) but empty.
    if (this.#held) this.#held = [];
    this.#heldAt = 0;
    this.#heldSize = 0;
    const onSlow = this.onSlow;
    if (typeof onSlow === "function") onSlow();
    else onSlow.memberSlow();
    this.socket.close(CloseCode.TryAgainLater, "client is not reading fast enough");
  }

  /**
   * Sends a frame ahead of the held ones: the welcome and its history pages,
   * which come before anything the room sent meanwhile. Returns false when
   * the member is closed or closing (then nothing was sent).
   */
  sendAhead(text: string): boolean {
    if (this.#closing) return false;
    this.socket.send(text);
    return this.checkBacklog();
  }

  /**
   * Sends `first` (the welcome), then every held frame, skipping messages the
   * welcome's history already carried (ids up to `coveredUpTo`).
   */
  release(first: string | null, coveredUpTo: string | null): void {
    if (first !== null) this.sendAhead(first);
    this.cover(coveredUpTo);
    this.releaseSome(Number.POSITIVE_INFINITY);
  }

  /** Messages up to `id` were sent already (as history): held copies of them are skipped. */
  cover(id: string | null): void {
    if (id !== null && (this.#lastId === null || id > this.#lastId)) this.#lastId = id;
  }

  /**
   * Sends held frames, oldest first, until about `budget` UTF-16 units went
   * out; returns true once none are left, and the member is live. A paged
   * welcome releases this way, waiting for the client between steps, so a
   * client that reads gets what was held however much it is, and one that
   * reads slower than the room talks is closed by the held bound.
   */
  releaseSome(budget: number): boolean {
    const held = this.#held;
    if (held === null) return true;
    let sent = 0;
    while (this.#heldAt < held.length && sent < budget && !this.#closing) {
      const h = held[this.#heldAt] as Held;
      held[this.#heldAt++] = undefined as unknown as Held; // let it be collected
      const size = h.text.length;
      this.#heldSize -= size;
      sent += size;
      this.#send(h.text, h.id);
    }
    if (this.#closing) return false;
    if (this.#heldAt < held.length) return false;
    this.#held = null;
    this.#heldAt = 0;
    this.#heldSize = 0;
    return true;
  }

  /** Stops all delivery (the connection is gone or going). */
  detach(): void {
    this.#closing = true;
    this.#held = null;
  }
}

/**
 * The fan-out a runtime may offer (WsBroadcaster on ws, BunBroadcaster on
 * Bun): a room's frame goes to every subscriber of a channel, framed once,
 * and a turn's frames reach each client in one write. Optional; without it a
 * room sends to each member. Rooms subscribe only released members, so the
 * welcome still comes first.
 */
export interface Broadcaster {
  subscribe(socket: ChatSocket, channel: string): void;
  unsubscribe(socket: ChatSocket, channel: string): void;
  /**
   * Sends `text` to every subscriber of `channel` but `except`. Returns true
   * when some subscriber may be backed up, so the room checks their backlog.
   */
  publish(channel: string, text: string, except: ChatSocket | null): boolean;
}

/** A message as a session hands it to the hub, before it has an id. */
export interface Draft {
  user: string;
  message: string;
  /** The sender's correlation id, echoed only to the sender. */
  cid?: string;
}

/**
 * Rooms, membership and fan-out. The hub is the one authority that gives each
 * message of a room its id and place in the order; every implementation
 * passes the same contract suite (test/unit/hub.contract.ts).
 */
export interface Hub {
  /**
   * Adds a member to a room (presence `joined` goes to the room's v1 members)
   * and resolves with the names online in the room, this one included.
   */
  join(room: string, member: Member): Promise<string[]>;
  /** Removes a member (presence `left` when it was named). */
  leave(room: string, member: Member): void;
  /**
   * Gives the message its id, stores it, and delivers it to every member of
   * the room in order. Rejects when it could not be stored: then nobody got it.
   * `from` is null for a message the server API posts (no echo, and the room
   * need not have members here).
   */
  publish(room: string, from: Member | null, draft: Draft): Promise<ChatMessage>;
  /** Tells the room's other v1 members that `from` is typing. */
  typing(room: string, from: Member): void;
  /** Names online in a room (every instance, for a shared hub). */
  users(room: string): Promise<string[]>;
  /**
   * Stores the edit (new text, `edited` = now), then every v1 member of the
   * room (every instance) gets `{"type":"edited",...}`. Resolves with the
   * updated message, or null when the room holds no message `id`.
   */
  edit(room: string, id: string, message: string): Promise<ChatMessage | null>;
  /**
   * Removes the message from the history, then every v1 member of the room
   * (every instance) gets `{"type":"deleted",room,id}`. False when unknown.
   */
  delete(room: string, id: string): Promise<boolean>;
  /** Closes every connection named `user` in `room`, on every instance, with `code` and `reason`. */
  kick(room: string, user: string, code: number, reason: string): Promise<void>;
  /** Rooms with someone online (every instance) and their connection counts. */
  rooms(): Promise<{ room: string; online: number }[]>;
  /** False while a backing service is unreachable (/healthz says degraded). */
  readonly healthy: boolean;
  /** Releases timers and connections; members are not closed here. */
  close(): Promise<void>;
}
