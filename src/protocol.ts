/**
 * The chat wire protocol: frame types, close codes, validation and
 * serialization. The server, the browser client and the tests all import this
 * module, so it must stay free of any runtime-specific import.
 *
 * The wire protocol as users read it (every route, frame, code, limit and
 * default) is docs/protocol.md; keep the two in step.
 */
import { en } from "zod/locales";
import * as z from "zod/mini";

/** The subprotocol that selects the full protocol (docs/protocol.md, Modes). */
export const SUBPROTOCOL = "chat.v1";

/** `seed`: the original tutorial's frames only; `v1`: the `chat.v1` subprotocol. */
export type Mode = "seed" | "v1";

/** WebSocket close codes the server uses (RFC 6455 section 7.4.1). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  InvalidPayload: 1007,
  PolicyViolation: 1008,
  MessageTooBig: 1009,
  InternalError: 1011,
  TryAgainLater: 1013,
  /** The token's `exp` passed without a refresh (docs/protocol.md). */
  TokenExpired: 4001,
  /** The user was banned from the room (docs/protocol.md: moderation). */
  Banned: 4003,
} as const;

/** Every `code` an error frame can carry. */
export type ErrorCode =
  | "invalid_json"
  | "invalid_message"
  | "invalid_frame"
  | "message_too_long"
  | "unknown_type"
  | "unsupported_data"
  | "rate_limited"
  | "unavailable"
  | "token_expired"
  | "invalid_token"
  | "forbidden"
  | "not_found";

/** A chat message as stored and as sent to every receiver. */
export interface ChatMessage {
  type: "message";
  /** Room-scoped, fixed-width, string-ordered id (see {@link formatMessageId}). */
  id: string;
  room: string;
  user: string;
  message: string;
  /** Server time in milliseconds since the epoch. */
  ts: number;
  /** When the text was last edited (ms since the epoch); absent when never edited. */
  edited?: number;
}

/** The echo of a message to its sender, carrying the client's correlation id. */
export interface EchoFrame extends ChatMessage {
  cid: string;
}

export interface WelcomeFrame {
  type: "welcome";
  room: string;
  user: string | null;
  users: string[];
  history: ChatMessage[];
  /** Present only when the client asked to resume with `since`. */
  recovered?: boolean;
  /** True when `history` is the first page only: `history` frames (no `before`) follow, the last with `more: false`. */
  more?: boolean;
  /** `"moderator"` when the token makes this connection one; absent otherwise. */
  role?: "moderator";
}

export interface PresenceFrame {
  type: "presence";
  users: string[];
  /** Who joined: one name, or (merged frames, PRESENCE_INTERVAL_MS) several. */
  joined?: string | string[];
  /** Who left: one name, or (merged frames) several. */
  left?: string | string[];
}

export interface TypingFrame {
  type: "typing";
  user: string;
}

export interface HistoryFrame {
  type: "history";
  messages: ChatMessage[];
  /** The `before` id the request named, so a client can match the answer. */
  before?: string;
  /** Paged replies: true on every page but the last (see the welcome's `more`). */
  more?: boolean;
}

export interface PongFrame {
  type: "pong";
}

export interface ErrorFrame {
  type: "error";
  code: ErrorCode;
  message: string;
  cid?: string;
  /** With `rate_limited`: the same request succeeds after this many ms. */
  retryAfterMs?: number;
}

/** The answer to a token refresh: the new token's `exp` (seconds), null when it has none. */
export interface AuthAnswerFrame {
  type: "auth";
  exp: number | null;
  cid?: string;
}

/** A message left the room's history (docs/protocol.md: moderation), to every v1 member. */
export interface DeletedFrame {
  type: "deleted";
  room: string;
  id: string;
}

/** A message's text was edited (docs/protocol.md: moderation), to every v1 member. */
export interface EditedFrame {
  type: "edited";
  room: string;
  id: string;
  message: string;
  /** When (ms). */
  edited: number;
}

/**
 * The answer to a moderator's `ban` / `unban`, to that connection only.
 * `until` (ms since the epoch) is null for a ban until lifted.
 */
export type BanAnswerFrame =
  | { type: "banned"; room: string; user: string; until: number | null; cid?: string }
  | { type: "unbanned"; room: string; user: string; cid?: string };

export type ServerFrame =
  | ChatMessage
  | EchoFrame
  | WelcomeFrame
  | PresenceFrame
  | TypingFrame
  | HistoryFrame
  | PongFrame
  | ErrorFrame
  | AuthAnswerFrame
  | DeletedFrame
  | EditedFrame
  | BanAnswerFrame;

/** A token refresh (docs/protocol.md). */
export interface AuthFrame {
  type: "auth";
  token: string;
  cid?: string;
}

/** A frame from a client, after validation. */
export type ClientFrame =
  | { type: "message"; message: string; user?: string; cid?: string }
  | { type: "ping" }
  | { type: "typing" }
  | { type: "history"; before?: string; limit: number }
  | AuthFrame
  | { type: "delete"; id: string; cid?: string }
  | { type: "edit"; id: string; message: string; cid?: string }
  /** `seconds` 0: until lifted. */
  | { type: "ban"; user: string; seconds: number; cid?: string }
  | { type: "unban"; user: string; cid?: string };

/** Limits the parser enforces; all come from the config. */
export interface ParseLimits {
  /** @default 2000 characters (Unicode code points) */
  maxMessageLength: number;
  /** @default 500 */
  maxHistoryLimit: number;
  /** @default 50 */
  defaultHistoryLimit: number;
}

export const DEFAULT_PARSE_LIMITS: ParseLimits = {
  maxMessageLength: 2000,
  maxHistoryLimit: 500,
  defaultHistoryLimit: 50,
};

export type ParseResult =
  | { ok: true; frame: ClientFrame }
  | { ok: false; code: ErrorCode; message: string; cid?: string };

/** Display names: 1-32 characters, no control characters. */
export const MAX_NAME_LENGTH = 32;
/** Longest accepted `cid`; longer ones are refused rather than echoed. */
export const MAX_CID_LENGTH = 128;

// C0, DEL and C1 controls, plus the line/paragraph separators and bidi
// overrides that let a name masquerade as someone else's in a list.
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
const ROOM_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;
const ID_PATTERN = /^\d{13}-\d{6}$/;

/** Length in Unicode code points, cheap when the UTF-16 length already decides. */
export function charLength(text: string, atMost: number): number {
  if (text.length <= atMost) return text.length;
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** Why `name` is not a valid display name, or null when it is. */
export function nameProblem(name: unknown): string | null {
  if (typeof name !== "string") return "user must be a string";
  if (name.trim().length === 0) return "user must not be empty";
  if (charLength(name, MAX_NAME_LENGTH) > MAX_NAME_LENGTH) return `user must be at most ${MAX_NAME_LENGTH} characters`;
  if (CONTROL_CHARS.test(name)) return "user must not contain control characters";
  if (!name.isWellFormed()) return "user must be valid Unicode text";
  return null;
}

/** Why `room` is not a valid room name, or null when it is. */
export function roomProblem(room: string): string | null {
  return ROOM_PATTERN.test(room) ? null : "room must be 1-64 characters of A-Z a-z 0-9 _ . -";
}

/** True when `id` has the form of a message id. */
export function isMessageId(id: unknown): id is string {
  return typeof id === "string" && ID_PATTERN.test(id);
}

/**
 * Message ids are `<13-digit ms>-<6-digit sequence>`: fixed width, so ids of
 * one room compare as plain strings in their order, across restarts too (the
 * hub never hands out an id below the room's last one).
 */
export function formatMessageId(ms: number, seq: number): string {
  return `${String(ms).padStart(13, "0")}-${String(seq).padStart(6, "0")}`;
}

/** The inverse of {@link formatMessageId}. */
export function parseMessageId(id: string): { ms: number; seq: number } | null {
  if (!ID_PATTERN.test(id)) return null;
  return { ms: Number(id.slice(0, 13)), seq: Number(id.slice(14)) };
}

/**
 * The frame schemas, built on first use. Building them lazily keeps this
 * module free of top-level work, so a bundle that imports only the names,
 * rules and types (the browser client) leaves zod out entirely.
 */
let built: ReturnType<typeof buildSchemas> | undefined;
function schemas(): ReturnType<typeof buildSchemas> {
  if (built === undefined) built = buildSchemas();
  return built;
}
function buildSchemas() {
  // zod/mini has no messages of its own; the English ones name the problem.
  z.config(en());
  return {
    message: z.object({
      message: z.string({ error: "message must be a string" }),
      user: z.optional(z.unknown()),
      cid: z.optional(
        z
          .string({ error: "cid must be a string" })
          .check(z.maxLength(MAX_CID_LENGTH, `cid must be at most ${MAX_CID_LENGTH} characters`)),
      ),
    }),
    history: z.object({
      before: z.optional(z.string().check(z.regex(ID_PATTERN, "before must be a message id"))),
      limit: z.optional(z.number().check(z.int(), z.positive())),
    }),
    auth: z.object({
      token: z
        .string({ error: "token must be a string" })
        .check(
          z.minLength(1, "token must not be empty"),
          z.maxLength(MAX_TOKEN_LENGTH, `token must be at most ${MAX_TOKEN_LENGTH} characters`),
        ),
    }),
    delete: z.object({ id: messageIdSchema() }),
    edit: z.object({ id: messageIdSchema(), message: z.string({ error: "message must be a string" }) }),
    ban: z.object({
      user: z.string({ error: "user must be a string" }),
      seconds: z.optional(
        z
          .number({ error: "seconds must be a number" })
          .check(
            z.int("seconds must be a whole number"),
            z.gte(0, "seconds must be 0 (until lifted) or more"),
            z.lte(MAX_BAN_SECONDS, `seconds must be at most ${MAX_BAN_SECONDS} (10 years)`),
          ),
      ),
    }),
    unban: z.object({ user: z.string({ error: "user must be a string" }) }),
  };
}

function messageIdSchema() {
  return z.string({ error: "id must be a message id" }).check(z.regex(ID_PATTERN, "id must be a message id"));
}

/** Longest token a refresh frame may carry. */
export const MAX_TOKEN_LENGTH = 8192;
/** Longest ban in seconds (10 years); 0 bans until lifted. */
export const MAX_BAN_SECONDS = 315_360_000;

const GOVERNANCE_FRAME_TYPES = new Set(["auth", "delete", "edit", "ban", "unban"]);

/**
 * Why a message text cannot be sent (the same rules for chat frames, edits
 * and the server API), or null when it can.
 */
export function messageProblem(message: string, maxLength: number): { code: ErrorCode; message: string } | null {
  if (message.trim().length === 0) return { code: "invalid_message", message: "message must not be empty" };
  if (charLength(message, maxLength) > maxLength) {
    return { code: "message_too_long", message: `message must be at most ${maxLength} characters` };
  }
  if (!message.isWellFormed()) return { code: "invalid_message", message: "message must be valid Unicode text" };
  return null;
}

/** The token refresh and moderation frames (v1 only); `cid` is already checked by the caller. */
function parseGovernanceFrame(
  type: "auth" | "delete" | "edit" | "ban" | "unban",
  obj: Record<string, unknown>,
  cid: string | undefined,
  limits: ParseLimits,
  fail: (code: ErrorCode, message: string) => ParseResult,
): ParseResult {
  if (obj.cid !== undefined && cid === undefined) {
    return fail("invalid_frame", `cid must be a string of at most ${MAX_CID_LENGTH} characters`);
  }
  const withCid = <F extends ClientFrame>(frame: F): ParseResult => {
    if (cid !== undefined) (frame as { cid?: string }).cid = cid;
    return { ok: true, frame };
  };
  const s = schemas();
  switch (type) {
    case "auth": {
      const parsed = s.auth.safeParse(obj);
      if (!parsed.success) return fail("invalid_frame", firstIssue(parsed.error));
      return withCid({ type: "auth", token: parsed.data.token });
    }
    case "delete": {
      const parsed = s.delete.safeParse(obj);
      if (!parsed.success) return fail("invalid_frame", firstIssue(parsed.error));
      return withCid({ type: "delete", id: parsed.data.id });
    }
    case "edit": {
      const parsed = s.edit.safeParse(obj);
      if (!parsed.success) {
        if (obj.message === undefined) return fail("invalid_message", "message is required");
        const code = typeof obj.message === "string" ? "invalid_frame" : "invalid_message";
        return fail(code, firstIssue(parsed.error));
      }
      const problem = messageProblem(parsed.data.message, limits.maxMessageLength);
      if (problem) return fail(problem.code, problem.message);
      return withCid({ type: "edit", id: parsed.data.id, message: parsed.data.message });
    }
    case "ban":
    case "unban": {
      const parsed = (type === "ban" ? s.ban : s.unban).safeParse(obj);
      if (!parsed.success) return fail("invalid_frame", firstIssue(parsed.error));
      const problem = nameProblem(parsed.data.user);
      if (problem) return fail("invalid_frame", problem);
      if (type === "unban") return withCid({ type: "unban", user: parsed.data.user });
      return withCid({
        type: "ban",
        user: parsed.data.user,
        seconds: (parsed.data as { seconds?: number }).seconds ?? 0,
      });
    }
  }
}

function firstIssue(error: z.core.$ZodError): string {
  const issue = error.issues[0];
  if (!issue) return "invalid frame";
  const path = issue.path.join(".");
  return path && !issue.message.startsWith(path) ? `${path}: ${issue.message}` : issue.message;
}

/**
 * A refusal, with the frame's `cid` when it had a valid one. A plain function
 * rather than a closure per frame: the bundlers we run under (tsx, wrangler)
 * keep function names, which costs a defineProperty per closure created.
 */
function refused(code: ErrorCode, message: string, cid: string | undefined): ParseResult {
  return cid === undefined ? { ok: false, code, message } : { ok: false, code, message, cid };
}

/**
 * Parses and validates one text frame from a client.
 *
 * Seed mode accepts only the tutorial's `{"user","message"}` frame (any other
 * `type` is `unknown_type`); `v1` adds ping, typing and history. Whether a
 * message needs its own `user` depends on the connection, so `needsUser` says.
 */
export function parseClientFrame(
  text: string,
  mode: Mode,
  needsUser: boolean,
  limits: ParseLimits = DEFAULT_PARSE_LIMITS,
): ParseResult {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, code: "invalid_json", message: "frame is not valid JSON" };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, code: "invalid_json", message: "frame must be a JSON object" };
  }
  const obj = value as Record<string, unknown>;
  const cid = typeof obj.cid === "string" && obj.cid.length <= MAX_CID_LENGTH ? obj.cid : undefined;

  const type = obj.type === undefined ? "message" : obj.type;
  const governance = typeof type === "string" && GOVERNANCE_FRAME_TYPES.has(type);
  if (
    type !== "message" &&
    (mode === "seed" || !(type === "ping" || type === "typing" || type === "history" || governance))
  ) {
    const shown = typeof type === "string" ? JSON.stringify(type.slice(0, 40)) : typeof type;
    return refused("unknown_type", `unknown frame type ${shown}`, cid);
  }
  if (type === "ping") return { ok: true, frame: { type: "ping" } };
  if (type === "typing") return { ok: true, frame: { type: "typing" } };
  if (type === "history") {
    const parsed = schemas().history.safeParse(obj);
    if (!parsed.success) return refused("invalid_frame", firstIssue(parsed.error), cid);
    const limit = Math.min(parsed.data.limit ?? limits.defaultHistoryLimit, limits.maxHistoryLimit);
    const frame: ClientFrame = { type: "history", limit };
    if (parsed.data.before !== undefined) frame.before = parsed.data.before;
    return { ok: true, frame };
  }
  if (governance) {
    const fail = (code: ErrorCode, message: string): ParseResult => refused(code, message, cid);
    return parseGovernanceFrame(type as "auth" | "delete" | "edit" | "ban" | "unban", obj, cid, limits, fail);
  }

  // The hot path: a chat frame is accepted without a schema parse when its
  // `message` is a string and its `cid` absent or valid, which is exactly the
  // set the message schema accepts (`user` is checked below either way). Only
  // a frame the schema refuses pays for the parse, which names the problem.
  const message = obj.message;
  if (typeof message !== "string" || (obj.cid !== undefined && cid === undefined)) {
    if (message === undefined) return refused("invalid_message", "message is required", cid);
    const parsed = schemas().message.safeParse(obj);
    return refused("invalid_message", parsed.success ? "message is invalid" : firstIssue(parsed.error), cid);
  }
  if (message.trim().length === 0) return refused("invalid_message", "message must not be empty", cid);
  if (charLength(message, limits.maxMessageLength) > limits.maxMessageLength) {
    return refused("message_too_long", `message must be at most ${limits.maxMessageLength} characters`, cid);
  }
  if (!message.isWellFormed()) return refused("invalid_message", "message must be valid Unicode text", cid);
  const frame: ClientFrame = { type: "message", message };
  // A connection named by `?user=` or a token ignores the frame's `user`.
  if (needsUser) {
    const user = obj.user;
    if (user === undefined) return refused("invalid_message", "user is required", cid);
    const problem = nameProblem(user);
    if (problem) return refused("invalid_message", problem, cid);
    frame.user = user as string;
  }
  if (cid !== undefined) frame.cid = cid;
  return { ok: true, frame };
}

/** Serializes a server frame. One call per broadcast, never per recipient. */
export function serialize(frame: ServerFrame): string {
  return JSON.stringify(frame);
}

/** Builds an error frame, with the `cid` when one is known. */
export function errorFrame(code: ErrorCode, message: string, cid?: string, retryAfterMs?: number): ErrorFrame {
  const frame: ErrorFrame =
    cid === undefined ? { type: "error", code, message } : { type: "error", code, message, cid };
  if (retryAfterMs !== undefined) frame.retryAfterMs = retryAfterMs;
  return frame;
}

/**
 * Picks the subprotocol from a `Sec-WebSocket-Protocol` request header:
 * `chat.v1` when offered anywhere in the list, otherwise none (seed mode).
 * Unlike the "first offered wins" default of several servers, this never
 * selects a protocol the server does not speak.
 */
export function selectSubprotocol(header: string | null | undefined): typeof SUBPROTOCOL | null {
  if (!header) return null;
  return header.split(",").some((p) => p.trim() === SUBPROTOCOL) ? SUBPROTOCOL : null;
}
