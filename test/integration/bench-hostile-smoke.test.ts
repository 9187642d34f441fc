/**
 * A smoke of the hostile benchmark (`npm run bench -- hostile`): at a tiny
 * load on Node it starts its server and its attacker, runs each attack
 * beside the run without one, and writes its report. Benchmarks are not
 * tests: nothing here looks at how fast anything was, only that the
 * scenario ran, that the normal clients lost nothing, and that the attacker
 * met the limits (it is refused or told to wait).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { HostileRun } from "../../bench/hostile.ts";
import { runBench } from "../helpers/bench.ts";
import { track } from "../helpers/cleanup.ts";

describe("bench: hostile scenario smoke", () => {
  it("runs every attack against Node beside the run without one; normal clients lose nothing; the attacker is limited", async () => {
    const dir = mkdtempSync(join(tmpdir(), "chat-hostile-smoke-"));
    track(() => rmSync(dir, { recursive: true, force: true }));
    const { code, out } = await runBench(
      ["hostile", "--quick", "--runtimes", "node", "--clients", "40", "--duration-ms", "1500", "--out", dir],
      280_000,
    );
    expect(code, out.slice(-3000)).toBe(0);
    const file = readdirSync(dir).find((f) => f.endsWith("-hostile.json"));
    expect(file, out.slice(-2000)).toBeDefined();
    const report = JSON.parse(readFileSync(join(dir, file!), "utf8")) as { markdown: string; data: HostileRun[] };
    const attacks = report.data.map((r) => r.attack);
    expect(attacks).toEqual(["none", "history", "reconnect", "churn", "invalid"]);
    for (const r of report.data) {
      expect(r.load.connected, r.attack).toBe(40);
      expect(r.load.lost, r.attack).toBe(0);
      expect(r.load.sent, r.attack).toBeGreaterThan(0);
    }
    const stats = (a: string) => {
      const run = report.data.find((r) => r.attack === a)!;
      expect(run.stats, `${a}: the attacker reported`).not.toBeNull();
      return run.stats!;
    };
    const detail = JSON.stringify(report.data.map((r) => r.stats));
    // Each attack met its limit: told to wait, or its requests served only up to the budget.
    expect(stats("history").rateLimited + stats("history").refused, detail).toBeGreaterThan(0);
    expect(stats("history").served).toBeLessThan(stats("history").framesSent);
    expect(stats("reconnect").rateLimited + stats("reconnect").refused, detail).toBeGreaterThan(0);
    expect(stats("invalid").served).toBeLessThan(stats("invalid").framesSent);
    expect(stats("churn").victims).toBe(150);
    expect(report.markdown).toMatch(/\| node \| invalid-frame flood \| 0 of /);
  }, 300_000);
});
