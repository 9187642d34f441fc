/**
 * Log lines carry client-supplied strings (cid, names, headers, error text).
 * Written raw, a control character can recolour or rewrite a terminal
 * (`\u001b[31m`), fake a new log line (`\n`, U+2028) or reorder what is shown
 * (bidi overrides). Both log formats pass every line through here, so no
 * call site has to remember it.
 */

/** C0 controls, DEL, C1 controls (U+009B is a CSI on its own), line and paragraph separators, bidi controls. */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
const HAS_UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
/** What JSON.stringify leaves raw: everything above but C0 (which it escapes itself). */
const UNSAFE_IN_JSON = /[\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
const HAS_UNSAFE_IN_JSON = /[\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

const toEscape = (ch: string) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`;

/** `text` with every unsafe character written as `\uXXXX`. */
export function escapeControl(text: string): string {
  return HAS_UNSAFE.test(text) ? text.replace(UNSAFE, toEscape) : text;
}

/** True when `text` holds a character {@link escapeControl} would escape. */
export function hasControl(text: string): boolean {
  return HAS_UNSAFE.test(text);
}

/**
 * A JSON text made safe to print: JSON already escapes C0 controls in
 * strings; the rest are escaped as `\uXXXX`, which keeps it valid JSON
 * meaning the same (those characters only occur inside strings).
 */
export function escapeJson(json: string): string {
  return HAS_UNSAFE_IN_JSON.test(json) ? json.replace(UNSAFE_IN_JSON, toEscape) : json;
}
