// Makes sure what the suites need is there: Redis answering on REDIS_URL
// (started with redis-server when installed and nothing answers). Suites that
// need a missing service skip with the reason; they never pass without it.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createConnection } from "node:net";

const redisUrl = new URL(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");

function answers(host, port) {
  return new Promise((resolve) => {
    const socket = createConnection({ host, port: Number(port) });
    socket.setTimeout(1000);
    socket.once("connect", () => {
      socket.write("PING\r\n");
    });
    socket.once("data", (d) => {
      socket.destroy();
      resolve(d.toString().includes("PONG"));
    });
    socket.once("error", () => resolve(false));
    socket.once("timeout", () => {
      socket.destroy();
      resolve(false);
    });
  });
}

const host = redisUrl.hostname || "127.0.0.1";
const port = redisUrl.port || "6379";
if (!(await answers(host, port))) {
  const which = spawnSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8" });
  if (which.status === 0) {
    console.log(`test-setup: no Redis at ${host}:${port}; starting redis-server`);
    spawnSync(
      "redis-server",
      ["--daemonize", "yes", "--bind", host, "--port", port, "--save", "", "--appendonly", "no"],
      {
        stdio: "inherit",
      },
    );
    for (let i = 0; i < 50 && !(await answers(host, port)); i++) await new Promise((r) => setTimeout(r, 100));
  } else {
    console.log(`test-setup: no Redis at ${host}:${port} and no redis-server installed; Redis suites will be skipped`);
  }
}

// The browser end-to-end tests (test/e2e) drive Debian's Chromium through
// playwright-core; never `npx playwright install` (no download, no CDN).
if (!existsSync("/usr/bin/chromium")) {
  console.log("test-setup: no /usr/bin/chromium; installing Debian's chromium");
  const apt = (args) =>
    spawnSync("apt-get", args, { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
  if (apt(["update"]).status !== 0 || apt(["install", "-y", "chromium"]).status !== 0) {
    console.log("test-setup: could not install chromium; the browser suites will be skipped");
  }
}
