/**
 * The bundle `wrangler deploy` would upload, run by workerd alone (no
 * `wrangler dev`): what wrangler's dev proxy would hide. Under `wrangler dev`
 * the client talks to wrangler's own proxy Worker, which negotiates
 * WebSocket compression by its own flags, not ours.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { oursTarget, startWorkerd } from "../../bench/workers.ts";
import { track } from "../helpers/cleanup.ts";
import { connect } from "../helpers/client.ts";

it("the deployed bundle negotiates no permessage-deflate (wrangler.jsonc's flag), and chats", async () => {
  const work = mkdtempSync(join(tmpdir(), "workerd-direct-"));
  track(() => rmSync(work, { recursive: true, force: true }));
  const server = await startWorkerd(oursTarget(work, { LOG_LEVEL: "warn" }));
  track(() => server.stop());
  const url = `ws://127.0.0.1:${server.port}/websocket?room=zip`;
  const zoe = await connect(`${url}&user=zoe`, { protocols: "chat.v1", perMessageDeflate: true });
  expect(zoe.ws.extensions).toBe("");
  expect((await zoe.waitFor("welcome")).user).toBe("zoe");
  const sam = await connect(url); // seed mode
  sam.send({ user: "sam", message: "hello" });
  expect(await zoe.waitFor("message")).toMatchObject({ user: "sam", message: "hello", room: "zip" });
}, 120_000);
