import { escapeJson } from "./escape.ts";

/**
 * The logger the core speaks to: pino's call shape (`info(fields, msg)`), so
 * pino serves Node, Bun and Deno and a console logger serves Workers.
 */
export interface Logger {
  debug(fields: object, msg?: string): void;
  info(fields: object, msg?: string): void;
  warn(fields: object, msg?: string): void;
  error(fields: object, msg?: string): void;
  child(bindings: object): Logger;
}

const LEVELS = ["debug", "info", "warn", "error"] as const;
type Level = (typeof LEVELS)[number];

/**
 * JSON.stringify writes an Error as `{}` (its fields are not enumerable):
 * keep what pino's error serializer keeps, so Workers logs have the stack.
 */
function errorReplacer(_key: string, value: unknown): unknown {
  if (!(value instanceof Error)) return value;
  const cause = (value as { cause?: unknown }).cause;
  return { type: value.name, message: value.message, stack: value.stack, ...(cause === undefined ? {} : { cause }) };
}

/** A JSON-lines logger on `console`, for runtimes where pino does not fit (Workers). */
export function consoleLogger(level: Level | "silent" = "info", bindings: object = {}): Logger {
  const min = level === "silent" ? LEVELS.length : LEVELS.indexOf(level);
  const at = (l: Level) => (fields: object, msg?: string) => {
    if (LEVELS.indexOf(l) < min) return;
    console.log(escapeJson(JSON.stringify({ level: l, time: Date.now(), ...bindings, ...fields, msg }, errorReplacer)));
  };
  return {
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
    child: (more) => consoleLogger(level, { ...bindings, ...more }),
  };
}

/** Discards everything; for tests that build an app in-process. */
export const silentLogger: Logger = consoleLogger("silent");
