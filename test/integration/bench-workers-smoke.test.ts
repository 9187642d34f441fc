/**
 * A smoke of the Workers benchmark (`npm run bench -- workers --quick`): it
 * bundles ours as `wrangler deploy` would, starts ours and the plain Durable
 * Object floor on workerd, measures, stops them, and writes its JSON, with
 * zero loss at a tiny load. Nothing here looks at how fast anything was.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import type { LoadResult } from "../../bench/loadgen.ts";
import { runBench } from "../helpers/bench.ts";
import { track } from "../helpers/cleanup.ts";

interface Report {
  scenario: string;
  markdown: string;
  data: {
    cold: [string, { readyMs: number; firstOpenMs: number; firstWelcomeMs: number | null }[]][];
    load: [string, LoadResult[]][];
    memory: [string, { rooms: number; baseKiB: number; activeKiB: number }][];
  };
}

it("npm run bench -- workers --quick runs ours and the floor on workerd and reports", async () => {
  const out = mkdtempSync(join(tmpdir(), "bench-workers-smoke-"));
  track(() => rmSync(out, { recursive: true, force: true }));
  const { code, out: log } = await runBench(["workers", "--quick", "--out", out], 280_000);
  expect(code, log.slice(-3000)).toBe(0);

  const files = readdirSync(out).filter((f) => f.endsWith("-workers.json"));
  expect(files).toHaveLength(1);
  const report = JSON.parse(readFileSync(join(out, files[0]!), "utf8")) as Report;
  expect(report.scenario).toBe("workers");
  for (const heading of ["### Bundle", "### Cold start", "### Saturation", "### Memory"]) {
    expect(report.markdown).toContain(heading);
  }

  const names = report.data.load.map(([name]) => name);
  expect(names).toContain("ours");
  expect(names.some((n) => n.includes("(floor)"))).toBe(true);
  for (const [name, runs] of report.data.load) {
    expect(runs.length, name).toBe(1);
    const r = runs[0]!;
    expect(r.errors, name).toEqual([]);
    expect(r.connected, name).toBe(r.clients);
    expect(r.sent, name).toBeGreaterThan(0);
    expect({ name, lost: r.lost, duplicates: r.duplicates, reordered: r.reordered }).toEqual({
      name,
      lost: 0,
      duplicates: 0,
      reordered: 0,
    });
    // workerd's own CPU was read (the bench runs it directly, not behind wrangler's proxy).
    expect(r.serverCpuMs, name).not.toBeNull();
  }
  for (const [name, runs] of report.data.cold) {
    expect(Number.isFinite(runs[0]!.readyMs), name).toBe(true);
    if (name === "ours") expect(runs[0]!.firstWelcomeMs).not.toBeNull();
  }
  const memory = new Map(report.data.memory);
  expect(memory.get("ours")?.activeKiB).toBeGreaterThan(0);
}, 300_000);
