/**
 * The webhook transport on Node: what the portable one (fetch, WebCrypto)
 * costs too much for there. Measured on this project's loaded 2-core machine
 * (docs/api.md, bench/webhooks.ts):
 * - a POST through undici's fetch takes about 0.8-0.9 ms of CPU, through
 *   http.request with a keep-alive agent 0.2-0.3 ms;
 * - an HMAC through WebCrypto's `subtle.sign` about 0.35 ms (a thread-pool
 *   job and a promise per call), through `createHmac` a few microseconds.
 * At 1000 events/s the portable pair alone would take more than a core.
 * Node only: start.ts picks it when the runtime is Node.
 */
import { createHmac } from "node:crypto";
import { type ClientRequest, Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { MAX_ANSWER_BYTES, type WebhookPost } from "./transport.ts";

/** X-Chat-Signature with node:crypto (the same value as WebhookSigner's). */
export function nodeSigner(secret: string): (body: string) => string {
  return (body) => `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}

/** @param maxSockets connections kept to the receiver (the loop's concurrency) */
export function nodePost(maxSockets: number): WebhookPost {
  const agents = {
    // noDelay: a request is one small write; Nagle would hold it for the receiver's delayed ACK (~40 ms).
    "http:": new HttpAgent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets, noDelay: true }),
    "https:": new HttpsAgent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets, noDelay: true }),
  };
  const once = (url: URL, headers: Record<string, string>, body: string, signal: AbortSignal) =>
    new Promise<{ status: number } | { error: Error; retry: boolean }>((resolve) => {
      const send = url.protocol === "https:" ? httpsRequest : httpRequest;
      let answered = false;
      const req: ClientRequest = send(
        url,
        {
          method: "POST",
          agent: url.protocol === "https:" ? agents["https:"] : agents["http:"],
          headers: { ...headers, "content-length": String(Buffer.byteLength(body)) },
          signal,
        },
        (res: IncomingMessage) => {
          answered = true;
          let read = 0;
          res.on("data", (chunk: Buffer) => {
            read += chunk.length;
            // Bounded: a receiver that answers at length loses its connection.
            if (read > MAX_ANSWER_BYTES) res.destroy();
          });
          const done = () => resolve({ status: res.statusCode ?? 0 });
          res.once("end", done);
          res.once("close", done);
          res.once("error", done);
        },
      );
      req.once("error", (error: Error & { code?: string }) => {
        // A kept-alive connection the receiver closed just as it was reused:
        // the request never reached it, so it is sent again at once, once.
        const retry = !answered && req.reusedSocket && (error.code === "ECONNRESET" || error.code === "EPIPE");
        resolve({ error, retry });
      });
      req.end(body);
    });
  return async (url, headers, body, signal) => {
    const target = new URL(url);
    let r = await once(target, headers, body, signal);
    if ("error" in r && r.retry && !signal.aborted) r = await once(target, headers, body, signal);
    if ("error" in r) throw r.error;
    return r.status;
  };
}
