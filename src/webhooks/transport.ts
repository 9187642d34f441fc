/**
 * How one webhook POST goes out. The loop needs only the answer's status;
 * the runtime picks the cheapest client it has: `fetch` everywhere (Workers,
 * Bun, Deno), Node's own http client on Node (see node-transport.ts for why).
 */

/**
 * One POST of `body` with `headers`: resolves with the answer's status once
 * a bounded part of the answer was read (the connection stays reusable);
 * rejects on a network error, and when `signal` aborts. Redirects are not
 * followed (a 3xx is not a 2xx: the receiver answers at WEBHOOK_URL itself).
 */
export type WebhookPost = (
  url: string,
  headers: Record<string, string>,
  body: string,
  signal: AbortSignal,
) => Promise<number>;

/** The most of a receiver's answer read (and discarded); past it the connection is dropped. */
export const MAX_ANSWER_BYTES = 64 * 1024;

/** {@link WebhookPost} over the runtime's `fetch`. */
export const fetchPost: WebhookPost = async (url, headers, body, signal) => {
  const res = await fetch(url, { method: "POST", headers, body, redirect: "manual", signal });
  if (res.body) {
    const reader = res.body.getReader();
    let read = 0;
    // Bounded: stops after MAX_ANSWER_BYTES, whatever the receiver sends.
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      read += value.byteLength;
      if (read > MAX_ANSWER_BYTES) {
        await reader.cancel();
        break;
      }
    }
  }
  return res.status;
};
