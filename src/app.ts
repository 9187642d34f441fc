import { type Context, Hono, type MiddlewareHandler } from "hono";
import { getCookie } from "hono/cookie";
import { verify } from "hono/jwt";
import { secureHeaders } from "hono/secure-headers";
import type { UpgradeWebSocket, WSContext } from "hono/ws";
import type { Config } from "./config.ts";
import type { ChatSocket, Hub } from "./hub/hub.ts";
import type { Logger } from "./observability/logger.ts";
import type { Metrics } from "./observability/metrics.ts";
import { CloseCode, isMessageId, nameProblem, roomProblem, selectSubprotocol } from "./protocol.ts";
import { Session, type SessionInit } from "./session.ts";
import type { HistoryStore } from "./store/store.ts";

/** Everything the app needs, passed in so tests and runtimes choose the parts. */
export interface AppDeps {
  config: Config;
  hub: Hub;
  store: HistoryStore;
  logger: Logger;
  metrics: Metrics;
  /** The runtime's Hono upgrade helper (hono/bun, hono/deno, @hono/node-server, ...). */
  upgradeWebSocket: UpgradeWebSocket;
  /**
   * Adapts the helper's WSContext to the core's socket. The default reads
   * `raw.bufferedAmount` (ws, Deno and browsers' WebSocket).
   */
  toSocket?: (ws: WSContext, id: string) => ChatSocket;
  /** Serves `static/` (the page); absent where the platform serves assets. */
  serveStatic?: MiddlewareHandler;
  /** Names the runtime in /healthz. @default "unknown" */
  runtime?: string;
}

/** Hono's env for the app: what the upgrade check hands the WebSocket handler. */
export type ChatEnv = { Variables: { chatSession: SessionInit } };

/** The app plus what a runtime entry needs to run and stop it. */
export interface Chat {
  app: Hono<ChatEnv>;
  /** Open sessions, for shutdown. */
  readonly sessions: ReadonlySet<Session>;
  /** Stop accepting connections (/healthz turns 503). */
  drain(): void;
  /** Drain, close every connection with 1001, then flush and close hub and store. */
  shutdown(): Promise<void>;
}

let nextSocketId = 0;

/** The default adapter: Hono's WSContext plus the raw socket's bufferedAmount. */
export function defaultToSocket(ws: WSContext, id: string): ChatSocket {
  const raw = ws.raw as { bufferedAmount?: number } | undefined;
  return {
    id,
    send: (text) => ws.send(text),
    close: (code, reason) => ws.close(code, reason),
    bufferedAmount: () => raw?.bufferedAmount ?? 0,
  };
}

type Problem = { status: 400 | 401 | 403 | 426 | 503; error: string };

/** The `Origin` rule of PROTOCOL.md section 4: same host:port, or listed. */
export function originProblem(c: Context, allowed: readonly string[]): Problem | null {
  const origin = c.req.header("origin");
  if (origin === undefined) return null; // non-browser clients send none
  let parsed: URL;
  try {
    parsed = new URL(origin);
  } catch {
    return { status: 403, error: "origin not allowed" };
  }
  const host = c.req.header("host")?.toLowerCase();
  if (parsed.origin !== "null" && host !== undefined && parsed.host.toLowerCase() === host) return null;
  if (allowed.includes(parsed.origin)) return null;
  return { status: 403, error: "origin not allowed" };
}

/** The token from `?token=`, `Authorization: Bearer` or the `token` cookie. */
function tokenOf(c: Context): string | undefined {
  const query = c.req.query("token");
  if (query) return query;
  const auth = c.req.header("authorization");
  const bearer = auth?.match(/^Bearer\s+(\S+)$/i)?.[1];
  if (bearer) return bearer;
  return getCookie(c, "token") || undefined;
}

/**
 * Checks the JWT when AUTH_SECRET is set; resolves with the name it gives
 * (`name`, else `sub`), or null when auth is off.
 */
export async function authenticate(c: Context, secret: string | undefined): Promise<Problem | { name: string | null }> {
  if (secret === undefined) return { name: null };
  const token = tokenOf(c);
  if (!token) return { status: 401, error: "a token is required" };
  let payload: Record<string, unknown>;
  try {
    payload = await verify(token, secret, "HS256");
  } catch {
    return { status: 401, error: "invalid or expired token" };
  }
  const name = typeof payload.name === "string" ? payload.name : payload.sub;
  if (typeof name !== "string" || nameProblem(name) !== null) {
    return { status: 401, error: "the token names no valid user (claim name or sub)" };
  }
  return { name };
}

/** Room, user and since from the query, checked before the upgrade. */
function connectionParams(c: Context): Problem | (Omit<SessionInit, "name" | "mode"> & { user: string | null }) {
  const room = c.req.query("room") ?? "lobby";
  const roomError = roomProblem(room);
  if (roomError) return { status: 400, error: roomError };
  const user = c.req.query("user");
  if (user !== undefined && user !== "") {
    const userError = nameProblem(user);
    if (userError) return { status: 400, error: userError };
  }
  const since = c.req.query("since");
  if (since !== undefined && since.length > 64) return { status: 400, error: "since must be a message id" };
  return { room, user: user || null, since: since || null };
}

const isProblem = (v: object): v is Problem => "status" in v;

/** An upgrade that passed {@link checkUpgrade}. */
export interface CheckedUpgrade {
  room: string;
  /** The name the connection goes by: the token's, else `?user=`, else null. */
  name: string | null;
  /** True when the name comes from a token. */
  fromToken: boolean;
  since: string | null;
}

/**
 * Every check a WebSocket upgrade passes before it is accepted, in the
 * contract's order: a real upgrade (426), not draining (503), origin (403),
 * query (400), token (401). The app and the Worker's front both run it.
 */
export async function checkUpgrade(
  c: Context,
  config: Config,
  logger: Logger,
  draining: boolean,
): Promise<Problem | CheckedUpgrade> {
  if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
    return { status: 426, error: "this endpoint takes WebSocket upgrades only" };
  }
  if (draining) return { status: 503, error: "server is shutting down" };
  const origin = originProblem(c, config.allowedOrigins);
  if (origin) {
    logger.warn({ origin: c.req.header("origin"), host: c.req.header("host") }, "refused a cross-origin upgrade");
    return origin;
  }
  const params = connectionParams(c);
  if (isProblem(params)) return params;
  const auth = await authenticate(c, config.authSecret);
  if (isProblem(auth)) return auth;
  return { room: params.room, name: auth.name ?? params.user, fromToken: auth.name !== null, since: params.since };
}

/**
 * The security headers (CSP and the rest) on every response. Exported for the
 * Worker, whose page comes from the platform's asset store, not from this app.
 */
export function securityHeaders(): MiddlewareHandler {
  return secureHeaders({
    contentSecurityPolicy: {
      defaultSrc: ["'self'"],
      scriptSrc: ["'self'"],
      styleSrc: ["'self'"],
      imgSrc: ["'self'", "data:"],
      connectSrc: ["'self'", "ws:", "wss:"],
      objectSrc: ["'none'"],
      baseUri: ["'none'"],
      frameAncestors: ["'none'"],
    },
  });
}

/**
 * Builds the chat: routes and middleware only; the work is in Session, the
 * hub and the store.
 */
export function createChat(deps: AppDeps): Chat {
  const { config, hub, store, logger, metrics } = deps;
  const toSocket = deps.toSocket ?? defaultToSocket;
  const sessions = new Set<Session>();
  let draining = false;
  const app = new Hono<ChatEnv>();

  app.use("*", securityHeaders());

  app.get("/healthz", (c) => {
    const body = {
      status: draining ? "draining" : hub.healthy ? "ok" : "degraded",
      runtime: deps.runtime ?? "unknown",
      hub: config.hub,
      history: config.history,
      connections: sessions.size,
    };
    return c.json(body, body.status === "ok" ? 200 : 503);
  });

  app.get("/metrics", async (c) => {
    const out = metrics.render();
    if (!out) return c.json({ error: "metrics are not served on this runtime" }, 404);
    const { contentType, body } = await out;
    return c.body(body, 200, { "content-type": contentType });
  });

  app.get("/rooms/:room/messages", async (c) => {
    const room = c.req.param("room");
    const roomError = roomProblem(room);
    if (roomError) return c.json({ error: roomError }, 400);
    const auth = await authenticate(c, config.authSecret);
    if (isProblem(auth)) return c.json({ error: auth.error }, auth.status);
    const before = c.req.query("before");
    if (before !== undefined && !isMessageId(before)) return c.json({ error: "before must be a message id" }, 400);
    const limitText = c.req.query("limit") ?? "50";
    const limit = Number(limitText);
    if (!/^\d+$/.test(limitText) || limit < 1)
      return c.json({ error: "limit must be a whole number from 1 to 500" }, 400);
    const n = Math.min(limit, 500);
    try {
      const messages = before === undefined ? await store.latest(room, n) : await store.before(room, before, n);
      return c.json({ messages });
    } catch (error) {
      logger.error({ room, err: String(error) }, "history read failed");
      return c.json({ error: "history is unavailable" }, 503);
    }
  });

  app.get(
    "/websocket",
    async (c, next) => {
      const checked = await checkUpgrade(c, config, logger, draining);
      if (isProblem(checked)) return c.json({ error: checked.error }, checked.status);
      const init: SessionInit = {
        room: checked.room,
        name: checked.name,
        mode: selectSubprotocol(c.req.header("sec-websocket-protocol")) ? "v1" : "seed",
        since: checked.since,
      };
      c.set("chatSession", init);
      await next();
    },
    deps.upgradeWebSocket((c) => {
      const init: SessionInit = c.get("chatSession");
      const session = new Session({ hub, store, config, logger, metrics }, init);
      const id = `c${(++nextSocketId).toString(36)}`;
      let started = false;
      const start = (ws: WSContext) => {
        if (started) return;
        started = true;
        sessions.add(session);
        void session.open(toSocket(ws, id));
      };
      return {
        onOpen: (_event, ws) => start(ws),
        onMessage: (event, ws) => {
          start(ws); // helpers that never call onOpen (cloudflare-workers)
          session.message(event.data as string | ArrayBuffer);
        },
        onClose: (event) => {
          sessions.delete(session);
          session.closed(event.code);
        },
        onError: () => {
          sessions.delete(session);
          session.closed(CloseCode.InternalError);
        },
      };
    }),
  );

  if (deps.serveStatic) app.use("/*", deps.serveStatic);
  app.notFound((c) => c.json({ error: "not found" }, 404));
  app.onError((error, c) => {
    logger.error({ err: String(error), path: c.req.path }, "request failed");
    return c.json({ error: "internal error" }, 500);
  });

  const drain = () => {
    draining = true;
  };

  return {
    app,
    sessions,
    drain,
    async shutdown() {
      drain();
      for (const s of sessions) s.close(CloseCode.GoingAway, "server shutting down");
      await hub.close();
      await store.close();
    },
  };
}
