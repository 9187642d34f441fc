// Bundles the page (src/client/page.ts + the ChatClient it uses) into
// static/app.bundle.js with esbuild: one copy of the client logic, no CDN.
//
// The bundle is committed, because `bun run src/index.ts`, `deno run -A
// src/index.ts` and wrangler serve static/ without going through npm scripts.
// `npm start` and the Bun, Deno and wrangler npm scripts rebuild it first;
// `--check` (run by the test suite, test/e2e/page.test.ts) fails when the
// committed file is not what the sources build to, so it cannot go stale.
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const outfile = `${root}static/app.bundle.js`;
const check = process.argv.includes("--check");

const result = await build({
  entryPoints: [`${root}src/client/page.ts`],
  bundle: true,
  format: "esm",
  target: ["es2022"],
  platform: "browser",
  minify: true,
  legalComments: "none",
  charset: "utf8",
  write: false,
  logLevel: "warning",
  banner: { js: "// Built by scripts/build-client.mjs from src/client/; do not edit." },
});
const text = result.outputFiles[0].text;

let current = null;
try {
  current = readFileSync(outfile, "utf8");
} catch {
  // not built yet
}
if (check) {
  if (current !== text) {
    console.error("static/app.bundle.js is out of date: run `npm run build:client` and commit it");
    process.exit(1);
  }
} else if (current !== text) {
  writeFileSync(outfile, text);
  console.log(`build-client: wrote static/app.bundle.js (${text.length} bytes)`);
}
