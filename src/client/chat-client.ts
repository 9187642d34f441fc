/**
 * The typed `chat.v1` client: one class for browsers, Node, Bun and Deno.
 *
 * It keeps a conversation going across network trouble: it reconnects by
 * itself (exponential backoff with jitter), resumes with `since` = the last
 * message id it saw (so nothing is missed), drops what it has already seen (so
 * nothing is duplicated), notices a dead connection with the protocol's
 * app-level ping, and queues sends while offline.
 *
 * Frames, types and rules come from the one protocol module, which builds
 * its validation schemas lazily, so the browser bundle leaves zod out.
 */
import {
  type ChatMessage,
  type ErrorCode,
  type ErrorFrame,
  type ServerFrame,
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

/** Why a send, a history request or the client itself failed. */
export type ChatErrorCode =
  | ErrorCode
  /** The client was closed before the server answered. */
  | "closed"
  /** The offline queue is full. */
  | "queue_full"
  /** No answer in time. */
  | "timeout"
  /** The request needs an open connection. */
  | "offline";

/** An error with the server's (or the client's) code. */
export class ChatError extends Error {
  constructor(
    readonly code: ChatErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "ChatError";
  }
}

/** Connection states, in the order a connection goes through them. */
export type ChatStatus = "connecting" | "open" | "reconnecting" | "closed";

/** What the client tells the app. */
export interface ChatEvents {
  /** A message not seen before, in id order: from the welcome's history, a resume, or live. */
  message: ChatMessage;
  /** Every change of connection state; `retryInMs` is set while waiting to reconnect. */
  status: { status: ChatStatus; attempt: number; retryInMs?: number };
  /** A welcome arrived: the connection is usable. `resumed` when it followed a disconnect. */
  open: { users: string[]; user: string | null; resumed: boolean; recovered: boolean | undefined };
  /**
   * The server could not give back everything after the last message seen
   * (`recovered: false`): some messages were missed and will not come.
   */
  gap: { since: string | null };
  /** Who is online changed. */
  presence: { users: string[]; joined?: string; left?: string };
  /** Everything older than what was seen is loaded: {@link ChatClient.hasOlder} turned false. */
  beginning: Record<string, never>;
  /** Someone else is typing. */
  typing: { user: string };
  /** An error frame that answers no pending send or request (e.g. rate limits on typing). */
  error: ErrorFrame;
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
  /** JWT for servers with AUTH_SECRET (`?token=`). */
  token?: string;
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
  /** How long `loadOlder` waits for its answer. @default 10000 */
  requestTimeoutMs?: number;
  /** Start connecting in the constructor. @default true */
  autoConnect?: boolean;
  /** Random numbers for jitter (tests make it deterministic). @default Math.random */
  random?: () => number;
}

interface PendingSend {
  cid: string;
  text: string;
  resolve: (m: ChatMessage) => void;
  reject: (e: ChatError) => void;
}

interface PendingHistory {
  before: string;
  limit: number;
  /** The one-message look behind the first welcome: not the app's, moves no cursor. */
  probe: boolean;
  resolve: (m: ChatMessage[]) => void;
  reject: (e: ChatError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Plain close codes the client uses for its own closes. */
const CLIENT_CLOSE = { Normal: 1000, DeadConnection: 4000, ConnectTimeout: 4001 } as const;
const OPEN = 1;

/**
 * A chat connection to one room that survives disconnects.
 *
 * ```ts
 * const chat = new ChatClient({ url: "ws://localhost:8888/websocket", room: "lobby", user: "ada" });
 * chat.on("message", (m) => console.log(`${m.user}: ${m.message}`));
 * await chat.send("hello"); // resolves with the stored message (id, ts)
 * for await (const m of chat.messages()) { ... }
 * ```
 */
export class ChatClient {
  readonly room: string;
  readonly #opts: ChatClientOptions;
  readonly #WebSocket: WebSocketConstructor;
  readonly #listeners = new Map<keyof ChatEvents, Set<Listener<keyof ChatEvents>>>();
  readonly #iterators = new Set<(m: ChatMessage | null) => void>();

  #socket: WebSocketLike | null = null;
  #status: ChatStatus = "closed";
  #attempt = 0;
  #everOpened = false;
  #closedByApp = false;
  #welcomed = false;
  #user: string | null = null;
  #users: string[] = [];
  #lastId: string | null = null;
  #oldestId: string | null = null;
  #hasOlder = true;
  #nextCid = 0;
  readonly #cidPrefix: string;
  /** Sent on the current connection, waiting for the echo. */
  #inFlight: PendingSend[] = [];
  /** Not sent yet: waiting for a connection. */
  #queue: PendingSend[] = [];
  #history: PendingHistory | null = null;
  #probe: Promise<void> | null = null;
  #lastTypingAt = Number.NEGATIVE_INFINITY;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  #pingTimer: ReturnType<typeof setInterval> | null = null;
  #deadTimer: ReturnType<typeof setTimeout> | null = null;
  #connectTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(options: ChatClientOptions) {
    this.#opts = options;
    this.room = options.room ?? "lobby";
    const ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ctor) throw new TypeError("no WebSocket here: pass the WebSocket option (e.g. the `ws` package on Node 20)");
    this.#WebSocket = ctor;
    this.#user = options.user ?? null;
    this.#cidPrefix = Math.floor((options.random ?? Math.random)() * 36 ** 6).toString(36);
    if (options.autoConnect !== false) this.connect();
  }

  /** The connection state. */
  get status(): ChatStatus {
    return this.#status;
  }

  /** This connection's name as the server knows it (from the welcome), else the one asked for. */
  get user(): string | null {
    return this.#user;
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
   * New messages as an async iterator, from the moment it is created until
   * the client is closed. Each iterator has its own unbounded buffer: read it.
   */
  messages(): AsyncIterableIterator<ChatMessage> {
    const buffer: ChatMessage[] = [];
    let ended = this.#closedByApp;
    let wake: (() => void) | null = null;
    const push = (m: ChatMessage | null) => {
      if (m === null) ended = true;
      else buffer.push(m);
      wake?.();
      wake = null;
    };
    this.#iterators.add(push);
    const iterators = this.#iterators;
    const iterator: AsyncIterableIterator<ChatMessage> = {
      async next(): Promise<IteratorResult<ChatMessage>> {
        while (buffer.length === 0 && !ended) await new Promise<void>((r) => (wake = r));
        const m = buffer.shift();
        if (m !== undefined) return { value: m, done: false };
        iterators.delete(push);
        return { value: undefined, done: true };
      },
      async return(): Promise<IteratorResult<ChatMessage>> {
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
    if (this.#socket || this.#retryTimer) return;
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
   */
  send(text: string): Promise<ChatMessage> {
    if (this.#closedByApp) return Promise.reject(new ChatError("closed", "the client is closed"));
    return new Promise<ChatMessage>((resolve, reject) => {
      const pending: PendingSend = { cid: `${this.#cidPrefix}-${++this.#nextCid}`, text, resolve, reject };
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
   * Resolves with [] when there is nothing older.
   */
  async loadOlder(limit = 50): Promise<ChatMessage[]> {
    if (this.#probe) await this.#probe;
    // The server caps a page at 500; asking for more would make a full page look short.
    const n = Math.max(1, Math.min(500, Math.floor(limit)));
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
      this.#history = { before, limit, probe, resolve, reject, timer };
      this.#raw({ type: "history", before, limit });
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
    this.#clearTimers();
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    const socket = this.#socket;
    this.#socket = null;
    if (socket) {
      this.#detach(socket);
      try {
        socket.close(CLIENT_CLOSE.Normal, "client closed");
      } catch {
        // already closing
      }
    }
    const closed = new ChatError("closed", "the client is closed");
    for (const p of [...this.#inFlight, ...this.#queue]) p.reject(closed);
    this.#inFlight = [];
    this.#queue = [];
    this.#failHistory(closed);
    for (const push of this.#iterators) push(null);
    this.#iterators.clear();
    this.#setStatus("closed");
  }

  #canSend(): boolean {
    return this.#welcomed && this.#socket?.readyState === OPEN;
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
    if (this.#opts.token) url.searchParams.set("token", this.#opts.token);
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
    this.#welcomed = false;
    this.#setStatus(this.#everOpened ? "reconnecting" : "connecting");
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
      let frame: ServerFrame;
      try {
        frame = JSON.parse(event.data) as ServerFrame;
      } catch {
        return; // not ours to judge: the server only sends JSON
      }
      this.#frame(frame);
    };
    socket.onclose = () => {
      if (this.#socket === socket) this.#lost();
    };
    // An error is always followed by a close; the close does the work.
    socket.onerror = () => {};
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
    this.#welcomed = false;
    this.#clearTimers();
    // The outcome of these is unknown until the resume's history says.
    this.#failHistory(new ChatError("offline", "the connection was lost"));
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
    this.#pingTimer = this.#deadTimer = this.#connectTimer = null;
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
    if (this.#socket !== socket || this.#deadTimer || !this.#welcomed) return;
    this.#raw({ type: "ping" });
    this.#deadTimer = setTimeout(
      () => this.#drop(socket, CLIENT_CLOSE.DeadConnection, "no pong"),
      this.#opts.pongTimeoutMs ?? 10_000,
    );
  }

  #frame(frame: ServerFrame): void {
    switch (frame.type) {
      case "welcome":
        this.#welcome(frame);
        return;
      case "message": {
        const cid = "cid" in frame ? frame.cid : undefined;
        const { cid: _ignored, ...message } = frame as ChatMessage & { cid?: string };
        this.#deliver(message);
        if (cid !== undefined) this.#settle(cid, (p) => p.resolve(message));
        return;
      }
      case "presence":
        this.#users = frame.users;
        this.#emit("presence", frame);
        return;
      case "typing":
        if (frame.user !== this.#user) this.#emit("typing", { user: frame.user });
        return;
      case "history":
        this.#historyAnswer(frame.messages, frame.before);
        return;
      case "pong":
        return;
      case "error":
        if (
          frame.cid !== undefined &&
          this.#settle(frame.cid, (p) => p.reject(new ChatError(frame.code, frame.message)))
        )
          return;
        if (this.#history && frame.code !== "rate_limited") {
          this.#failHistory(new ChatError(frame.code, frame.message));
          return;
        }
        this.#emit("error", frame);
        return;
    }
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
  #deliver(m: ChatMessage): boolean {
    if (this.#lastId !== null && m.id <= this.#lastId) return false;
    this.#lastId = m.id;
    if (this.#oldestId === null) this.#oldestId = m.id;
    this.#emit("message", m);
    for (const push of this.#iterators) push(m);
    return true;
  }

  #welcome(w: WelcomeFrame): void {
    if (this.#connectTimer) clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    const socket = this.#socket;
    if (!socket) return;
    const resumed = this.#everOpened;
    const since = this.#lastId;
    this.#everOpened = true;
    this.#welcomed = true;
    this.#attempt = 0;
    this.#user = w.user ?? this.#user;
    this.#users = w.users;
    this.#setStatus("open");
    this.#emit("open", { users: w.users, user: w.user, resumed, recovered: w.recovered });
    if (w.recovered === false) this.#emit("gap", { since });
    const first = w.history[0];
    // A room whose first welcome is empty has no past to page through.
    if (!resumed && !first) this.#noOlder();
    if (first && (this.#oldestId === null || first.id < this.#oldestId)) this.#oldestId = first.id;
    for (const m of w.history) this.#deliver(m);
    if (!resumed && first && this.#hasOlder && !this.#history) {
      // The welcome's size is the server's setting: one message more tells
      // whether "load older" has anything to load.
      this.#probe = this.#requestHistory(first.id, 1, true)
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

    // Sends that were on the wire when the connection dropped: the resume's
    // history shows whether the server stored them (the echo's cid is not
    // stored, so match by author and text, each stored message once).
    const unsettled = this.#inFlight;
    this.#inFlight = [];
    const candidates = since === null ? [] : w.history.filter((m) => m.id > since && m.user === this.#user);
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
    this.#startPing(socket);
  }

  #historyAnswer(messages: ChatMessage[], before: string | undefined): void {
    const h = this.#history;
    if (!h || (before !== undefined && before !== h.before)) return;
    clearTimeout(h.timer);
    this.#history = null;
    if (!h.probe) {
      const first = messages[0];
      if (first && this.#oldestId !== null && first.id < this.#oldestId) this.#oldestId = first.id;
      if (messages.length < h.limit) this.#noOlder();
    }
    h.resolve(messages);
  }

  #failHistory(error: ChatError): void {
    const h = this.#history;
    if (!h) return;
    clearTimeout(h.timer);
    this.#history = null;
    h.reject(error);
  }
}
