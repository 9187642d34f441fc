/**
 * Token lifetime on Workers across hibernation: a room whose users have
 * tokens with `exp` still hibernates (the expiry waits on the object's
 * alarm, not on a timer, which would keep the object in memory), the alarm
 * wakes it at `exp` and the expired connection is closed with
 * `token_expired` + 4001, while a connection that refreshed its token is
 * rebuilt with the new one and stays.
 */
import { sign } from "hono/jwt";
import { expect, it } from "vitest";
import { connect, type TestClient } from "../helpers/client.ts";
import { workerdTarget } from "../helpers/workerd.ts";

const SECRET = "governance-workerd-secret-0123";
const nowS = () => Math.floor(Date.now() / 1000);
const token = (claims: Record<string, unknown>) => sign(claims, SECRET, "HS256");

it("a room with expiring tokens hibernates; the alarm ends the expired connection, a refreshed one stays", async () => {
  const server = await workerdTarget.start({ AUTH_SECRET: SECRET });
  const url = async (name: string, exp: number) => `${server.wsUrl}?room=naps&token=${await token({ name, exp })}`;
  // Past workerd's ~10 s of idleness before it evicts an object, with margin.
  const exp = nowS() + 28;
  const open = async (name: string): Promise<TestClient> => {
    const c = await connect(await url(name, exp), { protocols: "chat.v1" });
    await c.waitFor("welcome");
    // One frame each: under wrangler dev a close reaches a client that never sent one only at its close timeout.
    c.send({ type: "ping" });
    await c.waitFor("pong");
    return c;
  };
  const ann = await open("ann");
  const bob = await open("bob");
  const fresh = nowS() + 600;
  bob.send({ type: "auth", token: await token({ name: "bob", exp: fresh }) });
  expect(await bob.waitFor((f) => f.type === "auth")).toEqual({ type: "auth", exp: fresh });

  const closed = await ann.waitClosed(60_000);
  expect(closed.code).toBe(4001);
  expect(ann.received.map((f) => f.json).find((f) => f?.type === "error")).toMatchObject({ code: "token_expired" });
  // The object was evicted meanwhile (no timer kept it) and rebuilt by the alarm.
  expect(server.output()).toContain("room rebuilt after hibernation");
  // Bob was rebuilt with the refreshed token: still here past the old exp.
  bob.send({ type: "ping" });
  expect(await bob.waitFor("pong", 10_000)).toEqual({ type: "pong" });
  expect(bob.closeInfo).toBeNull();
}, 120_000);
