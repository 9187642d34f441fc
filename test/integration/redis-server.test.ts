/**
 * The whole black-box server suite against a Node server with HUB=redis, so
 * every protocol rule is checked with Redis doing the ordering, fan-out and
 * history. Opt-in (REDIS_SERVER_SUITE=1): it repeats the Node suite (~25 s),
 * and redis-cluster.test.ts already covers what only HUB=redis does.
 */
import { describe } from "vitest";
import { trackForFile } from "../helpers/cleanup.ts";
import { deleteKeys, REDIS_URL, redisSkipReason, uniquePrefix } from "../helpers/redis.ts";
import { spawnTarget } from "../helpers/server.ts";
import { serverSuite } from "./server.suite.ts";

const optedIn = process.env.REDIS_SERVER_SUITE === "1";
const reason = !optedIn ? "opt-in: REDIS_SERVER_SUITE=1 runs it (about 25 s)" : redisSkipReason;

describe.skipIf(reason !== null)(`server suite with HUB=redis${reason ? ` (skipped: ${reason})` : ""}`, () => {
  const prefix = uniquePrefix("suite");
  if (reason === null) trackForFile(() => deleteKeys(REDIS_URL, prefix));
  serverSuite(
    spawnTarget("node, HUB=redis", ["node", "--import", "tsx", "src/index.ts"], {
      env: { HUB: "redis", REDIS_URL, REDIS_PREFIX: prefix },
    }),
  );
});
