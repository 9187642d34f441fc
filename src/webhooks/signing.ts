/**
 * X-Chat-Signature: `sha256=` and the hex HMAC-SHA256 of the raw body with
 * WEBHOOK_SECRET. WebCrypto, so the same code signs on Node, Bun, Deno and
 * Workers.
 */
const encoder = new TextEncoder();

function toHex(bytes: ArrayBuffer): string {
  let out = "";
  for (const b of new Uint8Array(bytes)) out += b.toString(16).padStart(2, "0");
  return out;
}

/** Signs bodies with one secret; the imported key is made once. */
export class WebhookSigner {
  readonly #key: Promise<CryptoKey>;

  /** @param secret WEBHOOK_SECRET */
  constructor(secret: string) {
    this.#key = crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, [
      "sign",
    ]);
  }

  /** The X-Chat-Signature value for `body`. */
  async sign(body: string): Promise<string> {
    const mac = await crypto.subtle.sign("HMAC", await this.#key, encoder.encode(body));
    return `sha256=${toHex(mac)}`;
  }
}
