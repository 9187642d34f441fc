/**
 * A token bucket that charges by cost: `capacity` tokens, refilled at
 * `perSecond`. A request that costs more than is left is refused whole and
 * told exactly how long to wait (`retryAfterMs`): after that long the bucket
 * holds enough for it, so a client that waits then succeeds (unless it, or
 * another connection of the same address, spends the tokens first).
 *
 * Hand-written rather than a library: it is twenty lines, must run unchanged
 * on Node, Bun, Deno and Workers, and its state (two numbers) is also what
 * the per-address table keeps for thousands of addresses.
 */
export class TokenBucket {
  #tokens: number;
  #at: number;

  constructor(
    readonly capacity: number,
    readonly perSecond: number,
    now: number,
  ) {
    this.#tokens = capacity;
    this.#at = now;
  }

  #refill(now: number): number {
    if (now > this.#at) {
      this.#tokens = Math.min(this.capacity, this.#tokens + ((now - this.#at) / 1000) * this.perSecond);
      this.#at = now;
    }
    return this.#tokens;
  }

  /**
   * Milliseconds until `cost` tokens are there (0: now). A cost above the
   * capacity is charged as the capacity, so every request can succeed once
   * the bucket is full.
   */
  wait(cost: number, now: number): number {
    const need = Math.min(cost, this.capacity) - this.#refill(now);
    // A hair of slack both ways for float error (1 - 0.998 is not 0.002):
    // the wait is not rounded up past a whole millisecond it does not need,
    // and a client that waited it is not refused for 1e-9 of a token.
    return need <= 1e-6 ? 0 : Math.ceil((need / this.perSecond) * 1000 - 1e-6);
  }

  /** Takes `cost` tokens (capped at the capacity) if there are that many; else takes nothing. */
  take(cost: number, now: number): number {
    const wait = this.wait(cost, now);
    if (wait === 0) this.#tokens -= Math.min(cost, this.capacity);
    return wait;
  }

  /** Takes `cost` tokens without checking: may leave a debt that later requests wait out. */
  spend(cost: number, now: number): void {
    this.#refill(now);
    this.#tokens -= Math.min(cost, this.capacity);
  }

  /** True when the bucket is full at `now`: it then equals a fresh one and may be forgotten. */
  full(now: number): boolean {
    return this.#refill(now) >= this.capacity;
  }
}
