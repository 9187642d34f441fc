/**
 * Logs: client-supplied strings cannot put control characters on the
 * operator's terminal, in either format (docs/protocol.md, issue 10: a `cid`
 * holding `\u001b[31m` was written raw into the text log).
 */
import { describe, expect, it } from "vitest";
import { escapeControl, escapeJson } from "../../src/observability/escape.ts";
import { consoleLogger } from "../../src/observability/logger.ts";
import { createLogger } from "../../src/observability/pino.ts";

const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
const EVIL = "\u001b[31mred\u001b[0m \u009b2J\u2028fake line\u202eevil\r\nINFO forged";

function capture(format: "text" | "json"): { lines: string[]; log: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  const log = createLogger({ logLevel: "info", logFormat: format }, { write: (s: string) => lines.push(s) });
  return { lines, log };
}

describe("log escaping", () => {
  it("escapeControl writes every control character as \\uXXXX", () => {
    expect(escapeControl("a\u001bb")).toBe("a\\u001bb");
    expect(escapeControl("plain text, ünïcödé ✓")).toBe("plain text, ünïcödé ✓");
    expect(RAW.test(escapeControl(EVIL))).toBe(false);
    expect(escapeControl(EVIL)).not.toContain("\n");
  });

  it("escapeJson keeps the JSON valid and meaning the same", () => {
    const json = JSON.stringify({ cid: EVIL });
    const safe = escapeJson(json);
    expect(RAW.test(safe)).toBe(false);
    expect(JSON.parse(safe)).toEqual({ cid: EVIL });
  });

  for (const format of ["text", "json"] as const) {
    it(`${format}: a hostile cid, reason and message leave one line with no raw control character`, () => {
      const { lines, log } = capture(format);
      log.info({ conn: "c1", cid: EVIL, nested: { header: EVIL } }, `msg ${EVIL}`);
      expect(lines).toHaveLength(1);
      const line = lines[0]!;
      expect(line.endsWith("\n")).toBe(true);
      expect(line.slice(0, -1)).not.toContain("\n");
      expect(RAW.test(line.slice(0, -1))).toBe(false);
      expect(line).toContain("\\u001b[31m");
      if (format === "json") expect(JSON.parse(line).cid).toBe(EVIL);
    });
  }

  it("text: plain values stay bare, values with spaces or quotes are JSON", () => {
    const { lines, log } = capture("text");
    log.info({ conn: "c1", reason: "two words", q: 'a"b', empty: "" }, "hello");
    expect(lines[0]).toMatch(/ INFO hello conn=c1 reason="two words" q="a\\"b" empty=""\n$/);
  });

  it("the Workers console logger escapes too", () => {
    const out: string[] = [];
    const original = console.log;
    console.log = (s: string) => out.push(s);
    try {
      consoleLogger("info").info({ cid: EVIL }, "x");
    } finally {
      console.log = original;
    }
    expect(RAW.test(out[0]!)).toBe(false);
    expect(JSON.parse(out[0]!).cid).toBe(EVIL);
  });
});
