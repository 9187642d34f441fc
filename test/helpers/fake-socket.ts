/**
 * A fake {@link ChatSocket} for hub and session unit tests: it records what
 * the server side sends and lets a test await frames. This is the one fake
 * the architecture allows, because a real socket cannot show some cases (a
 * client that never reads: set `buffered`).
 */
import type { ChatSocket } from "../../src/hub/hub.ts";
import { DEFAULT_TIMEOUT_MS } from "./client.ts";

let nextId = 0;

type Pred = (frame: Record<string, unknown>) => boolean;

/** Records sent text frames and close calls. */
export class FakeSocket implements ChatSocket {
  readonly id = `fake-${++nextId}`;
  /** Every text sent, in order. */
  readonly sent: string[] = [];
  /** Close calls, in order. */
  readonly closes: { code: number; reason: string }[] = [];
  /** What `bufferedAmount()` reports; set it to simulate a client that does not read. */
  buffered = 0;
  readonly #waiters: { pred: Pred; n: number; resolve: () => void }[] = [];

  send(text: string): void {
    this.sent.push(text);
    for (const w of [...this.#waiters]) {
      if (this.count(w.pred) >= w.n) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  }

  close(code: number, reason: string): void {
    this.closes.push({ code, reason });
  }

  bufferedAmount(): number {
    return this.buffered;
  }

  /** Every frame parsed. */
  get frames(): Record<string, unknown>[] {
    return this.sent.map((t) => JSON.parse(t) as Record<string, unknown>);
  }

  /** Frames of one type. */
  ofType(type: string): Record<string, unknown>[] {
    return this.frames.filter((f) => f.type === type);
  }

  count(pred: Pred): number {
    return this.frames.filter(pred).length;
  }

  /**
   * Resolves once at least `n` frames match (type name or predicate), with
   * those frames; rejects after the timeout, naming what was sent.
   */
  async waitFor(match: string | Pred, n = 1, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>[]> {
    const pred: Pred = typeof match === "string" ? (f) => f.type === match : match;
    if (this.count(pred) < n) {
      await new Promise<void>((resolve, reject) => {
        const waiter = {
          pred,
          n,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        };
        const timer = setTimeout(() => {
          this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
          reject(
            new Error(
              `${this.id}: ${this.count(pred)} of ${n} matching frames after ${timeoutMs} ms; sent:\n  ${this.sent.join("\n  ")}`,
            ),
          );
        }, timeoutMs);
        this.#waiters.push(waiter);
      });
    }
    return this.frames.filter(pred);
  }
}
