import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Integration files start real servers on port 0 and mostly wait on them:
    // with two files at a time the two cores stood about half idle (903 s of
    // test time, 506 s of wall); three keeps them busy without starving the
    // timing-sensitive cases (heartbeat, shutdown).
    maxWorkers: 3,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
  },
});
