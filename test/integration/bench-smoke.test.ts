/**
 * A few-second smoke of the benchmark: it runs, starts and stops its
 * servers, writes its JSON, and sees zero loss at a tiny load. Benchmarks are
 * not tests: nothing here looks at how fast anything was.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { type LoadResult, runLoad } from "../../bench/loadgen.ts";
import { runBench } from "../helpers/bench.ts";
import { track } from "../helpers/cleanup.ts";

interface Report {
  command: string;
  machine: { before: { cpus: number; loadavg: number[] } };
  summaries: Array<{
    target: string;
    scenario: string;
    runs: number;
    failed: number;
    lost: number;
    duplicates: number;
    reordered: number;
    closedEarly: number;
    deliveriesPerSec: number;
    connected: number;
    rssPerConnKiB: number;
  }>;
  rows: Array<{ target: string; scenario: string; result?: LoadResult; error?: string }>;
  markdown: string;
}

describe("bench smoke (npm run bench -- --quick)", () => {
  it("runs ours and the ws floor side by side and writes sane JSON", { timeout: 90_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "bench-smoke-"));
    track(() => rmSync(dir, { recursive: true, force: true }));
    const { code, out } = await runBench(["--quick", "--out", dir], 80_000);
    expect(code, out).toBe(0);
    expect(out).toContain("### Saturation");
    const files = readdirSync(dir).filter((f) => f.endsWith(".json"));
    expect(files).toHaveLength(1);
    const report = JSON.parse(readFileSync(join(dir, files[0]!), "utf8")) as Report;
    expect(report.command).toContain("--quick");
    expect(report.machine.before.cpus).toBeGreaterThan(0);
    const targets = new Set(report.summaries.map((s) => s.target));
    expect([...targets].sort()).toEqual(["ours node sqlite", "ws plain loop"]);
    for (const s of report.summaries) {
      const where = `${s.target} / ${s.scenario}: ${JSON.stringify(report.rows.filter((r) => r.target === s.target && r.scenario === s.scenario))}`;
      expect(s.runs, where).toBe(1);
      expect(s.failed, where).toBe(0);
      expect(s.lost, where).toBe(0);
      expect(s.duplicates, where).toBe(0);
      expect(s.reordered, where).toBe(0);
      expect(s.closedEarly, where).toBe(0);
      if (s.scenario === "idle") {
        expect(s.connected, where).toBe(50);
        expect(s.rssPerConnKiB, where).toEqual(expect.any(Number));
      } else {
        expect(s.deliveriesPerSec, where).toBeGreaterThan(0);
      }
    }
    for (const row of report.rows) {
      const r = row.result!;
      expect(r.errors).toEqual([]);
      if (r.scenario === "idle") continue;
      // Every message reached every connection exactly once.
      expect(r.sent).toBeGreaterThan(0);
      expect(r.delivered).toBe(r.expected);
      expect(r.expected).toBe(r.sent * r.connected);
      expect(r.latency.p50).toBeLessThanOrEqual(r.latency.p99);
      expect(r.latency.p99).toBeLessThanOrEqual(r.latency.max);
    }
  });

  it.each(["raw", "ws"] as const)(
    "the load generator's %s client counts loss, duplicates and reordering",
    async (client) => {
      // A broadcast server that drops the 3rd frame of each sender, repeats the
      // 5th and swaps the 7th and 8th: the counts must show exactly that.
      const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
      track(() => new Promise<void>((r) => wss.close(() => r())));
      await new Promise<void>((r) => wss.once("listening", () => r()));
      const address = wss.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      const perSender = new Map<string, number>();
      let heldBack: string | null = null;
      const broadcast = (text: string) => {
        for (const c of wss.clients) if (c.readyState === WebSocket.OPEN) c.send(text);
      };
      wss.on("connection", (ws) => {
        ws.on("message", (data: Buffer) => {
          const text = data.toString();
          const sender = /~(\d+)~/.exec(text)?.[1] ?? "";
          const n = (perSender.get(sender) ?? 0) + 1;
          perSender.set(sender, n);
          if (n === 3) return;
          if (n === 7) {
            heldBack = text;
            return;
          }
          broadcast(text);
          if (n === 5) broadcast(text);
          if (n === 8 && heldBack !== null) broadcast(heldBack);
        });
      });
      const result = await runLoad({
        url: `ws://127.0.0.1:${port}`,
        scenario: "fanout",
        clients: 4,
        senders: 1,
        rate: 50,
        durationMs: 400,
        drainMs: 500,
        client,
      });
      expect(result.client).toBe(client);
      expect(result.runtime).toMatch(/^node /);
      expect(result.connected).toBe(4);
      expect(result.sent).toBeGreaterThanOrEqual(8);
      expect(result.lost).toBe(4); // the 3rd, at each of 4 connections
      expect(result.duplicates).toBe(4);
      expect(result.reordered).toBe(4);
      expect(result.delivered).toBe(result.expected - 4);
    },
  );
});
