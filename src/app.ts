import { type Context, Hono, type MiddlewareHandler } from "hono";
import { secureHeaders } from "hono/secure-headers";
import type { UpgradeWebSocket, WSContext, WSEvents } from "hono/ws";
import type { Config } from "./config.ts";
import { createApi } from "./governance/api.ts";
import type { ExpiryClock } from "./governance/expiry.ts";
import {
  decodeIdentity,
  type Identity,
  isRefusal,
  type RequestView,
  roomAllowed,
  type TokenSettings,
  tokenFromRequest,
  verifyToken,
} from "./governance/token.ts";
import type { ChatSocket, Hub } from "./hub/hub.ts";
import { clientKey } from "./limits/address.ts";
import { allowedHostsFor, hostAllowed } from "./limits/hosts.ts";
import { AddressLimits, readCost, textCost } from "./limits/limiter.ts";
import type { Logger } from "./observability/logger.ts";
import type { Metrics } from "./observability/metrics.ts";
import { LogThrottle } from "./observability/throttle.ts";
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
  /**
   * The TCP peer's address of a request (the runtime's getConnInfo, or
   * Workers' CF-Connecting-IP). Per-address limits key on it (TRUST_PROXY:
   * X-Forwarded-For); without it every client counts as one address,
   * "unknown". @default none
   */
  peerAddress?: (c: Context) => string | null | undefined;
  /**
   * Requests the runtime makes itself, not a client (Workers replaying its
   * upgrades after hibernation): not capped or charged per address.
   * @default none
   */
  internalRequest?: (c: Context) => boolean;
  /**
   * The app runs behind the Worker's front (a room's Durable Object), which
   * nothing else can reach: the front has checked the token and the API key,
   * and forwards the token's identity in the `identity` query parameter
   * (governance/token.ts). AUTH_SECRET still checks `auth` refreshes here.
   * @default false
   */
  behindFront?: boolean;
  /** What wakes connections at their token's `exp` (governance/expiry.ts). @default timers */
  expiry?: ExpiryClock;
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
  /**
   * `GET /websocket` without Hono, for a runtime that handles upgrades
   * itself (runtime/node-ws.ts); absent behind the Worker's front.
   */
  readonly direct?: DirectUpgrades;
}

/** An answer to an upgrade that is not accepted: a JSON body, as `c.json` sends it. */
export interface Answer {
  status: Problem["status"] | 500;
  body: Record<string, unknown>;
  /** Beyond the JSON content type and the security headers (`retry-after`). */
  headers?: Record<string, string>;
}

/**
 * The headers of an {@link Answer} as the route through Hono sends them:
 * the security headers, the JSON content type and the answer's own, by
 * lower-case name in order (as a Response lists them).
 */
export function answerHeaders(answer: Answer, security: readonly (readonly [string, string])[]): [string, string][] {
  const headers: [string, string][] = security.map(([name, value]) => [name, value]);
  headers.push(["content-type", "application/json"]);
  if (answer.headers) for (const [name, value] of Object.entries(answer.headers)) headers.push([name, value]);
  return headers.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/**
 * True when the request target `url`, from index `at` (where its path
 * starts), is the app's WebSocket route: `/websocket`, with or without a
 * query. What a runtime's direct route ({@link DirectUpgrades}) takes.
 */
export function isWebSocketTarget(url: string, at = 0): boolean {
  return url.startsWith("/websocket", at) && (url.length === at + 10 || url.charCodeAt(at + 10) === 63); // "?"
}

/**
 * The `/websocket` route for a runtime that answers upgrades itself: the
 * same checks, answers and sessions as the route through Hono, without
 * what Hono adds per request (a Context, routing, the middleware chain,
 * a Response whose headers the security middleware sets one by one), and
 * synchronous unless a check needs the store or a token. On Node the
 * handshake cost 2.3x the plain ws server's CPU through Hono
 * (docs/benchmarks.md, connect time).
 */
export interface DirectUpgrades {
  /**
   * The security headers every answer carries (lower-case name, value,
   * sorted as a Response lists them); null until known, a few microtasks
   * after {@link createChat}: until then upgrades go through `app.fetch`.
   */
  readonly headers: readonly (readonly [string, string])[] | null;
  /**
   * Checks an upgrade to `/websocket` (GET): the session's parameters, or
   * the refusal to send. Never throws: a failure is the 500 the app sends.
   * @param peer the TCP peer's address
   */
  admit(req: RequestView, peer: string | null | undefined): SessionInit | Answer | Promise<SessionInit | Answer>;
  /**
   * The handshake is complete: starts the session. The runtime then hands
   * it every frame (`message`) and tells {@link closed} once.
   * @param socketOf the core's socket over `raw`, with the id given
   */
  open<R>(init: SessionInit, raw: R, socketOf: (raw: R, id: string) => ChatSocket): Session;
  /** The connection is gone (its close code; 1011 for a socket error). */
  closed(session: Session, code: number): void;
}

let nextSocketId = 0;

/**
 * One connection's WebSocket events. A class rather than an object of five
 * closures: one small object per connection (with tsx's keepNames every
 * closure also carries its own property dictionary; together ~2 KiB of each
 * idle connection, docs/benchmarks.md). Every helper calls these as methods
 * (`events.onMessage(...)`), so `this` holds.
 */
class ChatEvents implements WSEvents {
  #started = false;

  constructor(
    readonly session: Session,
    readonly id: string,
    readonly shared: { sessions: Set<Session>; toSocket: (ws: WSContext, id: string) => ChatSocket },
  ) {}

  #start(ws: WSContext): void {
    if (this.#started) return;
    this.#started = true;
    this.shared.sessions.add(this.session);
    void this.session.open(this.shared.toSocket(ws, this.id));
  }

  onOpen(_event: Event, ws: WSContext): void {
    this.#start(ws);
  }

  onMessage(event: MessageEvent, ws: WSContext): void {
    this.#start(ws); // helpers that never call onOpen (cloudflare-workers)
    this.session.message(event.data as string | ArrayBuffer);
  }

  onClose(event: CloseEvent): void {
    this.shared.sessions.delete(this.session);
    this.session.closed(event.code);
  }

  onError(): void {
    this.shared.sessions.delete(this.session);
    this.session.closed(CloseCode.InternalError);
  }
}

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

type Problem = { status: 400 | 401 | 403 | 426 | 429 | 503; error: string };

/** The `Origin` rule of docs/protocol.md, Security: same host:port, or listed. */
export function originProblem(c: { req: RequestView }, allowed: readonly string[]): Problem | null {
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

/**
 * Checks the JWT when AUTH_SECRET is set (signature, `exp`, AUTH_ISSUER,
 * AUTH_AUDIENCE; governance/token.ts) and, given `room`, its `rooms` claim
 * (403). Resolves with the token's identity, or null when auth is off.
 */
export async function authenticate(
  c: { req: RequestView },
  settings: TokenSettings,
  room?: string,
): Promise<Problem | { identity: Identity | null }> {
  return authenticateNow(c, settings, room);
}

/** {@link authenticate}, synchronous when there is no token to verify (AUTH_SECRET unset, or none sent). */
function authenticateNow(
  c: { req: RequestView },
  settings: TokenSettings,
  room?: string,
): Problem | { identity: Identity | null } | Promise<Problem | { identity: Identity | null }> {
  if (settings.authSecret === undefined) return NO_IDENTITY;
  const token = tokenFromRequest(c);
  if (!token) return { status: 401, error: "a token is required" };
  return verifyToken(token, settings).then((identity) => {
    if (isRefusal(identity)) return { status: 401, error: identity.refused };
    if (room !== undefined && !roomAllowed(identity.rooms, room)) return { status: 403, error: "room not allowed" };
    return { identity };
  });
}

const NO_IDENTITY = { identity: null } as const;

/** Room, user and since from the query, checked before the upgrade. */
function connectionParams(c: {
  req: RequestView;
}): Problem | (Omit<SessionInit, "name" | "mode"> & { user: string | null }) {
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
  /** What the token says; null without AUTH_SECRET. */
  identity: Identity | null;
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
  return checkUpgradeNow(c, config, logger, draining);
}

/** {@link checkUpgrade}, synchronous unless a token is verified. */
function checkUpgradeNow(
  c: { req: RequestView },
  config: Config,
  logger: Logger,
  draining: boolean,
): Problem | CheckedUpgrade | Promise<Problem | CheckedUpgrade> {
  if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
    return { status: 426, error: "this endpoint takes WebSocket upgrades only" };
  }
  if (draining) return { status: 503, error: "server is shutting down" };
  if (!hostAllowed(c.req.header("host"), allowedHostsFor(config))) return hostRefused(c, logger);
  const origin = originProblem(c, config.allowedOrigins);
  if (origin) {
    const more = refusalLog.origin.pass();
    if (more !== null) {
      logger.warn(
        { origin: c.req.header("origin"), host: c.req.header("host"), more },
        "refused a cross-origin upgrade",
      );
    }
    return origin;
  }
  const params = connectionParams(c);
  if (isProblem(params)) return params;
  // No closure on the synchronous path: it runs for every handshake.
  const auth = authenticateNow(c, config, params.room);
  return auth instanceof Promise ? auth.then((a) => checked(params, a)) : checked(params, auth);
}

function checked(
  params: { room: string; user: string | null; since: string | null },
  auth: Problem | { identity: Identity | null },
): Problem | CheckedUpgrade {
  if (isProblem(auth)) return auth;
  const { identity } = auth;
  return {
    room: params.room,
    name: identity?.name ?? params.user,
    fromToken: identity !== null,
    identity,
    since: params.since,
  };
}

/** Refusals a client can repeat at will are logged once a minute, with the count of the rest. */
const refusalLog = { host: new LogThrottle(), origin: new LogThrottle(), address: new LogThrottle() };

/** 403 for a Host that is not allowed (DNS rebinding, see limits/hosts.ts). */
function hostRefused(c: { req: RequestView }, logger: Logger): Problem {
  const more = refusalLog.host.pass();
  if (more !== null)
    logger.warn({ host: c.req.header("host"), more }, "refused a request for a host that is not allowed");
  return { status: 403, error: "host not allowed; the server's operator can add it to ALLOWED_HOSTS" };
}

/** A 429 JSON answer with Retry-After (whole seconds, rounded up) and `retryAfterMs`. */
export function tooMany(c: Context, error: string, retryAfterMs: number | null): Response {
  return reply(c, tooManyAnswer(error, retryAfterMs));
}

function tooManyAnswer(error: string, retryAfterMs: number | null): Answer {
  if (retryAfterMs === null) return { status: 429, body: { error } };
  return {
    status: 429,
    body: { error, retryAfterMs },
    headers: { "retry-after": String(Math.max(1, Math.ceil(retryAfterMs / 1000))) },
  };
}

/** An {@link Answer} through Hono. */
function reply(c: Context, answer: Answer): Response {
  if (answer.headers) for (const [name, value] of Object.entries(answer.headers)) c.header(name, value);
  return c.json(answer.body, answer.status);
}

const isAnswer = (v: SessionInit | Answer): v is Answer => "status" in v;

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
 * The security headers as a response carries them (lower-case names,
 * sorted), for answers made without Hono: the middleware's own output, so
 * the two cannot differ.
 */
async function securityHeaderList(): Promise<[string, string][]> {
  const probe = new Hono();
  probe.use("*", securityHeaders());
  probe.get("/", (c) => c.body(null));
  const res = await probe.request("/");
  const list: [string, string][] = [];
  res.headers.forEach((value, name) => {
    list.push([name, value]);
  });
  return list;
}

/**
 * Builds the chat: routes and middleware only; the work is in Session, the
 * hub and the store.
 */
export function createChat(deps: AppDeps): Chat {
  const { config, hub, store, logger, metrics } = deps;
  const toSocket = deps.toSocket ?? defaultToSocket;
  const sessions = new Set<Session>();
  const shared = { sessions, toSocket };
  let draining = false;
  /** Per client address: open connections and a shared bucket (limits/limiter.ts). */
  const addresses = new AddressLimits(config);
  /** Shared by every session: one object, not one per connection. */
  const sessionDeps = { hub, store, config, logger, metrics, addresses, expiry: deps.expiry };
  const peerOf = (c: Context) => {
    try {
      return deps.peerAddress?.(c);
    } catch {
      return undefined; // a request without the runtime's connection info (tests' app.request)
    }
  };
  const keyOf = (c: Context) => clientKey(peerOf(c), c.req.header("x-forwarded-for"), config.trustProxy);
  const app = new Hono<ChatEnv>();
  // Behind the Worker's front the token was checked there; refreshes still use config.
  const checks: Config = deps.behindFront ? { ...config, authSecret: undefined } : config;

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
    if (!hostAllowed(c.req.header("host"), allowedHostsFor(config)))
      return c.json({ error: hostRefused(c, logger).error }, 403);
    const auth = await authenticate(c, checks, room);
    if (isProblem(auth)) return c.json({ error: auth.error }, auth.status);
    const before = c.req.query("before");
    if (before !== undefined && !isMessageId(before)) return c.json({ error: "before must be a message id" }, 400);
    const limitText = c.req.query("limit") ?? "50";
    const limit = Number(limitText);
    if (!/^\d+$/.test(limitText) || limit < 1)
      return c.json({ error: "limit must be a whole number from 1 to 500" }, 400);
    const n = Math.min(limit, 500);
    // Charged to the address by what it reads: a loop of limit=500 reads
    // empties the bucket ten times faster than the page's pages of 50.
    if (!deps.internalRequest?.(c)) {
      const wait = addresses.charge(keyOf(c), readCost(n));
      if (wait > 0) return tooMany(c, "too many requests from your address; slow down", wait);
    }
    try {
      const messages = before === undefined ? await store.latest(room, n) : await store.before(room, before, n);
      // And by its size once known: 500 messages of 8 KB cost more than 500 lines of chat.
      if (!deps.internalRequest?.(c)) addresses.spend(keyOf(c), textCost(messages) - readCost(n));
      return c.json({ messages });
    } catch (error) {
      logger.error({ room, err: error }, "history read failed");
      return c.json({ error: "history is unavailable" }, 503);
    }
  });

  /**
   * What the `/websocket` route decides before the upgrade, in the
   * contract's order: {@link checkUpgrade}, the address's cap and handshake
   * charge (unless `internal`), the ban. Synchronous unless a token is
   * verified or a named user's ban is read.
   */
  const admitUpgrade = (
    req: RequestView,
    address: string,
    internal: boolean,
  ): SessionInit | Answer | Promise<SessionInit | Answer> => {
    const checked = checkUpgradeNow({ req }, checks, logger, draining);
    // No closure on the synchronous path: it runs for every handshake.
    return checked instanceof Promise
      ? checked.then((c) => admitChecked(req, address, internal, c))
      : admitChecked(req, address, internal, checked);
  };

  const admitChecked = (
    req: RequestView,
    address: string,
    internal: boolean,
    checked: Problem | CheckedUpgrade,
  ): SessionInit | Answer | Promise<SessionInit | Answer> => {
    if (isProblem(checked)) return { status: checked.status, body: { error: checked.error } };
    const identity = deps.behindFront ? decodeIdentity(req.query("identity")) : checked.identity;
    if (!internal) {
      const refused = addresses.admit(address);
      if (refused) {
        const more = refusalLog.address.pass();
        if (more !== null)
          logger.info({ address, reason: refused.error, more }, "refused a handshake (per-address limit)");
        return tooManyAnswer(refused.error, refused.retryAfterMs);
      }
    }
    const init: SessionInit = {
      room: checked.room,
      name: checked.name,
      mode: selectSubprotocol(req.header("sec-websocket-protocol")) ? "v1" : "seed",
      since: checked.since,
      address,
      identity,
    };
    if (checked.name === null) return init;
    // After the address's handshake charge: a banned user reconnecting in a loop is limited like anyone.
    return bannedCheck(checked.room, checked.name, init);
  };

  const bannedCheck = async (room: string, name: string, init: SessionInit): Promise<SessionInit | Answer> => {
    let until: number | null;
    try {
      until = await store.bannedUntil(room, name, Date.now());
    } catch (error) {
      logger.error({ room, err: error }, "ban check failed");
      return { status: 503, body: { error: "chat is unavailable, try again" } };
    }
    if (until !== null) return { status: 403, body: { error: "banned", until: Number.isFinite(until) ? until : null } };
    return init;
  };

  app.get(
    "/websocket",
    async (c, next) => {
      const admitted = await admitUpgrade(c.req, keyOf(c), deps.internalRequest?.(c) ?? false);
      if (isAnswer(admitted)) return reply(c, admitted);
      c.set("chatSession", admitted);
      await next();
    },
    deps.upgradeWebSocket((c) => {
      const init: SessionInit = c.get("chatSession");
      const session = new Session(sessionDeps, init);
      return new ChatEvents(session, `c${(++nextSocketId).toString(36)}`, shared);
    }),
  );

  if (config.apiKey !== undefined)
    app.route("/api", createApi({ config, hub, store, logger, trusted: deps.behindFront }));
  if (deps.serveStatic) app.use("/*", deps.serveStatic);
  app.notFound((c) => c.json({ error: "not found" }, 404));
  app.onError((error, c) => {
    logger.error({ err: error, path: c.req.path }, "request failed");
    return c.json({ error: "internal error" }, 500);
  });

  const drain = () => {
    draining = true;
  };

  let direct: (DirectUpgrades & { headers: DirectUpgrades["headers"] }) | undefined;
  if (!deps.behindFront && !deps.internalRequest) {
    // What app.onError logs and answers for the route through Hono.
    const failed = (error: unknown): Answer => {
      logger.error({ err: error, path: "/websocket" }, "request failed");
      return { status: 500, body: { error: "internal error" } };
    };
    const upgrades = {
      headers: null as DirectUpgrades["headers"],
      admit(req: RequestView, peer: string | null | undefined): SessionInit | Answer | Promise<SessionInit | Answer> {
        try {
          const address = clientKey(peer, req.header("x-forwarded-for"), config.trustProxy);
          const admitted = admitUpgrade(req, address, false);
          return admitted instanceof Promise ? admitted.catch(failed) : admitted;
        } catch (error) {
          return failed(error);
        }
      },
      open<R>(init: SessionInit, raw: R, socketOf: (raw: R, id: string) => ChatSocket): Session {
        const session = new Session(sessionDeps, init);
        sessions.add(session);
        void session.open(socketOf(raw, `c${(++nextSocketId).toString(36)}`));
        return session;
      },
      closed(session: Session, code: number): void {
        sessions.delete(session);
        session.closed(code);
      },
    };
    void securityHeaderList().then((list) => {
      upgrades.headers = list;
    });
    direct = upgrades;
  }

  return {
    app,
    sessions,
    drain,
    direct,
    async shutdown() {
      drain();
      for (const s of sessions) s.close(CloseCode.GoingAway, "server shutting down");
      await hub.close();
      await store.close();
    },
  };
}
