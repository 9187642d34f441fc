/**
 * The Bun entry (`bun run src/index.ts`) as a real process: the black-box
 * suite with every capability on, plus the runtime-sensitive cases.
 */
import { bunTarget, denoTarget, nodeTarget, spawnTarget } from "../helpers/server.ts";
import { historyMovesCase, runtimeCases, sqliteDriverCase } from "./runtime.cases.ts";
import { serverSuite } from "./server.suite.ts";

serverSuite(bunTarget);
runtimeCases(bunTarget);
// The per-member fan-out (as on Node), which the benchmark compares with topics.
runtimeCases(
  spawnTarget("bun, BUN_TOPICS=false", ["node_modules/.bin/bun", "run", "src/index.ts"], {
    env: { BUN_TOPICS: "false" },
  }),
);
sqliteDriverCase("bun:sqlite", [
  "node_modules/.bin/bun",
  "run",
  "--preload",
  "./test/runtimes/bun-imports.ts",
  "test/runtimes/sqlite-store.run.ts",
]);
historyMovesCase([nodeTarget, bunTarget, denoTarget]);
