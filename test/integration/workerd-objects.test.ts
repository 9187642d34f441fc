/**
 * What only the Durable Objects behind the Worker show, under `wrangler dev`:
 * a room's history in the object's storage across a restart, and an idle room
 * that hibernates and wakes without its connections noticing.
 */
import { describe, expect, it } from "vitest";
import { connect } from "../helpers/client.ts";
import { tempHistoryPath } from "../helpers/server.ts";
import { workerdTarget } from "../helpers/workerd.ts";

type Json = Record<string, unknown>;
const isMsg = (f: Json) => f.type === "message";

describe("workerd: Durable Object storage", () => {
  it("keeps a room's history and id order across a restart of wrangler dev", async () => {
    const historyPath = tempHistoryPath();
    const first = await workerdTarget.start({}, { historyPath });
    const a = await connect(`${first.wsUrl}?room=keep&user=ann`, { protocols: "chat.v1" });
    await a.waitFor("welcome");
    for (const m of ["one", "two", "three"]) a.send({ type: "message", message: m });
    const sent = await a.collect("message", 3);
    await a.close();
    await first.stop();

    const second = await workerdTarget.start({}, { historyPath });
    const b = await connect(`${second.wsUrl}?room=keep&user=bob`, { protocols: "chat.v1" });
    const welcome = await b.waitFor("welcome");
    expect(welcome.history).toEqual(sent);
    // resume after the first message: the rest, and the store vouches it is complete
    const c = await connect(`${second.wsUrl}?room=keep&since=${sent[0]!.id}`, { protocols: "chat.v1" });
    const resumed = await c.waitFor("welcome");
    expect(resumed.recovered).toBe(true);
    expect((resumed.history as unknown[]).length).toBe(2);
    // ids continue after the stored ones
    b.send({ type: "message", message: "four" });
    const four = await b.waitFor("message");
    expect(String(four.id) > String(sent[2]!.id)).toBe(true);
    const page = (await (await fetch(`${second.url}/rooms/keep/messages?limit=2`)).json()) as { messages: unknown[] };
    expect(page.messages.map((m) => (m as { message: string }).message)).toEqual(["three", "four"]);
    // another room is another object, with its own (empty) history
    const other = await connect(`${second.wsUrl}?room=elsewhere`, { protocols: "chat.v1" });
    expect((await other.waitFor("welcome")).history).toEqual([]);
  }, 90_000);
});

describe("workerd: hibernation", () => {
  it("an idle room is evicted; woken by a frame or a close, it carries on with no second welcome or presence", async () => {
    const server = await workerdTarget.start();
    const room = `${server.wsUrl}?room=naps`;
    const ann = await connect(`${room}&user=ann`, { protocols: "chat.v1" });
    await ann.waitFor("welcome");
    const bob = await connect(`${room}&user=bob`, { protocols: "chat.v1" });
    await bob.waitFor("welcome");
    const sam = await connect(room); // seed mode
    await ann.waitFor((f) => f.type === "presence" && f.joined === "bob");
    ann.send({ type: "message", message: "before" });
    const before = await ann.waitFor(isMsg);
    await bob.waitFor(isMsg);
    await sam.waitFor(isMsg);
    const seen = [ann, bob, sam].map((c) => c.received.length);

    // workerd evicts an object about 10 s after its last event; the
    // hibernated sockets stay open meanwhile.
    await new Promise((r) => setTimeout(r, 12_000));
    expect(server.output()).not.toContain("room rebuilt after hibernation");
    ann.send({ type: "message", message: "after", cid: "c-1" });
    const after = await ann.waitFor((f) => isMsg(f) && f.message === "after", 10_000);
    expect(server.output()).toContain("room rebuilt after hibernation");
    expect(after).toMatchObject({ cid: "c-1", user: "ann" });
    expect(String(after.id) > String(before.id)).toBe(true);
    for (const c of [bob, sam]) expect(await c.waitFor(isMsg)).toEqual({ ...after, cid: undefined });
    // The wake-up sent nothing else to anyone: no welcome, no presence, not
    // even the merged presence of the replayed joins (PRESENCE_INTERVAL_MS
    // later, so wait past it).
    await new Promise((r) => setTimeout(r, 1000));
    [ann, bob, sam].forEach((c, i) => {
      expect(c.received.slice(seen[i]).map((f) => f.json?.message)).toEqual(["after"]);
    });
    // A close that wakes the room (a tab closed while it slept) still tells the others.
    await new Promise((r) => setTimeout(r, 12_000));
    await bob.close();
    const left = await ann.waitFor((f) => f.type === "presence" && f.left === "bob");
    expect(left).toEqual({ type: "presence", users: ["ann"], left: "bob" });
    expect(server.output().split("room rebuilt after hibernation").length - 1).toBe(2);
    const cat = await connect(`${room}&user=cat`, { protocols: "chat.v1" });
    expect((await cat.waitFor("welcome")).users).toEqual(["ann", "cat"]);
  }, 90_000);
});
