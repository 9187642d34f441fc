/**
 * The Deno entry (`deno run -A src/index.ts`) as a real process, on both of
 * its servers: the black-box suite, plus the runtime-sensitive cases.
 */
import { spawnTarget } from "../helpers/server.ts";
import { runtimeCases, sqliteDriverCase } from "./runtime.cases.ts";
import { serverSuite } from "./server.suite.ts";

const deno = ["node_modules/.bin/deno", "run", "-A", "src/index.ts"];

/** DENO_SERVER=node: node:http + ws under Deno, as on Node; invalid UTF-8 closes with 1007. */
const viaNode = spawnTarget("deno, DENO_SERVER=node", deno, { env: { DENO_SERVER: "node" } });
serverSuite(viaNode);
runtimeCases(viaNode);

/** DENO_SERVER=deno: Deno.serve and Deno.upgradeWebSocket. */
const viaDeno = spawnTarget("deno, DENO_SERVER=deno", deno, { env: { DENO_SERVER: "deno" } });
serverSuite(viaDeno, {
  // Deno validates UTF-8 itself (fastwebsockets) and on a bad text frame drops
  // the TCP connection without a close frame, before the app sees anything:
  // the client gets 1006, not 1007. Deno.upgradeWebSocket has no option to
  // change it (docs/runtimes.md links the upstream issue).
  utf8Close: false,
});
runtimeCases(viaDeno);

sqliteDriverCase("node:sqlite", [
  "node_modules/.bin/deno",
  "run",
  "-A",
  "--import-map=test/runtimes/deno-imports.json",
  "test/runtimes/sqlite-store.run.ts",
]);
