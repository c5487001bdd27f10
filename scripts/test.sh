#!/usr/bin/env bash
# The test command: typecheck, lint, the layer check, the OpenAPI lint, unit tests (next to the code), integration tests (real QEMU, real lab).
# `scripts/test.sh unit` or `scripts/test.sh integration` runs one kind only. The web console's bundle is
# built first when it is missing or older than web/ (the browser tests load it from the controller), and
# ferry's own when a source of it changed (every `ferry` the tests start runs it: bin/ferry.js).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
node --import tsx scripts/build-web.ts --if-stale
node --import tsx scripts/build-cli.ts --if-stale
if [ "$what" = all ]; then
  echo "== typecheck"; npx tsc --noEmit -p . && npx tsc --noEmit -p web
  echo "== lint"; npx eslint .
  echo "== layers"; npx depcruise src test web --config .dependency-cruiser.cjs --output-type err
  echo "== openapi"; bash scripts/lint-openapi.sh
fi
run() { # run JOBS DIR: node 20's --test takes paths, not globs
  local jobs=$1; shift
  local files; files=$(find "$@" -name '*.test.ts' -not -path '*/node_modules/*' | sort)
  [ -n "$files" ] || { echo "no tests under $*"; return 0; }
  # shellcheck disable=SC2086
  node --import tsx --test --test-concurrency="$jobs" --test-reporter=spec $files
}
# Integration files run in two lanes at once (FERRY_TEST_LANES, default 2; 1 runs them one after another):
# on 2 cores each file takes longer in a lane than alone, the whole takes less (README). Each lab has its own namespaces,
# subnets and config file, and a lab test spends most of its time waiting on guests and timers, not on the CPU.
# Files are dealt to the lanes longest first (seconds measured alone in a serial full run, 2026-12-01; a new file counts 60) so that both
# lanes end at about the same time. Each lane's lines carry its letter.
declare -A SECONDS_OF=([debian]=464 [faults]=442 [truth]=188 [pingpong]=146 [fleet-queue]=129 [fleet-drain]=91
  [migration-live]=89 [migration-converge]=82 [migration-storage]=80 [observability]=77 [disk-boot]=66
  [deploy]=59 [ha]=55 [identity]=51 [image-fetch]=49 [drain]=46 [cli-output]=46 [shared-storage]=45
  [progress-tty]=44 [guest-probe]=43 [web]=41 [cluster]=33 [predict]=32 [lab]=25 [readiness]=21 [races]=19
  [guest]=12 [vm-lifecycle]=19 [agent]=10 [guest-channel-migration]=8 [migration-engine]=4 [controller]=4
  [lab-net]=6 [renewal]=60)
integration() {
  local lanes=${FERRY_TEST_LANES:-2} f base i best
  local -a load files
  for ((i = 0; i < lanes; i++)); do load[i]=0; files[i]=""; done
  while read -r _ f; do
    best=0
    for ((i = 1; i < lanes; i++)); do ((load[i] < load[best])) && best=$i; done
    base=$(basename "$f" .test.ts)
    load[best]=$((load[best] + ${SECONDS_OF[$base]:-60}))
    files[best]+=" $f"
  done < <(for f in $(find test/integration -name '*.test.ts' | sort); do
    base=$(basename "$f" .test.ts); echo "${SECONDS_OF[$base]:-60} $f"; done | sort -rn -s -k1,1)
  local -a pids
  for ((i = 0; i < lanes; i++)); do
    local letter; letter=$(printf "\\x$(printf %x $((97 + i)))")
    echo "lane $letter (~$((load[i] / 60)) min):${files[i]}"
    # shellcheck disable=SC2086
    (node --import tsx --test --test-concurrency=1 --test-reporter=spec ${files[i]} 2>&1 | sed -u "s/^/[$letter] /"
      exit "${PIPESTATUS[0]}") &
    pids[i]=$!
  done
  local rc=0
  for ((i = 0; i < lanes; i++)); do wait "${pids[i]}" || rc=1; done
  return $rc
}
if [ "$what" = all ] || [ "$what" = unit ]; then echo "== unit tests"; run 1 src web; fi
if [ "$what" = all ] || [ "$what" = integration ]; then echo "== integration tests"; integration; fi
