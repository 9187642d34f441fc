import type { Redis } from "ioredis";
import type { Lease } from "./delivery.ts";
import type { WebhookEvent } from "./events.ts";
import { eventBody, FRESH, type Outbox, type PendingEvent, type RoomRetry } from "./outbox.ts";

/**
 * Where the outbox lives in Redis. Every key carries the one hash tag
 * `{webhooks}` rather than its room's: adding an event, or removing a room's
 * head, changes the room's queue and the shared index of due rooms together
 * in one script, and Redis Cluster runs a script only over keys of one slot.
 * The outbox holds only undelivered events (few while the receiver keeps up),
 * so one slot's node carries it easily.
 */
export class WebhookKeys {
  /** @param prefix REDIS_PREFIX @default "chat:" */
  constructor(readonly prefix = "chat:") {}
  /** A room's queue (a stream: XADD ids keep the room's order). */
  queue(room: string): string {
    return `${this.prefix}{webhooks}:q:${room}`;
  }
  /** Rooms with events, scored by when their head is due (ms). */
  get due(): string {
    return `${this.prefix}{webhooks}:due`;
  }
  /** Room -> "attempts:failingSince" for rooms whose head is failing. */
  get retry(): string {
    return `${this.prefix}{webhooks}:retry`;
  }
  /** Events pending in all rooms (for the gauge). */
  get count(): string {
    return `${this.prefix}{webhooks}:n`;
  }
  /** Which instance delivers. */
  get lease(): string {
    return `${this.prefix}{webhooks}:lease`;
  }
}

// KEYS: queue, due, count. ARGV: room, id, ts, body.
// ZADD NX: a room waiting for a retry keeps its time (its head must go first).
const ADD = `
redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[1])
redis.call('XADD', KEYS[1], '*', 'id', ARGV[2], 'ts', ARGV[3], 'b', ARGV[4])
return redis.call('INCR', KEYS[3])
`;

// Fenced: only the lease holder changes delivery state. ARGV[1] is the owner
// ('' = unfenced: a single deliverer without a lease).
const FENCE = `
if ARGV[1] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[1] then return -1 end
`;

// KEYS: queue, due, retry, count, lease. ARGV: owner, room, key, attempts, failingSince, nextAt.
// Removes the room's entries up to and including `key` (the loop removes in batches, at most a page).
const REMOVE = `${FENCE}
local removed = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', ARGV[3])) do
  removed = removed + redis.call('XDEL', KEYS[1], entry[1])
end
if removed > 0 then redis.call('DECRBY', KEYS[4], removed) end
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 0
end
if ARGV[4] == '0' then redis.call('HDEL', KEYS[3], ARGV[2])
else redis.call('HSET', KEYS[3], ARGV[2], ARGV[4] .. ':' .. ARGV[5]) end
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[2])
return 1
`;

// KEYS: queue, due, retry, count, lease. ARGV: owner, room, attempts, failingSince, nextAt.
const FAILED = `${FENCE}
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. ':' .. ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
return 1
`;

// KEYS: lease. ARGV: owner, ttl ms. Takes a free lease or renews our own.
const HOLD = `
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

interface Scripts {
  whAdd(q: string, due: string, n: string, ...argv: string[]): Promise<number>;
  whRemove(q: string, due: string, retry: string, n: string, lease: string, ...argv: string[]): Promise<number>;
  whFailed(q: string, due: string, retry: string, n: string, lease: string, ...argv: string[]): Promise<number>;
  whHold(lease: string, owner: string, ttl: string): Promise<number>;
  whRelease(lease: string, owner: string): Promise<number>;
}

function withScripts(redis: Redis): Redis & Scripts {
  // defineCommand runs EVALSHA and loads the script when Redis does not know it yet.
  const r = redis as Redis & Partial<Scripts>;
  if (!r.whAdd) {
    redis.defineCommand("whAdd", { numberOfKeys: 3, lua: ADD });
    redis.defineCommand("whRemove", { numberOfKeys: 5, lua: REMOVE });
    redis.defineCommand("whFailed", { numberOfKeys: 5, lua: FAILED });
    redis.defineCommand("whHold", { numberOfKeys: 1, lua: HOLD });
    redis.defineCommand("whRelease", { numberOfKeys: 1, lua: RELEASE });
  }
  return redis as Redis & Scripts;
}

/** The deliverer lost the lease: another instance delivers now. */
export class LeaseLostError extends Error {
  override name = "LeaseLostError";
}

/** A fenced script's answer: -1 when the owner no longer holds the lease. */
function fenced(answer: number): void {
  if (answer === -1) throw new LeaseLostError("lost the webhook lease; another instance delivers now");
}

/** A room's retry state as the scripts' ARGV: attempts, failingSince ("" for none), nextAt. */
function retryArgv(retry: RoomRetry): [string, string, string] {
  return [String(retry.attempts), retry.failingSince === null ? "" : String(retry.failingSince), String(retry.nextAt)];
}

/**
 * One lease for the whole outbox (HUB=redis): the instance holding it
 * delivers every room, the others only add. Why one lease and not one per
 * room: per-room order needs a single deliverer per room anyway, one key is
 * all the coordination there is (no scan of per-room locks, no rebalancing),
 * and one instance delivers thousands of events per second (bench/webhooks.ts),
 * far above what a chat's rooms produce. When the holder dies, another takes
 * over within `ttlMs`.
 */
export class RedisLease implements Lease {
  readonly #redis: Redis & Scripts;
  readonly #key: string;
  /** Until when (local clock) the lease is surely ours: set from before the renewing call. */
  #until = 0;

  /**
   * @param owner this instance's id
   * @param ttlMs the lease's life without renewal; above the delivery
   *   timeout, so a holder's last request ends before another takes over
   *   @default 15000
   */
  constructor(
    redis: Redis,
    keys: WebhookKeys,
    readonly owner: string,
    readonly ttlMs = 15_000,
  ) {
    this.#redis = withScripts(redis);
    this.#key = keys.lease;
  }

  async hold(): Promise<boolean> {
    const now = Date.now();
    // Renewed when a third of its life has gone: one command per 5 s, not per request.
    if (now < this.#until - (this.ttlMs * 2) / 3) return true;
    try {
      const ok = (await this.#redis.whHold(this.#key, this.owner, String(this.ttlMs))) === 1;
      this.#until = ok ? now + this.ttlMs : 0;
      return ok;
    } catch {
      this.#until = 0;
      return false;
    }
  }

  async release(): Promise<void> {
    this.#until = 0;
    await this.#redis.whRelease(this.#key, this.owner);
  }
}

/**
 * The outbox for HUB=redis: one stream per room (XADD ids keep the order),
 * a sorted set of rooms by when their head is due, a hash of retry states
 * and a count. Shared by every instance: any instance adds, the lease holder
 * delivers, so an event outlives the instance that produced it.
 */
export class RedisOutbox implements Outbox {
  readonly #redis: Redis & Scripts;
  readonly keys: WebhookKeys;
  readonly #owner: string;
  readonly #owns: boolean;
  /** Adds not answered yet, so a flush at shutdown can wait for them. */
  readonly #adding = new Set<Promise<unknown>>();

  /**
   * @param options.prefix REDIS_PREFIX @default "chat:"
   * @param options.owner the lease owner that delivers: its removes and
   *   failures are refused once it lost the lease @default "" (unfenced)
   * @param options.owned quit the client on close @default false
   */
  constructor(redis: Redis, options: { prefix?: string; owner?: string; owned?: boolean } = {}) {
    this.#redis = withScripts(redis);
    this.keys = new WebhookKeys(options.prefix);
    this.#owner = options.owner ?? "";
    this.#owns = options.owned ?? false;
  }

  async add(event: WebhookEvent): Promise<void> {
    const k = this.keys;
    await this.#redis.whAdd(
      k.queue(event.room),
      k.due,
      k.count,
      event.room,
      event.id,
      String(event.ts),
      eventBody(event),
    );
  }

  async due(now: number, limit: number): Promise<string[]> {
    return this.#redis.zrangebyscore(this.keys.due, "-inf", now, "LIMIT", 0, limit);
  }

  async nextDue(): Promise<number | null> {
    const first = await this.#redis.zrange(this.keys.due, 0, 0, "WITHSCORES");
    return first.length >= 2 ? Number(first[1]) : null;
  }

  async head(room: string, limit: number, after?: string): Promise<{ events: PendingEvent[]; retry: RoomRetry }> {
    const [entries, state, score] = await Promise.all([
      // "(" makes the start exclusive.
      this.#redis.xrange(this.keys.queue(room), after === undefined ? "-" : `(${after}`, "+", "COUNT", limit),
      this.#redis.hget(this.keys.retry, room),
      this.#redis.zscore(this.keys.due, room),
    ]);
    const events: PendingEvent[] = [];
    for (const [key, fields] of entries) {
      const f: Record<string, string> = {};
      for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]!] = fields[i + 1]!;
      events.push({ key, id: f.id ?? "", ts: Number(f.ts), body: f.b ?? "" });
    }
    let retry: RoomRetry = { ...FRESH, nextAt: score === null ? 0 : Number(score) };
    if (state) {
      const [attempts, since] = state.split(":");
      retry = { attempts: Number(attempts), failingSince: since ? Number(since) : null, nextAt: retry.nextAt };
    }
    return { events, retry };
  }

  async remove(room: string, key: string, retry: RoomRetry): Promise<void> {
    fenced(await this.#redis.whRemove(...this.#fencedKeys(room), this.#owner, room, key, ...retryArgv(retry)));
  }

  async failed(room: string, retry: RoomRetry): Promise<void> {
    fenced(await this.#redis.whFailed(...this.#fencedKeys(room), this.#owner, room, ...retryArgv(retry)));
  }

  /** KEYS of the fenced scripts (REMOVE, FAILED): queue, due, retry, count, lease. */
  #fencedKeys(room: string): [string, string, string, string, string] {
    const k = this.keys;
    return [k.queue(room), k.due, k.retry, k.count, k.lease];
  }

  async pending(): Promise<number> {
    return Number((await this.#redis.get(this.keys.count)) ?? 0);
  }

  async flush(): Promise<void> {
    await Promise.allSettled([...this.#adding]);
  }

  async close(): Promise<void> {
    await this.flush();
    if (this.#owns) await this.#redis.quit().catch(() => {});
  }
}
