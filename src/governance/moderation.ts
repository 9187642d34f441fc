/**
 * Moderation and token lifetime on one connection (docs/protocol.md: tokens, moderation): the
 * `auth`, `delete`, `edit`, `ban` and `unban` frames of chat.v1, and the
 * close at the token's `exp`. The session only dispatches these frames here.
 *
 * Who may do what rests on names being identities, so all of it needs
 * AUTH_SECRET: without a token every frame here is answered `forbidden`.
 *
 * Cost: a frame here is one store read and at most one write plus a
 * broadcast; the session charges it against the connection's message bucket
 * before it gets here, so a client sending 1000 of them per second gets
 * `rate_limited` as it would for messages.
 */
import type { Hub } from "../hub/hub.ts";
import type { Logger } from "../observability/logger.ts";
import {
  type AuthAnswerFrame,
  type AuthFrame,
  type BanAnswerFrame,
  type ClientFrame,
  CloseCode,
  type ErrorCode,
  type Mode,
  serialize,
} from "../protocol.ts";
import type { HistoryStore } from "../store/store.ts";
import { type ExpiryClock, timerClock } from "./expiry.ts";
import { type Identity, isRefusal, roomAllowed, type TokenSettings, verifyToken } from "./token.ts";

/** The client frames this module handles. */
export type GovernanceFrame = Extract<ClientFrame, { type: "auth" | "delete" | "edit" | "ban" | "unban" }>;

/** What the connection offers this module: where answers go and how it ends. */
export interface GovernanceHost {
  readonly room: string;
  readonly mode: Mode;
  /** The connection's name (the token's). */
  readonly name: string | null;
  /** Sends a frame to this connection only. */
  deliver(text: string): void;
  error(code: ErrorCode, message: string, cid?: string): void;
  close(code: number, reason: string): void;
  /**
   * Told after a refresh replaced the identity, so a runtime that rebuilds
   * connections (Workers, after hibernation) rebuilds this one with it.
   */
  identityChanged?(identity: Identity): void;
}

/** What every connection's governance shares. */
export interface GovernanceDeps {
  hub: Hub;
  store: HistoryStore;
  /** AUTH_SECRET, AUTH_ISSUER, AUTH_AUDIENCE: refresh tokens are checked as at the handshake. */
  tokens: TokenSettings;
  logger: Logger;
  /** What wakes the connection at its token's `exp`. @default timerClock */
  clock?: ExpiryClock;
}

/** Ban of `user` in `room`: stored first (so a reconnect is refused), then every connection of theirs closed. */
export async function banUser(
  hub: Hub,
  store: HistoryStore,
  room: string,
  user: string,
  seconds: number,
  now = Date.now(),
): Promise<number | null> {
  const until = seconds > 0 ? now + seconds * 1000 : null;
  await store.ban(room, user, until);
  await hub.kick(room, user, CloseCode.Banned, "banned");
  return until;
}

/**
 * The moderation frames, the refresh and the expiry of one connection that
 * came with a token. Built only for such connections, so a server without
 * AUTH_SECRET pays nothing per connection.
 */
export class ConnectionGovernance {
  #identity: Identity;
  #cancel: (() => void) | undefined;
  #stopped = false;

  constructor(
    readonly deps: GovernanceDeps,
    readonly host: GovernanceHost,
    identity: Identity,
  ) {
    this.#identity = identity;
  }

  /** True while the token says `role: "moderator"`. */
  get moderator(): boolean {
    return this.#identity.moderator;
  }

  /** Arms the expiry; call once the connection is open. */
  start(): void {
    this.#arm();
  }

  /** Stops the expiry (the connection is gone). */
  stop(): void {
    this.#stopped = true;
    this.#cancel?.();
    this.#cancel = undefined;
  }

  #arm(): void {
    this.#cancel?.();
    this.#cancel = undefined;
    const exp = this.#identity.exp;
    if (exp === null || this.#stopped) return;
    // Already past: the timer clock expires it at once; the alarm clock on its
    // next alarm (after a Durable Object's rebuild, whose sends are dropped).
    this.#cancel = (this.deps.clock ?? timerClock).schedule(exp * 1000, () => this.#expire());
  }

  #expire(): void {
    if (this.#stopped) return;
    this.stop();
    if (this.host.mode === "v1") this.host.error("token_expired", "the token expired; connect again with a new one");
    this.host.close(CloseCode.TokenExpired, "token expired");
  }

  /** Handles one of the frames; answers go to the host. */
  handle(frame: GovernanceFrame): void {
    const run = (): Promise<void> => {
      switch (frame.type) {
        case "auth":
          return this.#refresh(frame);
        case "delete":
          return this.#delete(frame.id, frame.cid);
        case "edit":
          return this.#edit(frame.id, frame.message, frame.cid);
        case "ban":
          return this.#ban(frame.user, frame.seconds, frame.cid);
        case "unban":
          return this.#unban(frame.user, frame.cid);
      }
    };
    run().catch((error: unknown) => {
      this.deps.logger.error({ room: this.host.room, type: frame.type, err: error }, "moderation failed");
      this.host.error("unavailable", "the chat could not do that now, try again", frame.cid);
    });
  }

  async #refresh(frame: AuthFrame): Promise<void> {
    const result = await verifyToken(frame.token, this.deps.tokens);
    if (this.#stopped) return;
    const problem = isRefusal(result)
      ? result.refused
      : result.name !== this.host.name
        ? "the token names another user"
        : !roomAllowed(result.rooms, this.host.room)
          ? "the token does not allow this room"
          : null;
    if (isRefusal(result) || problem !== null) {
      this.host.error("invalid_token", problem ?? "invalid token", frame.cid);
      return;
    }
    this.#identity = result;
    this.#arm();
    this.host.identityChanged?.(result);
    const answer: AuthAnswerFrame = { type: "auth", exp: result.exp };
    if (frame.cid !== undefined) answer.cid = frame.cid;
    this.host.deliver(serialize(answer));
  }

  async #delete(id: string, cid: string | undefined): Promise<void> {
    const { hub, store } = this.deps;
    const { room } = this.host;
    const message = await store.get(room, id);
    if (message === null) return this.host.error("not_found", "no such message in this room", cid);
    if (message.user !== this.host.name && !this.#identity.moderator) {
      return this.host.error("forbidden", "only the author or a moderator may delete a message", cid);
    }
    if (!(await hub.delete(room, id))) this.host.error("not_found", "no such message in this room", cid);
  }

  async #edit(id: string, text: string, cid: string | undefined): Promise<void> {
    const { hub, store } = this.deps;
    const { room } = this.host;
    const message = await store.get(room, id);
    if (message === null) return this.host.error("not_found", "no such message in this room", cid);
    if (message.user !== this.host.name) return this.host.error("forbidden", "only the author may edit a message", cid);
    if ((await hub.edit(room, id, text)) === null) this.host.error("not_found", "no such message in this room", cid);
  }

  async #ban(user: string, seconds: number, cid: string | undefined): Promise<void> {
    if (!this.#identity.moderator) return this.host.error("forbidden", "only a moderator may ban", cid);
    const { hub, store } = this.deps;
    const { room } = this.host;
    const until = await banUser(hub, store, room, user, seconds);
    const answer: BanAnswerFrame = { type: "banned", room, user, until };
    if (cid !== undefined) answer.cid = cid;
    this.host.deliver(serialize(answer));
  }

  async #unban(user: string, cid: string | undefined): Promise<void> {
    if (!this.#identity.moderator) return this.host.error("forbidden", "only a moderator may lift a ban", cid);
    const { room } = this.host;
    await this.deps.store.unban(room, user);
    const answer: BanAnswerFrame = { type: "unbanned", room, user };
    if (cid !== undefined) answer.cid = cid;
    this.host.deliver(serialize(answer));
  }
}

/** The answer to a moderation frame on a connection without a token (no AUTH_SECRET, or none given). */
export function refuseWithoutToken(host: GovernanceHost, frame: GovernanceFrame): void {
  const why =
    frame.type === "auth"
      ? "tokens are not enabled on this server"
      : "moderation needs a signed-in user (the server has no AUTH_SECRET)";
  host.error("forbidden", why, frame.cid);
}
