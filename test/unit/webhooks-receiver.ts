/**
 * A real webhook receiver on 127.0.0.1 for the webhook tests: records every
 * request (raw body, headers) and answers what the test's `answer` says.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";

/** One request the receiver got. */
export interface Received {
  id: string | undefined;
  signature: string | undefined;
  body: string;
  /** The parsed body. */
  event: { id: string; event: string; room: string; ts: number; data: Record<string, unknown> };
  /** What the receiver answered (0: it never answered). */
  status: number;
}

/** A status to answer, or "hang" to never answer. */
export type Answer = number | "hang";

export interface Receiver {
  url: string;
  received: Received[];
  /** Requests with a 2xx answer, in the order they arrived. */
  accepted(): Received[];
  /** Changes how the receiver answers from now on. */
  answer: (r: Omit<Received, "status">) => Answer;
  /** Resolves once `pred` holds (checked after each request, and every 20 ms); rejects after `ms`. */
  until(pred: () => boolean, ms?: number, what?: string): Promise<void>;
  close(): Promise<void>;
}

/** True when `signature` is `sha256=` + the hex HMAC-SHA256 of `body` with `secret`. */
export function validSignature(secret: string, body: string, signature: string | undefined): boolean {
  const expected = Buffer.from(`sha256=${createHmac("sha256", secret).update(body).digest("hex")}`);
  const got = Buffer.from(signature ?? "");
  return got.length === expected.length && timingSafeEqual(got, expected);
}

export async function startReceiver(answer: Receiver["answer"] = () => 200, port = 0): Promise<Receiver> {
  const received: Received[] = [];
  const hanging = new Set<ServerResponse>();

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const r = {
        id: req.headers["x-chat-event-id"] as string | undefined,
        signature: req.headers["x-chat-signature"] as string | undefined,
        body,
        event: JSON.parse(body) as Received["event"],
      };
      const status = receiver.answer(r);
      received.push({ ...r, status: status === "hang" ? 0 : status });
      if (status === "hang") {
        hanging.add(res);
        res.on("close", () => hanging.delete(res));
        return;
      }
      res.writeHead(status, { "content-type": "text/plain" }).end("ok");
    });
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  const address = server.address();
  const actual = typeof address === "object" && address ? address.port : 0;
  const receiver: Receiver = {
    url: `http://127.0.0.1:${actual}/hook`,
    received,
    accepted: () => received.filter((r) => r.status >= 200 && r.status < 300),
    answer,
    async until(pred, ms = 15_000, what = "condition") {
      const deadline = Date.now() + ms;
      // Bounded by the deadline.
      while (!pred()) {
        if (Date.now() > deadline)
          throw new Error(`receiver: timed out waiting for ${what} (${received.length} requests)`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async close() {
      for (const res of hanging) res.destroy();
      server.closeAllConnections?.();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return receiver;
}
