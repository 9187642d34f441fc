/**
 * Runs the bench CLI as `npm run bench` would, for the bench smoke tests.
 */
import { spawn } from "node:child_process";
import { resolve } from "node:path";
import { track } from "./cleanup.ts";

const ROOT = resolve(import.meta.dirname, "../..");

/**
 * Runs `bench/run.ts` with `args`, killed after `ms`; resolves with its exit
 * code and its stdout and stderr together (for failure messages).
 */
export function runBench(args: string[], ms: number): Promise<{ code: number | null; out: string }> {
  return new Promise((res) => {
    const child = spawn("node", ["--import", "tsx", "bench/run.ts", ...args], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString();
    });
    child.stderr.on("data", (c: Buffer) => {
      out += c.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), ms);
    track(() => {
      clearTimeout(timer);
      if (child.exitCode === null) child.kill("SIGKILL");
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      res({ code, out });
    });
  });
}
