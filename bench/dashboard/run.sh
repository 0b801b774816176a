#!/usr/bin/env bash
# Dashboard benchmark: what open dashboards cost device check-ins. The
# service benchmark's load generator (bench/service/loadgen.c: enrol, then
# Idle -> command -> Acknowledged round trips) runs against a fresh service
# alone, then against a fresh service while DASHBOARDS simulated dashboards
# poll it as the pages do (the fleet counts, a page of 50 devices, the
# campaign list, every 2 s each), twice each, alternating. Prints the
# check-in rates and their ratio (with / without; 1.00 = no cost).
# Usage: run.sh BUILD_DIR. Env: DEVICES (default 5000), CONC (default 64),
# DASHBOARDS (default 10), ROUNDS (default 2).
set -euo pipefail
build=$(cd "${1:?usage: bench/dashboard/run.sh BUILD_DIR}" && pwd)
bin="$build/cli/esim-mdm"
gen="$build/bench/service/service_loadgen"
[[ -x "$bin" && -x "$gen" ]] || { echo "build esim-mdm and service_loadgen in $build first" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }
devices=${DEVICES:-5000}
conc=${CONC:-64}
dashboards=${DASHBOARDS:-10}
rounds=${ROUNDS:-2}
dir=$(mktemp -d)
pid=
pollers=()
cleanup() {
  for p in "${pollers[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
token="bench-token-0123456789"
echo "$token" >"$dir/token"

# One dashboard: the requests its pages make, every 2 s, for at most 10 min.
poll() {
  local base=$1 end=$((SECONDS + 600))
  while ((SECONDS < end)); do
    for path in /v1/dashboard/fleet "/v1/dashboard/devices?limit=50" /v1/campaigns; do
      curl -s -o /dev/null -H "Authorization: Bearer $token" "$base$path" || true
    done
    sleep 2
  done
}

# One run: a fresh service, the load generator; prints the round trips/s.
run() {
  local with=$1 n=$2
  rm -rf "$dir/data" "$dir/port"
  "$bin" serve --listen 127.0.0.1:0 --port-file "$dir/port" --data-dir "$dir/data" \
    --api-token-file "$dir/token" --device-auth none --device-rate 100000 \
    >"$dir/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do [[ -s "$dir/port" ]] && break; sleep 0.05; done
  local port base
  port=$(cat "$dir/port")
  base="http://127.0.0.1:$port"
  pollers=()
  if [[ $with == yes ]]; then
    for _ in $(seq "$n"); do poll "$base" & pollers+=($!); done
  fi
  local out
  out=$("$gen" "$port" "$token" "$devices" "$conc" "$pid")
  for p in "${pollers[@]}"; do kill "$p" 2>/dev/null || true; done
  pollers=()
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  echo "$out" | sed -n 's/^round trips: .* = \([0-9]*\) round.*/\1/p'
}

echo "dashboard: $devices devices, $conc device connections; $dashboards dashboards polling 3 endpoints every 2 s"
without=() with=()
for r in $(seq "$rounds"); do
  without+=("$(run no 0)")
  with+=("$(run yes "$dashboards")")
  echo "round $r:     ${without[-1]} round trips/s alone, ${with[-1]} with $dashboards dashboards"
done
awk -v a="${without[*]}" -v b="${with[*]}" 'BEGIN {
  n = split(a, x, " "); split(b, y, " "); sa = 0; sb = 0
  for (i = 1; i <= n; i++) { sa += x[i]; sb += y[i] }
  printf "ratio:       check-in round trips/s with dashboards / alone = %.3f\n", sb / sa }'
