/**
 * Tokens (AUTH_SECRET): who a connection is, which rooms it may enter, whether
 * it moderates, and until when. The handshake, the REST history, the Worker's
 * front and a live connection's `{"type":"auth"}` refresh all check tokens
 * here, so the rules are written once.
 *
 * Claims read (HS256 JWT, verified by hono/jwt):
 * - `name`, else `sub`: the display name (a valid name, or the token is refused);
 * - `rooms`: array of room names, each exact or a prefix ending in `*`;
 *   absent: every room;
 * - `role`: `"moderator"` moderates every room the token allows;
 * - `exp` (seconds): enforced on the open connection too;
 * - `iss` / `aud`: must match AUTH_ISSUER / AUTH_AUDIENCE when those are set
 *   (`aud` may be an array holding it).
 */
import { verify } from "hono/jwt";
import { parse as parseCookies } from "hono/utils/cookie";
import { nameProblem } from "../protocol.ts";

/** The token settings of the config ({@link Config} has these fields). */
export interface TokenSettings {
  /** HS256 secret; unset: no tokens, everyone may name themselves. */
  authSecret: string | undefined;
  /** Required `iss` when set. */
  authIssuer?: string | undefined;
  /** Required `aud` (or an element of it) when set. */
  authAudience?: string | undefined;
}

/** What a verified token says about its holder. */
export interface Identity {
  /** `name`, else `sub`. */
  name: string;
  /** `role: "moderator"`. */
  moderator: boolean;
  /** The `rooms` claim; null when absent (every room). */
  rooms: readonly string[] | null;
  /** `exp` in seconds since the epoch; null when the token has none. */
  exp: number | null;
}

/** A token refused, with the reason a client may see. */
export interface TokenRefusal {
  refused: string;
}

/** Longest `rooms` claim read; a token is not a place to list a directory. */
export const MAX_ROOMS_CLAIM = 1000;

/**
 * What the checks read of a request: a header (any case) and a query
 * parameter, as Hono's `c.req` reads them. Node's upgrades are checked
 * without a Hono Context (runtime/node-ws.ts), through the same functions.
 */
export interface RequestView {
  header(name: string): string | undefined;
  query(name: string): string | undefined;
}

/** The token from `?token=`, `Authorization: Bearer` or the `token` cookie. */
export function tokenFromRequest(c: { req: RequestView }): string | undefined {
  const query = c.req.query("token");
  if (query) return query;
  const auth = c.req.header("authorization");
  const bearer = auth?.match(/^Bearer\s+(\S+)$/i)?.[1];
  if (bearer) return bearer;
  // What hono/cookie's getCookie(c, "token") reads, without needing a Context.
  const cookies = c.req.header("cookie");
  return (cookies ? parseCookies(cookies, "token").token : undefined) || undefined;
}

function roomsClaim(value: unknown): readonly string[] | null | TokenRefusal {
  if (value === undefined) return null;
  if (!Array.isArray(value) || value.length > MAX_ROOMS_CLAIM || !value.every((r) => typeof r === "string")) {
    return { refused: "the token's rooms claim must be an array of room names (exact, or a prefix ending in *)" };
  }
  return value as string[];
}

/**
 * Verifies a token with the settings' secret, issuer and audience. Never
 * throws: a bad token resolves to a {@link TokenRefusal}.
 */
export async function verifyToken(token: string, settings: TokenSettings): Promise<Identity | TokenRefusal> {
  const secret = settings.authSecret;
  if (secret === undefined) return { refused: "tokens are not enabled on this server" };
  let payload: Record<string, unknown>;
  try {
    payload = await verify(token, secret, {
      alg: "HS256",
      ...(settings.authIssuer !== undefined ? { iss: settings.authIssuer } : {}),
      ...(settings.authAudience !== undefined ? { aud: settings.authAudience } : {}),
    });
  } catch {
    return { refused: "invalid or expired token" };
  }
  const name = typeof payload.name === "string" ? payload.name : payload.sub;
  if (typeof name !== "string" || nameProblem(name) !== null) {
    return { refused: "the token names no valid user (claim name or sub)" };
  }
  const rooms = roomsClaim(payload.rooms);
  if (rooms !== null && "refused" in rooms) return rooms;
  return {
    name,
    moderator: payload.role === "moderator",
    rooms,
    exp: typeof payload.exp === "number" ? payload.exp : null,
  };
}

/** True when a `rooms` claim (null: absent) lets its holder into `room`. */
export function roomAllowed(rooms: readonly string[] | null, room: string): boolean {
  if (rooms === null) return true;
  for (const pattern of rooms) {
    if (pattern.endsWith("*") ? room.startsWith(pattern.slice(0, -1)) : room === pattern) return true;
  }
  return false;
}

/** True for a refused token (narrows {@link verifyToken}'s answer). */
export const isRefusal = (v: Identity | TokenRefusal): v is TokenRefusal => "refused" in v;

/**
 * The identity as the Worker's front forwards it to a room's Durable Object
 * (a query parameter of the forwarded upgrade, kept across hibernation).
 */
export function encodeIdentity(identity: Identity): string {
  return JSON.stringify(identity);
}

/** The inverse of {@link encodeIdentity}; null when absent or not an identity. */
export function decodeIdentity(text: string | undefined): Identity | null {
  if (!text) return null;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof v !== "object" || v === null) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.name !== "string" || typeof o.moderator !== "boolean") return null;
  const rooms = o.rooms === null ? null : roomsClaim(o.rooms);
  if (rooms !== null && "refused" in rooms) return null;
  if (o.exp !== null && typeof o.exp !== "number") return null;
  return { name: o.name, moderator: o.moderator, rooms, exp: o.exp as number | null };
}
