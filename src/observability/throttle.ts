/**
 * At most one log line per interval for an event a client can repeat at
 * will (refused handshakes, bad frames): the rest are counted, and the count
 * rides on the next line that is written, so a flood costs a bounded number
 * of lines and nothing is hidden.
 */
export class LogThrottle {
  #at = Number.NEGATIVE_INFINITY;
  #suppressed = 0;

  /** @param intervalMs at most one line per this many ms @default 60000 */
  constructor(readonly intervalMs = 60_000) {}

  /** Null: drop this line (it is counted). Else write it, with the number of lines dropped since the last one. */
  pass(now = Date.now()): number | null {
    if (now - this.#at < this.intervalMs) {
      this.#suppressed++;
      return null;
    }
    this.#at = now;
    const n = this.#suppressed;
    this.#suppressed = 0;
    return n;
  }
}
