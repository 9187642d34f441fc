/**
 * The Deno entry (`deno run -A src/index.ts`) as a real process: the
 * black-box suite, plus the runtime-sensitive cases.
 */
import { denoTarget } from "../helpers/server.ts";
import { runtimeCases, sqliteDriverCase } from "./runtime.cases.ts";
import { serverSuite } from "./server.suite.ts";

serverSuite(denoTarget, {
  // Deno validates UTF-8 itself (fastwebsockets) and on a bad text frame drops
  // the TCP connection without a close frame, before the app sees anything:
  // the client gets 1006, not 1007. Deno.upgradeWebSocket has no option to
  // change this. (node:http + ws under Deno does send 1007; not used, see
  // src/runtime/deno.ts.)
  utf8Close: false,
});
runtimeCases(denoTarget);
sqliteDriverCase("node:sqlite", [
  "node_modules/.bin/deno",
  "run",
  "-A",
  "--import-map=test/runtimes/deno-imports.json",
  "test/runtimes/sqlite-store.run.ts",
]);
