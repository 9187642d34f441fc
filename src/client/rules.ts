/**
 * The few rules of protocol.ts that the browser needs, restated here because
 * importing protocol.ts would bundle its validation library (zod) into the
 * page. test/integration/client.test.ts checks that both agree.
 */

/** The subprotocol the client offers (`SUBPROTOCOL` in protocol.ts). */
export const SUBPROTOCOL = "chat.v1";

/** Longest display name, in Unicode code points. */
export const MAX_NAME_LENGTH = 32;

const ROOM_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;
// The same set as protocol.ts: C0, DEL, C1, line/paragraph separators, bidi overrides.
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

/** True when the server would accept `room` (1-64 of `A-Za-z0-9_.-`). */
export function isValidRoom(room: string): boolean {
  return ROOM_PATTERN.test(room);
}

/**
 * True when the server would accept `name` as `?user=`. A refused name fails
 * the WebSocket handshake, which a browser cannot tell from a network error,
 * so the page checks first instead of reconnecting forever.
 */
export function isValidName(name: string): boolean {
  return (
    name.trim().length > 0 && [...name].length <= MAX_NAME_LENGTH && !CONTROL_CHARS.test(name) && name.isWellFormed()
  );
}
