/**
 * The README's examples, run as a newcomer would run them: every `ts` block
 * and every `sh` block that calls the server (curl) is taken from README.md,
 * pointed at a real server on a free port, run, and its output compared with
 * the `text` block that follows it in the README (`…` stands for ids and
 * times). An example that prints something else than the README says, or
 * nothing at all, fails here.
 */
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { nodeTarget, type RunningServer } from "../helpers/server.ts";

const ROOT = resolve(import.meta.dirname, "../..");
/** Inside the project, so `ws`, `hono/jwt` and tsx's ESM handling resolve as in a clone. */
const SCRATCH = resolve(ROOT, "test-artifacts/readme");
const SECRET = "readme-secret-0123456789";

interface Example {
  lang: "ts" | "sh";
  code: string;
  /** The `text` block right after it, if any. */
  expected: string | null;
  line: number;
}

/** Code blocks of the README in order, each with the output block that follows it. */
function examples(markdown: string): Example[] {
  const blocks = [...markdown.matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].map((m) => ({
    lang: m[1] ?? "",
    body: m[2] ?? "",
    line: markdown.slice(0, m.index).split("\n").length,
  }));
  const found: Example[] = [];
  blocks.forEach((b, i) => {
    const runnable = b.lang === "ts" || (b.lang === "sh" && /\bcurl\b/.test(b.body));
    if (!runnable) return;
    const next = blocks[i + 1];
    found.push({
      lang: b.lang as "ts" | "sh",
      code: b.body,
      expected: next?.lang === "text" ? next.body : null,
      line: b.line,
    });
  });
  return found;
}

/** The README's output with `…` as a wildcard, as a whole-text pattern. */
function pattern(expected: string): RegExp {
  const escaped = expected
    .trimEnd()
    .split("…")
    .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join(".*?");
  return new RegExp(`^${escaped}$`);
}

const readme = readFileSync(resolve(ROOT, "README.md"), "utf8");
const all = examples(readme);

describe("the README's examples", () => {
  let plain: RunningServer;
  let authed: RunningServer;

  beforeAll(async () => {
    mkdirSync(SCRATCH, { recursive: true });
    // One after the other: two servers starting at once on a busy two-core machine can miss the start timeout.
    plain = await nodeTarget.start({ HISTORY: "memory" });
    authed = await nodeTarget.start({ HISTORY: "memory", AUTH_SECRET: SECRET });
  });

  it("has the client, token and HTTP examples, each followed by the output it claims", () => {
    expect(all.filter((e) => e.lang === "ts").length).toBeGreaterThanOrEqual(2);
    expect(all.filter((e) => e.lang === "sh").length).toBeGreaterThanOrEqual(1);
    expect(all.filter((e) => e.expected === null).map((e) => `README.md:${e.line}`)).toEqual([]);
  });

  // In README order: a later example may read what an earlier one wrote.
  for (const [i, example] of all.entries()) {
    it(`README.md:${example.line} (${example.lang}) prints what the README says`, async () => {
      const needsAuth = example.code.includes("AUTH_SECRET");
      const server = needsAuth ? authed : plain;
      const host = new URL(server.url).host;
      const code = example.code.replaceAll("localhost:8888", host).replaceAll('from "./src/', `from "${ROOT}/src/`);
      const env = { ...process.env, AUTH_SECRET: needsAuth ? SECRET : "" };
      let stdout: string;
      if (example.lang === "ts") {
        const file = resolve(SCRATCH, `example-${i}.ts`);
        writeFileSync(file, code);
        ({ stdout } = await promisify(execFile)("node", ["--import", "tsx", file], {
          cwd: ROOT,
          env,
          timeout: 30_000,
        }));
      } else {
        ({ stdout } = await promisify(execFile)("sh", ["-c", code], { cwd: ROOT, env, timeout: 30_000 }));
      }
      expect(stdout.trimEnd()).toMatch(pattern(example.expected ?? ""));
    });
  }
});
