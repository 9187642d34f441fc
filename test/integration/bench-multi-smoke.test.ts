/**
 * A smoke of the multi-instance benchmark (`npm run bench -- multi`): tiny
 * (1 and 2 instances, 20 clients, about a second of sending), it starts its
 * own redis-server, ours with HUB=redis and the Socket.IO + redis-adapter
 * baseline, and writes its report. Benchmarks are not tests: nothing here
 * looks at how fast anything was, only that every run happened, that every
 * message reached every client of its room once and in order on both
 * servers, and that with two instances messages crossed between them.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { MultiLoadResult } from "../../bench/socketio-load.ts";
import { runBench } from "../helpers/bench.ts";
import { track } from "../helpers/cleanup.ts";
import { haveRedisServer } from "../helpers/redis.ts";

interface Report {
  markdown: string;
  data: { rows: { instances: number; protocol: string; result?: MultiLoadResult; error?: string }[] };
}

describe.skipIf(!haveRedisServer)("bench: multi-instance scenario smoke (skipped: no redis-server on PATH)", () => {
  it("runs ours (HUB=redis) and Socket.IO + redis-adapter on 1 and 2 instances with zero loss", async () => {
    const dir = mkdtempSync(join(tmpdir(), "chat-multi-smoke-"));
    track(() => rmSync(dir, { recursive: true, force: true }));
    const { code, out } = await runBench(
      ["multi", "--quick", "--clients", "20", "--rooms", "2", "--duration-ms", "1000", "--out", dir],
      280_000,
    );
    expect(code, out.slice(-3000)).toBe(0);
    const file = readdirSync(dir).find((f) => f.endsWith("-multi.json"));
    expect(file, out.slice(-2000)).toBeDefined();
    const report = JSON.parse(readFileSync(join(dir, file!), "utf8")) as Report;
    const runs = report.data.rows.map((r) => `${r.instances} ${r.protocol}`).sort();
    expect(runs).toEqual(["1 ours", "1 socketio", "2 ours", "2 socketio"]);
    for (const row of report.data.rows) {
      const name = `${row.instances} ${row.protocol}: ${row.error ?? JSON.stringify(row.result?.errors)}`;
      const r = row.result;
      expect(r, name).toBeDefined();
      expect(r!.connected, name).toBe(20);
      expect(r!.sent, name).toBeGreaterThan(0);
      expect(r!.delivered, name).toBe(r!.expected);
      expect(r!.lost, name).toBe(0);
      expect(r!.outOfOrder, name).toBe(0);
      expect(r!.closedEarly, name).toBe(0);
      // With two instances, messages from a sender on one reached receivers on the other.
      if (row.instances === 2) expect(r!.crossLatency.n, name).toBeGreaterThan(0);
    }
    expect(report.markdown).toContain("| 2 | ours HUB=redis |");
  }, 300_000);
});
