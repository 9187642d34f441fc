/**
 * Governance configured but idle (`npm run bench -- governance-idle`): the
 * built-in fan-out (1000 clients, 10 senders x 10 msg/s) against ours on
 * Node, side by side in each round:
 *
 * - `off`: the bench's usual environment (the baseline);
 * - `api`: API_KEY set (the server API mounted, nobody calling it);
 * - `api+webhooks`: API_KEY, WEBHOOK_URL (a local receiver answering 204)
 *   and WEBHOOK_SECRET: every message is also a `message.created` event in
 *   the outbox, so this row is the webhooks' cost, not an idle path.
 *
 * Reported: deliveries/s, server CPU per delivery and p99, each as the median
 * over rounds of the ratio to `off` in the same round (the issue asks for no
 * drop above 5% with the new paths idle), plus the load generator's CPU
 * share so a saturated generator shows.
 *
 * Options: --fanout-ms N (8000; 2000 with --quick), --clients N (1000; 50 with --quick).
 */
import { createServer, type Server } from "node:http";
import {
  fmt,
  median,
  NODE_TS,
  OURS_ENV,
  runLoadgen,
  type ScenarioContext,
  type ScenarioReport,
  startServer,
  stopServer,
} from "./harness.ts";
import type { LoadResult, LoadSpec } from "./loadgen.ts";

const API_KEY = "bench-api-key-0123456789abcdef";
const WEBHOOK_SECRET = "bench-webhook-secret-0123456789";

interface Variant {
  name: string;
  env: (hookUrl: string) => Record<string, string>;
}

const VARIANTS: Variant[] = [
  { name: "off", env: () => ({}) },
  { name: "api", env: () => ({ API_KEY }) },
  { name: "api+webhooks", env: (url) => ({ API_KEY, WEBHOOK_URL: url, WEBHOOK_SECRET }) },
];

interface Row {
  variant: string;
  run: number;
  result?: LoadResult;
  error?: string;
}

/** A receiver that takes every webhook at once (204), counting nothing: delivery cost stays on the server. */
async function receiver(): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.statusCode = 204;
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return { server, url: `http://127.0.0.1:${port}/hook` };
}

function options(args: string[], quick: boolean): { fanoutMs: number; clients: number } {
  const o = { fanoutMs: quick ? 2000 : 8000, clients: quick ? 50 : 1000 };
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--fanout-ms") o.fanoutMs = Number(args[++i]);
    else if (args[i] === "--clients") o.clients = Number(args[++i]);
  }
  return o;
}

export async function run(ctx: ScenarioContext): Promise<ScenarioReport> {
  const o = options(ctx.args, ctx.quick);
  const hook = await receiver();
  const rows: Row[] = [];
  try {
    for (let run = 1; run <= ctx.runs; run++) {
      for (const v of VARIANTS) {
        const server = await startServer({
          command: [...NODE_TS, "src/index.ts"],
          env: { ...OURS_ENV, ...v.env(hook.url) },
        });
        const spec: LoadSpec = {
          scenario: "fanout",
          clients: o.clients,
          senders: 10,
          rate: 10,
          durationMs: o.fanoutMs,
          drainMs: 5000,
          url: `ws://127.0.0.1:${server.port}/websocket?room=bench`,
          ...(server.child.pid !== undefined ? { serverPid: server.child.pid } : {}),
        };
        try {
          const result = await runLoadgen(spec);
          rows.push({ variant: v.name, run, result });
          ctx.log(
            `[governance-idle] run ${run} ${v.name}: ${fmt(result.deliveriesPerSec)} deliveries/s, ${fmt(result.serverCpuMicrosPerDelivery ?? Number.NaN, 2)} µs CPU/delivery, p99 ${result.latency.p99} ms, lost ${result.lost}`,
          );
        } catch (error) {
          rows.push({ variant: v.name, run, error: error instanceof Error ? error.message : String(error) });
        } finally {
          await stopServer(server);
        }
      }
    }
  } finally {
    hook.server.close();
  }

  const ratio = (variant: string, f: (r: LoadResult) => number | null): number => {
    const out: number[] = [];
    for (const r of rows) {
      if (r.variant !== variant || !r.result) continue;
      const base = rows.find((b) => b.variant === "off" && b.run === r.run)?.result;
      const num = f(r.result);
      const den = base ? f(base) : null;
      if (num !== null && den !== null && den > 0) out.push(num / den);
    }
    return median(out);
  };
  const med = (variant: string, f: (r: LoadResult) => number | null) =>
    median(rows.filter((r) => r.variant === variant && r.result).map((r) => f(r.result!) ?? Number.NaN));

  const lines = [
    `### Governance configured, idle (Node, ${o.clients} clients, 10 senders x 10 msg/s for ${o.fanoutMs} ms, ${ctx.runs} rounds)`,
    "",
    "| variant | deliveries/s | vs off | server CPU µs/delivery | vs off | p99 ms | vs off | lost | load CPU |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const v of VARIANTS) {
    const ok = rows.filter((r) => r.variant === v.name && r.result);
    if (ok.length === 0) {
      lines.push(
        `| ${v.name} | not available: ${rows.find((r) => r.variant === v.name)?.error?.slice(0, 80) ?? "-"} |`,
      );
      continue;
    }
    const lost = ok.reduce((n, r) => n + r.result!.lost, 0);
    const x = (n: number) => (v.name === "off" ? "1.00x" : `${fmt(n, 2)}x`);
    lines.push(
      `| ${v.name} | ${fmt(med(v.name, (r) => r.deliveriesPerSec))} | ${x(ratio(v.name, (r) => r.deliveriesPerSec))} | ${fmt(
        med(v.name, (r) => r.serverCpuMicrosPerDelivery),
        2,
      )} | ${x(ratio(v.name, (r) => r.serverCpuMicrosPerDelivery))} | ${fmt(
        med(v.name, (r) => r.latency.p99),
        1,
      )} | ${x(ratio(v.name, (r) => r.latency.p99))} | ${lost} | ${fmt(
        med(v.name, (r) => r.loadgenCpuPercent ?? null),
        0,
      )}% |`,
    );
  }
  lines.push(
    "",
    '"vs off": the median over rounds of the variant / `off` in the same round. The offered load is fixed, so deliveries/s stays at the offered rate unless the server falls behind; CPU per delivery is the figure that shows a cost.',
  );
  return { markdown: lines.join("\n"), data: rows };
}
