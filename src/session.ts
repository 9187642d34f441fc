import type { Config } from "./config.ts";
import { type ChatSocket, type Hub, Member } from "./hub/hub.ts";
import type { Logger } from "./observability/logger.ts";
import type { Metrics } from "./observability/metrics.ts";
import {
  type ChatMessage,
  type ClientFrame,
  CloseCode,
  type ErrorCode,
  errorFrame,
  isMessageId,
  type Mode,
  type ParseLimits,
  parseClientFrame,
  serialize,
  type WelcomeFrame,
} from "./protocol.ts";
import type { HistoryStore } from "./store/store.ts";

/** What every session of a server shares. */
export interface SessionDeps {
  hub: Hub;
  store: HistoryStore;
  config: Config;
  logger: Logger;
  metrics: Metrics;
}

/** One connection's parameters, checked before the upgrade. */
export interface SessionInit {
  room: string;
  /** From the token or `?user=`; null for an unnamed connection. */
  name: string | null;
  mode: Mode;
  /** `?since=`: resume after this message id. */
  since: string | null;
}

/**
 * A token bucket: `capacity` messages, refilled at `perSecond`. Per
 * connection, so one noisy client cannot slow a room.
 */
export class TokenBucket {
  #tokens: number;
  #at: number;

  constructor(
    readonly capacity: number,
    readonly perSecond: number,
    now: number,
  ) {
    this.#tokens = capacity;
    this.#at = now;
  }

  take(now: number): boolean {
    this.#tokens = Math.min(this.capacity, this.#tokens + ((now - this.#at) / 1000) * this.perSecond);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}

/** Typing notices relayed at most this often per connection. */
const TYPING_INTERVAL_MS = 1000;

const encoder = new TextEncoder();

/** UTF-8 size of a string, without encoding it when its length already decides. */
function exceedsBytes(text: string, max: number): boolean {
  if (text.length > max) return true; // every UTF-16 unit is at least one byte
  if (text.length * 3 <= max) return false; // and at most three
  return encoder.encode(text).length > max;
}

type Inbound = string | ArrayBuffer | ArrayBufferView | Blob;

/**
 * One connection's life: join, welcome, every frame it sends (parse,
 * validate, rate-limit, act), and leave. Knows no runtime: it speaks to a
 * {@link ChatSocket}, the hub and the store.
 */
export class Session {
  #member: Member | null = null;
  /** Frames that arrived before the join finished, handled in order after. */
  #inbox: Inbound[] | null = [];
  #closed = false;
  readonly #bucket: TokenBucket | null;
  readonly #limits: ParseLimits;
  #lastTyping = 0;
  readonly #openedAt = Date.now();
  #received = 0;
  /** The shared logger: a pino child per connection would cost memory on every idle socket. */
  readonly #log: Logger;
  #conn = "";

  constructor(
    readonly deps: SessionDeps,
    readonly init: SessionInit,
  ) {
    const { config } = deps;
    this.#bucket =
      config.rateLimit > 0 ? new TokenBucket(config.rateLimit, config.rateLimitRefillPerSecond, Date.now()) : null;
    this.#limits = {
      maxMessageLength: config.maxMessageLength,
      maxHistoryLimit: 500,
      defaultHistoryLimit: 50,
    };
    this.#log = deps.logger;
  }

  get socket(): ChatSocket | null {
    return this.#member?.socket ?? null;
  }

  /** Joins the room and sends the welcome (v1). Call once, when the socket is open. */
  async open(socket: ChatSocket): Promise<void> {
    if (this.#member) return;
    const { hub, metrics, config } = this.deps;
    const { room, name, mode } = this.init;
    this.#conn = socket.id;
    const member = new Member(socket, name, mode, config.maxBufferedBytes, () => {
      metrics.slowConsumerClosed();
      this.#log.warn({ conn: this.#conn, room }, "closing a client that does not read");
    });
    this.#member = member;
    metrics.connectionOpened(mode);
    this.#log.info({ conn: this.#conn, room, user: name, mode }, "connection opened");
    try {
      const users = await hub.join(room, member);
      if (this.#closed) {
        hub.leave(room, member);
        return;
      }
      if (mode === "v1") {
        const welcome = await this.#welcome(users);
        member.release(serialize(welcome), welcome.history.at(-1)?.id ?? null);
      } else {
        member.release(null, null);
      }
    } catch (error) {
      this.#log.error({ conn: this.#conn, room, err: String(error) }, "join failed");
      // Leave now rather than when the close completes: a member that is
      // never released would hold every frame of the room until then.
      member.detach();
      hub.leave(room, member);
      this.#inbox = null;
      socket.close(CloseCode.TryAgainLater, "chat is unavailable, try again");
      return;
    }
    const inbox = this.#inbox ?? [];
    this.#inbox = null;
    for (const data of inbox) this.message(data);
  }

  async #welcome(users: string[]): Promise<WelcomeFrame> {
    const { store, config } = this.deps;
    const { room, name, since } = this.init;
    const welcome: WelcomeFrame = { type: "welcome", room, user: name, users, history: [] };
    if (since === null) {
      welcome.history = await store.latest(room, config.welcomeHistory);
    } else if (isMessageId(since)) {
      const resumed = await store.since(room, since, config.resumeLimit);
      welcome.history = resumed.messages;
      welcome.recovered = resumed.complete;
    } else {
      // Not an id this server could have given: a gap we cannot measure.
      welcome.history = await store.latest(room, config.welcomeHistory);
      welcome.recovered = false;
    }
    return welcome;
  }

  /** Handles one frame from the client. */
  message(data: Inbound): void {
    if (this.#closed) return;
    if (this.#inbox) {
      this.#inbox.push(data);
      return;
    }
    const member = this.#member;
    // Not open: the join failed, or the client is being closed for not reading.
    if (!member?.open) return;
    this.#received++;
    const { config } = this.deps;
    if (typeof data !== "string") {
      const size = data instanceof Blob ? data.size : data.byteLength;
      if (size > config.maxFrameBytes) {
        member.socket.close(CloseCode.MessageTooBig, "frame too large");
        return;
      }
      this.#error("unsupported_data", "binary frames are not supported; send JSON text");
      return;
    }
    // The runtimes that cannot cap frames themselves (Deno, Workers) rely on
    // this check; on Node and Bun the socket already closed with 1009.
    if (exceedsBytes(data, config.maxFrameBytes)) {
      member.socket.close(CloseCode.MessageTooBig, "frame too large");
      return;
    }
    const parsed = parseClientFrame(data, this.init.mode, member.name === null, this.#limits);
    if (!parsed.ok) {
      this.#error(parsed.code, parsed.message, parsed.cid);
      return;
    }
    this.#handle(parsed.frame, member);
  }

  #handle(frame: ClientFrame, member: Member): void {
    const { hub, store, metrics } = this.deps;
    const { room } = this.init;
    switch (frame.type) {
      case "ping":
        member.deliver('{"type":"pong"}');
        return;
      case "typing": {
        const now = Date.now();
        if (now - this.#lastTyping < TYPING_INTERVAL_MS) return;
        this.#lastTyping = now;
        hub.typing(room, member);
        return;
      }
      case "history": {
        const read =
          frame.before === undefined ? store.latest(room, frame.limit) : store.before(room, frame.before, frame.limit);
        read.then(
          (messages: ChatMessage[]) => {
            const reply =
              frame.before === undefined
                ? { type: "history" as const, messages }
                : { type: "history" as const, messages, before: frame.before };
            member.deliver(serialize(reply));
          },
          (error: unknown) => {
            this.#log.error({ conn: this.#conn, room, err: String(error) }, "history read failed");
            this.#error("unavailable", "history is unavailable, try again");
          },
        );
        return;
      }
      case "message": {
        if (this.#bucket && !this.#bucket.take(Date.now())) {
          this.#error("rate_limited", "too many messages; slow down", frame.cid);
          return;
        }
        const user = member.name ?? frame.user ?? "";
        const draft =
          frame.cid === undefined ? { user, message: frame.message } : { user, message: frame.message, cid: frame.cid };
        hub.publish(room, member, draft).then(
          () => metrics.messageAccepted(),
          (error: unknown) => {
            this.#log.error({ conn: this.#conn, room, err: String(error) }, "message not stored");
            this.#error(
              "unavailable",
              "the message could not be stored; it was not delivered, send it again",
              frame.cid,
            );
          },
        );
        return;
      }
    }
  }

  #error(code: ErrorCode, message: string, cid?: string): void {
    this.deps.metrics.errorSent(code);
    // One line per error at the default level, as operators expect; the
    // counter in /metrics is the cheap way to watch rates.
    this.#log.info({ conn: this.#conn, code, cid, reason: message }, "error sent to client");
    this.#member?.deliver(serialize(errorFrame(code, message, cid)));
  }

  /** Closes the connection from the server's side (shutdown: 1001). */
  close(code: number, reason: string): void {
    const member = this.#member;
    if (!member) return;
    // Nothing more goes to a connection the server is closing; at shutdown
    // this also spares every remaining member the presence of each leaver.
    member.detach();
    member.socket.close(code, reason);
  }

  /** The connection is gone: leave the room. Safe to call more than once. */
  closed(code?: number): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#inbox = null;
    const member = this.#member;
    if (!member) return;
    member.detach();
    this.deps.hub.leave(this.init.room, member);
    this.deps.metrics.connectionClosed(this.init.mode);
    this.#log.info(
      { conn: this.#conn, room: this.init.room, code, frames: this.#received, ms: Date.now() - this.#openedAt },
      "connection closed",
    );
  }
}
