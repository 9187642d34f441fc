import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Integration files start real servers on port 0; two cores here, so two
    // files at a time keeps timing-sensitive cases (heartbeat, shutdown) honest.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
  },
});
