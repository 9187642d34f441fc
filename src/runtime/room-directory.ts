/**
 * `GET /api/rooms` on Workers: no room object sees the others, so one
 * directory object keeps the names of rooms that may have someone online.
 *
 * - A room object tells it when its first connection opens and when its last
 *   one closes: two small writes per room per busy period, not one per join
 *   or leave (and none per message).
 * - `GET /api/rooms` asks each listed room object for its live count, so the
 *   answer is exact when it is made; a room object asked while it has nobody
 *   (it was restarted, or its "none left" report was lost) removes itself
 *   then, through its own reports, so its removal never overtakes its next
 *   "first connection". The cost is one request per listed room per call,
 *   which wakes hibernated rooms: it is the backend's call, made rarely.
 */
import type { DurableObjectNamespace, DurableObjectState } from "@cloudflare/workers-types/index.ts";
import type { Logger } from "../observability/logger.ts";

/** Rooms listed at most (one storage list); more are left out of `GET /api/rooms`. */
export const MAX_LISTED_ROOMS = 10_000;
/** Room objects asked at once by one `GET /api/rooms`. */
const ASK_AT_ONCE = 50;
const PREFIX = "r:";

interface FetchTarget {
  fetch(request: Request): Promise<Response>;
}

/** The directory object (one, named "rooms"): room names in its storage. */
export class RoomDirectory {
  readonly #ctx: DurableObjectState;

  constructor(ctx: DurableObjectState) {
    this.#ctx = ctx;
  }

  async fetch(request: Request): Promise<Response> {
    const storage = this.#ctx.storage;
    if (request.method === "GET") {
      const listed = await storage.list({ prefix: PREFIX, limit: MAX_LISTED_ROOMS });
      return Response.json({ rooms: [...listed.keys()].map((k) => k.slice(PREFIX.length)) });
    }
    const { room, online } = (await request.json()) as { room: string; online: boolean };
    if (online) await storage.put(PREFIX + room, 1);
    else await storage.delete(PREFIX + room);
    return new Response(null, { status: 204 });
  }
}

/** What room objects and the front use to reach the directory. */
export class DirectoryClient {
  #queue: Promise<void> = Promise.resolve();

  constructor(
    readonly namespace: DurableObjectNamespace,
    readonly logger: Logger,
  ) {}

  #stub(): FetchTarget {
    return this.namespace.get(this.namespace.idFromName("rooms")) as unknown as FetchTarget;
  }

  /** Records (in call order) that `room` has connections, or has none left. Never throws. */
  report(room: string, online: boolean): void {
    this.#queue = this.#queue.then(async () => {
      try {
        const body = JSON.stringify({ room, online });
        await this.#stub().fetch(new Request("https://directory/", { method: "POST", body }));
      } catch (error) {
        // String: consoleLogger has no error serializer.
        this.logger.error({ room, err: error }, "could not update the room directory");
      }
    });
  }

  /**
   * Rooms with someone online and their connection counts, asked of each
   * listed room's object (`room(name)` reaches it) at `/api/rooms?room=NAME`.
   */
  async online(room: (name: string) => FetchTarget): Promise<{ room: string; online: number }[]> {
    const res = await this.#stub().fetch(new Request("https://directory/"));
    const { rooms } = (await res.json()) as { rooms: string[] };
    const out: { room: string; online: number }[] = [];
    for (let i = 0; i < rooms.length; i += ASK_AT_ONCE) {
      const batch = rooms.slice(i, i + ASK_AT_ONCE);
      const counts = await Promise.all(
        batch.map(async (name) => {
          const answer = await room(name).fetch(
            new Request(`https://room/api/rooms?${new URLSearchParams({ room: name })}`),
          );
          const body = (await answer.json()) as { rooms?: { room: string; online: number }[] };
          return body.rooms?.find((r) => r.room === name)?.online ?? 0;
        }),
      );
      for (const [k, name] of batch.entries()) {
        const n = counts[k] ?? 0;
        if (n > 0) out.push({ room: name, online: n });
      }
    }
    return out.sort((a, b) => (a.room < b.room ? -1 : a.room > b.room ? 1 : 0));
  }
}
