/**
 * bench/webhooks.ts runs end to end, tiny (100 messages/s for 1 s): every
 * variant starts a real server, sends, and with webhooks every message's
 * event reaches the bench's receiver exactly once per id. Numbers are not
 * judged here (no timed assertions): that is the bench's job.
 */
import { expect, it } from "vitest";
import { run, type WebhookRun } from "../../bench/webhooks.ts";

it("the webhook bench runs each variant and delivers every event", async () => {
  const lines: string[] = [];
  const report = await run({
    runs: 1,
    quick: true,
    args: ["--rate", "100", "--duration-ms", "1000", "--rooms", "3"],
    log: (l) => lines.push(l),
  });
  const runs = (report.data as { runs: WebhookRun[] }).runs;
  expect(runs.map((r) => r.variant)).toEqual(["off", "on, 3 rooms", "on, 1 room"]);
  for (const r of runs) {
    expect(r.sent).toBe(100);
    if (r.variant === "off") {
      expect(r.delivered).toBe(0);
    } else {
      expect(r.delivered).toBe(100);
      expect(r.unique).toBe(100);
    }
    expect(r.rssMiB.end).toBeGreaterThan(0);
  }
  expect(report.markdown).toContain("| on, 1 room |");
  expect(lines).toHaveLength(3);
}, 180_000);
