/**
 * Replies that used to cut an honest client (issue 10, docs/protocol.md), on a real
 * server of every runtime: a resume of 1000 messages of 8 KB, a `history`
 * answer of 4 MB, and HISTORY_TTL retention. Counts and order only; how long
 * anything takes is never asserted.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { connect, type TestClient } from "../../helpers/client.ts";
import type { RunningServer, ServerTarget } from "../../helpers/server.ts";
import type { SuiteCaps } from "../server.suite.ts";

type Json = Record<string, unknown>;
const SUB = "chat.v1";
let seq = 0;
const freshRoom = () => `pg${process.pid.toString(36)}-${(++seq).toString(36)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** 2000 characters of four UTF-8 bytes each (8 KB), distinct per `i`. */
const bigText = (i: number) => `${i}:${"😀".repeat(1990)}`;

/** Sends `texts` from `c` in bursts of 50, each burst awaited by its last echo. */
async function sendAll(c: TestClient, texts: string[]): Promise<Json[]> {
  const echoes: Json[] = [];
  for (let from = 0; from < texts.length; from += 50) {
    const burst = texts.slice(from, from + 50);
    for (const [k, message] of burst.entries()) c.send({ message, cid: `c${from + k}` });
    for (const [k] of burst.entries()) {
      const echo = await c.waitFor((f) => f.cid === `c${from + k}`, 30_000);
      expect(echo.type, JSON.stringify(echo)).toBe("message");
      echoes.push(echo);
    }
  }
  return echoes;
}

/**
 * Reads a paged reply to its end: the frame that starts it (welcome or
 * history), then `history` frames until one says `more: false`. Returns the
 * frames and every message they carried, in order.
 */
async function readPaged(c: TestClient, first: Json): Promise<{ frames: Json[]; messages: Json[] }> {
  const frames = [first];
  const messages = [...((first.type === "welcome" ? first.history : first.messages) as Json[])];
  let last = first;
  for (let i = 0; i < 10_000 && last.more === true; i++) {
    last = await c.waitFor("history", 30_000);
    frames.push(last);
    messages.push(...(last.messages as Json[]));
  }
  return { frames, messages };
}

/** Registers the paging and retention cases for one runtime. */
export function pagingCases(target: ServerTarget, _caps: SuiteCaps = {}): void {
  describe("paged replies and retention (issue 10)", () => {
    let server: RunningServer;

    beforeAll(async () => {
      // Rate limits off: the cases fill rooms as fast as the server takes it.
      server = await target.start({ RATE_LIMIT: "0", MAX_CONNECTIONS_PER_IP: "0" });
    });

    const v1 = async (room: string, extra: Record<string, string> = {}): Promise<{ c: TestClient; welcome: Json }> => {
      const c = await connect(`${server.wsUrl}?${new URLSearchParams({ room, ...extra })}`, { protocols: SUB });
      const welcome = await c.next(30_000);
      expect(welcome.type).toBe("welcome");
      return { c, welcome };
    };

    it("a resume of 1000 messages of 8 KB arrives whole and in order, and the client stays connected", async () => {
      const room = freshRoom();
      const writer = (await v1(room, { user: "writer" })).c;
      const [marker] = await sendAll(writer, ["before the gap"]);
      const sent = await sendAll(
        writer,
        Array.from({ length: 1000 }, (_, i) => bigText(i)),
      );
      // Resumes from the marker: exactly RESUME_LIMIT (1000) messages follow it.
      const c = await connect(`${server.wsUrl}?${new URLSearchParams({ room, since: String(marker!.id) })}`, {
        protocols: SUB,
      });
      // Not reading for a while lets the server's buffer fill, as a busy phone would.
      c.ws.pause();
      await sleep(300);
      c.ws.resume();
      const welcome = await c.next(30_000);
      expect(welcome).toMatchObject({ type: "welcome", recovered: true, more: true });
      const { frames, messages } = await readPaged(c, welcome);
      expect(frames.length).toBeGreaterThan(10); // ~8 MB: a welcome of 512 KiB, then pages of ~64 Ki characters
      expect(frames.at(-1)).toMatchObject({ type: "history", more: false });
      expect(messages.map((m) => m.id)).toEqual(sent.map((m) => m.id));
      expect(messages.map((m) => m.message)).toEqual(sent.map((m) => m.message));
      // Still connected, and live messages follow the pages.
      writer.send({ message: "after the resume" });
      expect((await c.waitFor("message", 10_000)).message).toBe("after the resume");
      c.send({ type: "ping" });
      expect((await c.waitFor("pong", 10_000)).type).toBe("pong");
      expect(c.closeInfo).toBeNull();
      await c.close();
      await writer.close();
    });

    it("a history answer of 500 messages of 8 KB is paged: every page carries `before` and `more`, all arrive", async () => {
      const room = freshRoom();
      const { c } = await v1(room, { user: "writer" });
      const sent = await sendAll(
        c,
        Array.from({ length: 501 }, (_, i) => bigText(i)),
      );
      const before = String(sent.at(-1)!.id);
      c.send({ type: "history", before, limit: 500 });
      const first = await c.waitFor((f) => f.type === "history" && f.before === before, 30_000);
      const { frames, messages } = await readPaged(c, first);
      expect(frames.length).toBeGreaterThan(10);
      for (const f of frames) expect(f.before).toBe(before);
      expect(frames.slice(0, -1).every((f) => f.more === true)).toBe(true);
      expect(frames.at(-1)!.more).toBe(false);
      expect(messages.map((m) => m.id)).toEqual(sent.slice(0, 500).map((m) => m.id));
      expect(c.closeInfo).toBeNull();
      await c.close();
    });

    it("HISTORY_TTL: a message past the TTL is in no history (welcome, resume, REST); newer ones are", async () => {
      const ttl = await target.start({ HISTORY_TTL: "2s", RATE_LIMIT: "0" });
      try {
        const room = freshRoom();
        const c = await connect(`${ttl.wsUrl}?room=${room}&user=writer`, { protocols: SUB });
        expect((await c.next()).type).toBe("welcome");
        const [old] = await sendAll(c, ["soon gone"]);
        await sleep(2500); // past the TTL: the clock only moves forward
        const [fresh] = await sendAll(c, ["still here"]);
        const again = await connect(`${ttl.wsUrl}?room=${room}`, { protocols: SUB });
        const welcome = await again.next();
        expect((welcome.history as Json[]).map((m) => m.message)).toEqual(["still here"]);
        const resumed = await connect(`${ttl.wsUrl}?${new URLSearchParams({ room, since: String(old!.id) })}`, {
          protocols: SUB,
        });
        const w2 = await resumed.next();
        expect(w2).toMatchObject({ recovered: false });
        expect((w2.history as Json[]).map((m) => m.id)).toEqual([fresh!.id]);
        const rest = await fetch(`${ttl.url}/rooms/${room}/messages`, { signal: AbortSignal.timeout(5000) });
        expect(((await rest.json()) as { messages: Json[] }).messages.map((m) => m.id)).toEqual([fresh!.id]);
        await Promise.all([c.close(), again.close(), resumed.close()]);
      } finally {
        await ttl.stop().catch(() => {});
      }
    });
  });
}
