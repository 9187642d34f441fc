/**
 * Cases beyond the black-box suite where the runtimes' WebSocket stacks
 * differ underneath: how the subprotocol header is split (Deno needs ", "),
 * binary frame limits (Deno has no payload cap), and bursts to a client that
 * does read (Deno counts a frame as buffered until its async write is done).
 * Run against the Bun and Deno entries next to the shared suite.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { SqliteStore } from "../../src/store/sqlite.ts";
import { trackForFile } from "../helpers/cleanup.ts";
import { connect } from "../helpers/client.ts";
import { type ServerTarget, tempHistoryPath } from "../helpers/server.ts";
import { fixtureMessages } from "../runtimes/fixture.ts";

/** The handshake answer's status and Sec-WebSocket-Protocol, read with a raw request. */
function handshake(
  url: string,
  protocols: string,
  upgrade = "websocket",
): Promise<{ status: number; protocol: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      headers: {
        Connection: "Upgrade",
        Upgrade: upgrade,
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": protocols,
      },
      timeout: 3000,
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      const p = res.headers["sec-websocket-protocol"];
      resolve({ status: res.statusCode ?? 0, protocol: Array.isArray(p) ? p[0] : p });
    });
    req.on("response", (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, protocol: undefined });
    });
    req.on("timeout", () => req.destroy(new Error("handshake timed out")));
    req.on("error", reject);
    req.end();
  });
}

/** Runs the runtime-sensitive cases against one target. */
export function runtimeCases(target: ServerTarget): void {
  describe(`runtime rules: ${target.name}`, () => {
    it("selects chat.v1 wherever it is offered, and no protocol otherwise", async () => {
      const server = await target.start();
      const url = `${server.url}/websocket`;
      expect(await handshake(url, "chat.v1")).toEqual({ status: 101, protocol: "chat.v1" });
      expect(await handshake(url, "x-other,chat.v1")).toEqual({ status: 101, protocol: "chat.v1" });
      expect(await handshake(url, "x-other, chat.v1, y")).toEqual({ status: 101, protocol: "chat.v1" });
      expect(await handshake(url, "x-other")).toEqual({ status: 101, protocol: undefined });
      // The Upgrade token is case-insensitive (RFC 7230 6.7).
      expect(await handshake(url, "chat.v1", "WebSocket")).toEqual({ status: 101, protocol: "chat.v1" });
      const c = await connect(`${server.wsUrl}?user=ann`, { protocols: ["x-other", "chat.v1"] });
      expect(c.protocol).toBe("chat.v1");
      expect((await c.next()).type).toBe("welcome");
    });

    it("closes 1009 on an oversize binary frame; a small one is answered unsupported_data", async () => {
      const server = await target.start({ MAX_FRAME_BYTES: "1024" });
      const binary = await connect(server.wsUrl);
      binary.ws.send(Buffer.alloc(1025));
      expect((await binary.waitClosed()).code).toBe(1009);
      const small = await connect(server.wsUrl);
      small.ws.send(Buffer.alloc(1024));
      expect(await small.waitFor("error")).toMatchObject({ code: "unsupported_data" });
    });

    it("a burst of small frames does not pass for a slow consumer; a client that stops reading does", async () => {
      const server = await target.start({ RATE_LIMIT: "0", MAX_BUFFERED_BYTES: "65536" });
      const room = `${server.wsUrl}?room=slow`;
      const stuck = await connect(room);
      const reader = await connect(room, { protocols: "chat.v1" });
      await reader.waitFor("welcome");
      // Stop reading from the socket: the server's buffer for it grows.
      const raw = (stuck.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
      raw.pause();
      // Joined before it bursts: a connection's frames before its join are
      // bounded (64), and under load the join can finish after 65 of them.
      const sender = await connect(room, { protocols: "chat.v1" });
      await sender.waitFor("welcome");
      const big = "y".repeat(1900);
      // Kernel buffers take a few MB first; the server's metric says when it gave up.
      let slow = false;
      let i = 0;
      while (i < 8000 && !slow) {
        sender.send({ user: "s", message: `${i} ${big}` });
        i++;
        if (i % 200 === 0) {
          // the reader keeps up: every message reaches it
          expect((await reader.collect("message", 200, 10_000)).at(-1)?.message).toBe(`${i - 1} ${big}`);
          const metrics = await (await fetch(`${server.url}/metrics`)).text();
          slow = /^chat_slow_consumers_total 1$/m.test(metrics);
        }
      }
      expect(slow).toBe(true);
      raw.resume();
      expect((await stuck.waitClosed(10_000)).code).toBe(1013);
    });
  });
}

/** Runs `command` to its end (bounded), with its output. */
function run(command: string[], env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const [bin, ...args] = command;
    const child = spawn(bin!, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      output += d.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.once("error", reject);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

/**
 * The store contract over a runtime's own SQLite driver (vitest runs under
 * Node, so test/runtimes/sqlite-store.run.ts runs in the runtime), and one
 * data file each way between that driver and better-sqlite3.
 */
export function sqliteDriverCase(driver: string, command: string[]): void {
  it(`${driver}: the store contract passes, and data files move to and from better-sqlite3`, async () => {
    const dir = mkdtempSync(join(tmpdir(), "chat-driver-"));
    trackForFile(() => rmSync(dir, { recursive: true, force: true }));
    const fromNode = join(dir, "node.db");
    const toNode = join(dir, "other.db");
    const node = new SqliteStore(new Database(fromNode));
    for (const m of fixtureMessages("from-node")) await node.append(m);
    await node.close();
    const { code, output } = await run(command, { CHAT_READ_DB: fromNode, CHAT_WRITE_DB: toNode, CHAT_TMP_DIR: dir });
    expect(code, output).toBe(0);
    expect(Number(output.match(/(\d+) pass(ed)?\b/)?.[1]), output).toBeGreaterThanOrEqual(15);
    expect(Number(output.match(/(\d+) fail(ed)?\b/)?.[1]), output).toBe(0);
    const back = new SqliteStore(new Database(toNode));
    expect(await back.latest(driver, 100)).toEqual(fixtureMessages(driver));
    await back.close();
  });
}

/**
 * One HISTORY_PATH served in turn by each target (each stopped with SIGTERM
 * before the next starts): every message written by one is in the next one's
 * welcome, and ids keep increasing across them.
 */
export function historyMovesCase(targets: ServerTarget[]): void {
  it(`one data file serves ${targets.map((t) => t.name).join(" -> ")} in turn`, async () => {
    const historyPath = tempHistoryPath();
    const sent: string[] = [];
    let lastId = "";
    for (const target of targets) {
      const server = await target.start({}, { historyPath });
      const c = await connect(`${server.wsUrl}?room=moves&user=${target.name}`, { protocols: "chat.v1" });
      const welcome = await c.waitFor("welcome");
      expect((welcome.history as Record<string, unknown>[]).map((m) => m.message)).toEqual(sent);
      c.send({ message: `written by ${target.name} ✓\u0000` });
      const echo = await c.waitFor("message");
      expect((echo.id as string) > lastId).toBe(true);
      lastId = echo.id as string;
      sent.push(`written by ${target.name} ✓\u0000`);
      expect((await server.stop()).code).toBe(0);
    }
  });
}
