#!/usr/bin/env bash
# The whole suite, from a fresh clone: installs what it needs, checks, tests.
# Ends with a plain "tests: N passed, N failed, N skipped" line.
set -euo pipefail
cd "$(dirname "$0")/.."


# Services and tools the suites use; each is installed or started only when missing.
node scripts/test-setup.mjs

npx biome check .
npx tsc -p .

mkdir -p test-artifacts
status=0
npx vitest run --reporter=default --reporter=json --outputFile=test-artifacts/vitest.json "$@" || status=$?
node scripts/test-summary.mjs test-artifacts/vitest.json || status=1
exit $status
