/**
 * The webhook transport on Node: what the portable one (fetch, WebCrypto)
 * costs too much for there. Measured on this project's loaded 2-core machine
 * (docs/api.md, bench/webhooks.ts):
 * - a POST through undici's fetch takes about 0.8-0.9 ms of CPU, through
 *   http.request with a keep-alive agent 0.2-0.3 ms;
 * - an HMAC through WebCrypto's `subtle.sign` about 0.35 ms (a thread-pool
 *   job and a promise per call), through `createHmac` a few microseconds.
 * At 1000 events/s the portable pair alone would take more than a core.
 * Node only: start.ts picks it when the runtime is Node.
 */
import { createHmac, createSecretKey, type KeyObject } from "node:crypto";
import { isIP, connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { MAX_ANSWER_BYTES, type WebhookPost } from "./transport.ts";

/**
 * X-Chat-Signature with node:crypto (the same value as WebhookSigner's). The
 * key is made once: a string key is turned into a key object on every
 * createHmac call otherwise.
 */
export function nodeSigner(secret: string): (body: string) => string {
  const key: KeyObject = createSecretKey(Buffer.from(secret, "utf8"));
  return (body) => `sha256=${createHmac("sha256", key).update(body).digest("hex")}`;
}

/** A pooled connection to the receiver and the request it carries, if any. */
interface Conn {
  socket: Socket;
  /** The request waiting for its answer on this connection. */
  req: Req | null;
  /** Bytes of the answer not parsed yet (its head, a chunk size line...). */
  buf: Buffer | null;
  /** Answers this connection completed: a failure on a reused one before any byte is worth one retry. */
  served: number;
  /** Bytes of the current answer received (bounds it). */
  read: number;
  /** Answer parsing: head, then a body of `left` bytes, chunked, or until close. */
  state: "head" | "length" | "chunk-size" | "chunk-data" | "chunk-crlf" | "trailers" | "close";
  left: number;
  status: number;
  keepAlive: boolean;
  /** Still counted in the pool's open connections. */
  counted: boolean;
  /** The URL it was opened for: a connection is only reused for that one. */
  url: string;
}

interface Req {
  resolve: (r: { status: number } | { error: Error; retry: boolean }) => void;
}

const CRLF2 = Buffer.from("\r\n\r\n");
const CRLF = Buffer.from("\r\n");
/** A header value or request target that could split the request. */
const UNSAFE = /[\r\n\0]/;

/**
 * @param maxSockets connections kept to the receiver (the loop's concurrency)
 *
 * HTTP/1.1 written and parsed here over node:net / node:tls sockets kept
 * alive in a small pool, instead of node:http. Hand-rolled because it is the
 * webhook's main CPU cost and the general clients are several times dearer
 * for this one shape of request (one POST with a short body, a status
 * wanted, the answer's body discarded). Measured on this machine, 20
 * requests in flight over keep-alive connections to a local receiver, CPU
 * per request: node:http with a keep-alive agent 0.24-0.40 ms, undici 7's
 * Pool 0.31 ms, a plain socket write plus this parsing 0.06 ms.
 *
 * What it supports of the answer: any status line (1xx interim answers are
 * skipped), a body by Content-Length, chunked (with trailers), or read until
 * the receiver closes; `Connection: close` and HTTP/1.0 close the
 * connection after the answer. An answer past MAX_ANSWER_BYTES, or one it
 * cannot parse, drops the connection (the status, when read, still counts).
 * Requests are never pipelined: one at a time per connection.
 */
export function nodePost(maxSockets: number): WebhookPost {
  /** The target of the last URL (the loop posts to one URL). */
  let target: { url: string; https: boolean; host: string; port: number; servername: string; head: string } | null =
    null;
  const idle: Conn[] = [];
  let open = 0;
  /** Requests waiting for a connection (at most the loop's concurrency). */
  const waiting: ((c: Conn | null) => void)[] = [];

  const targetFor = (url: string) => {
    if (target?.url !== url) {
      const u = new URL(url);
      if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error(`unsupported protocol ${u.protocol}`);
      const https = u.protocol === "https:";
      const path = `${u.pathname}${u.search}`;
      let head = `POST ${path} HTTP/1.1\r\nHost: ${u.host}\r\n`;
      if (u.username || u.password) {
        const auth = `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`;
        head += `Authorization: Basic ${Buffer.from(auth).toString("base64")}\r\n`;
      }
      if (UNSAFE.test(path) || UNSAFE.test(u.host) || UNSAFE.test(decodeURIComponent(u.username + u.password)))
        throw new Error("invalid webhook URL");
      const host = u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname;
      // Connections to the previous URL's receiver are not reused for this one.
      for (const c of idle.splice(0)) c.socket.destroy();
      target = {
        url,
        https,
        host,
        port: Number(u.port || (https ? 443 : 80)),
        servername: isIP(host) ? "" : host,
        head,
      };
    }
    return target;
  };

  const release = (c: Conn) => {
    c.req = null;
    c.served++;
    if (c.url !== target?.url) {
      c.socket.destroy();
      return;
    }
    const next = waiting.shift();
    if (next) {
      next(c);
      return;
    }
    c.socket.unref();
    idle.push(c);
  };

  const drop = (c: Conn, error: Error | null) => {
    if (!c.socket.destroyed) c.socket.destroy();
    const at = idle.indexOf(c);
    if (at >= 0) idle.splice(at, 1);
    const req = c.req;
    c.req = null;
    if (req) {
      if (c.state === "close" && c.status > 0) req.resolve({ status: c.status });
      else
        req.resolve({
          error: error ?? Object.assign(new Error("socket hang up"), { code: "ECONNRESET" }),
          retry: c.served > 0 && c.read === 0,
        });
    }
  };

  const closed = (c: Conn) => {
    if (!c.counted) return;
    c.counted = false;
    open--;
    // A slot is free: a waiting request opens its own connection.
    const next = waiting.shift();
    if (next) next(null);
  };

  /** Feeds received bytes to the answer's parser; resolves the request when its answer is complete. */
  const onData = (c: Conn, chunk: Buffer) => {
    if (!c.req) {
      // Bytes nobody asked for: the connection is out of step.
      drop(c, null);
      return;
    }
    c.read += chunk.length;
    if (c.read > MAX_ANSWER_BYTES) {
      if (c.status > 0) c.state = "close";
      drop(c, new Error(`answer longer than ${MAX_ANSWER_BYTES} bytes`));
      return;
    }
    let b = c.buf ? Buffer.concat([c.buf, chunk]) : chunk;
    c.buf = null;
    // Bounded: each turn consumes bytes or returns.
    for (;;) {
      if (c.state === "head") {
        const end = b.indexOf(CRLF2);
        if (end < 0) {
          c.buf = b;
          return;
        }
        const lines = b.toString("latin1", 0, end).split("\r\n");
        b = b.subarray(end + 4);
        const m = /^HTTP\/1\.([01]) (\d{3})/.exec(lines[0] ?? "");
        if (!m) {
          drop(c, new Error("malformed answer"));
          return;
        }
        const status = Number(m[2]);
        if (status >= 100 && status < 200) continue;
        c.status = status;
        c.keepAlive = m[1] === "1";
        let length = -1;
        let chunked = false;
        for (let i = 1; i < lines.length; i++) {
          const line = lines[i]!;
          const colon = line.indexOf(":");
          if (colon < 0) continue;
          const name = line.slice(0, colon).trim().toLowerCase();
          const value = line
            .slice(colon + 1)
            .trim()
            .toLowerCase();
          if (name === "content-length") length = Number(value);
          else if (name === "transfer-encoding") chunked = value.split(",").pop()?.trim() === "chunked";
          else if (name === "connection") {
            if (value.includes("close")) c.keepAlive = false;
            else if (value.includes("keep-alive")) c.keepAlive = true;
          }
        }
        if (status === 204 || status === 304) length = 0;
        if (chunked) c.state = "chunk-size";
        else if (length >= 0 && Number.isSafeInteger(length)) {
          c.state = "length";
          c.left = length;
        } else c.state = "close";
      }
      if (c.state === "close") {
        // The body runs to the close: the status is known, nothing more is wanted.
        drop(c, null);
        return;
      }
      if (c.state === "length") {
        const take = Math.min(c.left, b.length);
        c.left -= take;
        b = b.subarray(take);
        if (c.left > 0) return;
        break;
      }
      if (c.state === "chunk-size" || c.state === "chunk-crlf" || c.state === "trailers") {
        const eol = b.indexOf(CRLF);
        if (eol < 0) {
          c.buf = b;
          return;
        }
        const line = b.toString("latin1", 0, eol);
        b = b.subarray(eol + 2);
        if (c.state === "chunk-crlf") {
          c.state = "chunk-size";
          continue;
        }
        if (c.state === "trailers") {
          if (line === "") break;
          continue;
        }
        const size = Number.parseInt(line.split(";")[0]!.trim(), 16);
        if (!Number.isSafeInteger(size) || size < 0) {
          c.state = "close";
          drop(c, null);
          return;
        }
        if (size === 0) c.state = "trailers";
        else {
          c.state = "chunk-data";
          c.left = size;
        }
        continue;
      }
      if (c.state === "chunk-data") {
        const take = Math.min(c.left, b.length);
        c.left -= take;
        b = b.subarray(take);
        if (c.left > 0) return;
        c.state = "chunk-crlf";
      }
    }
    // The answer is complete.
    const req = c.req;
    const status = c.status;
    if (b.length > 0 || !c.keepAlive) {
      c.state = "close";
      drop(c, null);
    } else {
      release(c);
    }
    req?.resolve({ status });
  };

  const connect = (t: NonNullable<typeof target>): Conn => {
    const socket: Socket = t.https
      ? tlsConnect({ host: t.host, port: t.port, servername: t.servername || undefined, ALPNProtocols: ["http/1.1"] })
      : netConnect({ host: t.host, port: t.port });
    // A request is one small write; Nagle would hold it for the receiver's delayed ACK (~40 ms).
    socket.setNoDelay(true);
    const c: Conn = {
      socket,
      req: null,
      buf: null,
      served: 0,
      read: 0,
      state: "head",
      left: 0,
      status: 0,
      keepAlive: true,
      counted: true,
      url: t.url,
    };
    open++;
    socket.on("data", (chunk: Buffer) => onData(c, chunk));
    socket.on("error", (error) => drop(c, error));
    socket.on("close", () => {
      drop(c, null);
      closed(c);
    });
    return c;
  };

  const acquire = async (t: NonNullable<typeof target>): Promise<Conn> => {
    // Bounded: every idle connection is looked at once.
    for (;;) {
      const c = idle.pop();
      if (!c) break;
      if (!c.socket.destroyed) return c;
    }
    if (open < maxSockets) return connect(t);
    const c = await new Promise<Conn | null>((r) => waiting.push(r));
    return c ?? connect(t);
  };

  const once = async (url: string, headers: Record<string, string>, body: string, signal: AbortSignal) => {
    const t = targetFor(url);
    let head = t.head;
    for (const name in headers) {
      const value = headers[name]!;
      if (UNSAFE.test(name) || UNSAFE.test(value)) throw new Error(`invalid header ${name}`);
      head += `${name}: ${value}\r\n`;
    }
    head += `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n`;
    const c = await acquire(t);
    c.socket.ref();
    c.read = 0;
    c.status = 0;
    c.state = "head";
    c.buf = null;
    return new Promise<{ status: number } | { error: Error; retry: boolean }>((resolve) => {
      const onAbort = () => {
        const error = Object.assign(new Error("aborted"), { name: "AbortError", code: "ABORT_ERR" });
        c.state = "head";
        drop(c, error);
      };
      c.req = {
        resolve: (r) => {
          signal.removeEventListener("abort", onAbort);
          resolve(r);
        },
      };
      if (signal.aborted) {
        onAbort();
        return;
      }
      signal.addEventListener("abort", onAbort, { once: true });
      c.socket.write(head + body);
    });
  };

  return async (url, headers, body, signal) => {
    let r = await once(url, headers, body, signal);
    if ("error" in r && r.retry && !signal.aborted) r = await once(url, headers, body, signal);
    if ("error" in r) throw r.error;
    return r.status;
  };
}
