import pino from "pino";
import type { Config } from "../config.ts";
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
    const fields = Object.entries(rest)
      .map(([k, v]) => `${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(v)}`)
      .join(" ");
    const when = new Date(Number(time)).toISOString();
    out.write(`${when} ${LEVEL_NAMES[Number(level)] ?? level} ${msg ?? ""}${fields ? ` ${fields}` : ""}\n`);
  },
});

/** The server's logger: pino, JSON lines with LOG_FORMAT=json, readable text otherwise. */
export function createLogger(config: Pick<Config, "logLevel" | "logFormat">): Logger {
  const options = { level: config.logLevel, base: undefined };
  const stdout = process.stdout;
  return config.logFormat === "json" ? pino(options, stdout) : pino(options, textStream(stdout));
}
