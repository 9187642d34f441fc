// Makes sure what the suites need is there: Redis answering on REDIS_URL
// (started with redis-server when installed and nothing answers). Suites that
// need a missing service skip with the reason; they never pass without it.
import { spawnSync } from "node:child_process";
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
