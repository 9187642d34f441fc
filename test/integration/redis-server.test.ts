/**
 * The whole black-box server suite against a Node server with HUB=redis, so
 * every protocol rule is checked with Redis doing the ordering, fan-out and
 * history: on the shared Redis, and on a local Redis Cluster (REDIS_CLUSTER,
 * 3 masters + 3 replicas started here from redis-server). The multi-instance
 * and fault cases are in redis-cluster.test.ts, redis-epoch.test.ts and
 * redis-failover.test.ts.
 */
import { describe } from "vitest";
import { trackForFile } from "../helpers/cleanup.ts";
import { deleteKeys, REDIS_URL, redisSkipReason, uniquePrefix } from "../helpers/redis.ts";
import { haveClusterTools, LocalCluster } from "../helpers/redis-cluster.ts";
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

// Started when the file loads: the suite's servers need its URL when they are declared.
const cluster = haveClusterTools ? await LocalCluster.start() : null;
if (cluster) trackForFile(() => cluster.stop());

describe.skipIf(cluster === null)(
  `server suite with HUB=redis on a Redis Cluster${cluster ? "" : " (skipped: redis-server or redis-cli is not installed)"}`,
  () => {
    serverSuite(
      spawnTarget("node, HUB=redis, REDIS_CLUSTER", ["node", "--import", "tsx", "src/index.ts"], {
        env: { HUB: "redis", REDIS_CLUSTER: "true", REDIS_URL: cluster?.url ?? "redis://127.0.0.1:1" },
      }),
    );
  },
);
