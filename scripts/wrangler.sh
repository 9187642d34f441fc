#!/bin/sh
# Runs the project's wrangler (from npm) on the project's Deno (from npm).
#
# Why Deno: wrangler 4.164 refuses Node < 22.12 and the project supports
# Node 20. Older wranglers that accepted Node 20 (<= 4.86) ship an older
# workerd; under Bun, wrangler cannot forward requests (Bun's fetch ignores
# undici's dispatcher, oven-sh/bun#39247). Deno runs wrangler 4.164 and its
# workerd unchanged, whatever Node the machine has.
#
# Local runs must not call out: no telemetry, no update check (it runs with
# the banner), no download of the `Request.cf` object.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
export WRANGLER_SEND_METRICS=false
export WRANGLER_HIDE_BANNER=true
export CLOUDFLARE_CF_FETCH_ENABLED=false
exec "$root/node_modules/deno/deno" run -A --quiet "$root/node_modules/wrangler/bin/wrangler.js" "$@"
