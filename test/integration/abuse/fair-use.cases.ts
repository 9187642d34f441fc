/**
 * Fair use (issue 10, docs/protocol.md) on a real server of every runtime: each
 * row of the table that FU owns is tried as the hostile client did,
 * and the new behaviour is checked. Counts and bounds only: how fast the
 * server stays for everyone else is measured by `npm run bench -- hostile`,
 * never here.
 *
 * One tuned server serves all cases; each case is its own client address
 * (TRUST_PROXY=loopback and X-Forwarded-For), so cases do not share buckets
 * and the suite's default server is never drained.
 */
import { request } from "node:http";
import { beforeAll, describe, expect, it } from "vitest";
import { connect, expectRefused, type TestClient } from "../../helpers/client.ts";
import type { RunningServer, ServerTarget } from "../../helpers/server.ts";
import type { SuiteCaps } from "../server.suite.ts";

type Json = Record<string, unknown>;
const SUB = "chat.v1";

/** The tuned server: small per-address budgets so that a case shows them quickly. */
export const FAIR_USE_ENV = {
  TRUST_PROXY: "loopback",
  RATE_LIMIT_IP: "60",
  // Slow on purpose: a case's bound (budget + refill x elapsed) stays far below what it attempts.
  RATE_LIMIT_IP_REFILL: "0.5",
  MAX_CONNECTIONS_PER_IP: "12",
  PRESENCE_INTERVAL_MS: "250",
};

let seq = 0;
/** A client address no other case uses (TEST-NET-2). */
const freshAddress = () => `198.51.100.${(++seq % 250) + 1}`;
const freshRoom = () => `fu${process.pid.toString(36)}-${(++seq).toString(36)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Handshakes and first frames on a machine busy with other runs (workerd is the slowest). */
const SLOW_MS = 10_000;

/** Answers to `n` frames of the kinds given, in order (each answer is one frame). */
async function answers(c: TestClient, n: number, kinds: string[]): Promise<Json[]> {
  const out: Json[] = [];
  while (out.length < n) {
    const f = (await c.next(10_000)) as Json;
    if (kinds.includes(String(f.type))) out.push(f);
  }
  return out;
}

/** A GET with a chosen Host and X-Forwarded-For (fetch may not set Host). */
function get(
  server: RunningServer,
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Json }> {
  return new Promise((resolve, reject) => {
    const req = request(`${server.url}${path}`, { headers, timeout: 5000 }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text += d;
      });
      res.on("end", () => {
        let body: Json = {};
        try {
          body = JSON.parse(text) as Json;
        } catch {
          body = { text };
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      });
    });
    req.on("timeout", () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on("error", reject);
    req.end();
  });
}

/**
 * Registers the fair-use cases for one runtime. Workers keep the
 * per-address table per room (docs/workers.md), so every case stays in one
 * room where it counts per address.
 */
export function fairUseCases(target: ServerTarget, _caps: SuiteCaps = {}): void {
  describe("fair use (issue 10)", () => {
    let server: RunningServer;
    let runtime = "";

    beforeAll(async () => {
      server = await target.start(FAIR_USE_ENV);
      const health = await get(server, "/healthz", {});
      runtime = String(health.body.runtime ?? "");
    });

    const ws = (room: string, extra: Record<string, string> = {}) =>
      `${server.wsUrl}?${new URLSearchParams({ room, ...extra })}`;
    const v1 = async (room: string, address: string, user?: string): Promise<TestClient> => {
      const c = await connect(ws(room, user ? { user } : {}), {
        timeoutMs: SLOW_MS,
        protocols: SUB,
        headers: { "x-forwarded-for": address },
      });
      expect((await c.next(SLOW_MS)).type).toBe("welcome");
      return c;
    };

    it("history burst: history frames cost by what they read; over the limit rate_limited with retryAfterMs; waiting it succeeds", async () => {
      const room = freshRoom();
      // limit 50 costs 1 unit; the connection's read bucket holds 20 (2 back per second).
      // One at a time, as a client that waits for its answers does.
      const small = await v1(room, freshAddress());
      const t0 = Date.now();
      const got: Json[] = [];
      for (let i = 0; i < 25; i++) {
        small.send({ type: "history", limit: 50 });
        got.push(...(await answers(small, 1, ["history", "error"])));
      }
      const extra = Math.floor(((Date.now() - t0) / 1000) * 2);
      const answered = got.filter((f) => f.type === "history").length;
      expect(answered).toBeGreaterThanOrEqual(20);
      expect(answered).toBeLessThanOrEqual(20 + extra);
      const refused = got.filter((f) => f.type === "error");
      expect(refused.length).toBe(25 - answered);
      expect(refused.length).toBeGreaterThan(0);
      for (const e of refused) {
        expect(e.code).toBe("rate_limited");
        expect(typeof e.retryAfterMs).toBe("number");
        expect(e.retryAfterMs as number).toBeGreaterThan(0);
      }
      await sleep(refused.at(-1)!.retryAfterMs as number);
      small.send({ type: "history", limit: 50 });
      expect((await answers(small, 1, ["history", "error"]))[0]!.type).toBe("history");

      // limit 500 costs ten times as much: two of them empty the bucket.
      const big = await v1(room, freshAddress());
      const bigGot: Json[] = [];
      for (let i = 0; i < 5; i++) {
        big.send({ type: "history", limit: 500 });
        bigGot.push(...(await answers(big, 1, ["history", "error"])));
      }
      expect(bigGot.map((f) => f.type)).toEqual(["history", "history", "error", "error", "error"]);
      expect(bigGot[2]!.retryAfterMs as number).toBeGreaterThan(1000);
    });

    it("history burst over reconnects: the address's bucket is shared, a new connection buys nothing", async () => {
      const room = freshRoom();
      const address = freshAddress();
      let answered = 0;
      let refused = 0;
      // 8 connections x 3 reads of 500 (cost 10 each) = 240 units asked of an address budget of 60.
      for (let i = 0; i < 8; i++) {
        const c = await v1(room, address);
        for (let k = 0; k < 3; k++) {
          c.send({ type: "history", limit: 500 });
          const [f] = await answers(c, 1, ["history", "error"]);
          if (f!.type === "history") answered++;
          else refused++;
        }
        await c.close();
      }
      // Budget 60: at most 6 reads of 10 units (refill 0.5/s adds one read per 20 s).
      expect(answered).toBeLessThanOrEqual(7);
      expect(answered).toBeGreaterThanOrEqual(2);
      expect(refused).toBe(24 - answered);
    });

    it("REST history in a loop: charged per address by what it reads; 429 with Retry-After and JSON; waiting it succeeds", async () => {
      const room = freshRoom();
      const address = freshAddress();
      const headers = { "x-forwarded-for": address };
      const statuses: number[] = [];
      let last: Awaited<ReturnType<typeof get>> | null = null;
      for (let i = 0; i < 12; i++) {
        last = await get(server, `/rooms/${room}/messages?limit=500`, headers);
        statuses.push(last.status);
      }
      // 60 units, 10 per read of 500.
      expect(statuses.slice(0, 6)).toEqual([200, 200, 200, 200, 200, 200]);
      expect(statuses.slice(6).every((s) => s === 429)).toBe(true);
      expect(typeof last!.body.error).toBe("string");
      expect(Number(last!.headers["retry-after"])).toBeGreaterThanOrEqual(1);
      const small = await get(server, `/rooms/${room}/messages?limit=50`, headers);
      expect(small.status).toBe(429);
      await sleep(small.body.retryAfterMs as number);
      expect((await get(server, `/rooms/${room}/messages?limit=50`, headers)).status).toBe(200);
      // Another address is not affected.
      expect(
        (await get(server, `/rooms/${room}/messages?limit=500`, { "x-forwarded-for": freshAddress() })).status,
      ).toBe(200);
    });

    it("many connections from one address, 10 messages each: the address's message bucket is shared", async () => {
      const room = freshRoom();
      const address = freshAddress();
      const t0 = Date.now();
      const clients: TestClient[] = [];
      for (let i = 0; i < 10; i++) clients.push(await v1(room, address, `n${i}`));
      let cid = 0;
      for (const c of clients)
        for (let k = 0; k < 10; k++) c.send({ type: "message", message: `m${k}`, cid: `c${++cid}` });
      let accepted = 0;
      let limited = 0;
      for (const c of clients) {
        let mine = 0;
        while (mine < 10) {
          const f = (await c.next(10_000)) as Json;
          if (typeof f.cid !== "string") continue; // others' messages, presence
          mine++;
          if (f.type === "message") accepted++;
          else if (f.type === "error" && f.code === "rate_limited") {
            limited++;
            expect(f.retryAfterMs as number).toBeGreaterThan(0);
          } else throw new Error(`unexpected ${JSON.stringify(f)}`);
        }
      }
      const elapsedS = (Date.now() - t0) / 1000;
      // 60 units, 0.5 back per second.
      expect(accepted).toBeLessThanOrEqual(60 + Math.ceil(elapsedS * 0.5) + 1);
      expect(accepted + limited).toBe(100);
      expect(limited).toBeGreaterThan(0);
    });

    it("connection cap per address: the next handshake gets 429 JSON before the upgrade; other addresses connect", async () => {
      const room = freshRoom();
      const address = freshAddress();
      const open: TestClient[] = [];
      for (let i = 0; i < 12; i++) open.push(await v1(room, address));
      const refused = await expectRefused(ws(room), {
        protocols: SUB,
        headers: { "x-forwarded-for": address },
      });
      expect(refused.status).toBe(429);
      expect(refused.body).toMatchObject({ error: expect.stringMatching(/connections/) });
      const other = await v1(room, freshAddress());
      await other.close();
      // One closes: the address may connect again (the close reaches the server asynchronously).
      await open.pop()!.close();
      let again: TestClient | null = null;
      for (let i = 0; i < 50 && again === null; i++) {
        try {
          again = await v1(room, address);
        } catch {
          await sleep(100);
        }
      }
      expect(again).not.toBeNull();
    });

    it("presence churn: idle members get merged presence frames with the exact users list", async () => {
      const room = freshRoom();
      const watchers: TestClient[] = [];
      for (let i = 0; i < 3; i++) watchers.push(await v1(room, freshAddress(), `idle${i}`));
      const churner = freshAddress();
      const t0 = Date.now();
      // 20 join/leave cycles: 40 changes.
      for (let i = 0; i < 20; i++) {
        const c = await v1(room, churner, `churn${i}`);
        await c.close();
      }
      // A last joiner after the churn: the frame that announces it lists exactly who is there.
      await v1(room, freshAddress(), "late");
      const expected = ["idle0", "idle1", "idle2", "late"];
      const w = watchers[0]!;
      const frames: Json[] = [];
      for (;;) {
        const f = await w.waitFor("presence", 10_000);
        frames.push(f);
        const users = f.users as string[];
        // Closes reach the server asynchronously: a merged frame may still name a churner.
        if (!users.includes("late") || users.some((u) => u.startsWith("churn"))) continue;
        expect([...users].sort()).toEqual(expected);
        break;
      }
      const elapsed = Date.now() - t0;
      // Without merging: 40 frames (+2 for the later watchers). Merged: one per 250 ms at most.
      expect(frames.length).toBeLessThanOrEqual(4 + Math.ceil(elapsed / 250));
      expect(frames.length).toBeLessThan(42);
    });

    it("invalid-frame flood: every frame answered, the connection stays; the log gets a bounded number of lines and a count", async () => {
      const room = freshRoom();
      const c = await v1(room, freshAddress());
      const before = server.output().split("error sent to client").length;
      for (let i = 0; i < 200; i++) c.send("x");
      const errs = await answers(c, 200, ["error"]);
      expect(errs.every((e) => e.code === "invalid_json")).toBe(true);
      c.send({ type: "ping" });
      expect((await answers(c, 1, ["pong", "error"]))[0]!.type).toBe("pong");
      const lines = server.output().split("error sent to client").length - before;
      expect(lines).toBeLessThanOrEqual(5);
      await c.close();
      // The close line carries the count of the errors not logged one by one.
      let closed = "";
      for (let i = 0; i < 100 && !closed; i++) {
        closed = server.output().match(/[^\n]*"errorsNotLogged":195[^\n]*/)?.[0] ?? "";
        if (!closed) await sleep(50);
      }
      expect(closed).toContain("connection closed");
    });

    it("a cid holding terminal escapes is echoed to the client but never written raw into the log", async () => {
      const c = await v1(freshRoom(), freshAddress());
      const cid = "\u001b[31m\u009b2Jx\u202e";
      c.send({ type: "message", message: "", cid });
      const [e] = await answers(c, 1, ["error"]);
      expect(e).toMatchObject({ code: "invalid_message", cid });
      let line = "";
      for (let i = 0; i < 100 && !line; i++) {
        line = server.output().match(/[^\n]*u009b2Jx[^\n]*/)?.[0] ?? "";
        if (!line) await sleep(50);
      }
      expect(line).toContain("error sent to client");
      expect(/[\u001b\u009b\u202e]/.test(line)).toBe(false);
    });

    it("defaults from one address (no proxy): 256 connections open at once, the 257th gets 429; 100 messages across them, then rate_limited", async () => {
      const plain = await target.start();
      const room = freshRoom();
      const url = `${plain.wsUrl}?room=${room}`;
      const open: TestClient[] = [];
      for (let batch = 0; batch < 8; batch++) {
        open.push(...(await Promise.all(Array.from({ length: 32 }, () => connect(url, { timeoutMs: SLOW_MS })))));
      }
      const refused = await expectRefused(url);
      expect(refused.status).toBe(429);
      expect(refused.body).toMatchObject({ error: expect.stringMatching(/at most 256/) });
      const t0 = Date.now();
      const senders = open.slice(0, 20);
      for (const [i, c] of senders.entries()) for (let k = 0; k < 10; k++) c.send({ user: `s${i}`, message: `m${k}` });
      // Seed mode has no cid: each sender counts its own echoes and errors.
      let accepted = 0;
      let limited = 0;
      for (const [i, c] of senders.entries()) {
        let mine = 0;
        while (mine < 10) {
          const f = (await c.next(10_000)) as Json;
          if (f.type === "error") {
            expect(f.code).toBe("rate_limited");
            limited++;
            mine++;
          } else if (f.user === `s${i}`) {
            accepted++;
            mine++;
          }
        }
      }
      const elapsedS = (Date.now() - t0) / 1000;
      expect(accepted + limited).toBe(200);
      expect(accepted).toBeLessThanOrEqual(100 + Math.ceil(elapsedS * 10) + 1);
      expect(limited).toBeGreaterThan(0);
      await Promise.all(open.map((c) => c.close()));
      await plain.stop();
    }, 120_000);

    it("RATE_LIMIT=0 turns every rate limit off but not the connection cap", async () => {
      const off = await target.start({ RATE_LIMIT: "0", MAX_CONNECTIONS_PER_IP: "3" });
      const room = freshRoom();
      const url = `${off.wsUrl}?room=${room}`;
      const open = [];
      for (let i = 0; i < 3; i++) open.push(await connect(url, { timeoutMs: SLOW_MS }));
      expect((await expectRefused(url)).status).toBe(429);
      const c = open[0]!;
      for (let k = 0; k < 150; k++) c.send({ user: "u", message: `m${k}` });
      const got = await c.collect(() => true, 150, 15_000);
      expect(got.every((f) => f.type === "message")).toBe(true);
      for (let k = 0; k < 30; k++) {
        const res = await get(off, `/rooms/${room}/messages?limit=500`, {});
        expect(res.status).toBe(200);
      }
      await off.stop();
    });

    it("DNS rebinding: without ALLOWED_HOSTS (and no auth) an unknown Host is refused 403; IP literals and localhost pass", async () => {
      if (runtime.startsWith("workerd")) return; // Workers answer every host (Cloudflare routes by host; docs/workers.md)
      const room = freshRoom();
      const evil = await get(server, `/rooms/${room}/messages`, { host: "rebind.example:8888" });
      expect(evil.status).toBe(403);
      expect(evil.body.error).toMatch(/host/);
      const port = new URL(server.url).port;
      expect((await get(server, `/rooms/${room}/messages`, { host: `localhost:${port}` })).status).toBe(200);
      const refused = await expectRefused(ws(room), {
        protocols: SUB,
        headers: { host: "rebind.example" },
      });
      expect(refused.status).toBe(403);
      const listed = await target.start({ ALLOWED_HOSTS: "chat.example" });
      expect((await get(listed, `/rooms/${room}/messages`, { host: "chat.example" })).status).toBe(200);
      expect((await get(listed, `/rooms/${room}/messages`, { host: "rebind.example" })).status).toBe(403);
      await listed.stop();
    });
  });
}
