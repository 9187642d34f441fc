/**
 * The one format of a room's channel messages between instances: every kind
 * is built by {@link encode} and read back by {@link decode}, here. The first
 * character names the kind; the rest is JSON, except for chat messages.
 *
 * A chat message travels as `m<epoch:8><id:20><frame>`, where `<frame>` is
 * the exact text members get (`serialize(message)`): a receiving instance
 * reads the id and epoch from fixed offsets and hands the text to its
 * members as it is, with no JSON parse or serialize per message (the hot
 * path of HUB=redis). The append script publishes it as given.
 *
 * Presence changes are published by the presence script (presence.ts), which
 * computes the users list inside Redis: it writes the same shape with Redis'
 * `cjson` (`'p' .. cjson.encode({j=..., l=..., u=...})`), and {@link decode}
 * checks it like any other kind. Lua's cjson writes an empty list as `{}`,
 * which the decoder reads as an empty list.
 */
import { type ChatMessage, isMessageId } from "../protocol.ts";

/** Length of an epoch: 8 characters of [0-9a-z]. */
export const EPOCH_LENGTH = 8;
const ID_LENGTH = 20;

/** A fresh epoch: 8 random base-36 characters. */
export function newEpoch(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(EPOCH_LENGTH));
  let out = "";
  for (const b of bytes) out += (b % 36).toString(36);
  return out;
}

/** Every message a room's channel carries. */
export type ChannelMessage =
  | {
      kind: "message";
      /** The epoch of the stream the message was appended to (log.ts). */
      epoch: string;
      id: string;
      /** The frame as members get it. */
      text: string;
    }
  | {
      kind: "presence";
      /** Names that came online (their first connection anywhere). */
      joined: string[];
      /** Names that went offline (their last connection anywhere, or expired). */
      left: string[];
      /** Every name online in the room after the change. */
      users: string[];
      /** Named connections that joined or left without changing `users` (a second tab). */
      repeat: { joined: string[]; left: string[] };
    }
  | { kind: "typing"; user: string; instance: string; socket: string }
  | { kind: "edited"; id: string; message: string; edited: number }
  | { kind: "deleted"; id: string }
  | { kind: "kick"; user: string; code: number; reason: string };

/** The message's frame text and the channel message that carries it. */
export function encodeMessage(epoch: string, message: ChatMessage, text: string): string {
  if (epoch.length !== EPOCH_LENGTH || message.id.length !== ID_LENGTH) throw new Error("bad epoch or id");
  return `m${epoch}${message.id}${text}`;
}

/** Encodes any kind but `message` (see {@link encodeMessage}) and `presence` (written by the presence script). */
export function encode(m: Exclude<ChannelMessage, { kind: "message" | "presence" }>): string {
  switch (m.kind) {
    case "typing":
      return `t${JSON.stringify({ u: m.user, i: m.instance, s: m.socket })}`;
    case "edited":
      return `e${JSON.stringify({ id: m.id, m: m.message, e: m.edited })}`;
    case "deleted":
      return `d${JSON.stringify({ id: m.id })}`;
    case "kick":
      return `k${JSON.stringify({ u: m.user, c: m.code, r: m.reason })}`;
  }
}

/** Parses the chat message inside a `message` channel message's text. */
export function parseMessageText(text: string): ChatMessage {
  return JSON.parse(text) as ChatMessage;
}

const str = (v: unknown): v is string => typeof v === "string";
/** A list of names; Lua's cjson writes an empty one as `{}`. */
function names(v: unknown): string[] | null {
  if (Array.isArray(v)) return v.every(str) ? v : null;
  if (v !== null && typeof v === "object" && Object.keys(v).length === 0) return [];
  if (v === undefined) return [];
  return null;
}

/** Reads a channel message; null for one this version does not know or that is malformed. */
export function decode(payload: string): ChannelMessage | null {
  const kind = payload[0];
  if (kind === "m") {
    const epoch = payload.slice(1, 1 + EPOCH_LENGTH);
    const id = payload.slice(1 + EPOCH_LENGTH, 1 + EPOCH_LENGTH + ID_LENGTH);
    if (!isMessageId(id) || payload[1 + EPOCH_LENGTH + ID_LENGTH] !== "{") return null;
    return { kind: "message", epoch, id, text: payload.slice(1 + EPOCH_LENGTH + ID_LENGTH) };
  }
  let body: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(payload.slice(1));
    if (parsed === null || typeof parsed !== "object") return null;
    body = parsed as Record<string, unknown>;
  } catch {
    return null;
  }
  switch (kind) {
    case "p": {
      const joined = names(body.j);
      const left = names(body.l);
      const users = names(body.u);
      const rj = names(body.rj);
      const rl = names(body.rl);
      if (!joined || !left || !users || !rj || !rl) return null;
      return { kind: "presence", joined, left, users: users.sort(), repeat: { joined: rj, left: rl } };
    }
    case "t":
      return str(body.u) && str(body.i) && str(body.s)
        ? { kind: "typing", user: body.u, instance: body.i, socket: body.s }
        : null;
    case "e":
      return str(body.id) && str(body.m) && typeof body.e === "number"
        ? { kind: "edited", id: body.id, message: body.m, edited: body.e }
        : null;
    case "d":
      return str(body.id) ? { kind: "deleted", id: body.id } : null;
    case "k":
      return str(body.u) && typeof body.c === "number" && str(body.r)
        ? { kind: "kick", user: body.u, code: body.c, reason: body.r }
        : null;
    default:
      return null;
  }
}
