import type { ChatMessage } from "../protocol.ts";

/**
 * What a hub reports to the webhooks (docs/api.md: webhooks), one per action, after
 * the action took effect:
 * - `message.created`: after the store accepted the message; `data` is the
 *   message frame as members get it.
 * - `message.edited`: after the store took the edit; `data` is the updated
 *   message (with `edited`).
 * - `message.deleted`: after the store removed it; `data` is `{ id }`.
 * - `member.joined` / `member.left`: a name's first connection to the room and
 *   its last (anonymous connections are not reported); `data` is `{ user }`.
 *   With several instances the hub decides once per event across them.
 */
export type HubEvent =
  | { event: "message.created"; room: string; data: ChatMessage }
  | { event: "message.edited"; room: string; data: ChatMessage }
  | { event: "message.deleted"; room: string; data: { id: string } }
  | { event: "member.joined"; room: string; data: { user: string } }
  | { event: "member.left"; room: string; data: { user: string } };

/** Every event name a webhook receiver can get. */
export type HubEventName = HubEvent["event"];

/**
 * The sink a hub is constructed with (`events?: EventSink`). It must not
 * throw and returns at once: the webhooks side stores the event in its outbox
 * and delivers it later, so a slow receiver never slows a room.
 */
export type EventSink = (e: HubEvent) => void;

/** One event as stored in an outbox and as POSTed to WEBHOOK_URL. */
export interface WebhookEvent {
  /** Unique per event and stable across retries: receivers deduplicate by it. */
  id: string;
  event: HubEventName;
  room: string;
  /** When the event happened (ms since the epoch). */
  ts: number;
  data: HubEvent["data"];
}

/** Gives a hub event its id and time: what the outbox stores and the receiver gets. */
export function toWebhookEvent(e: HubEvent, now: number = Date.now()): WebhookEvent {
  return { id: crypto.randomUUID(), event: e.event, room: e.room, ts: now, data: e.data };
}
