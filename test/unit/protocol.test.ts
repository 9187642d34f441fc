import { describe, expect, it } from "vitest";
import {
  type ClientFrame,
  charLength,
  DEFAULT_PARSE_LIMITS,
  type ErrorCode,
  errorFrame,
  formatMessageId,
  isMessageId,
  type Mode,
  nameProblem,
  parseClientFrame,
  parseMessageId,
  roomProblem,
  SUBPROTOCOL,
  selectSubprotocol,
  serialize,
} from "../../src/protocol.ts";

const j = (v: unknown) => JSON.stringify(v);
const ID = "1700000000000-000001";

type Expect = { frame: ClientFrame } | { code: ErrorCode; cid?: string };
type Row = [label: string, text: string, mode: Mode | "both", needsUser: boolean, expected: Expect];

/** Frames valid in both modes. */
const valid: Row[] = [
  [
    "tutorial frame",
    j({ user: "alice", message: "hi" }),
    "both",
    true,
    { frame: { type: "message", message: "hi", user: "alice" } },
  ],
  [
    "explicit type",
    j({ type: "message", user: "a", message: "hi" }),
    "both",
    true,
    { frame: { type: "message", message: "hi", user: "a" } },
  ],
  [
    "with cid",
    j({ user: "a", message: "hi", cid: "c-1" }),
    "both",
    true,
    { frame: { type: "message", message: "hi", user: "a", cid: "c-1" } },
  ],
  [
    "extra fields ignored",
    j({ user: "a", message: "hi", x: [1, { y: 2 }], ts: 5, id: "forged" }),
    "both",
    true,
    { frame: { type: "message", message: "hi", user: "a" } },
  ],
  [
    "named connection: user ignored",
    j({ user: "mallory", message: "hi" }),
    "both",
    false,
    { frame: { type: "message", message: "hi" } },
  ],
  [
    "named connection: user not needed",
    j({ message: "hi" }),
    "both",
    false,
    { frame: { type: "message", message: "hi" } },
  ],
  [
    "named connection: bad user ignored",
    j({ user: 5, message: "hi" }),
    "both",
    false,
    { frame: { type: "message", message: "hi" } },
  ],
  [
    "message with spaces around kept as is",
    j({ user: "a", message: "  hi  " }),
    "both",
    true,
    { frame: { type: "message", message: "  hi  ", user: "a" } },
  ],
  [
    "unicode message",
    j({ user: "Zoë", message: "👋🏽 中文 مرحبا" }),
    "both",
    true,
    { frame: { type: "message", message: "👋🏽 中文 مرحبا", user: "Zoë" } },
  ],
  [
    "control characters allowed in a message",
    j({ user: "a", message: "a\u0000b\nc" }),
    "both",
    true,
    { frame: { type: "message", message: "a\u0000b\nc", user: "a" } },
  ],
  [
    "2000 characters",
    j({ user: "a", message: "x".repeat(2000) }),
    "both",
    true,
    { frame: { type: "message", message: "x".repeat(2000), user: "a" } },
  ],
  [
    "2000 astral characters (counted as characters, not UTF-16 units)",
    j({ user: "a", message: "😀".repeat(2000) }),
    "both",
    true,
    { frame: { type: "message", message: "😀".repeat(2000), user: "a" } },
  ],
  [
    "32-character name",
    j({ user: "n".repeat(32), message: "hi" }),
    "both",
    true,
    { frame: { type: "message", message: "hi", user: "n".repeat(32) } },
  ],
  [
    "32 astral characters in a name",
    j({ user: "😀".repeat(32), message: "hi" }),
    "both",
    true,
    { frame: { type: "message", message: "hi", user: "😀".repeat(32) } },
  ],
  [
    "huge number in an extra field",
    '{"user":"a","message":"hi","n":1e400}',
    "both",
    true,
    { frame: { type: "message", message: "hi", user: "a" } },
  ],
  [
    "128-character cid",
    j({ user: "a", message: "hi", cid: "c".repeat(128) }),
    "both",
    true,
    { frame: { type: "message", message: "hi", user: "a", cid: "c".repeat(128) } },
  ],
  ["ping", j({ type: "ping" }), "v1", true, { frame: { type: "ping" } }],
  ["typing", j({ type: "typing" }), "v1", false, { frame: { type: "typing" } }],
  ["history: defaults", j({ type: "history" }), "v1", true, { frame: { type: "history", limit: 50 } }],
  [
    "history: before and limit",
    j({ type: "history", before: ID, limit: 10 }),
    "v1",
    true,
    { frame: { type: "history", before: ID, limit: 10 } },
  ],
  [
    "history: limit capped at 500",
    j({ type: "history", limit: 100000 }),
    "v1",
    true,
    { frame: { type: "history", limit: 500 } },
  ],
];

/** Frames refused, with the error code they get. */
const invalid: Row[] = [
  ["not JSON", "hello", "both", true, { code: "invalid_json" }],
  ["empty frame", "", "both", true, { code: "invalid_json" }],
  ["truncated JSON", '{"user":"a","message":"hi"', "both", true, { code: "invalid_json" }],
  ["JSON array", "[1,2]", "both", true, { code: "invalid_json" }],
  ["JSON null", "null", "both", true, { code: "invalid_json" }],
  ["JSON number", "42", "both", true, { code: "invalid_json" }],
  ["JSON string", '"hi"', "both", true, { code: "invalid_json" }],
  ["JSON true", "true", "both", true, { code: "invalid_json" }],
  ["deeply nested arrays", `${"[".repeat(100_000)}${"]".repeat(100_000)}`, "both", true, { code: "invalid_json" }],
  [
    "deeply nested objects",
    `${'{"a":'.repeat(100_000)}1${"}".repeat(100_000)}`,
    "both",
    true,
    { code: "invalid_message" },
  ],
  ["empty object", "{}", "both", true, { code: "invalid_message" }],
  ["message missing", j({ user: "a" }), "both", true, { code: "invalid_message" }],
  ["message a number", j({ user: "a", message: 5 }), "both", true, { code: "invalid_message" }],
  ["message null", j({ user: "a", message: null }), "both", true, { code: "invalid_message" }],
  ["message an object", j({ user: "a", message: { text: "hi" } }), "both", true, { code: "invalid_message" }],
  ["message empty", j({ user: "a", message: "" }), "both", true, { code: "invalid_message" }],
  ["message only white space", j({ user: "a", message: " \n\t\u3000 " }), "both", true, { code: "invalid_message" }],
  ["message with a lone surrogate", '{"user":"a","message":"x\\ud800y"}', "both", true, { code: "invalid_message" }],
  ["message with a lone low surrogate", '{"user":"a","message":"\\udc00"}', "both", true, { code: "invalid_message" }],
  ["message 2001 characters", j({ user: "a", message: "x".repeat(2001) }), "both", true, { code: "message_too_long" }],
  [
    "message 2001 astral characters",
    j({ user: "a", message: "😀".repeat(2001) }),
    "both",
    true,
    { code: "message_too_long" },
  ],
  ["user missing", j({ message: "hi" }), "both", true, { code: "invalid_message" }],
  ["user a number", j({ user: 7, message: "hi" }), "both", true, { code: "invalid_message" }],
  ["user null", j({ user: null, message: "hi" }), "both", true, { code: "invalid_message" }],
  ["user empty", j({ user: "", message: "hi" }), "both", true, { code: "invalid_message" }],
  ["user only spaces", j({ user: "   ", message: "hi" }), "both", true, { code: "invalid_message" }],
  ["user 33 characters", j({ user: "n".repeat(33), message: "hi" }), "both", true, { code: "invalid_message" }],
  ["user with NUL", j({ user: "a\u0000b", message: "hi" }), "both", true, { code: "invalid_message" }],
  ["user with a newline", j({ user: "a\nb", message: "hi" }), "both", true, { code: "invalid_message" }],
  ["user with DEL", j({ user: "a\u007fb", message: "hi" }), "both", true, { code: "invalid_message" }],
  ["user with a C1 control", j({ user: "a\u0085b", message: "hi" }), "both", true, { code: "invalid_message" }],
  [
    "user with a bidi override",
    j({ user: "adm\u202enimda", message: "hi" }),
    "both",
    true,
    { code: "invalid_message" },
  ],
  ["user with a lone surrogate", '{"user":"a\\ud800","message":"hi"}', "both", true, { code: "invalid_message" }],
  ["cid a number", j({ user: "a", message: "hi", cid: 5 }), "both", true, { code: "invalid_message" }],
  [
    "cid over 128 characters",
    j({ user: "a", message: "hi", cid: "c".repeat(129) }),
    "both",
    true,
    { code: "invalid_message" },
  ],
  ["unknown type", j({ type: "shout", message: "hi", user: "a" }), "both", true, { code: "unknown_type" }],
  ["type a number", j({ type: 1, message: "hi", user: "a" }), "both", true, { code: "unknown_type" }],
  ["type null", j({ type: null, message: "hi", user: "a" }), "both", true, { code: "unknown_type" }],
  ["type in another case", j({ type: "Message", message: "hi", user: "a" }), "both", true, { code: "unknown_type" }],
  ["ping in seed mode", j({ type: "ping" }), "seed", true, { code: "unknown_type" }],
  ["typing in seed mode", j({ type: "typing" }), "seed", true, { code: "unknown_type" }],
  ["history in seed mode", j({ type: "history" }), "seed", true, { code: "unknown_type" }],
  ["welcome from a client", j({ type: "welcome" }), "v1", true, { code: "unknown_type" }],
  ["history: before not an id", j({ type: "history", before: "yesterday" }), "v1", true, { code: "invalid_frame" }],
  ["history: before a number", j({ type: "history", before: 5 }), "v1", true, { code: "invalid_frame" }],
  ["history: limit 0", j({ type: "history", limit: 0 }), "v1", true, { code: "invalid_frame" }],
  ["history: limit negative", j({ type: "history", limit: -1 }), "v1", true, { code: "invalid_frame" }],
  ["history: limit fractional", j({ type: "history", limit: 1.5 }), "v1", true, { code: "invalid_frame" }],
  ["history: limit a string", j({ type: "history", limit: "5" }), "v1", true, { code: "invalid_frame" }],
  [
    "__proto__ does not smuggle fields",
    '{"__proto__":{"message":"hi","user":"a"}}',
    "both",
    true,
    { code: "invalid_message" },
  ],
  // The cid of a refused frame comes back, so the client knows which send failed.
  [
    "cid echoed on invalid_message",
    j({ user: "a", message: "", cid: "c-7" }),
    "both",
    true,
    { code: "invalid_message", cid: "c-7" },
  ],
  [
    "cid echoed on message_too_long",
    j({ user: "a", message: "x".repeat(2001), cid: "c-8" }),
    "both",
    true,
    { code: "message_too_long", cid: "c-8" },
  ],
  ["cid echoed on unknown_type", j({ type: "nope", cid: "c-9" }), "both", true, { code: "unknown_type", cid: "c-9" }],
];

function modes(m: Mode | "both"): Mode[] {
  return m === "both" ? ["seed", "v1"] : [m];
}

describe("parseClientFrame: valid frames", () => {
  for (const [label, text, mode, needsUser, expected] of valid) {
    for (const m of modes(mode)) {
      it(`${m}: ${label}`, () => {
        expect(parseClientFrame(text, m, needsUser)).toEqual({ ok: true, ...expected });
      });
    }
  }
});

describe("parseClientFrame: invalid frames", () => {
  for (const [label, text, mode, needsUser, expected] of invalid) {
    for (const m of modes(mode)) {
      it(`${m}: ${label} -> ${"code" in expected ? expected.code : "?"}`, () => {
        const result = parseClientFrame(text, m, needsUser);
        expect(result.ok).toBe(false);
        if (result.ok) return;
        expect(result.code).toBe((expected as { code: ErrorCode }).code);
        expect(typeof result.message).toBe("string");
        expect(result.message.length).toBeGreaterThan(0);
        expect(result.cid).toBe((expected as { cid?: string }).cid);
      });
    }
  }

  it("the too-long cid is not echoed back", () => {
    const result = parseClientFrame(j({ user: "a", message: "", cid: "c".repeat(129) }), "v1", true);
    expect(result).toMatchObject({ ok: false });
    expect(result).not.toHaveProperty("cid");
  });

  it("error text names the problem", () => {
    expect(parseClientFrame(j({ user: "a", message: "hi", cid: "c".repeat(129) }), "v1", true)).toMatchObject({
      message: expect.stringMatching(/cid.*128/),
    });
    expect(parseClientFrame(j({ user: "n".repeat(33), message: "hi" }), "seed", true)).toMatchObject({
      message: expect.stringMatching(/user.*32/),
    });
  });

  it("honours a configured message length", () => {
    const limits = { ...DEFAULT_PARSE_LIMITS, maxMessageLength: 5 };
    expect(parseClientFrame(j({ message: "12345" }), "v1", false, limits)).toMatchObject({ ok: true });
    expect(parseClientFrame(j({ message: "123456" }), "v1", false, limits)).toMatchObject({ code: "message_too_long" });
  });
});

describe("names and rooms", () => {
  it.each([
    ["alice", null],
    ["Zoë 👩‍💻", null],
    ["a b", null],
    ["n".repeat(32), null],
  ])("name %j is valid", (name, problem) => {
    expect(nameProblem(name)).toBe(problem);
  });

  it.each([
    [""],
    [" "],
    ["n".repeat(33)],
    ["tab\there"],
    ["line\u2028sep"],
    ["\u2066isolate"],
    [5],
    [null],
    [undefined],
    [{}],
  ])("name %j is refused with a reason", (name) => {
    expect(nameProblem(name)).toEqual(expect.any(String));
  });

  it.each(["lobby", "a", "A-Z_a.z-0.9", "r".repeat(64), ".."])("room %j is valid", (room) => {
    expect(roomProblem(room)).toBeNull();
  });

  it.each(["", "r".repeat(65), "a b", "a/b", "ä", "room?", "a\nb", "%20"])("room %j is refused", (room) => {
    expect(roomProblem(room)).toEqual(expect.any(String));
  });
});

describe("message ids", () => {
  it("are fixed width and round-trip", () => {
    const id = formatMessageId(1_700_000_000_123, 42);
    expect(id).toBe("1700000000123-000042");
    expect(isMessageId(id)).toBe(true);
    expect(parseMessageId(id)).toEqual({ ms: 1_700_000_000_123, seq: 42 });
    expect(formatMessageId(5, 0)).toBe("0000000000005-000000");
  });

  it("compare as strings in numeric order", () => {
    const pairs: [number, number][] = [
      [9, 0],
      [10, 0],
      [10, 1],
      [10, 10],
      [99, 999_999],
      [100, 0],
      [1_700_000_000_000, 0],
      [9_999_999_999_999, 999_999],
    ];
    const ids = pairs.map(([ms, seq]) => formatMessageId(ms, seq));
    expect([...ids].sort()).toEqual(ids);
  });

  it.each([
    "",
    "1700000000000",
    "1700000000000-1",
    "170000000000-000001",
    "x700000000000-000001",
    " 1700000000000-000001",
    5,
    null,
  ])("%j is not an id", (id) => {
    expect(isMessageId(id)).toBe(false);
    if (typeof id === "string") expect(parseMessageId(id)).toBeNull();
  });
});

describe("selectSubprotocol", () => {
  it.each([
    [undefined, null],
    [null, null],
    ["", null],
    ["chat.v1", SUBPROTOCOL],
    ["foo, chat.v1", SUBPROTOCOL],
    ["foo,chat.v1", SUBPROTOCOL],
    ["chat.v1, foo", SUBPROTOCOL],
    ["  chat.v1  ", SUBPROTOCOL],
    ["foo", null],
    ["chat.v2", null],
    ["chat.v1x", null],
    ["xchat.v1", null],
    ["foo, bar", null],
  ])("%j -> %j", (header, expected) => {
    expect(selectSubprotocol(header)).toBe(expected);
  });
});

describe("serialization", () => {
  it("error frames carry the cid only when known", () => {
    expect(errorFrame("rate_limited", "slow down")).toEqual({
      type: "error",
      code: "rate_limited",
      message: "slow down",
    });
    expect(errorFrame("unavailable", "later", "c-1")).toEqual({
      type: "error",
      code: "unavailable",
      message: "later",
      cid: "c-1",
    });
  });

  it("serialize is plain JSON", () => {
    const frame = { type: "pong" as const };
    expect(JSON.parse(serialize(frame))).toEqual(frame);
  });

  it("charLength counts code points", () => {
    expect(charLength("abc", 10)).toBe(3);
    expect(charLength("😀😀", 1)).toBe(2);
    expect(charLength("e\u0301", 10)).toBe(2);
  });
});
