/**
 * The Bun entry (`bun run src/index.ts`), started as a real process: the
 * runtime-sensitive cases run against it.
 */
import { spawnTarget } from "../helpers/server.ts";
import { runtimeCases } from "./runtime.cases.ts";

/** `bun run src/index.ts` from the repo's own devDependency. */
export const bunTarget = spawnTarget("bun", ["node_modules/.bin/bun", "run", "src/index.ts"]);

runtimeCases(bunTarget);
