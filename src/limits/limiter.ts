/**
 * Fair use: what each request costs, the per-connection buckets, and the
 * per-address table (connection count and a bucket shared by all of an
 * address's connections and its REST reads). The numbers and why are in
 * docs/protocol.md ("Fair use").
 */
import type { Config } from "../config.ts";
import { TokenBucket } from "./bucket.ts";

/**
 * What a request is charged to, per connection:
 * - `message`: chat messages, the moderation frames (edit, delete, ban,
 *   unban) and token refreshes (auth): each is a store write or a token
 *   check — RATE_LIMIT / RATE_LIMIT_REFILL; also charged to the address.
 * - `read`: `history` frames, {@link readCost} units each; also charged to
 *   the address (REST reads are charged to the address only).
 * - `control`: `ping`, `typing` — cheap, answered to the sender only (or
 *   relayed at most once a second); per connection only.
 * - `invalid`: frames refused as invalid (bad JSON, unknown type, ...),
 *   per connection only: past the budget they are dropped unanswered.
 */
export type ChargeKind = "message" | "read" | "control" | "invalid";

/** Messages one read unit covers: the page's page size, so "load older" costs 1. */
export const MESSAGES_PER_READ_UNIT = 50;

/** Per connection, `read` bucket: 20 units (1000 messages read at once), 2 units (100 messages) back per second. */
export const READ_BUCKET = { capacity: 20, perSecond: 2 } as const;

/** Per connection, `control` bucket: 20 frames, 5 back per second (a page pings every ~25 s, types at most 1/s). */
export const CONTROL_BUCKET = { capacity: 20, perSecond: 5 } as const;

/** Per connection, `invalid` bucket: 1000 bad frames answered at once, 100 per second after. */
export const INVALID_BUCKET = { capacity: 1000, perSecond: 100 } as const;

/** Characters of text one read unit covers (about 64 KiB in memory). */
export const READ_UNIT_CHARS = 32 * 1024;

/**
 * What a read of these messages costs by its size: one unit per 32 Ki
 * characters (text, name and a fixed overhead per message). A read is
 * charged by count up front ({@link readCost}) and the rest once its size
 * is known, so 500 messages of 8 KB cost far more than 500 lines of chat.
 */
export function textCost(messages: readonly { message: string; user: string }[]): number {
  let chars = 0;
  for (const m of messages) chars += m.message.length + m.user.length + 64;
  return Math.ceil(chars / READ_UNIT_CHARS);
}

/** Cost of reading up to `limit` messages: one unit per 50, at least 1 (a `limit` of 500 costs 10). */
export function readCost(limit: number): number {
  return Math.max(1, Math.ceil(limit / MESSAGES_PER_READ_UNIT));
}

/**
 * Handshakes an address may make at once: twice MAX_CONNECTIONS_PER_IP (or
 * twice RATE_LIMIT_IP when there is no cap, or it is smaller), refilled at
 * RATE_LIMIT_IP_REFILL per second.
 */
export function handshakeCapacity(s: LimitSettings): number {
  return 2 * Math.max(s.maxConnectionsPerIp, s.rateLimitIp);
}

/** The settings the limiter reads from {@link Config}. */
export type LimitSettings = Pick<
  Config,
  "rateLimit" | "rateLimitRefillPerSecond" | "rateLimitIp" | "rateLimitIpRefillPerSecond" | "maxConnectionsPerIp"
>;

/** A refusal: why, and how long to wait (null: waiting alone does not help, e.g. the connection cap). */
export interface Refusal {
  error: string;
  retryAfterMs: number | null;
}

interface AddressEntry {
  connections: number;
  /** Null until the address is first charged (or when per-address rate limits are off). */
  bucket: TokenBucket | null;
  /** Handshakes: null until the first one. */
  handshakes: TokenBucket | null;
  /** Last use; entries are kept in the Map in about this order (re-inserted at most once a second). */
  touched: number;
}

/** How often idle, full entries are forgotten. */
const SWEEP_EVERY_MS = 10_000;

/**
 * Per-address state for one server (one instance; with HUB=redis each
 * instance keeps its own, see docs/redis.md). Memory stays bounded: an entry
 * with no connection whose bucket is full is the same as no entry, so such
 * entries are dropped every 10 s; past `maxEntries` the least recently used
 * idle entries go first (about 120 bytes each: 100,000 entries ≈ 12 MB).
 * Entries with open connections are never dropped, so there are at most
 * `maxEntries` + (distinct addresses connected) of them.
 */
export class AddressLimits {
  readonly #entries = new Map<string, AddressEntry>();
  #sweptAt: number;
  readonly #rateOn: boolean;

  /** @param maxEntries idle addresses remembered at most @default 100000 */
  constructor(
    readonly settings: LimitSettings,
    readonly maxEntries = 100_000,
    now = Date.now(),
  ) {
    this.#sweptAt = now;
    this.#rateOn = settings.rateLimit > 0 && settings.rateLimitIp > 0;
  }

  /** Addresses remembered now. */
  get size(): number {
    return this.#entries.size;
  }

  /** Open connections of an address. */
  connections(key: string): number {
    return this.#entries.get(key)?.connections ?? 0;
  }

  #entry(key: string, now: number): AddressEntry {
    let e = this.#entries.get(key);
    if (!e) {
      this.#maybeSweep(now, true);
      e = { connections: 0, bucket: null, handshakes: null, touched: now };
      this.#entries.set(key, e);
    } else if (now - e.touched >= 1000) {
      // Move to the end (most recent), at most once a second per address.
      this.#entries.delete(key);
      this.#entries.set(key, e);
      e.touched = now;
    }
    this.#maybeSweep(now, false);
    return e;
  }

  #bucket(e: AddressEntry, now: number): TokenBucket {
    e.bucket ??= new TokenBucket(this.settings.rateLimitIp, this.settings.rateLimitIpRefillPerSecond, now);
    return e.bucket;
  }

  /**
   * A handshake from `key`: refused past MAX_CONNECTIONS_PER_IP, and charged
   * to the address's handshake bucket, so reconnecting in a loop (each
   * handshake reads a welcome's history) is limited too. That bucket is its
   * own, not the message bucket, and holds twice the cap: a whole office
   * can open its pages at once, and close and reopen some, without waiting.
   * Null: go on.
   */
  admit(key: string, now = Date.now()): Refusal | null {
    const cap = this.settings.maxConnectionsPerIp;
    const e = this.#entry(key, now);
    if (cap > 0 && e.connections >= cap) {
      return { error: `too many connections from your address (at most ${cap})`, retryAfterMs: null };
    }
    if (!this.#rateOn) return null;
    // An address in debt (heavy reads, welcomes of large history) waits before it may reconnect.
    const debt = e.bucket?.wait(0, now) ?? 0;
    if (debt > 0) return { error: "too many requests from your address; slow down", retryAfterMs: debt };
    e.handshakes ??= new TokenBucket(handshakeCapacity(this.settings), this.settings.rateLimitIpRefillPerSecond, now);
    const wait = e.handshakes.take(1, now);
    return wait === 0
      ? null
      : { error: "too many connections opened from your address; slow down", retryAfterMs: wait };
  }

  /** Counts an open connection; false when the address is already at its cap (close it: a race of handshakes). */
  open(key: string, now = Date.now()): boolean {
    const cap = this.settings.maxConnectionsPerIp;
    const e = this.#entry(key, now);
    if (cap > 0 && e.connections >= cap) return false;
    e.connections++;
    return true;
  }

  /** A connection counted by {@link open} has closed. */
  close(key: string, now = Date.now()): void {
    const e = this.#entries.get(key);
    if (!e || e.connections === 0) return;
    e.connections--;
    this.#maybeSweep(now, false);
  }

  /** Milliseconds the address must wait before `cost` units are there (0: now). Takes nothing. */
  wait(key: string, cost: number, now = Date.now()): number {
    if (!this.#rateOn) return 0;
    return this.#bucket(this.#entry(key, now), now).wait(cost, now);
  }

  /**
   * Charges `cost` units after the fact (what a read turned out to cost
   * beyond what was charged up front): may leave the bucket in debt, which
   * later requests of the address wait out. At most the capacity.
   */
  spend(key: string, cost: number, now = Date.now()): void {
    if (!this.#rateOn || cost <= 0) return;
    this.#bucket(this.#entry(key, now), now).spend(cost, now);
  }

  /** Takes `cost` units from the address's bucket if there are that many; returns the wait otherwise (0: taken). */
  charge(key: string, cost: number, now = Date.now()): number {
    if (!this.#rateOn) return 0;
    return this.#bucket(this.#entry(key, now), now).take(cost, now);
  }

  #maybeSweep(now: number, adding: boolean): void {
    const over = adding && this.#entries.size >= this.maxEntries;
    if (!over && now - this.#sweptAt < SWEEP_EVERY_MS) return;
    this.#sweptAt = now;
    for (const [key, e] of this.#entries) {
      if (e.connections === 0 && (e.bucket === null || e.bucket.full(now)) && (e.handshakes?.full(now) ?? true)) {
        this.#entries.delete(key);
      }
    }
    if (this.#entries.size < this.maxEntries) return;
    // Still full of recently charged idle addresses (many addresses at
    // once): forget the least recently used tenth. They get a fresh bucket
    // if they come back, the price of a bound.
    let drop = Math.max(1, Math.floor(this.maxEntries / 10));
    for (const [key, e] of this.#entries) {
      if (drop === 0) break;
      if (e.connections > 0) continue;
      this.#entries.delete(key);
      drop--;
    }
  }
}

/**
 * One connection's buckets, plus its address's share. Buckets other than
 * `message` are made on first use: most connections never read history.
 */
export class ConnectionLimits {
  #message: TokenBucket | null = null;
  #read: TokenBucket | null = null;
  #control: TokenBucket | null = null;
  #invalid: TokenBucket | null = null;
  readonly #on: boolean;

  /**
   * @param addresses the server's per-address table, or null for none
   * @param key this connection's address key (limits/address.ts)
   */
  constructor(
    readonly settings: LimitSettings,
    readonly addresses: AddressLimits | null,
    readonly key: string,
  ) {
    this.#on = settings.rateLimit > 0;
  }

  #bucket(kind: ChargeKind, now: number): TokenBucket {
    switch (kind) {
      case "message":
        this.#message ??= new TokenBucket(this.settings.rateLimit, this.settings.rateLimitRefillPerSecond, now);
        return this.#message;
      case "read":
        this.#read ??= new TokenBucket(READ_BUCKET.capacity, READ_BUCKET.perSecond, now);
        return this.#read;
      case "control":
        this.#control ??= new TokenBucket(CONTROL_BUCKET.capacity, CONTROL_BUCKET.perSecond, now);
        return this.#control;
      case "invalid":
        this.#invalid ??= new TokenBucket(INVALID_BUCKET.capacity, INVALID_BUCKET.perSecond, now);
        return this.#invalid;
    }
  }

  /** Charges `cost` after the fact, to this connection and (message, read) its address: may leave debt. */
  spend(kind: ChargeKind, cost: number, now = Date.now()): void {
    if (!this.#on || cost <= 0) return;
    this.#bucket(kind, now).spend(cost, now);
    if (kind === "message" || kind === "read") this.addresses?.spend(this.key, cost, now);
  }

  /**
   * Charges `cost` to this connection's `kind` bucket and, for `message` and
   * `read`, to the address's bucket: both or neither. Returns 0 when
   * charged, else the milliseconds after which the same request succeeds
   * (the longer of the two waits).
   */
  charge(kind: ChargeKind, cost: number, now = Date.now()): number {
    if (!this.#on) return 0;
    const own = this.#bucket(kind, now);
    const shared = kind === "message" || kind === "read" ? this.addresses : null;
    const wait = Math.max(own.wait(cost, now), shared ? shared.wait(this.key, cost, now) : 0);
    if (wait > 0) return wait;
    own.take(cost, now);
    shared?.charge(this.key, cost, now);
    return 0;
  }
}
