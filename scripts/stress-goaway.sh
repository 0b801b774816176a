#!/usr/bin/env bash
# Runs the APNs GOAWAY tests many times with every core kept busy, and counts
# how often a push reached the mock's delivery channel twice (issue 15).
# Not part of `make test`: it takes minutes on purpose.
#
#   scripts/stress-goaway.sh [RUNS] [BUILD_DIR]
#
# RUNS defaults to 300, BUILD_DIR to build/debug (build test_apns_client
# there first). Set STRESS_FILTER to another cmocka glob to stress other tests
# of test_apns_client, STRESS_LOAD to the number of busy loops (default: one
# per core). The busy loops are this script's children and are stopped when it
# ends; each also stops by itself after STRESS_MAX_S seconds (default 3600).
#
# Output: one line per failed run (its assertion), then a summary line:
#   runs N passed P failed F dup_runs D duplicates X lost L
# where duplicates counts deliveries beyond one per push, summed over runs.
# Exit status 0 only when every run passed and nothing was duplicated.
# Interrupted (Ctrl-C, SIGTERM), it prints the summary of the runs completed.
set -euo pipefail

runs=${1:-300}
build=${2:-build/debug}
filter=${STRESS_FILTER:-test_goaway*}
load=${STRESS_LOAD:-$(nproc)}
max_s=${STRESS_MAX_S:-3600}
bin="$build/tests/apns/test_apns_client"

if ! [[ "$runs" =~ ^[0-9]+$ ]] || [[ "$runs" -eq 0 ]]; then
  echo "stress-goaway: RUNS must be a positive number, not '$runs'" >&2
  exit 2
fi
if [[ ! -x "$bin" ]]; then
  echo "stress-goaway: $bin not found; build it: cmake --build $build --target test_apns_client" >&2
  exit 2
fi

busy=()
log=$(mktemp)
done_runs=0 passed=0 failed=0 dup_runs=0 dups=0 lost=0
summary() {
  echo "runs $done_runs passed $passed failed $failed dup_runs $dup_runs duplicates $dups lost $lost"
}
stop_load() {
  for pid in "${busy[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${busy[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -f "$log"
}
trap stop_load EXIT
trap 'echo "interrupted"; summary; exit 130' INT TERM
for ((i = 0; i < load; i++)); do
  timeout "$max_s" sh -c 'while :; do :; done' &
  busy+=($!)
done

for ((r = 1; r <= runs; r++)); do
  status=0
  "$bin" "$filter" >"$log" 2>&1 || status=$?
  # test_goaway_mid_burst prints: goaway_mid_burst: pushes P delivered D ...
  line=$(grep -o 'goaway_mid_burst: pushes [0-9]* delivered [0-9]*' "$log" || true)
  if [[ -n "$line" ]]; then
    read -r _ _ pushes _ delivered <<<"$line"
    if ((delivered > pushes)); then
      dup_runs=$((dup_runs + 1))
      dups=$((dups + delivered - pushes))
    elif ((delivered < pushes)); then
      lost=$((lost + pushes - delivered))
    fi
  fi
  if ((status == 0)); then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    why=$(grep -E '^\[ *(ERROR|LINE|FAILED) *\]|goaway_mid_burst:' "$log" | tr '\n' ' ' || true)
    echo "run $r failed (exit $status): ${why:-no cmocka output}"
  fi
  done_runs=$r
  if ((r % 25 == 0)); then
    echo "progress: $(summary)"
  fi
done

summary
[[ $failed -eq 0 && $dups -eq 0 ]]
