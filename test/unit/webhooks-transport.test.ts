/**
 * nodePost's own HTTP/1.1 client (src/webhooks/node-transport.ts) against a
 * raw TCP receiver that answers with exact bytes: the answer shapes a
 * receiver may send (lengths, chunked, to the close, interim 1xx, closing
 * connections, oversized answers), connection reuse, and aborts.
 */
import { createServer, type Server, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { nodePost } from "../../src/webhooks/node-transport.ts";

interface Raw {
  url: string;
  /** Requests received (head and body), in order. */
  requests: string[];
  /** Connections accepted. */
  connections: () => number;
  close(): Promise<void>;
}

/** A receiver answering each complete request with `answer(n)` (n counts from 0); null: say nothing. */
async function raw(answer: (n: number) => string | null): Promise<Raw> {
  const requests: string[] = [];
  const sockets = new Set<Socket>();
  let connections = 0;
  const server: Server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    let buf = "";
    socket.on("data", (chunk) => {
      buf += chunk.toString("utf8");
      // Bounded: each turn takes one whole request off the buffer or waits for more.
      for (;;) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const length = Number(/content-length: (\d+)/i.exec(buf.slice(0, end))?.[1] ?? 0);
        if (Buffer.byteLength(buf.slice(end + 4)) < length) return;
        const body = Buffer.from(buf.slice(end + 4))
          .subarray(0, length)
          .toString();
        const request = `${buf.slice(0, end + 4)}${body}`;
        buf = Buffer.from(buf.slice(end + 4))
          .subarray(length)
          .toString();
        const reply = answer(requests.length);
        requests.push(request);
        if (reply === null) continue;
        if (reply === "CLOSE") socket.destroy();
        else socket.write(reply);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}/hook?k=1`,
    requests,
    connections: () => connections,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function receiver(answer: (n: number) => string | null): Promise<Raw> {
  const r = await raw(answer);
  cleanups.push(() => r.close());
  return r;
}

const signal = () => new AbortController().signal;
const headers = { "content-type": "application/json", "x-chat-event-id": "e1" };

describe("nodePost (own HTTP/1.1 client)", () => {
  it("sends one POST with the path, query, headers and a UTF-8 body's byte length", async () => {
    const r = await receiver(() => "HTTP/1.1 204 No Content\r\n\r\n");
    const post = nodePost(2);
    const body = '{"m":"héllo 🎉"}';
    expect(await post(r.url, headers, body, signal())).toBe(204);
    const [request] = r.requests;
    expect(request).toMatch(/^POST \/hook\?k=1 HTTP\/1\.1\r\n/);
    expect(request).toMatch(/\r\nHost: 127\.0\.0\.1:\d+\r\n/);
    expect(request).toContain("\r\nx-chat-event-id: e1\r\n");
    expect(request).toContain(`\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`);
    expect(request!.endsWith(`\r\n\r\n${body}`)).toBe(true);
  });

  it("reads Content-Length and chunked answers (with trailers) and reuses the connection after each", async () => {
    const answers = [
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
      "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
      "HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno",
    ];
    const r = await receiver((n) => answers[n] ?? null);
    const post = nodePost(1);
    const got: number[] = [];
    for (let i = 0; i < answers.length; i++) got.push(await post(r.url, headers, "{}", signal()));
    expect(got).toEqual([200, 201, 202, 500]);
    expect(r.connections()).toBe(1);
  });

  it("an answer split across packets is put together", async () => {
    const post = nodePost(1);
    // The raw receiver above answers whole; this one writes the answer in pieces.
    const pieces = ["HTTP/1.1 2", "00 OK\r\nTransfer-Enc", "oding: chunked\r\n\r\n4\r", "\nab", "cd\r\n0\r\n\r", "\n"];
    const accepted: Socket[] = [];
    const split = createServer((socket) => {
      accepted.push(socket);
      socket.on("error", () => {});
      socket.once("data", async () => {
        for (const p of pieces) {
          socket.write(p);
          await new Promise((res) => setTimeout(res, 5));
        }
      });
    });
    await new Promise<void>((res) => split.listen(0, "127.0.0.1", res));
    cleanups.push(
      () =>
        new Promise((res) => {
          for (const s of accepted) s.destroy();
          split.close(() => res());
        }),
    );
    const address = split.address();
    const port = typeof address === "object" && address ? address.port : 0;
    expect(await post(`http://127.0.0.1:${port}/`, headers, "{}", signal())).toBe(200);
  });

  it("Connection: close, HTTP/1.0 and a body to the close each get a new connection for the next request", async () => {
    const answers = [
      "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 204 No Content\r\n\r\n",
    ];
    const r = await receiver((n) => answers[n] ?? null);
    const post = nodePost(1);
    for (let i = 0; i < answers.length; i++) expect(await post(r.url, headers, "{}", signal())).toBeGreaterThan(199);
    expect(r.connections()).toBe(3);
    const toClose = await receiver(() => "HTTP/1.1 200 OK\r\n\r\nbody until the close");
    expect(await post(toClose.url, headers, "{}", signal())).toBe(200);
    expect(await post(toClose.url, headers, "{}", signal())).toBe(200);
    expect(toClose.connections()).toBe(2);
  });

  it("an answer longer than 64 KiB drops the connection but its status counts; garbage is an error", async () => {
    const big = "x".repeat(70 * 1024);
    const r = await receiver(() => `HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n${big}`);
    const post = nodePost(1);
    expect(await post(r.url, headers, "{}", signal())).toBe(200);
    const bad = await receiver(() => "SMTP ready\r\n\r\n");
    await expect(post(bad.url, headers, "{}", signal())).rejects.toThrow(/malformed answer/);
  });

  it("a kept-alive connection the receiver closed is retried once on a new one; a refused connection rejects", async () => {
    const r = await receiver((n) => (n === 1 ? "CLOSE" : "HTTP/1.1 204 No Content\r\n\r\n"));
    const post = nodePost(1);
    expect(await post(r.url, headers, "{}", signal())).toBe(204);
    // The second request's connection is closed without an answer: sent again once, on a new connection.
    expect(await post(r.url, headers, "{}", signal())).toBe(204);
    expect(r.requests).toHaveLength(3);
    expect(r.connections()).toBe(2);
    const gone = await receiver(() => null);
    const url = gone.url;
    await gone.close();
    await expect(post(url, headers, "{}", signal())).rejects.toThrow(/ECONNREFUSED/);
  });

  it("an abort ends a request without an answer, and the next request gets a fresh connection", async () => {
    const r = await receiver((n) => (n === 0 ? null : "HTTP/1.1 204 No Content\r\n\r\n"));
    const post = nodePost(1);
    const c = new AbortController();
    const pending = post(r.url, headers, "{}", c.signal);
    await new Promise((res) => setTimeout(res, 50));
    c.abort();
    await expect(pending).rejects.toThrow(/aborted/);
    expect(await post(r.url, headers, "{}", signal())).toBe(204);
    expect(r.connections()).toBe(2);
  });

  it("never opens more connections than maxSockets; waiting requests take the freed ones", async () => {
    const r = await receiver(() => "HTTP/1.1 204 No Content\r\n\r\n");
    const post = nodePost(2);
    const all = await Promise.all(Array.from({ length: 10 }, () => post(r.url, headers, "{}", signal())));
    expect(all).toEqual(Array(10).fill(204));
    expect(r.connections()).toBeLessThanOrEqual(2);
    expect(r.requests).toHaveLength(10);
  });
});
