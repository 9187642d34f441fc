import type { ChatMessage } from "../../src/protocol.ts";
import { formatMessageId } from "../../src/protocol.ts";

/** Messages one SQLite driver writes and another must read back exactly. */
export function fixtureMessages(room: string): ChatMessage[] {
  const texts = [
    "plain",
    "émoji 🎉 and 𝄞",
    "quote ' \" and -- ; DROP",
    "nul\u0000inside",
    "rtl עברית",
    "x".repeat(2000),
  ];
  return texts.map((message, i) => ({
    type: "message",
    id: formatMessageId(1_700_000_000_000 + i, i),
    room,
    user: `u${i}`,
    message,
    ts: 1_700_000_000_000 + i,
  }));
}
