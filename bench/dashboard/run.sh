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
(umask 077; echo "$token" >"$dir/token")

# The dashboards: one node process (bench/dashboard/poll.mjs) polling as
# the pages do, so that the clients' own CPU stays small.
here=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null || { echo "node is needed" >&2; exit 1; }

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
    node "$here/poll.mjs" "$base" "$token" "$n" 600 >"$dir/poll.out" &
    pollers+=($!)
  fi
  local out
  out=$("$gen" "$port" "$token" "$devices" "$conc" "$pid")
  for p in "${pollers[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pollers=()
  [[ $with == yes ]] && sed 's/^/             /' "$dir/poll.out" >&2
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  # "RATE CPU": round trips/s, and the service's CPU per round trip (us)
  echo "$(echo "$out" | sed -n 's/^round trips: .* = \([0-9]*\) round.*/\1/p')" \
    "$(echo "$out" | sed -n 's/^server CPU: *\([0-9]*\) us per round trip.*/\1/p')"
}

echo "dashboard: $devices devices, $conc device connections; $dashboards dashboards polling 3 endpoints every 2 s"
results=""
for r in $(seq "$rounds"); do
  read -r ra ca <<<"$(run no 0)"
  read -r rb cb <<<"$(run yes "$dashboards")"
  echo "round $r:     alone $ra round trips/s ($ca us service CPU each); with $dashboards dashboards $rb/s ($cb us)"
  results="$results $ra $ca $rb $cb"
done
# The rates swing with whatever else the machine runs; the service's CPU
# per round trip is the steadier figure of what the dashboards add.
awk -v r="$results" 'BEGIN {
  n = split(r, v, " "); ra = ca = rb = cb = 0
  for (i = 1; i <= n; i += 4) { ra += v[i]; ca += v[i+1]; rb += v[i+2]; cb += v[i+3] }
  printf "ratio:       check-in round trips/s with dashboards / alone = %.3f\n", rb / ra
  printf "ratio:       service CPU per round trip with dashboards / alone = %.3f\n", cb / ca }'
