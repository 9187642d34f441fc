/**
 * The Cloudflare Workers build under `wrangler dev` (workerd on 127.0.0.1):
 * the black-box suite, plus what only Workers show: history in the Durable
 * Objects' storage surviving a restart.
 */
import { describe, expect, it } from "vitest";
import { connect } from "../helpers/client.ts";
import { tempHistoryPath } from "../helpers/server.ts";
import { workerdTarget } from "../helpers/workerd.ts";

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
  });
});
