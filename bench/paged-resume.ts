/**
 * Resumes of 1000 messages of 8 KB (issue 10): N clients resume a full room
 * at once and do not read for a while, then read. Reports the server's RSS
 * while they do not read, how many got every message, and how many were
 * closed. Run it against this tree, or against another checkout of the
 * project (e.g. `git archive REV | tar -x -C /tmp/old` with node_modules
 * linked) to compare:
 *
 *   [HISTORY=sqlite] node --import tsx bench/paged-resume.ts [clients=20] [root=.]
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import WebSocket from "ws";

const clients = Number(process.argv[2] ?? 20);
const root = resolve(process.argv[3] ?? ".");
const PORT = 18000 + Math.floor(Math.random() * 1000);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const server = spawn("node", ["--import", "tsx", "src/index.ts"], {
  cwd: root,
  env: {
    ...process.env,
    PORT: String(PORT),
    HOST: "127.0.0.1",
    HISTORY: process.env.HISTORY ?? "memory",
    HISTORY_PATH: `/tmp/paged-resume-${process.pid}.db`,
    RATE_LIMIT: "0",
    MAX_CONNECTIONS_PER_IP: "0",
    LOG_LEVEL: process.env.LOG_LEVEL ?? "warn",
  },
  stdio: ["ignore", "inherit", "inherit"],
});
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${server.pid}/status`, "utf8"))?.[1]) / 1024;

type Json = Record<string, unknown>;
function open(query: string): Promise<{ ws: WebSocket; frames: Json[]; closed: { code: number } | null }> {
  return new Promise((res, rej) => {
    const ws = new WebSocket(`ws://127.0.0.1:${PORT}/websocket?${query}`, "chat.v1", { maxPayload: 64 << 20 });
    const c = { ws, frames: [] as Json[], closed: null as { code: number } | null };
    ws.on("message", (d) => c.frames.push(JSON.parse(String(d)) as Json));
    ws.on("close", (code) => {
      c.closed = { code };
    });
    ws.on("open", () => res(c));
    ws.on("error", rej);
  });
}

try {
  for (let i = 0; i < 100; i++) {
    try {
      await (await open("room=probe")).ws.close();
      break;
    } catch {
      await sleep(200);
    }
  }
  const writer = await open("room=big&user=w");
  const echoes = () => writer.frames.filter((f) => f.type === "message");
  writer.ws.send(JSON.stringify({ message: "marker" }));
  for (let i = 0; i < 2000 && echoes().length < 1; i++) await sleep(5);
  const marker = String(echoes()[0]!.id);
  for (let i = 0; i < 1000; i++) writer.ws.send(JSON.stringify({ message: `${i}:${"😀".repeat(1990)}` }));
  for (let i = 0; i < 6000 && echoes().length < 1001; i++) await sleep(5);
  const idle = rss();
  const opened = await Promise.allSettled(Array.from({ length: clients }, () => open(`room=big&since=${marker}`)));
  const readers = opened.flatMap((o) => (o.status === "fulfilled" ? [o.value] : []));
  const refused = opened.length - readers.length;
  for (const r of readers) r.ws.pause();
  await sleep(3000);
  const paused = rss();
  for (const r of readers) r.ws.resume();
  const got = (r: (typeof readers)[number]) =>
    r.frames.flatMap((f) => (f.type === "welcome" ? f.history : f.type === "history" ? f.messages : []) as Json[])
      .length;
  for (let i = 0; i < 600 && readers.some((r) => got(r) < 1000 && !r.closed); i++) await sleep(50);
  const whole = readers.filter((r) => got(r) === 1000 && !r.closed).length;
  const closed = readers.filter((r) => r.closed).map((r) => r.closed!.code);
  console.log(
    `${root}: ${clients} paused resumes of 1000 x 8 KB: server RSS ${idle.toFixed(0)} MB before, ${paused.toFixed(0)} MB while paused (+${(paused - idle).toFixed(0)} MB); ${whole}/${clients} got all 1000; closed: ${closed.length ? closed.join(",") : "none"}; handshakes refused: ${refused}`,
  );
  for (const r of readers) r.ws.terminate();
  writer.ws.terminate();
} finally {
  server.kill("SIGTERM");
}
