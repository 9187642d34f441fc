/**
 * A queue-backed WebSocket test client over `ws`: every frame the server sends
 * is queued, and tests pull them with `next()` or `waitFor()`, each bounded by
 * a timeout so a missing frame fails the test instead of hanging it.
 */
import type { IncomingHttpHeaders } from "node:http";
import WebSocket, { type ClientOptions } from "ws";
import { track } from "./cleanup.ts";

/** How long `next`/`waitFor`/`connect` wait when not told. */
export const DEFAULT_TIMEOUT_MS = 3000;

/** One frame from the server: text frames are also parsed when they are JSON. */
export interface Frame {
  /** The parsed JSON value (null when the text is not JSON, or for binary frames). */
  json: Record<string, unknown> | null;
  text: string;
  binary: boolean;
}

/** Options for {@link connect}. */
export interface ConnectOptions {
  /** Offered subprotocols (`Sec-WebSocket-Protocol`). @default none (seed mode) */
  protocols?: string | string[];
  headers?: Record<string, string>;
  /** Handshake timeout. @default DEFAULT_TIMEOUT_MS */
  timeoutMs?: number;
  /** Answer server pings (ws does by default). @default true */
  autoPong?: boolean;
  /** Offer permessage-deflate. @default false */
  perMessageDeflate?: boolean;
  /** Extra `ws` client options (TLS trust, ...). */
  wsOptions?: ClientOptions;
}

/** A refused handshake: the HTTP status and the body the server sent. */
export class HandshakeError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
    readonly headers: IncomingHttpHeaders,
  ) {
    super(`handshake refused: ${status} ${body}`);
  }
}

type Matcher = string | ((frame: Record<string, unknown>) => boolean);

interface Waiter {
  match: (f: Frame) => boolean;
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** A connected test client. */
export class TestClient {
  readonly #queue: Frame[] = [];
  readonly #waiters: Waiter[] = [];
  #closeInfo: { code: number; reason: string } | null = null;
  /** Resolves once the connection is closed, with the close code and reason. */
  readonly closed: Promise<{ code: number; reason: string }>;
  /** Every frame received so far, in order (also those already taken). */
  readonly received: Frame[] = [];

  constructor(readonly ws: WebSocket) {
    ws.on("message", (data, isBinary) => {
      const text = isBinary ? "" : data.toString();
      let json: Record<string, unknown> | null = null;
      if (!isBinary) {
        try {
          const v = JSON.parse(text) as unknown;
          if (typeof v === "object" && v !== null && !Array.isArray(v)) json = v as Record<string, unknown>;
        } catch {
          json = null;
        }
      }
      const frame: Frame = { json, text, binary: isBinary };
      this.received.push(frame);
      const i = this.#waiters.findIndex((w) => w.match(frame));
      if (i >= 0) {
        const [w] = this.#waiters.splice(i, 1);
        clearTimeout(w!.timer);
        w!.resolve(frame);
      } else {
        this.#queue.push(frame);
      }
    });
    this.closed = new Promise((resolve) => {
      ws.on("close", (code, reason) => {
        this.#closeInfo = { code, reason: reason.toString() };
        for (const w of this.#waiters.splice(0)) {
          clearTimeout(w.timer);
          w.reject(new Error(`connection closed (${code} ${reason.toString()}) while waiting for a frame`));
        }
        resolve(this.#closeInfo);
      });
    });
    // An error is followed by close; keep it from becoming an unhandled event.
    ws.on("error", () => {});
  }

  /** The selected subprotocol ("" when none). */
  get protocol(): string {
    return this.ws.protocol;
  }

  /** Close code and reason once closed, else null. */
  get closeInfo(): { code: number; reason: string } | null {
    return this.#closeInfo;
  }

  /** Sends a frame: objects as JSON text, strings as text, Buffers as binary. */
  send(data: unknown): void {
    if (typeof data === "string") this.ws.send(data);
    else if (Buffer.isBuffer(data) || data instanceof Uint8Array) this.ws.send(data, { binary: true });
    else this.ws.send(JSON.stringify(data));
  }

  /** Sends `data` and resolves once ws has handed it to the socket. */
  sendAsync(data: string | Buffer, binary = false): Promise<void> {
    return new Promise((resolve, reject) => this.ws.send(data, { binary }, (e) => (e ? reject(e) : resolve())));
  }

  #take(match: (f: Frame) => boolean, timeoutMs: number, what: string): Promise<Frame> {
    const i = this.#queue.findIndex(match);
    if (i >= 0) return Promise.resolve(this.#queue.splice(i, 1)[0]!);
    if (this.#closeInfo) {
      return Promise.reject(
        new Error(`connection closed (${this.#closeInfo.code} ${this.#closeInfo.reason}) before ${what}`),
      );
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const k = this.#waiters.indexOf(waiter);
        if (k >= 0) this.#waiters.splice(k, 1);
        const pending = this.#queue.map((f) => f.text.slice(0, 200)).join("\n  ");
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; queued frames:\n  ${pending}`));
      }, timeoutMs);
      const waiter: Waiter = { match, resolve, reject, timer };
      this.#waiters.push(waiter);
    });
  }

  /** The next frame (any kind), raw. */
  nextFrame(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Frame> {
    return this.#take(() => true, timeoutMs, "the next frame");
  }

  /** The next frame, parsed; fails when it is not a JSON object. */
  async next(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>> {
    const f = await this.nextFrame(timeoutMs);
    if (!f.json) throw new Error(`expected a JSON object frame, got ${f.binary ? "binary" : JSON.stringify(f.text)}`);
    return f.json;
  }

  /**
   * The first frame (queued or to come) of `type`, or matching the predicate.
   * Frames skipped on the way stay queued for later `next`/`waitFor` calls.
   */
  async waitFor(match: Matcher, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>> {
    const pred = typeof match === "string" ? (j: Record<string, unknown>) => j.type === match : match;
    const what = typeof match === "string" ? `a "${match}" frame` : "a matching frame";
    const f = await this.#take((fr) => fr.json !== null && pred(fr.json), timeoutMs, what);
    return f.json!;
  }

  /** Resolves with `n` frames matching, in order. */
  async collect(match: Matcher, n: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>[]> {
    const deadline = Date.now() + timeoutMs;
    const out: Record<string, unknown>[] = [];
    while (out.length < n) out.push(await this.waitFor(match, Math.max(1, deadline - Date.now())));
    return out;
  }

  /** Frames received and not yet taken. */
  pending(): Frame[] {
    return [...this.#queue];
  }

  /** Closes (1000 unless told) and resolves when closed; terminates after the timeout. */
  async close(code = 1000, reason = ""): Promise<void> {
    if (this.#closeInfo) return;
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.CLOSED) {
      this.ws.terminate();
    } else {
      this.ws.close(code, reason);
    }
    const timer = setTimeout(() => this.ws.terminate(), 1000);
    await this.closed;
    clearTimeout(timer);
  }

  /** Resolves with the close info, or rejects when not closed within the timeout. */
  async waitClosed(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<{ code: number; reason: string }> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`connection not closed within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * Opens a connection; resolves once open, rejects with {@link HandshakeError}
 * when the server answers the upgrade with an HTTP status.
 */
export function connect(url: string, opts: ConnectOptions = {}): Promise<TestClient> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const options: ClientOptions = {
    handshakeTimeout: timeoutMs,
    perMessageDeflate: opts.perMessageDeflate ?? false,
    autoPong: opts.autoPong ?? true,
    ...(opts.headers ? { headers: opts.headers } : {}),
    ...opts.wsOptions,
  };
  const ws = opts.protocols === undefined ? new WebSocket(url, options) : new WebSocket(url, opts.protocols, options);
  const client = new TestClient(ws);
  track(() => client.close());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`connect to ${url} timed out after ${timeoutMs} ms`));
    }, timeoutMs + 500);
    ws.once("open", () => {
      clearTimeout(timer);
      resolve(client);
    });
    ws.once("unexpected-response", (_req, res) => {
      clearTimeout(timer);
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      const done = () => {
        ws.terminate();
        reject(new HandshakeError(res.statusCode ?? 0, Buffer.concat(chunks).toString(), res.headers));
      };
      res.once("end", done);
      res.once("error", done);
      res.once("aborted", done);
    });
    ws.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** Expects the handshake to be refused; resolves with the status and parsed JSON body. */
export async function expectRefused(
  url: string,
  opts: ConnectOptions = {},
): Promise<{ status: number; body: unknown; headers: IncomingHttpHeaders }> {
  try {
    const c = await connect(url, opts);
    await c.close();
  } catch (e) {
    if (e instanceof HandshakeError) {
      let body: unknown = e.body;
      try {
        body = JSON.parse(e.body);
      } catch {
        // not JSON: the caller's assertion shows the text
      }
      return { status: e.status, body, headers: e.headers };
    }
    throw e;
  }
  throw new Error(`expected ${url} to refuse the upgrade, but it was accepted`);
}

/** `server`'s WebSocket URL with `params` as its query (room, user, since, ...). */
export function roomUrl(server: { wsUrl: string }, params: Record<string, string>): string {
  return `${server.wsUrl}?${new URLSearchParams(params)}`;
}

/**
 * Message ids a client received, in order: welcome history, the history
 * pages that follow a paged welcome (a resume reads its start first), live
 * messages. A `history` answer to a `before` request is not counted.
 */
export function messageIds(client: TestClient): string[] {
  const out: string[] = [];
  for (const f of client.received) {
    const type = f.json?.type;
    if (type === "welcome") for (const m of f.json!.history as { id: string }[]) out.push(m.id);
    else if (type === "history" && f.json!.before === undefined && "more" in f.json!) {
      for (const m of f.json!.messages as { id: string }[]) out.push(m.id);
    } else if (type === "message") out.push(f.json!.id as string);
  }
  return out;
}
