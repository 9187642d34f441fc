/**
 * The signature-checking example in docs/api.md, run as printed: the code
 * block after `<!-- webhook-verify-example -->` is compiled (esbuild, types
 * stripped) and imported, then used by a real HTTP receiver on 127.0.0.1
 * that the real delivery loop POSTs to.
 */
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { resolve } from "node:path";
import { transform } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/observability/logger.ts";
import { WebhookDelivery } from "../../src/webhooks/delivery.ts";
import { MemoryOutbox } from "../../src/webhooks/outbox.ts";
import { outboxSink } from "../../src/webhooks/start.ts";

interface Example {
  verifyChatWebhook(secret: string, rawBody: string, signature: string | null): Promise<boolean>;
  handleChatWebhook(request: Request, secret: string, seen: Set<string>): Promise<Response>;
}

const SECRET = "docs-example-secret-0123";

async function loadExample(): Promise<Example> {
  const doc = readFileSync(resolve(import.meta.dirname, "../../docs/api.md"), "utf8");
  const block = /<!-- webhook-verify-example -->\s*```ts\n([\s\S]*?)```/.exec(doc)?.[1];
  if (!block) throw new Error("docs/api.md has no ts block after <!-- webhook-verify-example -->");
  const { code } = await transform(block, { loader: "ts", format: "esm" });
  return (await import(`data:text/javascript;base64,${Buffer.from(code).toString("base64")}`)) as Example;
}

describe("docs/api.md: verifying a webhook signature", () => {
  let example: Example;
  const seen = new Set<string>();
  const answers: { status: number; id: string | undefined; body: string; signature: string | null }[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", async () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const headers = new Headers();
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string") headers.set(k, v);
      // The example's handler, on the request exactly as it arrived.
      const answer = await example.handleChatWebhook(
        new Request(`http://127.0.0.1${req.url}`, { method: "POST", headers, body }),
        SECRET,
        seen,
      );
      answers.push({
        status: answer.status,
        id: headers.get("x-chat-event-id") ?? undefined,
        body,
        signature: headers.get("x-chat-signature"),
      });
      res.writeHead(answer.status).end();
    });
  });
  let url = "";

  beforeAll(async () => {
    example = await loadExample();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const addr = server.address();
    url = `http://127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}/hook`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  async function deliver(secret: string, until: () => boolean) {
    const outbox = new MemoryOutbox();
    const d = new WebhookDelivery({ url, secret, outbox, logger: silentLogger, firstRetryMs: 5, maxRetryMs: 10 });
    d.start();
    outboxSink(outbox, d, silentLogger)({ event: "member.joined", room: "docs", data: { user: "ann ✓" } });
    // Bounded wait for what the receiver answered.
    for (let i = 0; i < 500 && !until(); i++) await new Promise((r) => setTimeout(r, 10));
    await d.stop(0);
  }

  it("accepts a real delivery signed with the secret, and only once per id", async () => {
    await deliver(SECRET, () => answers.some((a) => a.status === 204));
    const ok = answers.find((a) => a.status === 204)!;
    expect(ok).toBeDefined();
    expect(seen.has(ok.id!)).toBe(true);
    expect(await example.verifyChatWebhook(SECRET, ok.body, ok.signature)).toBe(true);
    // A retry of the same event is answered 2xx without being handled again.
    const again = await example.handleChatWebhook(
      new Request(url, { method: "POST", body: ok.body, headers: { "x-chat-signature": ok.signature! } }),
      SECRET,
      seen,
    );
    expect(again.status).toBe(204);
    expect(seen.size).toBe(1);
  });

  it("refuses a delivery signed with another secret, a changed body and a missing or malformed header", async () => {
    answers.length = 0;
    await deliver("another-secret-0123456789", () => answers.length >= 2);
    expect(answers.slice(0, 2).map((a) => a.status)).toEqual([401, 401]);
    const [first] = answers;
    expect(await example.verifyChatWebhook(SECRET, first!.body, first!.signature)).toBe(false);
    expect(await example.verifyChatWebhook("another-secret-0123456789", first!.body, first!.signature)).toBe(true);
    expect(
      await example.verifyChatWebhook("another-secret-0123456789", first!.body.replace("ann", "bob"), first!.signature),
    ).toBe(false);
    expect(await example.verifyChatWebhook(SECRET, first!.body, null)).toBe(false);
    expect(await example.verifyChatWebhook(SECRET, first!.body, "sha256=xyz")).toBe(false);
    expect(await example.verifyChatWebhook(SECRET, first!.body, first!.signature!.toUpperCase())).toBe(false);
  });
});
