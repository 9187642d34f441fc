/**
 * The start-up every runtime shares: config (or exit), logger, metrics, the
 * chat, serving, the "listening" line, signals and the contract's graceful
 * shutdown. Each entry (node.ts, bun.ts, deno.ts) supplies a
 * {@link RuntimeEntry}: only what differs on its runtime.
 *
 * To add a start-up step for every runtime (a background loop, say), add it
 * to {@link start} between `buildServer` and `serve`, and stop it in the
 * shutdown's `stopAccepting`.
 */
import type { Chat } from "../app.ts";
import { type Config, loadConfigOrExit } from "../config.ts";
import type { Hub } from "../hub/hub.ts";
import type { Logger } from "../observability/logger.ts";
import { createLogger } from "../observability/pino.ts";
import { PrometheusMetrics } from "../observability/prometheus.ts";
import { buildServer, gracefulShutdown, type ServerParts } from "../server.ts";
import type { HistoryStore } from "../store/store.ts";

/** The chat as a runtime serves it. */
export type BuiltChat = Chat & { hub: Hub; store: HistoryStore };

/** A server that listens: what the shared shutdown needs of it. */
export interface Served {
  /** The port it listens on (PORT=0 picks one). */
  port: number;
  /** Stops accepting connections (and the runtime's heartbeat); open ones are closed by the chat. */
  stopAccepting(): void;
  /** Open WebSockets, waited for at shutdown so their 1001 close frames get out. */
  openSockets(): number;
  /** Ends whatever is still open when the wait is over. */
  closeAll(): void | Promise<void>;
}

/** What one runtime does its own way. */
export interface RuntimeEntry {
  /** Names the runtime in logs and /healthz, e.g. `node v20.20.2`. */
  runtime: string;
  env: Record<string, string | undefined>;
  exit(code: number): never;
  onSignal(signal: "SIGTERM" | "SIGINT", handler: () => void): void;
  /** The WebSocket helper, socket adapter, static files, SQLite driver (and the rooms' broadcaster). */
  parts(config: Config, logger: Logger): Promise<Omit<ServerParts, "config" | "logger" | "metrics" | "runtime">>;
  /** Serves the app on `config.host:config.port`; resolves once it listens. */
  serve(chat: BuiltChat, config: Config, logger: Logger): Promise<Served>;
}

/** A started server, for tests and for entries that need more after start. */
export interface Running {
  chat: BuiltChat;
  served: Served;
  config: Config;
  logger: Logger;
  /** The graceful shutdown (also bound to SIGTERM and SIGINT). */
  stop(signal: string): Promise<void>;
}

/** Starts the chat on a runtime: the one start-up sequence for Node, Bun and Deno. */
export async function start(entry: RuntimeEntry): Promise<Running> {
  const config = loadConfigOrExit(entry.env, entry.exit);
  const logger = createLogger(config);
  const parts = await entry.parts(config, logger);
  const chat = await buildServer({
    ...parts,
    config,
    logger,
    metrics: new PrometheusMetrics(),
    runtime: entry.runtime,
  });
  const served = await entry.serve(chat, config, logger);
  const scheme = config.tls ? "https" : "http";
  logger.info({ url: `${scheme}://${config.host}:${served.port}`, port: served.port }, "listening");

  const stop = gracefulShutdown(chat, config, logger, {
    stopAccepting: () => served.stopAccepting(),
    async drained(ms) {
      const deadline = Date.now() + ms;
      while (served.openSockets() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      await served.closeAll();
    },
    exit: entry.exit,
  });
  entry.onSignal("SIGTERM", () => void stop("SIGTERM"));
  entry.onSignal("SIGINT", () => void stop("SIGINT"));
  return { chat, served, config, logger, stop };
}

/** Event-loop turns counted so far (see {@link currentTurn}). */
let turn = 0;
let turnPending = false;

/**
 * The current event-loop turn, counted lazily: one timer however many
 * sockets write. Deno (its WebSocket, and its node:net under ws) counts a
 * write as queued until its asynchronous op completes, even for a client
 * that reads, so a burst fanned out in one turn would pass for a slow
 * consumer; the sockets there count as backlog only what is left from
 * earlier turns ({@link sameTurn}).
 */
export function currentTurn(): number {
  if (!turnPending) {
    turnPending = true;
    setTimeout(() => {
      turn++;
      turnPending = false;
    }, 0);
  }
  return turn;
}

/** True while the turn `at` (from {@link currentTurn}) is still the current one. */
export function sameTurn(at: number): boolean {
  return at === turn;
}

/** The slice of a server-side WebSocket the heartbeat needs (ws and Bun alike). */
export interface Pingable {
  ping(): unknown;
  terminate(): void;
}

/** Where a {@link Heartbeat} keeps each socket's round of its last pong. */
export interface PongRounds<S> {
  get(ws: S): number | undefined;
  set(ws: S, round: number): void;
}

/**
 * Our heartbeat where the runtime has none that fits (Node's ws; Bun's
 * `idleTimeout` counts whole seconds): a ping every `intervalMs`; a socket
 * that answered none of the last two is terminated (browsers answer pings by
 * themselves). The runtime reports opens and pongs; `sockets` lists the open ones.
 */
export class Heartbeat<S extends Pingable> {
  /**
   * The ping round of each socket's last pong: a WeakMap unless the runtime
   * keeps it on its sockets. A round number rather than a time: a small
   * integer is stored as is, where `Date.now()` would take a heap number
   * (16 B) per connection.
   */
  readonly #lastPong: PongRounds<S>;
  readonly #timer: ReturnType<typeof setInterval> | undefined;
  /** Pings sent so far (rounds of the interval). */
  #round = 0;

  /**
   * @param intervalMs HEARTBEAT_MS; 0 turns it off
   * @param rounds where each socket's round is kept @default a WeakMap
   */
  constructor(sockets: () => Iterable<S>, intervalMs: number, rounds?: PongRounds<S>) {
    this.#lastPong = rounds ?? new WeakMap<S, number>();
    if (intervalMs <= 0) return;
    this.#timer = setInterval(() => {
      const round = ++this.#round;
      for (const ws of sockets()) {
        // No pong in the last two rounds (more than two intervals): gone.
        if (round - (this.#lastPong.get(ws) ?? round) > 2) ws.terminate();
        else ws.ping();
      }
    }, intervalMs);
    (this.#timer as { unref?(): void }).unref?.();
  }

  /** A socket opened (counts as a pong). */
  opened(ws: S): void {
    if (this.#timer !== undefined) this.#lastPong.set(ws, this.#round);
  }

  ponged(ws: S): void {
    if (this.#timer !== undefined) this.#lastPong.set(ws, this.#round);
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
