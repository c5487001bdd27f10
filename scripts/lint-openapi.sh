#!/usr/bin/env bash
# Lints the API's OpenAPI document, made from the app (scripts/openapi.ts), with redocly (redocly.yaml):
# no error and no warning passes. Offline: no remote ruleset, telemetry and update checks off.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
node --import tsx scripts/openapi.ts "$dir/openapi.json"
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
# Node 20 gets a deprecation banner from redocly on every run: left out of the output (the pinned version works).
if ! npx --no-install redocly lint --config redocly.yaml "$dir/openapi.json" >"$dir/lint.txt" 2>&1; then
  grep -v '[║╔╚]' "$dir/lint.txt" >&2
  echo "openapi: redocly lint failed" >&2
  exit 1
fi
grep -v '[║╔╚]' "$dir/lint.txt"
# Every rule is an error (recommended-strict), so a warning would be a rule set to warn by mistake: fail too.
if grep -Eq '[0-9]+ warnings?' "$dir/lint.txt"; then echo "openapi: redocly reported warnings" >&2; exit 1; fi
