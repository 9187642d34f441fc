/**
 * The typed `chat.v1` client: one class for browsers, Node, Bun and Deno.
 *
 * It keeps a conversation going across network trouble: it reconnects by
 * itself (exponential backoff with jitter), resumes with `since` = the last
 * message id it saw (so nothing is missed), drops what it has already seen (so
 * nothing is duplicated), follows paged welcomes and history answers
 * (`more: true`), notices a dead connection with the protocol's app-level
 * ping, queues sends while offline, refreshes its token before it expires
 * (through the app's `getToken`, as Centrifugo's SDK does), and stops for good
 * when the server bans it (close 4003) instead of knocking again.
 *
 * Frames, types and rules come from the one protocol module, which builds
 * its validation schemas lazily, so the browser bundle leaves zod out.
 */
import {
  type ChatMessage,
  type ErrorCode,
  type ErrorFrame,
  type HistoryFrame,
  type PresenceFrame,
  SUBPROTOCOL,
  type WelcomeFrame,
} from "../protocol.ts";

// Function types declared through a method are checked bivariantly, so both
// the DOM WebSocket and `ws` (whose event types differ) fit this interface.
type Handler<E> = { bivarianceHack(event: E): void }["bivarianceHack"];

/** The part of a WebSocket the client uses: the DOM one, `ws`, Bun's and Deno's all have it. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
}

/** A WebSocket constructor: `globalThis.WebSocket`, or `ws`'s class on Node 20. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Why a send, a request or the client itself failed. */
export type ChatErrorCode =
  | ErrorCode
  /** The server's codes for tokens and moderation. */
  | "token_expired"
  | "invalid_token"
  | "forbidden"
  | "not_found"
  /** The client was closed (by the app, or for good by the server: see {@link ChatEvents.closed}). */
  | "closed"
  /** The offline queue is full. */
  | "queue_full"
  /** No answer in time. */
  | "timeout"
  /** The request needs an open connection, or the connection was lost before its answer. */
  | "offline";

/** An error with the server's (or the client's) code. */
export class ChatError extends Error {
  constructor(
    readonly code: ChatErrorCode,
    message: string,
    /** With `rate_limited`: how long to wait before the same request succeeds. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "ChatError";
  }
}

/** Connection states, in the order a connection goes through them. */
export type ChatStatus = "connecting" | "open" | "reconnecting" | "closed";

/** Why the server ended the conversation for good (the client does not reconnect). */
export type ClosedReason =
  /** Close 4003: a moderator banned this user from the room. */
  | "banned"
  /** Close 4001 with a fixed `token` and no `getToken` to fetch a fresh one. */
  | "token_expired"
  /** `getToken` answered no token: the app says this user may not chat. */
  | "unauthorized";

/** A message as the client hands it out: `edited` (ms) once its author changed it. */
export type Message = ChatMessage & { edited?: number };

/** An edit as the server announces it: the message's new text and when it changed (ms). */
export interface Edit {
  room: string;
  id: string;
  message: string;
  edited: number;
}

/** What the client tells the app. */
export interface ChatEvents {
  /** A message not seen before, in id order: from the welcome's history, a resume, or live. */
  message: Message;
  /** Every change of connection state; `retryInMs` is set while waiting to reconnect. */
  status: { status: ChatStatus; attempt: number; retryInMs?: number };
  /**
   * A welcome arrived. `resumed` when it followed a disconnect; `role` is
   * `"moderator"` when this connection may delete others' messages and ban.
   * The history it brings follows as `message` events, then `caughtUp`.
   */
  open: {
    users: string[];
    user: string | null;
    role: "moderator" | null;
    resumed: boolean;
    recovered: boolean | undefined;
  };
  /**
   * Every message of the welcome (all its pages, for a long resume) has been
   * delivered: the connection is usable and queued sends go out now.
   * `count` is how many new messages the welcome brought.
   */
  caughtUp: { resumed: boolean; count: number };
  /**
   * The server could not give back everything after the last message seen
   * (`recovered: false`): some messages were missed and will not come.
   */
  gap: { since: string | null };
  /** Who is online changed. `joined`/`left` list the names (the server merges quick changes). */
  presence: { users: string[]; joined: string[]; left: string[] };
  /** A message was changed by its author (any connection, this one included). */
  edited: Edit;
  /** A message was removed by its author or a moderator. */
  deleted: { room: string; id: string };
  /** Everything older than what was seen is loaded: {@link ChatClient.hasOlder} turned false. */
  beginning: Record<string, never>;
  /** Someone else is typing. */
  typing: { user: string };
  /** The token was renewed on the open connection; `exp` in seconds, null when it has none. */
  auth: { exp: number | null };
  /**
   * The server ended the conversation and the client will not reconnect
   * (status turns `closed`): show `reason` to the user.
   */
  closed: { reason: ClosedReason; code: number; message: string };
  /** An error frame that answers no pending send or request (e.g. rate limits on typing). */
  error: ErrorFrame & { retryAfterMs?: number };
}

type Listener<K extends keyof ChatEvents> = (event: ChatEvents[K]) => void;

/** Reconnect timing. */
export interface BackoffOptions {
  /** First delay. @default 500 */
  initialMs?: number;
  /** Longest delay. @default 10000 */
  maxMs?: number;
  /** Growth per failed attempt. @default 2 */
  factor?: number;
  /** Fraction of the delay that is random (0: none, 1: "full jitter"). @default 0.5 */
  jitter?: number;
}

/** Options for {@link ChatClient}. */
export interface ChatClientOptions {
  /** The WebSocket endpoint, e.g. `ws://host:8888/websocket`. */
  url: string | URL;
  /** @default "lobby" */
  room?: string;
  /** Display name (`?user=`); ignored by the server when a token names the user. */
  user?: string;
  /**
   * JWT for servers with AUTH_SECRET (`?token=`). A browser page on the
   * chat's own origin can leave it out: the browser sends the `token` cookie.
   */
  token?: string;
  /**
   * Fetches a fresh JWT from the app's backend: called before connecting when
   * no `token` is given, ahead of the token's `exp` (the new token is sent on
   * the open connection as `{"type":"auth"}`), and after the server closed
   * the connection because the token expired (4001). Resolve with `null` (or
   * "") when this user may no longer chat: the client closes with reason
   * `unauthorized`. A rejection counts as a failed connection attempt (retried
   * with backoff).
   */
  getToken?: () => Promise<string | null>;
  /** Refresh the token this long before its `exp` (at most half its remaining life). @default 30000 */
  refreshBeforeMs?: number;
  /** @default globalThis.WebSocket (pass `ws`'s class on Node 20) */
  WebSocket?: WebSocketConstructor;
  /** Reconnect backoff. */
  backoff?: BackoffOptions;
  /** Ping the server this often while open. @default 20000 */
  pingIntervalMs?: number;
  /** Without any frame for this long after a ping, the connection is taken as dead. @default 10000 */
  pongTimeoutMs?: number;
  /** A handshake plus welcome that takes longer than this is abandoned and retried. @default 10000 */
  connectTimeoutMs?: number;
  /** Most sends kept while offline; more reject with `queue_full`. @default 100 */
  maxQueue?: number;
  /** Send at most one typing notice per this interval. @default 2000 */
  typingIntervalMs?: number;
  /** How long `loadOlder`, `edit`, `delete`, `ban` and `unban` wait for their answer. @default 10000 */
  requestTimeoutMs?: number;
  /** Start connecting in the constructor. @default true */
  autoConnect?: boolean;
  /** Random numbers for jitter (tests make it deterministic). @default Math.random */
  random?: () => number;
}

interface PendingSend {
  cid: string;
  text: string;
  resolve: (m: Message) => void;
  reject: (e: ChatError) => void;
}

/** A request answered by one frame that echoes its `cid` (or, for edits and deletes, names its id). */
interface PendingRequest {
  kind: "edit" | "delete" | "ban" | "unban" | "auth";
  /** The message id (edit, delete) or the user (ban, unban). */
  target: string;
  resolve: (value: unknown) => void;
  reject: (e: ChatError) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface PendingHistory {
  cid: string;
  before: string;
  limit: number;
  /** The one-message look behind the first welcome: not the app's, moves no cursor. */
  probe: boolean;
  /** Pages so far, when the server pages its answer (`more: true`). */
  messages: ChatMessage[];
  resolve: (m: ChatMessage[]) => void;
  reject: (e: ChatError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** The welcome being received: its history may come in several pages. */
interface CatchUp {
  resumed: boolean;
  since: string | null;
  count: number;
  /** Own messages after `since` in the resume: they settle sends whose echo was lost. */
  own: Message[];
  /**
   * Live messages that came before the last page (the server sends none;
   * a server that did would otherwise move the cursor past pages not yet
   * delivered, which would then be dropped as seen).
   */
  held: Array<Message & { cid?: string }>;
}

// Frames beyond what every server sends: paging, roles, moderation, token
// refresh. Read defensively: a field that is absent means the feature is.
type Welcome = WelcomeFrame & { more?: boolean; role?: "moderator" };
type History = HistoryFrame & { more?: boolean; cid?: string };
type Presence = Omit<PresenceFrame, "joined" | "left"> & { joined?: string | string[]; left?: string | string[] };
type ServerError = Omit<ErrorFrame, "code"> & { code: ChatErrorCode; retryAfterMs?: number };
type Incoming =
  | Welcome
  | (Message & { cid?: string })
  | Presence
  | History
  | ServerError
  | { type: "typing"; user: string }
  | { type: "pong" }
  | { type: "edited"; room: string; id: string; message: string; edited: number; cid?: string }
  | { type: "deleted"; room: string; id: string; cid?: string }
  | { type: "auth"; exp: number | null; cid?: string }
  | { type: "banned"; room: string; user: string; until: number | null; cid?: string }
  | { type: "unbanned"; room: string; user: string; cid?: string };

/** Close codes the server uses to end a conversation for good, or to ask for a new token. */
const SERVER_CLOSE = { TokenExpired: 4001, Banned: 4003 } as const;
/** Close codes for the client's own closes, out of the server's way (4000-4099). */
const CLIENT_CLOSE = { Normal: 1000, DeadConnection: 4900, ConnectTimeout: 4901 } as const;
const OPEN = 1;
/** The server caps a history page at 500; asking for more would make a full page look short. */
const MAX_HISTORY_LIMIT = 500;
/** A token refresh never runs more often than this, whatever `exp` says (a clock far off, a token already expired). */
const MIN_REFRESH_MS = 1000;

/** The `exp` claim (seconds) of a JWT, read without verifying it (the server verifies); null if none. */
function tokenExp(token: string): number | null {
  const payload = token.split(".")[1];
  if (!payload) return null;
  try {
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

function asList(names: string | string[] | undefined): string[] {
  if (names === undefined) return [];
  return typeof names === "string" ? [names] : names;
}

/**
 * A chat connection to one room that survives disconnects.
 *
 * ```ts
 * const chat = new ChatClient({ url: "ws://localhost:8888/websocket", room: "lobby", user: "ada" });
 * chat.on("message", (m) => console.log(`${m.user}: ${m.message}`));
 * await chat.send("hello"); // resolves with the stored message (id, ts)
 * ```
 */
export class ChatClient {
  readonly room: string;
  readonly #opts: ChatClientOptions;
  readonly #WebSocket: WebSocketConstructor;
  readonly #listeners = new Map<keyof ChatEvents, Set<Listener<keyof ChatEvents>>>();
  readonly #iterators = new Set<(m: Message | null) => void>();

  #socket: WebSocketLike | null = null;
  #status: ChatStatus = "closed";
  #attempt = 0;
  #everOpened = false;
  #closedByApp = false;
  /** Set once the server ended it for good (ban, expired fixed token): no reconnect. */
  #closedReason: ClosedReason | null = null;
  /** True between the welcome's last page and the connection's end: sends go straight out. */
  #ready = false;
  #catchUp: CatchUp | null = null;
  /** Called once the welcome's last page is in, or the connection is gone. */
  #afterCatchUp: Array<() => void> = [];
  #user: string | null = null;
  #role: "moderator" | null = null;
  #users: string[] = [];
  #lastId: string | null = null;
  #oldestId: string | null = null;
  #hasOlder = true;
  #nextCid = 0;
  readonly #cidPrefix: string;
  #token: string | null;
  /** The server refused the token (4001): fetch another before the next handshake. */
  #tokenStale = false;
  #fetchingToken = false;
  /** Sent on the current connection, waiting for the echo. */
  #inFlight: PendingSend[] = [];
  /** Not sent yet: waiting for a connection. */
  #queue: PendingSend[] = [];
  readonly #requests = new Map<string, PendingRequest>();
  #history: PendingHistory | null = null;
  #probe: Promise<void> | null = null;
  #lastTypingAt = Number.NEGATIVE_INFINITY;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  #pingTimer: ReturnType<typeof setInterval> | null = null;
  #deadTimer: ReturnType<typeof setTimeout> | null = null;
  #connectTimer: ReturnType<typeof setTimeout> | null = null;
  #refreshTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(options: ChatClientOptions) {
    this.#opts = options;
    this.room = options.room ?? "lobby";
    const ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ctor) throw new TypeError("no WebSocket here: pass the WebSocket option (e.g. the `ws` package on Node 20)");
    this.#WebSocket = ctor;
    this.#user = options.user ?? null;
    this.#token = options.token ?? null;
    this.#cidPrefix = Math.floor((options.random ?? Math.random)() * 36 ** 6).toString(36);
    if (options.autoConnect !== false) this.connect();
  }

  /** The connection state. */
  get status(): ChatStatus {
    return this.#status;
  }

  /** Why the server ended the conversation for good, or null while it has not. */
  get closedReason(): ClosedReason | null {
    return this.#closedReason;
  }

  /** This connection's name as the server knows it (from the welcome), else the one asked for. */
  get user(): string | null {
    return this.#user;
  }

  /** `"moderator"` when the welcome said so: this connection may delete any message and ban. */
  get role(): "moderator" | null {
    return this.#role;
  }

  /** Who is online in the room, as of the last welcome or presence frame. */
  get users(): readonly string[] {
    return this.#users;
  }

  /** The id of the newest message seen: where a resume starts. */
  get lastId(): string | null {
    return this.#lastId;
  }

  /** False once `loadOlder` found the start of the room's history. */
  get hasOlder(): boolean {
    return this.#hasOlder && this.#oldestId !== null;
  }

  /** Sends waiting for a connection. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof ChatEvents>(type: K, listener: Listener<K>): () => void {
    let set = this.#listeners.get(type);
    if (!set) {
      set = new Set();
      this.#listeners.set(type, set);
    }
    set.add(listener as Listener<keyof ChatEvents>);
    return () => set.delete(listener as Listener<keyof ChatEvents>);
  }

  #emit<K extends keyof ChatEvents>(type: K, event: ChatEvents[K]): void {
    for (const listener of this.#listeners.get(type) ?? []) {
      try {
        (listener as Listener<K>)(event);
      } catch (error) {
        // One app listener's bug must not stop the protocol handling.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  /**
   * Messages as an async iterator: every `message` event from the moment it
   * is created until the client is closed. Created before the connection
   * opens, it also yields the welcome's recent history; created later, only
   * what comes after. Each iterator has its own unbounded buffer: read it.
   */
  messages(): AsyncIterableIterator<Message> {
    const buffer: Message[] = [];
    let ended = this.#closedByApp || this.#closedReason !== null;
    let wake: (() => void) | null = null;
    const push = (m: Message | null) => {
      if (m === null) ended = true;
      else buffer.push(m);
      wake?.();
      wake = null;
    };
    this.#iterators.add(push);
    const iterators = this.#iterators;
    const iterator: AsyncIterableIterator<Message> = {
      async next(): Promise<IteratorResult<Message>> {
        while (buffer.length === 0 && !ended) await new Promise<void>((r) => (wake = r));
        const m = buffer.shift();
        if (m !== undefined) return { value: m, done: false };
        iterators.delete(push);
        return { value: undefined, done: true };
      },
      async return(): Promise<IteratorResult<Message>> {
        iterators.delete(push);
        ended = true;
        buffer.length = 0;
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  /** Opens the connection (done by the constructor unless `autoConnect: false`). */
  connect(): void {
    if (this.#socket || this.#retryTimer || this.#fetchingToken || this.#closedReason) return;
    this.#closedByApp = false;
    this.#open();
  }

  /**
   * Skips the rest of the backoff wait and tries now (e.g. when the browser
   * says it is online again, or the user asks). Does nothing unless waiting.
   */
  retryNow(): void {
    if (!this.#retryTimer || this.#closedByApp) return;
    clearTimeout(this.#retryTimer);
    this.#open();
  }

  /**
   * Checks the connection now instead of at the next ping: a socket that
   * looks open but no longer answers (a laptop back from sleep, a phone
   * that changed networks) is replaced within `pongTimeoutMs`.
   */
  checkConnection(): void {
    if (this.#socket) this.#ping(this.#socket);
  }

  /**
   * Sends a message. Resolves with the stored message (its id and server
   * time) when the server echoes it, rejects with a {@link ChatError} whose
   * `code` is the server's (`message_too_long`, `rate_limited`, ...). While
   * offline the send waits in a bounded queue and goes out once, in order,
   * after the next welcome.
   *
   * Over the rate limit the send rejects with `rate_limited` and
   * `retryAfterMs`; it is not retried by itself, because a later send that
   * gets through would overtake it. Wait that long and send again.
   */
  send(text: string): Promise<Message> {
    if (this.#closedByApp || this.#closedReason) return Promise.reject(this.#closedError());
    return new Promise<Message>((resolve, reject) => {
      const pending: PendingSend = { cid: this.#cid(), text, resolve, reject };
      // Receivers clear "is typing" when the message lands; the next keystroke may say so again.
      this.#lastTypingAt = Number.NEGATIVE_INFINITY;
      if (this.#canSend()) {
        this.#transmit(pending);
      } else if (this.#queue.length >= (this.#opts.maxQueue ?? 100)) {
        reject(new ChatError("queue_full", "too many messages waiting for the connection"));
      } else {
        this.#queue.push(pending);
      }
    });
  }

  /**
   * Replaces the text of one of this user's messages. Resolves with the
   * edit as stored (new text, `edited` time); every member then gets an
   * `edited` event. Rejects with `forbidden` (not the author, or the server
   * has no auth), `not_found`, or the usual validation codes.
   */
  edit(id: string, text: string): Promise<Edit> {
    return this.#request("edit", id, { type: "edit", id, message: text }) as Promise<Edit>;
  }

  /**
   * Removes a message (the author's own, or any as a moderator). Resolves
   * once the server removed it; every member then gets a `deleted` event.
   * Rejects with `forbidden` or `not_found`.
   */
  delete(id: string): Promise<void> {
    return this.#request("delete", id, { type: "delete", id }) as Promise<void>;
  }

  /**
   * Bans `user` from this room (moderators only): their connections are
   * closed with 4003 and they cannot rejoin for `seconds` (absent or 0:
   * until {@link unban}). Resolves with the ban's end (ms since the epoch,
   * null for "until lifted"). Rejects with `forbidden` when not a moderator.
   */
  ban(user: string, seconds?: number): Promise<{ until: number | null }> {
    const frame = seconds === undefined ? { type: "ban", user } : { type: "ban", user, seconds };
    return this.#request("ban", user, frame) as Promise<{ until: number | null }>;
  }

  /** Lifts a ban (moderators only). */
  unban(user: string): Promise<void> {
    return this.#request("unban", user, { type: "unban", user }) as Promise<void>;
  }

  #request(kind: PendingRequest["kind"], target: string, frame: Record<string, unknown>): Promise<unknown> {
    if (this.#closedByApp || this.#closedReason) return Promise.reject(this.#closedError());
    if (!this.#canSend()) return Promise.reject(new ChatError("offline", "not connected"));
    return new Promise((resolve, reject) => {
      const cid = this.#cid();
      const timer = setTimeout(() => {
        this.#requests.delete(cid);
        reject(new ChatError("timeout", `no answer to ${kind} in time`));
      }, this.#opts.requestTimeoutMs ?? 10_000);
      this.#requests.set(cid, { kind, target, resolve, reject, timer });
      this.#raw({ ...frame, cid });
    });
  }

  /** Settles the request with this cid, or else the oldest of `kind` for `target` (servers that answer by broadcast). */
  #answer(kind: PendingRequest["kind"], cid: string | undefined, target: string | null, value: unknown): void {
    let key: string | undefined;
    if (cid !== undefined && this.#requests.get(cid)?.kind === kind) key = cid;
    else {
      for (const [k, r] of this.#requests) {
        if (r.kind === kind && (target === null || r.target === target)) {
          key = k;
          break;
        }
      }
    }
    const request = key === undefined ? undefined : this.#requests.get(key);
    if (!request || key === undefined) return;
    this.#requests.delete(key);
    clearTimeout(request.timer);
    request.resolve(value);
  }

  /**
   * Tells the others this user is typing. Call it on every keystroke: it
   * sends at most one notice per `typingIntervalMs`, and none while offline.
   */
  typing(): void {
    const now = Date.now();
    if (!this.#canSend() || now - this.#lastTypingAt < (this.#opts.typingIntervalMs ?? 2000)) return;
    this.#lastTypingAt = now;
    this.#raw({ type: "typing" });
  }

  /**
   * Fetches up to `limit` messages older than the oldest one seen, oldest
   * first (they are not emitted as `message` events: they are the past).
   * Resolves with [] when there is nothing older. A server that pages a
   * large answer (`more: true`) is followed to its last page.
   */
  async loadOlder(limit = 50): Promise<Message[]> {
    // A welcome still arriving in pages: its end is where "older" starts.
    if (this.#catchUp) await new Promise<void>((resolve) => this.#afterCatchUp.push(resolve));
    if (this.#probe) await this.#probe;
    const n = Math.max(1, Math.min(MAX_HISTORY_LIMIT, Math.floor(limit)));
    const before = this.#oldestId;
    if (before === null || !this.#hasOlder) return [];
    if (!this.#canSend()) throw new ChatError("offline", "not connected");
    if (this.#history) throw new ChatError("invalid_frame", "a history request is already running");
    return this.#requestHistory(before, n, false);
  }

  #requestHistory(before: string, limit: number, probe: boolean): Promise<ChatMessage[]> {
    return new Promise<ChatMessage[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#history = null;
        reject(new ChatError("timeout", "no history answer in time"));
      }, this.#opts.requestTimeoutMs ?? 10_000);
      const cid = this.#cid();
      this.#history = { cid, before, limit, probe, messages: [], resolve, reject, timer };
      this.#raw({ type: "history", before, limit, cid });
    });
  }

  #noOlder(): void {
    if (!this.#hasOlder) return;
    this.#hasOlder = false;
    this.#emit("beginning", {});
  }

  /** Closes the connection for good: pending sends and requests reject with `closed`, iterators end. */
  close(): void {
    this.#closedByApp = true;
    this.#end(new ChatError("closed", "the client is closed"));
  }

  /** Ends everything: no socket, no timers, every pending promise rejected, iterators done. */
  #end(error: ChatError): void {
    this.#clearTimers();
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    const socket = this.#socket;
    this.#socket = null;
    this.#ready = false;
    this.#catchUp = null;
    this.#wakeAfterCatchUp();
    if (socket) {
      this.#detach(socket);
      try {
        socket.close(CLIENT_CLOSE.Normal, "client closed");
      } catch {
        // already closing
      }
    }
    for (const p of [...this.#inFlight, ...this.#queue]) p.reject(error);
    this.#inFlight = [];
    this.#queue = [];
    this.#failRequests(error);
    for (const push of this.#iterators) push(null);
    this.#iterators.clear();
    this.#setStatus("closed");
  }

  #closedError(): ChatError {
    const reason = this.#closedReason;
    return new ChatError("closed", reason ? `the server closed the chat: ${reason}` : "the client is closed");
  }

  /** The server ended it (ban, no token to be had): say why, once, and stay closed. */
  #closeFor(reason: ClosedReason, code: number, message: string): void {
    if (this.#closedReason || this.#closedByApp) return;
    this.#closedReason = reason;
    this.#end(new ChatError("closed", `the server closed the chat: ${reason}`));
    this.#emit("closed", { reason, code, message });
  }

  #cid(): string {
    return `${this.#cidPrefix}-${++this.#nextCid}`;
  }

  #canSend(): boolean {
    return this.#ready && this.#socket?.readyState === OPEN;
  }

  #raw(frame: object): void {
    this.#socket?.send(JSON.stringify(frame));
  }

  #transmit(p: PendingSend): void {
    this.#inFlight.push(p);
    this.#raw({ type: "message", message: p.text, cid: p.cid });
  }

  #url(): string {
    const url = new URL(String(this.#opts.url));
    url.searchParams.set("room", this.room);
    if (this.#opts.user) url.searchParams.set("user", this.#opts.user);
    if (this.#token) url.searchParams.set("token", this.#token);
    if (this.#lastId) url.searchParams.set("since", this.#lastId);
    return url.toString();
  }

  #setStatus(status: ChatStatus, retryInMs?: number): void {
    this.#status = status;
    this.#emit(
      "status",
      retryInMs === undefined ? { status, attempt: this.#attempt } : { status, attempt: this.#attempt, retryInMs },
    );
  }

  #open(): void {
    this.#retryTimer = null;
    this.#ready = false;
    this.#setStatus(this.#everOpened ? "reconnecting" : "connecting");
    const getToken = this.#opts.getToken;
    if (getToken && (this.#token === null || this.#tokenStale)) {
      this.#fetchingToken = true;
      getToken().then(
        (token) => {
          this.#fetchingToken = false;
          if (this.#closedByApp || this.#closedReason) return;
          if (!token) {
            this.#closeFor("unauthorized", SERVER_CLOSE.TokenExpired, "no token: the app's getToken gave none");
            return;
          }
          this.#token = token;
          this.#tokenStale = false;
          this.#dial();
        },
        () => {
          this.#fetchingToken = false;
          if (!this.#closedByApp && !this.#closedReason) this.#scheduleReconnect();
        },
      );
      return;
    }
    this.#dial();
  }

  #dial(): void {
    let socket: WebSocketLike;
    try {
      socket = new this.#WebSocket(this.#url(), SUBPROTOCOL);
    } catch {
      this.#scheduleReconnect();
      return;
    }
    this.#socket = socket;
    this.#connectTimer = setTimeout(
      () => this.#drop(socket, CLIENT_CLOSE.ConnectTimeout, "connect timeout"),
      this.#opts.connectTimeoutMs ?? 10_000,
    );
    socket.onmessage = (event) => {
      if (this.#socket !== socket) return;
      this.#alive();
      if (typeof event.data !== "string") return;
      let frame: Incoming;
      try {
        frame = JSON.parse(event.data) as Incoming;
      } catch {
        return; // not ours to judge: the server only sends JSON
      }
      this.#frame(frame);
    };
    socket.onclose = (event) => {
      if (this.#socket === socket) this.#closedByServer(event.code, event.reason);
    };
    // An error is always followed by a close; the close does the work.
    socket.onerror = () => {};
  }

  #closedByServer(code: number, reason: string): void {
    if (code === SERVER_CLOSE.Banned) {
      this.#closeFor("banned", code, reason || "banned");
      return;
    }
    if (code === SERVER_CLOSE.TokenExpired) {
      if (this.#opts.getToken) {
        // A new token, then at once: the server ended a working connection, nothing to back off from.
        this.#tokenStale = true;
        this.#attempt = 0;
      } else if (this.#opts.token !== undefined) {
        this.#closeFor("token_expired", code, reason || "token expired");
        return;
      }
      // No token of ours: the browser's cookie is the token, and the app's backend may have renewed it.
    }
    this.#lost();
  }

  #detach(socket: WebSocketLike): void {
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    // Keep an error handler: `ws` throws on an unhandled error event.
    socket.onerror = () => {};
  }

  /** Gives up on a socket that is not dead by its own account (no pong, slow handshake). */
  #drop(socket: WebSocketLike, code: number, reason: string): void {
    if (this.#socket !== socket) return;
    this.#detach(socket);
    try {
      socket.close(code, reason);
    } catch {
      // a socket still connecting may refuse a close code on some runtimes
    }
    this.#lost();
  }

  #lost(): void {
    this.#socket = null;
    this.#ready = false;
    this.#catchUp = null;
    this.#wakeAfterCatchUp(); // they find no connection and say so
    this.#clearTimers();
    // The outcome of these is unknown: a resume shows sends, not edits or bans.
    this.#failRequests(new ChatError("offline", "the connection was lost before the answer"));
    if (this.#closedByApp) return;
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    const b = this.#opts.backoff ?? {};
    const initial = b.initialMs ?? 500;
    const max = b.maxMs ?? 10_000;
    const factor = b.factor ?? 2;
    const jitter = Math.min(1, Math.max(0, b.jitter ?? 0.5));
    const base = Math.min(max, initial * factor ** this.#attempt);
    const delay = Math.round(base * (1 - jitter * (this.#opts.random ?? Math.random)()));
    this.#attempt++;
    this.#setStatus(this.#everOpened ? "reconnecting" : "connecting", delay);
    this.#retryTimer = setTimeout(() => this.#open(), delay);
  }

  #clearTimers(): void {
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    if (this.#deadTimer) clearTimeout(this.#deadTimer);
    if (this.#connectTimer) clearTimeout(this.#connectTimer);
    if (this.#refreshTimer) clearTimeout(this.#refreshTimer);
    this.#pingTimer = this.#deadTimer = this.#connectTimer = this.#refreshTimer = null;
  }

  /** Any frame proves the connection is alive. */
  #alive(): void {
    if (this.#deadTimer) clearTimeout(this.#deadTimer);
    this.#deadTimer = null;
  }

  #startPing(socket: WebSocketLike): void {
    const interval = this.#opts.pingIntervalMs ?? 20_000;
    if (interval <= 0) return;
    this.#pingTimer = setInterval(() => this.#ping(socket), interval);
  }

  /** Pings; without any frame back within pongTimeoutMs the connection is dropped and replaced. */
  #ping(socket: WebSocketLike): void {
    if (this.#socket !== socket || this.#deadTimer || !this.#ready) return;
    this.#raw({ type: "ping" });
    this.#deadTimer = setTimeout(
      () => this.#drop(socket, CLIENT_CLOSE.DeadConnection, "no pong"),
      this.#opts.pongTimeoutMs ?? 10_000,
    );
  }

  /** Schedules the next token refresh ahead of `exp` (seconds), when the app can give one. */
  #scheduleRefresh(exp: number | null): void {
    if (this.#refreshTimer) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (exp === null || !this.#opts.getToken || !this.#socket) return;
    const left = exp * 1000 - Date.now();
    const ahead = Math.min(this.#opts.refreshBeforeMs ?? 30_000, left / 2);
    this.#refreshTimer = setTimeout(() => void this.#refresh(), Math.max(MIN_REFRESH_MS, left - ahead));
  }

  /** Fetches a token and sends it on the open connection; a refused one leaves the old one to expire. */
  async #refresh(): Promise<void> {
    this.#refreshTimer = null;
    const getToken = this.#opts.getToken;
    const socket = this.#socket;
    if (!getToken || !socket) return;
    let token: string | null;
    try {
      token = await getToken();
    } catch {
      // The backend is unreachable right now: try again shortly; the server closes with 4001 at expiry if it stays so.
      if (this.#socket === socket) this.#refreshTimer = setTimeout(() => void this.#refresh(), 5 * MIN_REFRESH_MS);
      return;
    }
    if (this.#socket !== socket || !this.#ready) return;
    if (!token) {
      this.#closeFor("unauthorized", SERVER_CLOSE.TokenExpired, "no token: the app's getToken gave none");
      return;
    }
    try {
      const answer = (await this.#request("auth", "", { type: "auth", token })) as { exp: number | null };
      this.#token = token;
      this.#scheduleRefresh(answer.exp);
      this.#emit("auth", { exp: answer.exp });
    } catch (error) {
      // invalid_token, rate_limited, a lost connection: the old token holds until its exp, then 4001 fetches anew.
      if (error instanceof ChatError && error.code !== "offline" && error.code !== "closed") {
        this.#emit("error", { type: "error", code: error.code as ErrorCode, message: error.message });
      }
    }
  }

  #frame(frame: Incoming): void {
    switch (frame.type) {
      case "welcome":
        this.#welcome(frame);
        return;
      case "message": {
        if (this.#catchUp) {
          this.#catchUp.held.push(frame as Message & { cid?: string });
          return;
        }
        const { cid, ...message } = frame as Message & { cid?: string };
        this.#deliver(message);
        if (cid !== undefined) this.#settle(cid, (p) => p.resolve(message));
        return;
      }
      case "presence": {
        const p = frame as Presence;
        this.#users = p.users;
        this.#emit("presence", { users: p.users, joined: asList(p.joined), left: asList(p.left) });
        return;
      }
      case "typing":
        if (frame.user !== this.#user) this.#emit("typing", { user: frame.user });
        return;
      case "history":
        this.#historyPage(frame as History);
        return;
      case "edited": {
        const edit: Edit = { room: frame.room, id: frame.id, message: frame.message, edited: frame.edited };
        this.#answer("edit", frame.cid, frame.id, edit);
        this.#emit("edited", edit);
        return;
      }
      case "deleted":
        this.#answer("delete", frame.cid, frame.id, undefined);
        this.#emit("deleted", { room: frame.room, id: frame.id });
        return;
      case "auth":
        this.#answer("auth", frame.cid, null, { exp: frame.exp });
        return;
      case "banned":
        this.#answer("ban", frame.cid, frame.user, { until: frame.until ?? null });
        return;
      case "unbanned":
        this.#answer("unban", frame.cid, frame.user, undefined);
        return;
      case "pong":
        return;
      case "error":
        this.#error(frame as ServerError);
        return;
    }
  }

  #error(frame: ServerError): void {
    const error = new ChatError(frame.code, frame.message, frame.retryAfterMs);
    const cid = frame.cid;
    if (cid !== undefined) {
      if (this.#settle(cid, (p) => p.reject(error))) return;
      const request = this.#requests.get(cid);
      if (request) {
        this.#requests.delete(cid);
        clearTimeout(request.timer);
        request.reject(error);
        return;
      }
      if (this.#history?.cid === cid) {
        this.#failHistory(error);
        return;
      }
    } else if (this.#history && frame.code !== "token_expired") {
      // The server answers a refused `history` frame without its cid (this
      // one's rate limit included): with a request waiting, the error is its
      // answer. The client's only other uncorrelated frame is a rare ping.
      this.#failHistory(error);
      return;
    }
    if (frame.code === "token_expired") this.#tokenStale = this.#opts.getToken !== undefined;
    this.#emit("error", frame as ErrorFrame & { retryAfterMs?: number });
  }

  #settle(cid: string, fn: (p: PendingSend) => void): boolean {
    const i = this.#inFlight.findIndex((p) => p.cid === cid);
    const pending = this.#inFlight[i];
    if (!pending) return false;
    this.#inFlight.splice(i, 1);
    fn(pending);
    return true;
  }

  /** Emits a message once: ids of a room grow as plain strings, so anything at or below the last one was seen. */
  #deliver(m: Message): boolean {
    if (this.#socket === null) return false; // closed by a listener meanwhile
    if (this.#lastId !== null && m.id <= this.#lastId) return false;
    this.#lastId = m.id;
    if (this.#oldestId === null) this.#oldestId = m.id;
    const catchUp = this.#catchUp;
    if (catchUp) {
      catchUp.count++;
      if (catchUp.since !== null && m.user === this.#user) catchUp.own.push(m);
    }
    this.#emit("message", m);
    for (const push of this.#iterators) push(m);
    return true;
  }

  #welcome(w: Welcome): void {
    if (this.#connectTimer) clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    const socket = this.#socket;
    if (!socket) return;
    const resumed = this.#everOpened;
    this.#everOpened = true;
    this.#attempt = 0;
    this.#user = w.user ?? this.#user;
    this.#role = w.role === "moderator" ? "moderator" : null;
    this.#users = w.users;
    this.#catchUp = { resumed, since: this.#lastId, count: 0, own: [], held: [] };
    this.#setStatus("open");
    this.#emit("open", { users: w.users, user: w.user, role: this.#role, resumed, recovered: w.recovered });
    if (this.#socket !== socket) return; // a listener closed the client
    if (w.recovered === false) this.#emit("gap", { since: this.#lastId });
    const first = w.history[0];
    // A room whose first welcome is empty has no past to page through.
    if (!resumed && !first && !w.more) this.#noOlder();
    if (first && (this.#oldestId === null || first.id < this.#oldestId)) this.#oldestId = first.id;
    for (const m of w.history) this.#deliver(m);
    this.#startPing(socket);
    if (this.#opts.getToken && this.#token) this.#scheduleRefresh(tokenExp(this.#token));
    if (!w.more) this.#caughtUp();
  }

  /** A history frame: the next page of the welcome, or (part of) the answer to a request. */
  #historyPage(frame: History): void {
    if (this.#catchUp) {
      for (const m of frame.messages) this.#deliver(m);
      if (!frame.more) this.#caughtUp();
      return;
    }
    const h = this.#history;
    if (!h) return;
    if (frame.cid !== undefined ? frame.cid !== h.cid : frame.before !== undefined && frame.before !== h.before) return;
    h.messages.push(...frame.messages);
    if (frame.more) return;
    clearTimeout(h.timer);
    this.#history = null;
    const messages = h.messages;
    if (!h.probe) {
      const first = messages[0];
      if (first && this.#oldestId !== null && first.id < this.#oldestId) this.#oldestId = first.id;
      if (messages.length < h.limit) this.#noOlder();
    }
    h.resolve(messages);
  }

  /** The welcome's whole history is in: settle or resend what was on the wire, send the queue. */
  #caughtUp(): void {
    const catchUp = this.#catchUp;
    if (!catchUp) return;
    this.#catchUp = null;
    this.#ready = true;
    for (const frame of catchUp.held) this.#frame(frame);

    // Sends that were on the wire when the connection dropped: the resume's
    // history shows whether the server stored them (the echo's cid is not
    // stored, so match by author and text, each stored message once).
    const unsettled = this.#inFlight;
    this.#inFlight = [];
    const candidates = catchUp.own;
    const resend: PendingSend[] = [];
    for (const p of unsettled) {
      const i = candidates.findIndex((m) => m.message === p.text);
      const stored = candidates[i];
      if (stored) {
        candidates.splice(i, 1);
        p.resolve(stored);
      } else {
        resend.push(p);
      }
    }
    const waiting = [...resend, ...this.#queue];
    this.#queue = [];
    for (const p of waiting) this.#transmit(p);

    const first = this.#oldestId;
    if (!catchUp.resumed && first !== null && this.#hasOlder && !this.#history) {
      // The welcome's size is the server's setting: one message more tells
      // whether "load older" has anything to load.
      this.#probe = this.#requestHistory(first, 1, true)
        .then(
          (older) => {
            if (older.length === 0) this.#noOlder();
          },
          () => {}, // unknown: leave hasOlder as it is
        )
        .finally(() => {
          this.#probe = null;
        });
    }
    this.#emit("caughtUp", { resumed: catchUp.resumed, count: catchUp.count });
    this.#wakeAfterCatchUp();
  }

  #wakeAfterCatchUp(): void {
    const waiting = this.#afterCatchUp;
    this.#afterCatchUp = [];
    for (const wake of waiting) wake();
  }

  #failRequests(error: ChatError): void {
    for (const r of this.#requests.values()) {
      clearTimeout(r.timer);
      r.reject(error);
    }
    this.#requests.clear();
    this.#failHistory(error);
  }

  #failHistory(error: ChatError): void {
    const h = this.#history;
    if (!h) return;
    clearTimeout(h.timer);
    this.#history = null;
    h.reject(error);
  }
}
