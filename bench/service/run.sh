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
