/**
 * The whole black-box server suite against a Node server with HUB=redis, so
 * every protocol rule is checked with Redis doing the ordering, fan-out and
 * history (about 25 s). redis-cluster.test.ts covers what only HUB=redis
 * does (several instances, faults).
 */
import { describe } from "vitest";
import { trackForFile } from "../helpers/cleanup.ts";
import { deleteKeys, REDIS_URL, redisSkipReason, uniquePrefix } from "../helpers/redis.ts";
import { spawnTarget } from "../helpers/server.ts";
import { serverSuite } from "./server.suite.ts";

const reason = redisSkipReason;

describe.skipIf(reason !== null)(`server suite with HUB=redis${reason ? ` (skipped: ${reason})` : ""}`, () => {
  const prefix = uniquePrefix("suite");
  if (reason === null) trackForFile(() => deleteKeys(REDIS_URL, prefix));
  serverSuite(
    spawnTarget("node, HUB=redis", ["node", "--import", "tsx", "src/index.ts"], {
      env: { HUB: "redis", REDIS_URL, REDIS_PREFIX: prefix },
    }),
  );
});
