/**
 * The channel codec (src/redis/codec.ts): every kind round-trips, the
 * presence shape Redis' own cjson writes (empty lists as `{}`) decodes, and
 * anything malformed is refused rather than half-read.
 */
import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { formatMessageId, serialize } from "../../src/protocol.ts";
import { decode, EPOCH_LENGTH, encode, encodeMessage, newEpoch, parseMessageText } from "../../src/redis/codec.ts";
import { REDIS_URL, redisSkipReason } from "../helpers/redis.ts";

describe("Redis channel codec", () => {
  it("a chat message travels as its frame text, with epoch and id at fixed offsets", () => {
    const message = {
      type: "message" as const,
      id: formatMessageId(1_700_000_000_000, 42),
      room: "r",
      user: "zoë",
      message: "line1\nline2 \u0000 {}",
      ts: 1_700_000_000_000,
    };
    const epoch = newEpoch();
    expect(epoch).toMatch(new RegExp(`^[0-9a-z]{${EPOCH_LENGTH}}$`));
    const text = serialize(message);
    const decoded = decode(encodeMessage(epoch, message, text));
    expect(decoded).toEqual({ kind: "message", epoch, id: message.id, text });
    expect(parseMessageText(text)).toEqual(message);
    expect(() => encodeMessage("short", message, text)).toThrow();
  });

  it("typing, edited, deleted and kick round-trip", () => {
    const all = [
      { kind: "typing", user: "al", instance: "i-1", socket: "s-1" },
      { kind: "edited", id: formatMessageId(1, 2), message: "new\ntext", edited: 123 },
      { kind: "deleted", id: formatMessageId(1, 2) },
      { kind: "kick", user: "mallory", code: 4003, reason: "banned" },
    ] as const;
    for (const m of all) expect(decode(encode(m))).toEqual(m);
  });

  it("malformed or unknown channel messages are refused", () => {
    for (const bad of [
      "",
      "x{}",
      "m12345678not-an-id-at-all!!{}",
      `m12345678${formatMessageId(1, 0)}not json`,
      "t{not json",
      't{"u":1,"i":"a","s":"b"}',
      'e{"id":"x","m":"y"}',
      'p{"j":"not a list","l":[],"u":[]}',
      "k[]",
    ]) {
      expect(decode(bad), bad).toBeNull();
    }
  });

  it.skipIf(redisSkipReason !== null)("presence as Redis' cjson writes it (empty lists as {}) decodes", async () => {
    const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
    try {
      const payload = (await redis.eval(
        "return 'p' .. cjson.encode({ j = {}, l = { 'bob' }, rj = { 'al' }, rl = {}, u = { 'zed', 'al' } })",
        0,
      )) as string;
      expect(decode(payload)).toEqual({
        kind: "presence",
        joined: [],
        left: ["bob"],
        users: ["al", "zed"],
        repeat: { joined: ["al"], left: [] },
      });
    } finally {
      redis.disconnect();
    }
  });
});
