#!/usr/bin/env bash
# Service benchmark: check-in round trips per second (Idle -> command ->
# Acknowledged -> empty) for many devices over loopback, against the same
# server's /healthz driven by the same generator in the same run (the
# ceiling), plus memory per enrolled device. Usage: run.sh BUILD_DIR
# Env: DEVICES (default 20000), CONC (default 64), SYNC (group|full|normal, default group).
set -euo pipefail
build=$(cd "${1:?usage: bench/service/run.sh BUILD_DIR}" && pwd)
bin="$build/cli/esim-mdm"
gen="$build/bench/service/service_loadgen"
[[ -x "$bin" && -x "$gen" ]] || { echo "build esim-mdm and service_loadgen in $build first" >&2; exit 1; }
devices=${DEVICES:-20000}
conc=${CONC:-64}
sync=${SYNC:-group}
dir=$(mktemp -d)
pid=
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
echo "bench-token-0123456789" > "$dir/token"
chmod 600 "$dir/token"
"$bin" serve --listen 127.0.0.1:0 --port-file "$dir/port" --data-dir "$dir/data" \
  --api-token-file "$dir/token" --device-auth none --device-rate 100000 --store-sync "$sync" \
  >"$dir/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [[ -s "$dir/port" ]] && break; sleep 0.05; done
port=$(cat "$dir/port")
echo "service: $devices devices, $conc connections, store sqlite (WAL, synchronous=$sync), device auth none"
"$gen" "$port" "bench-token-0123456789" "$devices" "$conc" "$pid"
db=$(du -k "$dir/data/esim-mdm.db" "$dir/data/esim-mdm.db-wal" 2>/dev/null | awk '{s+=$1} END {print s}')
echo "store:       $db KiB on disk after the run ($(( db * 1024 / devices )) bytes per device, ledger included)"

# Callgrind: instructions the service executes per check-in round trip, a
# figure that does not move with the machine's load. Two bounded runs under
# valgrind (CG_DEVICES devices over one connection, 1 and 3 rounds of
# enqueue + round trips); their difference divided by the extra round trips
# leaves out start-up, enrolment and shutdown.
if command -v valgrind >/dev/null; then
  cg_devices=${CG_DEVICES:-50}
  cg_run() {
    local rounds=$1 d="$dir/cg$1" cpid
    mkdir -p "$d"
    valgrind --tool=callgrind --callgrind-out-file="$d/out" \
      "$bin" serve --listen 127.0.0.1:0 --port-file "$d/port" --data-dir "$d/data" \
      --api-token-file "$dir/token" --device-auth none --device-rate 100000 \
      >"$d/serve.log" 2>&1 &
    cpid=$!
    for _ in $(seq 600); do [[ -s "$d/port" ]] && break; sleep 0.1; done
    timeout 300 "$gen" "$(cat "$d/port")" "bench-token-0123456789" "$cg_devices" 1 "$cpid" "$rounds" >/dev/null
    kill -TERM "$cpid"
    wait "$cpid" 2>/dev/null || true
    awk '/^(summary|totals):/ {print $2; exit}' "$d/out"
  }
  ir1=$(cg_run 1)
  ir3=$(cg_run 3)
  if [[ -n "$ir1" && -n "$ir3" ]]; then
    echo "callgrind:   $(( (ir3 - ir1) / (2 * cg_devices) )) instructions per check-in round trip" \
      "(service under valgrind, $cg_devices devices, one connection, 3 rounds minus 1)"
  else
    echo "callgrind:   no figure (valgrind run failed)" >&2
  fi
fi
