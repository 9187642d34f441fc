/**
 * The black-box suite against the Node entry, plus what only Node offers here:
 * TLS straight from the server and opt-in permessage-deflate.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { get } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { formatMessageId } from "../../src/protocol.ts";
import { CLOSE_TIMEOUT_MS } from "../../src/runtime/node-ws.ts";
import { SqliteStore } from "../../src/store/sqlite.ts";
import { trackForFile } from "../helpers/cleanup.ts";
import { connect, expectRefused } from "../helpers/client.ts";
import { nodeTarget, tempHistoryPath } from "../helpers/server.ts";
import { serverSuite } from "./server.suite.ts";

serverSuite(nodeTarget);

const hasOpenssl = spawnSync("openssl", ["version"]).status === 0;

/** A self-signed certificate for 127.0.0.1, made for this run. */
function selfSigned(): { cert: string; key: string } {
  const dir = mkdtempSync(join(tmpdir(), "chat-tls-"));
  trackForFile(() => rmSync(dir, { recursive: true, force: true }));
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  const out = spawnSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "1",
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
    ],
    { encoding: "utf8" },
  );
  if (out.status !== 0) throw new Error(`openssl failed: ${out.stderr}`);
  return { cert, key };
}

describe("node only", () => {
  it.skipIf(!hasOpenssl)("TLS_CERT and TLS_KEY serve https and wss directly (skipped without openssl)", async () => {
    const { cert, key } = selfSigned();
    const server = await nodeTarget.start({ TLS_CERT: cert, TLS_KEY: key });
    const port = new URL(server.url).port;
    const ca = readFileSync(cert);
    const health = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = get(`https://127.0.0.1:${port}/healthz`, { ca, timeout: 5000 }, (res) => {
        let body = "";
        res.on("data", (d: Buffer) => {
          body += d.toString();
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on("timeout", () => req.destroy(new Error("https request timed out")));
      req.on("error", reject);
    });
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body)).toMatchObject({ status: "ok" });
    const c = await connect(`wss://127.0.0.1:${port}/websocket?room=tls&user=tess`, {
      protocols: "chat.v1",
      wsOptions: { ca },
    });
    expect(await c.next()).toMatchObject({ type: "welcome", user: "tess" });
    c.send({ message: "over tls" });
    expect(await c.waitFor("message")).toMatchObject({ message: "over tls", user: "tess" });
    // A refused upgrade still gets its JSON body over TLS.
    const refused = await expectRefused(`wss://127.0.0.1:${port}/websocket?room=bad%20room`, { wsOptions: { ca } });
    expect(refused).toMatchObject({ status: 400, body: { error: expect.any(String) } });
    // The plain-text port speaks no HTTP: a client must not be able to downgrade.
    await expect(fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(3000) })).rejects.toThrow();
  });

  it("permessage-deflate is negotiated only with WS_COMPRESSION=true", async () => {
    const plain = await nodeTarget.start();
    const off = await connect(`${plain.wsUrl}?room=z`, { perMessageDeflate: true });
    expect(off.ws.extensions).toBe("");
    const zipped = await nodeTarget.start({ WS_COMPRESSION: "true" });
    const on = await connect(`${zipped.wsUrl}?room=z`, { perMessageDeflate: true });
    expect(on.ws.extensions).toMatch(/permessage-deflate/);
    const big = "compress me ".repeat(1000);
    on.send({ user: "zip", message: big.slice(0, 2000) });
    expect(await on.waitFor("message")).toMatchObject({ user: "zip", message: big.slice(0, 2000) });
  });

  it("a client closed with 1013 that never reads again is dropped after CLOSE_TIMEOUT_MS, not ws's 30 s", async () => {
    const server = await nodeTarget.start({ RATE_LIMIT: "0", MAX_MESSAGE_LENGTH: "60000" });
    const health = async () =>
      (await (await fetch(`${server.url}/healthz`, { signal: AbortSignal.timeout(3000) })).json()) as {
        connections: number;
      };
    const slowClosed = async () =>
      /^chat_slow_consumers_total (\d+)/m.exec(
        await (await fetch(`${server.url}/metrics`, { signal: AbortSignal.timeout(3000) })).text(),
      )?.[1] === "1";
    const slow = await connect(`${server.wsUrl}?room=stall`);
    const reader = await connect(`${server.wsUrl}?room=stall`);
    (slow.ws as unknown as { _socket: import("node:net").Socket })._socket.pause();
    const text = "s".repeat(59_000);
    // Paced by the reader; bounded: 400 messages (~24 MB) is far past any loopback buffer.
    for (let i = 0; i < 400 && !(i % 40 === 0 && i > 0 && (await slowClosed())); i += 8) {
      for (let k = i; k < i + 8; k++) reader.send({ user: "flood", message: `${k} ${text}` });
      await reader.collect((f) => f.type === "message", 8, 10_000);
    }
    expect(await slowClosed()).toBe(true);
    const closedAt = Date.now();
    // The server's session count drops once ws destroys the stalled TCP connection.
    const deadline = closedAt + CLOSE_TIMEOUT_MS + 5000;
    while ((await health()).connections > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect((await health()).connections).toBe(1);
  });

  // Regression guard for anything that holds frames back within a turn (corking,
  // batching): what counts against MAX_BUFFERED_BYTES must be what a client
  // has not read, not what the server has not yet handed to the kernel.
  it("a burst larger than MAX_BUFFERED_BYTES to clients that keep reading closes none of them", async () => {
    const server = await nodeTarget.start({ RATE_LIMIT: "0", MAX_MESSAGE_LENGTH: "60000" });
    const url = `${server.wsUrl}?room=burst`;
    const reader = await connect(url);
    const senders = [await connect(url), await connect(url)];
    const text = "b".repeat(55_000);
    const per = 20; // 2 x 20 x 55 KB = 2.2 MB, sent at once
    for (let k = 0; k < per; k++) {
      for (const [i, s] of senders.entries()) s.send({ user: `s${i}`, message: `${k} ${text}` });
    }
    for (const c of [reader, ...senders]) {
      expect(await c.collect((f) => f.type === "message", per * senders.length, 15_000)).toHaveLength(per * 2);
      expect(c.closeInfo).toBeNull();
    }
  });

  it("logs one JSON line per connection opened and closed (LOG_FORMAT=json)", async () => {
    const server = await nodeTarget.start();
    const c = await connect(`${server.wsUrl}?room=logs&user=lou`, { protocols: "chat.v1" });
    await c.next();
    await c.close();
    const lines = () =>
      server
        .output()
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    for (let i = 0; i < 50 && !lines().some((l) => l.msg === "connection closed"); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const opened = lines().filter((l) => l.msg === "connection opened");
    const closed = lines().filter((l) => l.msg === "connection closed");
    expect(opened).toEqual([expect.objectContaining({ room: "logs", user: "lou", mode: "v1" })]);
    expect(closed).toEqual([expect.objectContaining({ room: "logs", code: 1000 })]);
  });

  it("a store that cannot write answers unavailable (with the cid), delivers to nobody, and recovers", async () => {
    const historyPath = tempHistoryPath();
    const server = await nodeTarget.start({}, { historyPath });
    const url = `${server.wsUrl}?room=locked`;
    const sender = await connect(`${url}&user=sid`, { protocols: "chat.v1" });
    const other = await connect(url);
    await sender.waitFor("welcome");
    sender.send({ message: "stored" });
    await other.waitFor("message");
    // Another process holds the write lock: the server's next commit fails
    // after its busy timeout, as it would on a full or read-only disk.
    const lock = new Database(historyPath);
    try {
      lock.exec("BEGIN EXCLUSIVE");
      sender.send({ message: "refused", cid: "c-lock" });
      expect(await sender.waitFor("error", 10_000)).toEqual({
        type: "error",
        code: "unavailable",
        message: expect.any(String),
        cid: "c-lock",
      });
    } finally {
      lock.exec("ROLLBACK");
      lock.close();
    }
    sender.send({ message: "after" });
    expect(await other.waitFor("message")).toMatchObject({ message: "after" });
    expect(other.received.map((f) => f.json?.message)).toEqual(["stored", "after"]);
    const res = await fetch(`${server.url}/rooms/locked/messages`);
    const stored = ((await res.json()) as { messages: { message: string }[] }).messages.map((m) => m.message);
    expect(stored).toEqual(["stored", "after"]);
  });

  it("ids stay above the stored ones when the clock is behind them (restart after a clock step back)", async () => {
    const historyPath = tempHistoryPath();
    const ahead = Date.now() + 3_600_000; // the last run's clock was an hour ahead
    const seeded = new SqliteStore(new Database(historyPath));
    const old = {
      type: "message" as const,
      id: formatMessageId(ahead, 7),
      room: "clock",
      user: "u",
      message: "from the future",
      ts: ahead,
    };
    await seeded.append(old);
    await seeded.close();
    const server = await nodeTarget.start({}, { historyPath });
    const c = await connect(`${server.wsUrl}?room=clock&user=now`, { protocols: "chat.v1" });
    expect((await c.waitFor("welcome")).history).toEqual([old]);
    c.send({ message: "first" });
    c.send({ message: "second" });
    const [first, second] = await c.collect("message", 2);
    expect((first!.id as string) > old.id).toBe(true);
    expect((second!.id as string) > (first!.id as string)).toBe(true);
    expect(first!.ts as number).toBeLessThan(ahead); // ts stays the server's real time
  });
});
