#!/bin/sh
# Runs the project's wrangler (from npm) on the project's Deno (from npm).
#
# Why Deno: wrangler 4.164 refuses Node < 22.12 and the project supports
# Node 20. Older wranglers that accepted Node 20 (<= 4.86) ship an older
# workerd; under Bun, wrangler cannot forward requests (Bun's fetch ignores
# undici's dispatcher, oven-sh/bun#39247). Deno runs wrangler 4.164 and its
# workerd unchanged, whatever Node the machine has.
#
# Local runs must not call out: no telemetry, no update checks (wrangler's
# runs with its banner; Deno has its own), no download of the `Request.cf`
# object. Checked with `strace -f -e trace=connect`: only 127.0.0.1 remains.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
export WRANGLER_SEND_METRICS=false
export WRANGLER_HIDE_BANNER=true
export CLOUDFLARE_CF_FETCH_ENABLED=false
export DENO_NO_UPDATE_CHECK=1
wrangler="$root/node_modules/wrangler/bin/wrangler.js"
if [ -x "$root/node_modules/deno/deno" ]; then
  exec "$root/node_modules/deno/deno" run -A --quiet "$wrangler" "$@"
fi
# deno's install script puts the binary there; without it (--ignore-scripts)
# deno's own bin.cjs finds the platform package.
exec node "$root/node_modules/deno/bin.cjs" run -A --quiet "$wrangler" "$@"
