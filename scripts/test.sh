#!/usr/bin/env bash
# The test command: typecheck, lint, the layer check, the OpenAPI lint, unit tests (next to the code), integration tests (real QEMU, real lab).
# `scripts/test.sh unit` or `scripts/test.sh integration` runs one kind only.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
if [ "$what" = all ]; then
  echo "== typecheck"; npx tsc --noEmit -p .
  echo "== lint"; npx eslint .
  echo "== layers"; npx depcruise src test --config .dependency-cruiser.cjs --output-type err
  echo "== openapi"; bash scripts/lint-openapi.sh
fi
run() { # node 20's --test takes paths, not globs
  local files; files=$(find "$@" -name '*.test.ts' -not -path '*/node_modules/*' | sort)
  [ -n "$files" ] || { echo "no tests under $*"; return 0; }
  # shellcheck disable=SC2086
  node --import tsx --test --test-concurrency=1 --test-reporter=spec $files
}
if [ "$what" = all ] || [ "$what" = unit ]; then echo "== unit tests"; run src; fi
if [ "$what" = all ] || [ "$what" = integration ]; then echo "== integration tests"; run test/integration; fi
