/**
 * Cloudflare Workers entry: the Worker and the room's Durable Object.
 *
 * Isolates share no memory, so a room lives in one Durable Object
 * ({@link ChatRoom}, named by the room): it runs the same app, Session and
 * MemoryHub as Node, Bun and Deno (createChat), and keeps the room's history in
 * its own SQLite storage through the same SqliteStore. The object is the one
 * authority for the room's ids and order.
 *
 * The Worker in front answers what needs no room (/healthz, /metrics, the page
 * from the static assets), refuses bad handshakes (upgrade, origin, room,
 * JWT) before any object wakes, and forwards /websocket and
 * /rooms/:room/messages to the room's object.
 *
 * What differs from the other runtimes, and why:
 * - Heartbeat: a Worker cannot send WebSocket ping frames (the platform
 *   answers the client's), so HEARTBEAT_MS is ignored: a dead peer goes when
 *   the platform's TCP connection to it does, not after two intervals.
 *   Clients that need to know sooner ping (`{"type":"ping"}`, answered).
 * - Slow consumers: Workers' WebSocket has no `bufferedAmount`; the runtime
 *   queues outgoing frames itself, so the 1013 rule (MAX_BUFFERED_BYTES)
 *   cannot be measured and does not apply.
 * - /metrics answers 404 JSON (the protocol requires it on Node, Bun, Deno).
 * - Shutdown and draining are the platform's: /healthz is always "ok".
 * - Frames: the platform accepts frames up to 32 MiB; the Session closes with
 *   1009 past MAX_FRAME_BYTES itself (text and binary).
 * - Invalid UTF-8: workerd decodes a text frame leniently (bad bytes become
 *   U+FFFD) before the object sees it, so there is no 1007; the frame is
 *   handled as the text it decoded to. Closing on U+FFFD instead would refuse
 *   valid text that contains the character itself.
 *
 * - Hibernation: see {@link ChatRoom}.
 *
 * Types come from workers-types' module form, so Workers' globals do not
 * clash with the DOM and Node types the rest of the project checks against.
 */
import type {
  WebSocket as CfWebSocket,
  WebSocketPair as CfWebSocketPair,
  DurableObjectNamespace,
  DurableObjectState,
  Fetcher,
} from "@cloudflare/workers-types/index.ts";
import { type Context, Hono } from "hono";
import { defineWebSocketHelper, WSContext, type WSEvents, type WSReadyState } from "hono/ws";
import { authenticate, type Chat, checkUpgrade, createChat, securityHeaders } from "../app.ts";
import { type Config, ConfigError, loadConfig } from "../config.ts";
import { apiBodyLimit, requireApiKey } from "../governance/api.ts";
import { AlarmClock } from "../governance/expiry.ts";
import { encodeIdentity } from "../governance/token.ts";
import type { ChatSocket } from "../hub/hub.ts";
import { MemoryHub } from "../hub/memory.ts";
import { parseAllowedHosts } from "../limits/hosts.ts";
import { consoleLogger, type Logger } from "../observability/logger.ts";
import { noopMetrics } from "../observability/metrics.ts";
import { CloseCode, roomProblem, selectSubprotocol } from "../protocol.ts";
import { durableSqlite } from "../store/durable.ts";
import { SqliteStore } from "../store/sqlite.ts";
import { DurableWebhooks } from "../webhooks/durable.ts";
import type { HubEvent } from "../webhooks/events.ts";
import { DirectoryClient } from "./room-directory.ts";

/** The bindings and variables wrangler.jsonc declares (vars are config, as env vars elsewhere). */
export interface Env {
  /** One Durable Object per room ({@link ChatRoom}). */
  ROOMS: DurableObjectNamespace;
  /** The page: `static/` as Workers static assets. */
  ASSETS: Fetcher;
  /** The rooms that may have someone online, for GET /api/rooms ({@link RoomDirectory}). */
  DIRECTORY?: DurableObjectNamespace;
  [variable: string]: unknown;
}

/** What the Worker calls on a stub or the assets binding, in the DOM fetch types the app uses. */
interface FetchTarget {
  fetch(request: Request): Promise<Response>;
}

/** The string variables of the Worker's env: the same names and meaning as the env of the other runtimes. */
function configVars(env: Env): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const [key, value] of Object.entries(env)) if (typeof value === "string") out[key] = value;
  return out;
}

/**
 * The config, with one Workers default: ALLOWED_HOSTS unset means any host.
 * Cloudflare routes a request to this Worker by its host name, so a
 * rebinding name never reaches it (limits/hosts.ts).
 */
function workersConfig(env: Env): Config {
  const config = loadConfig(configVars(env));
  return config.allowedHosts ? config : { ...config, allowedHosts: parseAllowedHosts("*") };
}

function loggerFor(config: Config): Logger {
  const level = config.logLevel === "trace" ? "debug" : config.logLevel === "fatal" ? "error" : config.logLevel;
  return consoleLogger(level);
}

function roomStub(env: Env, room: string): FetchTarget {
  return env.ROOMS.get(env.ROOMS.idFromName(room)) as unknown as FetchTarget;
}

/** Forwards to the room's object, minus what the Worker has already checked. */
function forward(env: Env, room: string, url: URL, request: Request): Promise<Response> {
  const headers = new Headers(request.headers);
  // Checked here; the object trusts the Worker, its only caller.
  headers.delete("origin");
  headers.delete("authorization");
  headers.delete("cookie");
  return roomStub(env, room).fetch(new Request(url, { method: request.method, headers }));
}

/** The Worker's routes. Built once per isolate from its env. */
function createFront(env: Env): Hono {
  const config = workersConfig(env);
  const logger = loggerFor(config);
  const app = new Hono();

  // Before the security-headers middleware: a 101 answer from the object
  // carries the socket and must reach the client unchanged.
  app.get("/websocket", async (c) => {
    const checked = await checkUpgrade(c, config, logger, false);
    if ("status" in checked) return c.json({ error: checked.error }, checked.status);
    const url = new URL(c.req.url);
    url.searchParams.delete("token");
    // Only the front may say who a connection is: a client's own `identity` never reaches the object.
    url.searchParams.delete("identity");
    // The token's name wins over `?user=`; the object takes the identity from the query.
    if (checked.fromToken && checked.name !== null) url.searchParams.set("user", checked.name);
    if (checked.identity) url.searchParams.set("identity", encodeIdentity(checked.identity));
    return forward(env, checked.room, url, c.req.raw);
  });

  app.use("*", securityHeaders());

  app.get("/healthz", (c) =>
    c.json({ status: "ok", runtime: "workerd", hub: "durable-object", history: "durable-object" }),
  );

  app.get("/metrics", (c) => c.json({ error: "metrics are not served on Workers" }, 404));

  app.get("/rooms/:room/messages", async (c) => {
    const room = c.req.param("room");
    const roomError = roomProblem(room);
    if (roomError) return c.json({ error: roomError }, 400);
    const auth = await authenticate(c, config, room);
    if ("status" in auth) return c.json({ error: auth.error }, auth.status);
    return copy(await forward(env, room, new URL(c.req.url), c.req.raw));
  });

  // The server API: the key is checked here, before any object wakes; a
  // room's calls go to its object (its hub, history and bans).
  if (config.apiKey !== undefined) {
    app.use("/api/*", requireApiKey(config.apiKey), apiBodyLimit());
    const directory = env.DIRECTORY ? new DirectoryClient(env.DIRECTORY, logger) : null;
    app.get("/api/rooms", async (c) => {
      // No object sees every room: the directory lists them (room-directory.ts).
      if (!directory) return c.json({ error: "GET /api/rooms needs the DIRECTORY binding (wrangler.jsonc)" }, 501);
      return c.json({ rooms: await directory.online((room) => roomStub(env, room)) });
    });
    app.all("/api/rooms/:room/*", async (c) => {
      const room = c.req.param("room");
      const roomError = roomProblem(room);
      if (roomError) return c.json({ error: roomError }, 400);
      const body = c.req.method === "GET" || c.req.method === "HEAD" ? null : await c.req.arrayBuffer();
      const headers = new Headers({ "content-type": c.req.header("content-type") ?? "application/json" });
      const request = new Request(c.req.url, { method: c.req.method, headers, body });
      return copy(await roomStub(env, room).fetch(request));
    });
  }

  app.get("*", async (c) => {
    const res = await (env.ASSETS as unknown as FetchTarget).fetch(c.req.raw);
    if (res.status === 404) return c.json({ error: "not found" }, 404);
    return copy(res);
  });

  app.notFound((c) => c.json({ error: "not found" }, 404));
  app.onError((error, c) => {
    logger.error({ err: error, path: c.req.path }, "request failed");
    return c.json({ error: "internal error" }, 500);
  });
  return app;
}

/** Fetched responses have immutable headers; the middleware adds its own. */
const copy = (res: Response): Response => new Response(res.body, res);

/** Workers' socket as the core's {@link ChatSocket}; `muted` drops sends while a room is rebuilt. */
function workersSocket(raw: CfWebSocket, id: string, muted: () => boolean): ChatSocket {
  return {
    id,
    send(text) {
      if (muted()) return;
      // workerd throws on a socket that is closing; the close event that
      // follows ends the session, and a throw here would stop a room's fan-out.
      try {
        raw.send(text);
      } catch {}
    },
    close(code, reason) {
      try {
        raw.close(code, reason);
      } catch {}
    },
    // No bufferedAmount on Workers: the runtime queues frames itself (see the header).
    bufferedAmount: () => 0,
    // Into the upgrade URL the rebuild after hibernation replays (a refreshed token's identity).
    persist(key, value) {
      const a = raw.deserializeAttachment() as Attachment | null;
      if (!a) return;
      const url = new URL(a.url);
      url.searchParams.set(key, value);
      raw.serializeAttachment({ ...a, url: url.href } satisfies Attachment);
    },
  };
}

/**
 * What a hibernated connection keeps (`serializeAttachment`): enough to
 * replay its upgrade through the app when the object wakes.
 */
interface Attachment {
  id: string;
  /** The forwarded upgrade URL (room, user), without `since`. */
  url: string;
  protocol: string | null;
}

interface Connection {
  events: WSEvents<CfWebSocket>;
  ws: WSContext<CfWebSocket>;
}

/**
 * One room: its connections, its order and its history. The same app as the
 * other runtimes (createChat: Session, MemoryHub, SqliteStore) serves the
 * forwarded /websocket and /rooms/:room/messages.
 *
 * Hibernation: sockets are accepted with `ctx.acceptWebSocket`, so an idle
 * room is evicted from memory while its connections stay open. When an event
 * wakes it, the constructor rebuilds the room before any event runs: each
 * socket's upgrade is replayed through the app (same route, same Session)
 * with the socket adopted instead of created, and every frame that replay
 * produces (welcomes, `joined` presence of people who never left) is
 * dropped. The ids continue from the store; a rebuilt connection starts with
 * a full rate-limit bucket, which after the idle time hibernation needs
 * (about 10 s) the default bucket (10, refilled 1/s) has anyway.
 */
export class ChatRoom {
  readonly #ctx: DurableObjectState;
  readonly #chat: Chat;
  /** Open connections, by their attachment id. */
  readonly #connections = new Map<string, Connection>();
  #rebuilding = false;
  /** Webhook outbox and delivery (WEBHOOK_URL), driven by the object's alarm. */
  readonly #webhooks: DurableWebhooks | null;
  /** Token expiries, also on the alarm: a timer would keep the object from hibernating. */
  readonly #expiry: AlarmClock;
  /** Told of the room's first connection and its last (GET /api/rooms). */
  readonly #directory: DirectoryClient | null;
  /** This object's room, from its first forwarded request. */
  #room: string | null = null;

  constructor(ctx: DurableObjectState, env: Env) {
    this.#ctx = ctx;
    // Origin and token were checked by the Worker, which alone can reach
    // this object; the name from the token arrives as `?user=`.
    // AUTH_SECRET stays: token refreshes (`auth` frames) are checked here.
    const config: Config = { ...workersConfig(env), allowedOrigins: [] };
    const logger = loggerFor(config);
    // The one alarm is shared with the webhooks: set only when none is set sooner.
    this.#expiry = new AlarmClock((at) => {
      void (async () => {
        const current = await ctx.storage.getAlarm();
        if (current === null || current > at) await ctx.storage.setAlarm(at);
      })().catch((error: unknown) => logger.error({ err: error }, "could not set the alarm for a token's expiry"));
    });
    const store = new SqliteStore(durableSqlite(ctx.storage), config.historyLimit, {
      ttlMs: config.historyTtlMs,
      // No timer in a Durable Object (it would keep the object from hibernating): pruned on writes.
      pruneTimer: false,
    });
    const webhooks = config.webhook ? new DurableWebhooks(ctx.storage, config.webhook, logger) : null;
    this.#webhooks = webhooks;
    this.#directory = env.DIRECTORY ? new DirectoryClient(env.DIRECTORY, logger) : null;
    // A rebuild after hibernation replays the joins of people who never left: no news for the webhooks.
    const events = webhooks ? (e: HubEvent) => void (this.#rebuilding || webhooks.sink(e)) : null;
    const hub = new MemoryHub(store, logger, null, events, config.presenceIntervalMs);
    this.#chat = createChat({
      config,
      hub,
      store,
      logger,
      metrics: noopMetrics,
      upgradeWebSocket: this.#upgrade,
      toSocket: (ws, id) => workersSocket(ws.raw as CfWebSocket, id, () => this.#rebuilding),
      runtime: "workerd",
      behindFront: true,
      expiry: this.#expiry,
      // Per-address limits are kept per room here (docs/workers.md): the
      // client's address is Cloudflare's, which the edge sets on every request.
      peerAddress: (c) => c.req.header("cf-connecting-ip"),
      // The rebuild after hibernation replays upgrades that were admitted already.
      internalRequest: (c) => (c.env as { adopt?: unknown } | undefined)?.adopt !== undefined,
    });
    const hibernated = ctx.getWebSockets();
    if (hibernated.length > 0) {
      void ctx.blockConcurrencyWhile(() => this.#rebuild(hibernated, logger, config.presenceIntervalMs));
    }
  }

  /**
   * Our own upgrade. Hono's cloudflare-workers helper never calls `onOpen`
   * (the welcome would wait for a client frame), does not answer
   * `Sec-WebSocket-Protocol`, and cannot hibernate (honojs/hono#4506). Here
   * the session opens at the upgrade, `chat.v1` is selected when offered, and
   * the socket is accepted for hibernation. With `adopt` in the request's env
   * it takes over an existing socket instead (the rebuild after a wake).
   */
  readonly #upgrade = defineWebSocketHelper((c: Context, events) => {
    const adopt = (c.env as { adopt?: CfWebSocket } | undefined)?.adopt;
    const protocol = selectSubprotocol(c.req.header("sec-websocket-protocol"));
    let server: CfWebSocket;
    let client: CfWebSocket | null = null;
    if (adopt) {
      server = adopt;
    } else {
      const { WebSocketPair } = globalThis as unknown as { WebSocketPair: typeof CfWebSocketPair };
      const pair = new WebSocketPair();
      client = pair[0];
      server = pair[1];
      const url = new URL(c.req.url);
      url.searchParams.delete("since"); // a rebuilt session must not resume again
      this.#ctx.acceptWebSocket(server);
      server.serializeAttachment({ id: crypto.randomUUID(), url: url.href, protocol } satisfies Attachment);
    }
    const { id } = server.deserializeAttachment() as Attachment;
    const ws = new WSContext<CfWebSocket>({
      raw: server,
      protocol,
      url: null,
      get readyState() {
        return server.readyState as WSReadyState;
      },
      send: (data) => server.send(data),
      close: (code, reason) => server.close(code, reason),
    });
    this.#connections.set(id, { events, ws });
    this.#room ??= c.req.query("room") ?? null;
    if (!adopt && this.#connections.size === 1 && this.#room) this.#directory?.report(this.#room, true);
    events.onOpen?.(new Event("open"), ws);
    if (!client) return new Response(null, { status: 204 });
    const headers: Record<string, string> = protocol ? { "sec-websocket-protocol": protocol } : {};
    // `webSocket` is Workers' extension of ResponseInit (the 101 hands the client end over).
    return new Response(null, { status: 101, webSocket: client, headers } as ResponseInit);
  });

  async #rebuild(sockets: CfWebSocket[], logger: Logger, presenceIntervalMs: number): Promise<void> {
    this.#rebuilding = true;
    try {
      for (const socket of sockets) {
        const a = socket.deserializeAttachment() as Attachment | null;
        const headers: Record<string, string> = { upgrade: "websocket" };
        if (a?.protocol) headers["sec-websocket-protocol"] = a.protocol;
        const res = a ? await this.#chat.app.fetch(new Request(a.url, { headers }), { adopt: socket }) : null;
        if (res?.status !== 204) {
          logger.error({ status: res?.status }, "could not rebuild a hibernated connection");
          socket.close(CloseCode.InternalError, "connection lost its state; reconnect");
        }
      }
      // Each session's join and welcome run on the synchronous SQL storage,
      // so they settle within the microtasks of this turn; but presence is
      // merged (PRESENCE_INTERVAL_MS): the replay's first join goes out at
      // once, the others when the interval ends. One interval (plus a timer
      // turn) later every frame of the replay has been sent, and dropped. The
      // event that woke the room waits that long, once per wake.
      await new Promise((r) => setTimeout(r, presenceIntervalMs + 1));
      logger.info({ connections: sockets.length }, "room rebuilt after hibernation");
    } finally {
      this.#rebuilding = false;
    }
  }

  #connection(ws: CfWebSocket): Connection | undefined {
    const a = ws.deserializeAttachment() as Attachment | null;
    return a ? this.#connections.get(a.id) : undefined;
  }

  fetch(request: Request): Response | Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname === "/api/rooms" && this.#connections.size === 0) {
      // Asked by GET /api/rooms while nobody is here: leave the directory.
      const room = url.searchParams.get("room");
      if (room) this.#directory?.report(room, false);
    }
    return this.#chat.app.fetch(request);
  }

  /** After a connection is gone: the room's last one takes it out of the directory. */
  #left(): void {
    if (this.#connections.size === 0 && this.#room) this.#directory?.report(this.#room, false);
  }

  /** The object's one alarm: webhook delivery and its retries (src/webhooks/durable.ts). */
  async alarm(): Promise<void> {
    const next = this.#expiry.fire(Date.now());
    if (next !== null) this.#expiry.requestAlarm(next);
    await this.#webhooks?.alarm();
  }

  /** A frame from a (possibly hibernated) connection. */
  webSocketMessage(ws: CfWebSocket, message: string | ArrayBuffer): void {
    const conn = this.#connection(ws);
    if (!conn) {
      ws.close(CloseCode.InternalError, "unknown connection; reconnect");
      return;
    }
    conn.events.onMessage?.({ data: message } as MessageEvent, conn.ws);
  }

  webSocketClose(ws: CfWebSocket, code: number, reason: string): void {
    const a = ws.deserializeAttachment() as Attachment | null;
    const conn = this.#connection(ws);
    if (a) this.#connections.delete(a.id);
    this.#left();
    // A hibernatable socket does not answer the client's close by itself:
    // without this the client waits out its close timeout and sees 1006.
    // 1005 (no code given) may not be sent, so it is answered with 1000.
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {
      // already closed from our side
    }
    conn?.events.onClose?.({ code, reason } as CloseEvent, conn.ws);
  }

  webSocketError(ws: CfWebSocket): void {
    const a = ws.deserializeAttachment() as Attachment | null;
    const conn = this.#connection(ws);
    if (a) this.#connections.delete(a.id);
    this.#left();
    conn?.events.onError?.(new Event("error"), conn.ws);
  }
}

/** GET /api/rooms's directory object: wrangler finds Durable Object classes among the main module's exports. */
export { RoomDirectory } from "./room-directory.ts";

let front: Hono | null = null;

export default {
  fetch(request: Request, env: Env): Response | Promise<Response> {
    try {
      front ??= createFront(env);
    } catch (error) {
      // A bad variable (ConfigError names it) fails every request loudly rather than running
      // misconfigured; anything else is logged with its stack.
      console.error(error instanceof ConfigError ? error.message : error);
      return Response.json({ error: "the chat is misconfigured; see the Worker's log" }, { status: 500 });
    }
    return front.fetch(request);
  },
};
