import pino from "pino";
import type { Config } from "../config.ts";
import { escapeControl, escapeJson, hasControl } from "./escape.ts";
import type { Logger } from "./logger.ts";

const LEVEL_NAMES: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO",
  40: "WARN",
  50: "ERROR",
  60: "FATAL",
};

/**
 * Formats pino's JSON lines as `time LEVEL msg key=value ...` for people.
 * pino-pretty would run as a worker-thread transport, which Deno and Bun do
 * not support alike; connection-level logs are few, so a synchronous
 * re-format on the main thread costs nothing that matters.
 */
const textStream = (out: { write(s: string): unknown }) => ({
  write(line: string) {
    const { level, time, msg, pid: _pid, hostname: _host, ...rest } = JSON.parse(line) as Record<string, unknown>;
    // Values are shown bare when that is unambiguous, else as JSON; either
    // way no control character reaches the terminal (./escape.ts).
    const fields = Object.entries(rest)
      .map(([k, v]) => {
        const bare = typeof v === "string" && v !== "" && !/[\s"]/.test(v) && !hasControl(v);
        return `${k}=${bare ? v : escapeJson(JSON.stringify(v) ?? "undefined")}`;
      })
      .join(" ");
    const when = new Date(Number(time)).toISOString();
    const text = escapeControl(String(msg ?? ""));
    out.write(`${when} ${LEVEL_NAMES[Number(level)] ?? level} ${text}${fields ? ` ${fields}` : ""}\n`);
  },
});

/** pino's JSON lines, with the control characters JSON leaves raw escaped (./escape.ts). */
const jsonStream = (out: { write(s: string): unknown }) => ({
  write(line: string) {
    out.write(escapeJson(line));
  },
});

/**
 * The server's logger: pino, JSON lines with LOG_FORMAT=json, readable text otherwise.
 * @param out where lines go @default process.stdout
 */
export function createLogger(
  config: Pick<Config, "logLevel" | "logFormat">,
  out: { write(s: string): unknown } = process.stdout,
): Logger {
  const options = { level: config.logLevel, base: undefined };
  const stdout = out;
  return config.logFormat === "json" ? pino(options, jsonStream(stdout)) : pino(options, textStream(stdout));
}
