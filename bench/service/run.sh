#!/usr/bin/env bash
# Service benchmark: check-in round trips per second (Idle -> command ->
# Acknowledged -> empty) for many devices over loopback, against the same
# server's /healthz driven by the same generator in the same run (the
# ceiling), plus memory per enrolled device. Usage: run.sh BUILD_DIR
# Env: DEVICES (default 20000), CONC (default 64), SYNC (group|full|normal, default group),
# SIG_DEVICES (default 2000: the same with every message signed, Mdm-Signature).
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
sig_pid=
cleanup() {
  for p in $pid $sig_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
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
"$gen" "$port" "bench-token-0123456789" "$devices" "$conc" "$pid" | tee "$dir/sqlite.out"
db=$(du -k "$dir/data/esim-mdm.db" "$dir/data/esim-mdm.db-wal" 2>/dev/null | awk '{s+=$1} END {print s}')
echo "store:       $db KiB on disk after the run ($(( db * 1024 / devices )) bytes per device, ledger included)"

# The same round trips with device identity on, as phones send them: every
# message signed (Mdm-Signature, CMS, a P-256 identity per device from the
# device CA of a test PKI) and checked by the service.
"$bin" pki --dir "$dir/pki" >/dev/null
sig_devices=${SIG_DEVICES:-2000}
"$bin" serve --listen 127.0.0.1:0 --port-file "$dir/sig.port" --data-dir "$dir/sigdata" \
  --api-token-file "$dir/token" --device-auth signature --device-ca "$dir/pki/device-ca.pem" \
  --device-rate 100000 --store-sync "$sync" >"$dir/sig.log" 2>&1 &
sig_pid=$!
for _ in $(seq 100); do [[ -s "$dir/sig.port" ]] && break; sleep 0.05; done
echo "signed:      $sig_devices devices, $conc connections, device auth signature (Mdm-Signature, P-256)"
LOADGEN_PKI="$dir/pki" "$gen" "$(cat "$dir/sig.port")" "bench-token-0123456789" "$sig_devices" \
  "$conc" "$sig_pid" | sed 's/^/  /'
kill "$sig_pid" 2>/dev/null || true
wait "$sig_pid" 2>/dev/null || true

# Callgrind: instructions the service executes per check-in round trip, a
# figure that does not move with the machine's load. Two bounded runs under
# valgrind (CG_DEVICES devices over one connection, 1 and 3 rounds of
# enqueue + round trips); their difference divided by the extra round trips
# leaves out start-up, enrolment and shutdown. Once without device identity,
# once with every message signed.
if command -v valgrind >/dev/null; then
  cg_devices=${CG_DEVICES:-50}
  cg_run() { # ROUNDS MODE
    local rounds=$1 d="$dir/cg$1$2" cpid auth=(--device-auth none) env=()
    if [[ "$2" == signature ]]; then
      auth=(--device-auth signature --device-ca "$dir/pki/device-ca.pem")
      env=(LOADGEN_PKI="$dir/pki")
    fi
    mkdir -p "$d"
    valgrind --tool=callgrind --callgrind-out-file="$d/out" \
      "$bin" serve --listen 127.0.0.1:0 --port-file "$d/port" --data-dir "$d/data" \
      --api-token-file "$dir/token" "${auth[@]}" --device-rate 100000 \
      >"$d/serve.log" 2>&1 &
    cpid=$!
    for _ in $(seq 600); do [[ -s "$d/port" ]] && break; sleep 0.1; done
    env "${env[@]}" timeout 300 "$gen" "$(cat "$d/port")" "bench-token-0123456789" "$cg_devices" 1 \
      "$cpid" "$rounds" >/dev/null
    kill -TERM "$cpid"
    wait "$cpid" 2>/dev/null || true
    awk '/^(summary|totals):/ {print $2; exit}' "$d/out"
  }
  for mode in none signature; do
    ir1=$(cg_run 1 $mode)
    ir3=$(cg_run 3 $mode)
    if [[ -n "$ir1" && -n "$ir3" ]]; then
      echo "callgrind:   $(( (ir3 - ir1) / (2 * cg_devices) )) instructions per check-in round trip," \
        "device auth $mode (service under valgrind, $cg_devices devices, one connection, 3 rounds minus 1)"
    else
      echo "callgrind:   no figure for device auth $mode (valgrind run failed)" >&2
    fi
  done
fi

# The same round trips on PostgreSQL (a throw-away cluster on a unix
# socket, scripts/pg-fixture.sh), one instance, then two instances on the
# one database with a generator each (disjoint devices, run together: their
# rates add up), against SQLite over the same number of devices in the same
# run (PG_DEVICES, default 2000: PostgreSQL's round trips are slower, and
# the part stays within minutes), with the load average before and after
# each part (on a busy machine the ratios hold, the rates do not).
fixture="$(cd "$(dirname "$0")/../.." && pwd)/scripts/pg-fixture.sh"
if [[ "${PGSQL:-1}" == 0 ]] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "pgsql:       skipped (no PostgreSQL here, or PGSQL=0)"
  exit 0
fi
pg_devices=${PG_DEVICES:-2000}
pgdir=/tmp/esim-pg-bench-$$
pids=("$pid") # the SQLite run's service too: stopped before anything is waited for
pg_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$fixture" stop "$pgdir" >/dev/null 2>&1 || true
  cleanup
}
trap pg_cleanup EXIT
"$fixture" start "$pgdir" 2>/dev/null
serve_pg() { # NAME DB [POOL]
  mkdir -p "$dir/$1"
  "$bin" serve --listen 127.0.0.1:0 --port-file "$dir/$1/port" --data-dir "$dir/$1" \
    --api-token-file "$dir/token" --device-auth none --device-rate 100000 \
    --store "postgresql:///$2?host=$pgdir" --store-pool "${3:-4}" >"$dir/$1/serve.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do [[ -s "$dir/$1/port" ]] && break; sleep 0.05; done
}
rate_of() { grep -o '[0-9]* round trips/s' "$1" | awk '{print $1}'; }
# The cluster's CPU so far in clock ticks: the postmaster, the backends it
# has reaped and those alive (CPU time, which the machine's load does not
# inflate as it does wall time).
pg_ticks() {
  local pm
  pm=$(head -1 "$pgdir/data/postmaster.pid")
  # (a process that ends between the glob and cat fails cat: not the bench)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '$2 == "(postgres)" && $1 == pm {t += $14 + $15 + $16 + $17}
    $2 == "(postgres)" && $4 == pm {t += $14 + $15} END {print t + 0}'
}
# db_cpu BEFORE DEVICES: the database's CPU per device since BEFORE, over a
# generator's whole run: per device its enrolment (2 check-ins), its share
# of the enqueue, one round trip (2 requests) and its share of /healthz.
db_cpu() {
  awk -v a="$1" -v b="$(pg_ticks)" -v n="$2" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { if (n > 0) printf "database CPU %.0f us per device (enrolment + enqueue + round trip)", (b - a) * 1e6 / hz / n }'
}
psql -q "postgresql:///postgres?host=$pgdir" -c "CREATE DATABASE one" -c "CREATE DATABASE two" \
  -c "CREATE DATABASE zero"
la() { cut -d' ' -f1 /proc/loadavg; }
kill "$pid" 2>/dev/null || true # the SQLite run's service: done with
devices=$pg_devices
# The reference: SQLite again, over the same devices.
mkdir -p "$dir/sq"
"$bin" serve --listen 127.0.0.1:0 --port-file "$dir/sq/port" --data-dir "$dir/sq" \
  --api-token-file "$dir/token" --device-auth none --device-rate 100000 --store-sync "$sync" \
  >"$dir/sq/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do [[ -s "$dir/sq/port" ]] && break; sleep 0.05; done
l0=$(la)
"$gen" "$(cat "$dir/sq/port")" "bench-token-0123456789" "$devices" "$conc" "${pids[1]}" \
  >"$dir/sq.out"
sqlite_rt=$(grep -o '[0-9]* round trips/s' "$dir/sq.out" | awk '{print $1}')
echo "-- PostgreSQL beside SQLite, $devices devices, $conc connections"
echo "sqlite:      $(grep '^round trips' "$dir/sq.out" | sed 's/^round trips: *//') (load $l0 -> $(la))"
kill "${pids[1]}" 2>/dev/null || true
# First without the store pool (--store-pool 0: every store call on the
# service's loop, one connection), then with it (the default, 4).
serve_pg pg0 zero 0
t0=$(pg_ticks)
l0=$(la)
"$gen" "$(cat "$dir/pg0/port")" "bench-token-0123456789" "$devices" "$conc" "${pids[2]}" \
  >"$dir/pg0.out"
zero=$(rate_of "$dir/pg0.out")
echo "pgsql x1, pool 0: $(grep '^round trips' "$dir/pg0.out" | sed 's/^round trips: *//') (load $l0 -> $(la))"
echo "                  $(grep '^server CPU' "$dir/pg0.out" | sed 's/^server CPU: *//' | cut -d'(' -f1); $(db_cpu "$t0" "$devices")"
serve_pg pg1 one
t0=$(pg_ticks)
l0=$(la)
"$gen" "$(cat "$dir/pg1/port")" "bench-token-0123456789" "$devices" "$conc" "${pids[3]}" \
  >"$dir/pg1.out"
one=$(rate_of "$dir/pg1.out")
echo "pgsql x1:    $(grep '^round trips' "$dir/pg1.out" | sed 's/^round trips: *//') (load $l0 -> $(la))"
echo "             $(grep '^server CPU' "$dir/pg1.out" | sed 's/^server CPU: *//' | cut -d'(' -f1); $(db_cpu "$t0" "$devices")"
serve_pg pg2a two
serve_pg pg2b two
half=$((devices / 2))
t0=$(pg_ticks)
l0=$(la)
"$gen" "$(cat "$dir/pg2a/port")" "bench-token-0123456789" "$half" $((conc / 2)) "${pids[4]}" 0 0 \
  >"$dir/pg2a.out" &
g1=$!
"$gen" "$(cat "$dir/pg2b/port")" "bench-token-0123456789" "$half" $((conc / 2)) "${pids[5]}" 0 "$half" \
  >"$dir/pg2b.out" &
g2=$!
wait $g1 $g2
two=$(( $(rate_of "$dir/pg2a.out") + $(rate_of "$dir/pg2b.out") ))
echo "pgsql x2:    $two round trips/s together (two instances, one database, $half devices each; load $l0 -> $(la))"
echo "             $(db_cpu "$t0" "$devices")"
awk -v s="$sqlite_rt" -v z="$zero" -v o="$one" -v t="$two" 'BEGIN {
  if (s > 0) printf "ratio:       pgsql x1 / sqlite = %.2f, pgsql x2 / sqlite = %.2f, pgsql x1 pool 0 / sqlite = %.2f\n", o / s, t / s, z / s;
  if (z > 0) printf "ratio:       pgsql x1 pool 4 / pool 0 = %.2f\n", o / z;
  if (o > 0) printf "ratio:       pgsql x2 / pgsql x1 = %.2f\n", t / o }'
