/**
 * The server API (docs/api.md: server API): the application's own backend posts,
 * deletes, bans and looks at rooms. Mounted at `/api` only when API_KEY is
 * set; every call carries `Authorization: Bearer <API_KEY>`.
 *
 * What it costs, and what a caller without the key can do: the key check is
 * the first thing on every route, compares in constant time (hono's
 * timingSafeEqual: SHA-256 of both sides, then a constant-time compare of the
 * digests), and reads nothing else: no body, no store, no hub. A body is
 * read only after it, and only up to {@link MAX_API_BODY_BYTES}. With the key,
 * a call costs what the same action costs a chat client (one store write and
 * a broadcast); `GET /api/rooms` lists every room with someone online, which
 * with HUB=redis reads one Redis hash per instance.
 */
import { type Context, Hono, type MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { timingSafeEqual } from "hono/utils/buffer";
import type { Config } from "../config.ts";
import type { Hub } from "../hub/hub.ts";
import type { Logger } from "../observability/logger.ts";
import { isMessageId, MAX_BAN_SECONDS, messageProblem, nameProblem, roomProblem } from "../protocol.ts";
import type { HistoryStore } from "../store/store.ts";
import { banUser } from "./moderation.ts";

/** Largest JSON body a call may send (a message of MAX_MESSAGE_LENGTH 4-byte characters fits). */
export const MAX_API_BODY_BYTES = 64 * 1024;

/** What the API acts on. */
export interface ApiDeps {
  config: Config;
  hub: Hub;
  store: HistoryStore;
  logger: Logger;
  /**
   * Skip the key check: only for an app that nothing but a trusted front can
   * reach (a room's Durable Object behind the Worker, which checked the key).
   * @default false
   */
  trusted?: boolean;
}

/**
 * Refuses a call without `Authorization: Bearer <key>` with 401 JSON, before
 * anything else runs. Exported for the Worker's front, which checks the key
 * before it wakes a room's object.
 */
export function requireApiKey(key: string): MiddlewareHandler {
  return async (c, next) => {
    const presented = c.req.header("authorization")?.match(/^Bearer\s+(\S+)$/i)?.[1];
    if (presented === undefined || !(await timingSafeEqual(presented, key))) {
      return c.json({ error: "the server API needs Authorization: Bearer <API_KEY>" }, 401, {
        "www-authenticate": 'Bearer realm="chat-api"',
      });
    }
    await next();
  };
}

/** 413 JSON for a body over {@link MAX_API_BODY_BYTES}, read no further. */
export function apiBodyLimit(): MiddlewareHandler {
  return bodyLimit({
    maxSize: MAX_API_BODY_BYTES,
    onError: (c) => c.json({ error: `the body must be at most ${MAX_API_BODY_BYTES} bytes` }, 413),
  });
}

type Json = Record<string, unknown>;

/** The JSON object body, or a 400 answer. An empty body counts as `{}`. */
async function jsonBody(c: Context): Promise<Json | Response> {
  const text = await c.req.text();
  if (text.trim() === "") return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return c.json({ error: "the body must be JSON" }, 400);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return c.json({ error: "the body must be a JSON object" }, 400);
  }
  return value as Json;
}

/** The `:room` parameter, or a 400 answer. */
function roomParam(c: Context): string | Response {
  const room = c.req.param("room") ?? "";
  const problem = roomProblem(room);
  return problem ? c.json({ error: problem }, 400) : room;
}

/** The `:user` parameter (a display name), or a 400 answer. */
function userParam(c: Context): string | Response {
  const user = c.req.param("user") ?? "";
  const problem = nameProblem(user);
  return problem ? c.json({ error: problem }, 400) : user;
}

/** Builds the `/api` routes; app.ts mounts them when API_KEY is set. */
export function createApi(deps: ApiDeps): Hono {
  const { config, hub, store, logger } = deps;
  const api = new Hono();
  if (!deps.trusted) {
    if (config.apiKey === undefined) throw new Error("createApi needs API_KEY (or trusted: true)");
    api.use("*", requireApiKey(config.apiKey));
  }
  api.use("*", apiBodyLimit());

  api.post("/rooms/:room/messages", async (c) => {
    const room = roomParam(c);
    if (room instanceof Response) return room;
    const body = await jsonBody(c);
    if (body instanceof Response) return body;
    const userError = nameProblem(body.user);
    if (userError) return c.json({ error: userError }, 400);
    if (typeof body.message !== "string") return c.json({ error: "message must be a string" }, 400);
    const problem = messageProblem(body.message, config.maxMessageLength);
    if (problem) return c.json({ error: problem.message }, 400);
    const message = await hub.publish(room, null, { user: body.user as string, message: body.message });
    return c.json({ message }, 201);
  });

  api.delete("/rooms/:room/messages/:id", async (c) => {
    const room = roomParam(c);
    if (room instanceof Response) return room;
    const id = c.req.param("id");
    if (!isMessageId(id)) return c.json({ error: "id must be a message id" }, 400);
    if (!(await hub.delete(room, id))) return c.json({ error: "no such message in this room" }, 404);
    return c.body(null, 204);
  });

  api.put("/rooms/:room/bans/:user", async (c) => {
    const room = roomParam(c);
    if (room instanceof Response) return room;
    const user = userParam(c);
    if (user instanceof Response) return user;
    const body = await jsonBody(c);
    if (body instanceof Response) return body;
    const seconds = body.seconds ?? 0;
    if (typeof seconds !== "number" || !Number.isInteger(seconds) || seconds < 0 || seconds > MAX_BAN_SECONDS) {
      return c.json({ error: `seconds must be a whole number from 0 (until lifted) to ${MAX_BAN_SECONDS}` }, 400);
    }
    await banUser(hub, store, room, user, seconds);
    return c.body(null, 204);
  });

  api.delete("/rooms/:room/bans/:user", async (c) => {
    const room = roomParam(c);
    if (room instanceof Response) return room;
    const user = userParam(c);
    if (user instanceof Response) return user;
    await store.unban(room, user);
    return c.body(null, 204);
  });

  api.get("/rooms", async (c) => {
    const rooms = await hub.rooms();
    rooms.sort((a, b) => (a.room < b.room ? -1 : a.room > b.room ? 1 : 0));
    return c.json({ rooms });
  });

  api.get("/rooms/:room/presence", async (c) => {
    const room = roomParam(c);
    if (room instanceof Response) return room;
    return c.json({ users: await hub.users(room) });
  });

  api.notFound((c) => c.json({ error: "no such API call" }, 404));
  api.onError((error, c) => {
    logger.error({ err: error, path: c.req.path }, "server API call failed");
    return c.json({ error: "the chat could not do that now, try again" }, 503);
  });
  return api;
}
