import type { Config } from "./config.ts";
import type { ExpiryClock } from "./governance/expiry.ts";
import {
  ConnectionGovernance,
  type GovernanceFrame,
  type GovernanceHost,
  refuseWithoutToken,
} from "./governance/moderation.ts";
import { encodeIdentity, type Identity } from "./governance/token.ts";
import { type ChatSocket, type Hub, Member } from "./hub/hub.ts";
import { type AddressLimits, type ChargeKind, ConnectionLimits, readCost, textCost } from "./limits/limiter.ts";
import type { Logger } from "./observability/logger.ts";
import type { Metrics } from "./observability/metrics.ts";
import { pagingFor, Replies, type ResumeRest, readResume } from "./paging.ts";
import {
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
  /** The server's per-address table (connection cap, shared bucket). @default none: per connection only */
  addresses?: AddressLimits;
  /** What wakes a connection at its token's `exp` (a Durable Object: its alarm). @default timers */
  expiry?: ExpiryClock;
}

/** One connection's parameters, checked before the upgrade. */
export interface SessionInit {
  room: string;
  /** From the token or `?user=`; null for an unnamed connection. */
  name: string | null;
  mode: Mode;
  /** `?since=`: resume after this message id. */
  since: string | null;
  /** What the connection's token says (AUTH_SECRET); null or absent without one. */
  identity?: Identity | null;
  /** The client's address key (limits/address.ts). @default "unknown" */
  address?: string;
}

/**
 * Frames held before the welcome (docs/protocol.md): past either bound the
 * connection is closed with 1008, so a client that streams while the join
 * waits (Redis slow or down) costs bounded memory.
 */
export const INBOX_MAX_FRAMES = 64;
/** Bytes (UTF-8) held before the welcome; see {@link INBOX_MAX_FRAMES}. */
export const INBOX_MAX_BYTES = 256 * 1024;

/** Shortest time a connection past its invalid-frame budget is not read (its frames dropped). */
const INVALID_MUTE_MS = 1000;

/** Error lines logged per connection; the rest are counted (a summary line at most once a minute, and at close). */
export const ERROR_LINES_PER_CONNECTION = 5;
const ERROR_SUMMARY_MS = 60_000;

/** One ParseLimits per config, not one object per connection. */
const parseLimits = new WeakMap<Config, ParseLimits>();

function parseLimitsFor(config: Config): ParseLimits {
  let limits = parseLimits.get(config);
  if (limits === undefined) {
    limits = { maxMessageLength: config.maxMessageLength, maxHistoryLimit: 500, defaultHistoryLimit: 50 };
    parseLimits.set(config, limits);
  }
  return limits;
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

/** True when `text` cannot be a JSON object: its first non-blank character is not `{`. */
function notAnObject(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) continue;
    return c !== 0x7b;
  }
  return true;
}

/**
 * One connection's life: join, welcome, every frame it sends (parse,
 * validate, rate-limit, act), and leave. Knows no runtime: it speaks to a
 * {@link ChatSocket}, the hub and the store.
 */
export class Session {
  #member: Member | null = null;
  /** Moderation, refresh and expiry: only for a connection with a token. */
  #gov: ConnectionGovernance | null = null;
  /** The welcome and `history` answers, paged (src/paging.ts); v1 only. */
  #replies: Replies | null = null;
  /** Frames that arrived before the join finished, handled in order after. */
  #inbox: Inbound[] | null = [];
  #inboxBytes = 0;
  #closed = false;
  /** Made at the first charge: an idle connection never has one (96 B each). */
  #rateLimits: ConnectionLimits | null = null;
  /** Counted in the address's connections (released at close). */
  #counted = false;
  /** Error lines logged, and those not logged since the last summary. */
  #errorLines = 0;
  #errorsUnlogged = 0;
  #errorSummaryAt = 0;
  /**
   * Past the invalid-frame budget: until this time (ms) every frame of the
   * connection is dropped unread; 0 when not muted.
   */
  #mutedUntil = 0;
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
    this.#limits = parseLimitsFor(deps.config);
    this.#log = deps.logger;
  }

  get #rate(): ConnectionLimits {
    this.#rateLimits ??= new ConnectionLimits(
      this.deps.config,
      this.deps.addresses ?? null,
      this.init.address ?? "unknown",
    );
    return this.#rateLimits;
  }

  /** Member's report of a client closed for not reading (a method: no closure per connection). */
  memberSlow(): void {
    this.deps.metrics.slowConsumerClosed();
    this.#log.warn({ conn: this.#conn, room: this.init.room }, "closing a client that does not read");
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
    const { addresses } = this.deps;
    if (addresses) {
      // Handshakes that raced past the check in the app: the count decides.
      if (!addresses.open(this.init.address ?? "unknown")) {
        this.#inbox = null;
        socket.close(CloseCode.PolicyViolation, "too many connections from your address");
        return;
      }
      this.#counted = true;
    }
    const member = new Member(socket, name, mode, config.maxBufferedBytes, this);
    this.#member = member;
    if (this.init.identity) {
      const govDeps = { hub, store: this.deps.store, tokens: config, logger: this.#log, clock: this.deps.expiry };
      this.#gov = new ConnectionGovernance(govDeps, this.#host(), this.init.identity);
    }
    metrics.connectionOpened(mode);
    this.#log.info({ conn: this.#conn, room, user: name, mode }, "connection opened");
    try {
      const users = await hub.join(room, member);
      if (this.#closed || !member.open) {
        hub.leave(room, member);
        return;
      }
      // A ban stored after the handshake's check, whose kick came before this
      // join, would miss this connection: look once more now that it is in.
      if (name !== null && (await this.deps.store.bannedUntil(room, name, Date.now())) !== null) {
        member.detach();
        hub.leave(room, member);
        this.#inbox = null;
        socket.close(CloseCode.Banned, "banned");
        return;
      }
      if (mode === "v1") {
        const { welcome, rest } = await this.#welcome(users);
        // A welcome of large messages is charged to the address by its size
        // (beyond one unit, at most ten): reconnecting into a room of 8 KB
        // messages in a loop costs like the history reads it is.
        this.deps.addresses?.spend(this.init.address ?? "unknown", Math.min(10, textCost(welcome.history) - 1));
        this.#replies = new Replies(member, this.deps.store, room, {
          read: (messages, limit) => this.#rate.spend("read", textCost(messages) - readCost(limit)),
          readFailed: (error, what) => this.#log.error({ conn: this.#conn, room, err: error }, `${what} read failed`),
          historyUnavailable: () => this.#error("unavailable", "history is unavailable, try again"),
        });
        // The first page now; the rest, then the held live frames, as the client reads.
        this.#replies.welcome(welcome, rest);
      } else {
        member.release(null, null);
      }
    } catch (error) {
      this.#log.error({ conn: this.#conn, room, err: error }, "join failed");
      // Leave now rather than when the close completes: a member that is
      // never released would hold every frame of the room until then.
      member.detach();
      hub.leave(room, member);
      this.#inbox = null;
      socket.close(CloseCode.TryAgainLater, "chat is unavailable, try again");
      return;
    }
    this.#gov?.start();
    const inbox = this.#inbox ?? [];
    this.#inbox = null;
    for (const data of inbox) this.message(data);
  }

  /** The welcome, and where a resume's history goes on when it was not read whole. */
  async #welcome(users: string[]): Promise<{ welcome: WelcomeFrame; rest: ResumeRest | null }> {
    const { store, config } = this.deps;
    const { room, name, since } = this.init;
    const welcome: WelcomeFrame = { type: "welcome", room, user: name, users, history: [] };
    if (this.#gov?.moderator) welcome.role = "moderator";
    if (since === null) {
      welcome.history = await store.latest(room, config.welcomeHistory);
    } else if (isMessageId(since)) {
      // Up to what the welcome carries when the store can stop there (src/paging.ts): the rest is paged.
      const { firstBytes } = pagingFor(config.maxBufferedBytes);
      const resumed = await readResume(store, room, since, config.resumeLimit, firstBytes);
      welcome.history = resumed.messages;
      welcome.recovered = resumed.complete;
      return { welcome, rest: resumed.rest };
    } else {
      // Not an id this server could have given: a gap we cannot measure.
      welcome.history = await store.latest(room, config.welcomeHistory);
      welcome.recovered = false;
    }
    return { welcome, rest: null };
  }

  /** Keeps a frame for after the welcome, within the inbox bounds. */
  #hold(inbox: Inbound[], data: Inbound): void {
    this.#inboxBytes +=
      typeof data === "string" ? encoder.encode(data).length : data instanceof Blob ? data.size : data.byteLength;
    if (inbox.length < INBOX_MAX_FRAMES && this.#inboxBytes <= INBOX_MAX_BYTES) {
      inbox.push(data);
      return;
    }
    this.#inbox = null;
    this.#log.info(
      { conn: this.#conn, frames: inbox.length + 1, bytes: this.#inboxBytes },
      "closing a client that sent too much before its welcome",
    );
    const member = this.#member;
    if (!member) return; // not opened yet: the frame is only dropped (the runtimes open first)
    // No welcome and nothing else goes out; open() leaves the room when the join settles.
    member.detach();
    member.socket.close(CloseCode.PolicyViolation, "too many frames before the welcome");
  }

  /**
   * Charges a request to this connection's `kind` bucket (and, for
   * `message` and `read`, its address's). Over the limit it answers
   * `rate_limited` with `retryAfterMs` (with `cid` when given) and returns
   * false: drop the request. `silent`: no answer (typing).
   */
  #charge(kind: ChargeKind, cost: number, cid?: string, silent = false): boolean {
    const wait = this.#rate.charge(kind, cost);
    if (wait === 0) return true;
    if (!silent) this.#error("rate_limited", "too many requests; wait retryAfterMs and try again", cid, wait);
    return false;
  }

  /**
   * Answers an invalid frame, within the connection's `invalid` budget
   * (1000 at once, 100/s). Past it, `rate_limited` (with `retryAfterMs`)
   * says so, and every frame of the connection is dropped unread for that
   * long: a failed JSON.parse costs ~20 µs (the exception), so a flood of
   * bad frames must not be parsed one by one.
   */
  #invalid(code: ErrorCode, message: string, cid?: string): void {
    const wait = this.#rate.charge("invalid", 1);
    if (wait === 0) {
      this.#error(code, message, cid);
      return;
    }
    // At least a second: a short mute would let the next read in at once.
    const mute = Math.max(wait, INVALID_MUTE_MS);
    this.#mutedUntil = Date.now() + mute;
    this.#error("rate_limited", "too many invalid frames; every frame is dropped for retryAfterMs", cid, mute);
    this.#member?.socket.pause?.(mute);
  }

  /** Handles one frame from the client. */
  message(data: Inbound): void {
    if (this.#closed) return;
    if (this.#inbox) {
      this.#hold(this.#inbox, data);
      return;
    }
    const member = this.#member;
    // Not open: the join failed, or the client is being closed for not reading.
    if (!member?.open) return;
    this.#received++;
    if (this.#mutedUntil !== 0) {
      if (Date.now() < this.#mutedUntil) return;
      this.#mutedUntil = 0;
    }
    const { config } = this.deps;
    if (typeof data !== "string") {
      const size = data instanceof Blob ? data.size : data.byteLength;
      if (size > config.maxFrameBytes) {
        member.socket.close(CloseCode.MessageTooBig, "frame too large");
        return;
      }
      this.#invalid("unsupported_data", "binary frames are not supported; send JSON text");
      return;
    }
    // The runtimes that cannot cap frames themselves (Deno, Workers) rely on
    // this check; on Node and Bun the socket already closed with 1009.
    if (exceedsBytes(data, config.maxFrameBytes)) {
      member.socket.close(CloseCode.MessageTooBig, "frame too large");
      return;
    }
    // Not an object at all: refused without JSON.parse, whose exception is the costly part.
    if (notAnObject(data)) {
      this.#invalid("invalid_json", "frame must be a JSON object");
      return;
    }
    const parsed = parseClientFrame(data, this.init.mode, member.name === null, this.#limits);
    if (!parsed.ok) {
      this.#invalid(parsed.code, parsed.message, parsed.cid);
      return;
    }
    this.#handle(parsed.frame, member);
  }

  #handle(frame: ClientFrame, member: Member): void {
    const { hub, metrics } = this.deps;
    const { room } = this.init;
    switch (frame.type) {
      case "ping":
        if (!this.#charge("control", 1)) return;
        member.deliver('{"type":"pong"}');
        return;
      case "typing": {
        // Over the limit a typing notice is dropped without an answer: it is advisory.
        if (!this.#charge("control", 1, undefined, true)) return;
        const now = Date.now();
        if (now - this.#lastTyping < TYPING_INTERVAL_MS) return;
        this.#lastTyping = now;
        hub.typing(room, member);
        return;
      }
      case "history": {
        // Charged by what it may read: `limit` 500 costs ten times `limit` 50.
        if (!this.#charge("read", readCost(frame.limit))) return;
        // Paged, and answered in the order asked (src/paging.ts).
        if (!this.#replies?.history(frame.before, frame.limit)) {
          this.#error("rate_limited", "too many history requests waiting; wait for their answers", undefined, 1000);
        }
        return;
      }
      case "auth":
      case "delete":
      case "edit":
      case "ban":
      case "unban":
        this.#governance(frame);
        return;
      case "message": {
        if (!this.#charge("message", 1, frame.cid)) return;
        const user = member.name ?? frame.user ?? "";
        const draft =
          frame.cid === undefined ? { user, message: frame.message } : { user, message: frame.message, cid: frame.cid };
        hub.publish(room, member, draft).then(
          () => metrics.messageAccepted(),
          (error: unknown) => {
            this.#log.error({ conn: this.#conn, room, err: error }, "message not stored");
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

  /**
   * Token refresh and moderation (governance/moderation.ts). Each costs a
   * store read or a token check, so it is charged like a message.
   */
  #governance(frame: GovernanceFrame): void {
    if (!this.#charge("message", 1, frame.cid)) return;
    if (this.#gov) this.#gov.handle(frame);
    else refuseWithoutToken(this.#host(), frame);
  }

  /** What the governance of this connection may do with it. */
  #host(): GovernanceHost {
    const { room, mode, name } = this.init;
    return {
      room,
      mode,
      name,
      deliver: (text) => this.#member?.deliver(text),
      error: (code, message, cid) => this.#error(code, message, cid),
      close: (code, reason) => this.close(code, reason),
      identityChanged: (identity) => this.#member?.socket.persist?.("identity", encodeIdentity(identity)),
    };
  }

  #error(code: ErrorCode, message: string, cid?: string, retryAfterMs?: number): void {
    this.deps.metrics.errorSent(code);
    this.#logError(code, message, cid);
    this.#member?.deliver(serialize(errorFrame(code, message, cid, retryAfterMs)));
  }

  /**
   * The first few errors of a connection get a line each, as operators
   * expect; after that a client sending bad frames in a loop costs one
   * summary line a minute (and the count at close), not a line per frame.
   * The counter in /metrics still counts every one.
   */
  #logError(code: ErrorCode, reason: string, cid: string | undefined): void {
    if (this.#errorLines < ERROR_LINES_PER_CONNECTION) {
      this.#errorLines++;
      this.#log.info({ conn: this.#conn, code, cid, reason }, "error sent to client");
      if (this.#errorLines === ERROR_LINES_PER_CONNECTION) this.#errorSummaryAt = Date.now();
      return;
    }
    this.#errorsUnlogged++;
    const now = Date.now();
    if (now - this.#errorSummaryAt < ERROR_SUMMARY_MS) return;
    this.#log.info(
      { conn: this.#conn, errors: this.#errorsUnlogged, last: code },
      "more errors sent to client (not logged one by one)",
    );
    this.#errorsUnlogged = 0;
    this.#errorSummaryAt = now;
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
    this.#gov?.stop();
    if (this.#counted) {
      this.#counted = false;
      this.deps.addresses?.close(this.init.address ?? "unknown");
    }
    const member = this.#member;
    if (!member) return;
    member.detach();
    this.deps.hub.leave(this.init.room, member);
    this.deps.metrics.connectionClosed(this.init.mode);
    this.#log.info(
      {
        conn: this.#conn,
        room: this.init.room,
        code,
        frames: this.#received,
        ms: Date.now() - this.#openedAt,
        errorsNotLogged: this.#errorsUnlogged || undefined,
      },
      "connection closed",
    );
  }
}
