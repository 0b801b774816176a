#!/usr/bin/env bash
# Campaign benchmark (issue 6), run by bench/run.sh with the release build
# directory as $1. Two parts, each with a reference measured in the same run:
#   1. the campaign engine alone (no I/O) over ESIM_BENCH_ENGINE_DEVICES
#      devices (default 1000000), against the cost of parsing one
#      verification answer;
#   2. the whole system on loopback (esim-mdm demo: service, APNs mock,
#      SM-DP+ and device simulator) over ESIM_BENCH_DEVICES devices (default
#      2000; the goal is 100000), against one plain DeviceInformation round
#      to the same fleet: time to all verified, pushes/s, commands/s, peak
#      memory of the service and of the simulator per device; then the same
#      on PostgreSQL (store pool 4 and 0, one and two instances), as ratios.
# DEMO_TIMEOUT bounds each demo's campaign (seconds, default 3600).
set -euo pipefail
build=$(cd "${1:?usage: bench/campaign/run.sh BUILD_DIR}" && pwd)
bin="$build/cli/esim-mdm"
engine="$build/bench/campaign/campaign_engine_bench"
n_engine=${ESIM_BENCH_ENGINE_DEVICES:-1000000}
n=${ESIM_BENCH_DEVICES:-2000}
pps=${ESIM_BENCH_PPS:-2000}

if [[ -x "$engine" ]]; then
  echo "-- campaign engine alone, $n_engine devices"
  "$engine" "$n_engine" | sed '$d'
else
  echo "-- campaign engine bench not built ($engine); skipped"
fi

# demo_run OUT [ARGS...]: the whole system once; its JSON summary into OUT.
demo_run() {
  local o=$1
  shift
  local st=0
  # --iot-share 0: the iPhone and PC campaign alone (IoT devices poll their
  # eIM on an interval of their own; docs/demo.md)
  "$bin" demo --devices "$n" --no-extras --iot-share 0 --json --pushes-per-second "$pps" \
    --timeout "${DEMO_TIMEOUT:-3600}" "$@" \
    >"$o.log" 2>/dev/null || st=$?
  tail -n 1 "$o.log" >"$o"
  return $st
}
work=$(mktemp -d)
pgdir=/tmp/esim-pg-cbench-$$
fixture="$(cd "$(dirname "$0")/../.." && pwd)/scripts/pg-fixture.sh"
cleanup() {
  [[ -d "$pgdir" ]] && "$fixture" stop "$pgdir" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

echo "-- end to end on loopback, $n devices (push ceiling $pps/s), store SQLite"
status=0
demo_run "$work/sqlite.json" || status=$?
if ! command -v python3 >/dev/null; then
  cat "$work/sqlite.json"
  exit $status
fi
python3 - "$(cat "$work/sqlite.json")" "$n" <<'PY'
import json, sys
s = json.loads(sys.argv[1]); n = int(sys.argv[2])
d = s["duration_s"]
print(f"  verified: {s['verified']} of the {s.get('verifiable', s['devices'])} devices that can take an eSIM "
      f"({s['devices']} in all; {s.get('cannot_take_esim', 0)} models without eSIM) in {d:.1f} s "
      f"(failed {s['failed']}, unverified {s['unverified']}, timed out {s['timed_out']})")
print(f"  pushes {s['pushes']} ({s['pushes_per_s']:.0f}/s), commands {s['commands']} ({s['commands_per_s']:.0f}/s), "
      f"{s['verified']/d:.0f} devices verified/s")
inv = s.get("inventory_s") or 0
if inv > 0:
    per_cmd = inv / max(s.get("inventory_answered", 1), 1)
    print(f"  reference: one DeviceInformation round reached {s.get('inventory_answered')} devices in {inv:.1f} s; "
          f"the campaign (3 commands and a profile download per device) took {d/inv:.1f}x that")
for part in ("service", "devsim", "smdp", "apns-mock"):
    kb = s.get(f"{part}_peak_rss_kb", 0)
    print(f"  {part:9s} peak {kb/1024:7.1f} MiB = {kb/n:6.2f} KiB per device, {s.get(f'{part}_cpu_s', 0):6.1f} s CPU")
print(f"  the campaign holds {s.get('service_campaign_kib_per_device', 0)*1024:.0f} bytes per device in the service "
      f"(goal: under 1 KiB beyond the store)")
goal = s["devices"] >= 100000 and s["verified"] == s.get("verifiable") and d <= 60
print(f"  goal (100000 verified within 60 s): {'met' if goal else 'not met at this size; see docs/campaigns.md'}")
PY

# The same campaign on PostgreSQL (a throw-away cluster on a unix socket,
# scripts/pg-fixture.sh), with the store worker pool (the default, 4
# connections) and without it (--store-pool 0: every store call on the
# loop), as ratios to the SQLite run above.
if [[ "${PGSQL:-1}" == 0 ]] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "-- pgsql: skipped (no PostgreSQL here, or PGSQL=0)"
  exit $status
fi
"$fixture" start "$pgdir" 2>/dev/null
psql -q "postgresql:///postgres?host=$pgdir" -c "CREATE DATABASE pool" -c "CREATE DATABASE onloop" \
  -c "CREATE DATABASE iphones1" -c "CREATE DATABASE iphones2" -c "CREATE DATABASE mixed2"
echo "-- the same on PostgreSQL: store pool of 4 connections, then none (store calls on the loop),"
echo "   then two instances on the one database (the iPhones' requests and the PCs' sessions"
echo "   spread over both, the campaign driven by its lease holder)"
demo_run "$work/pool.json" --store "postgresql:///pool?host=$pgdir" || status=$?
ESIM_MDM_STORE_POOL=0 demo_run "$work/onloop.json" --store "postgresql:///onloop?host=$pgdir" ||
  status=$?
demo_run "$work/mixed2.json" --instances 2 --store "postgresql:///mixed2?host=$pgdir" ||
  status=$?
# One instance, then two instances on the one database (demo --instances 2:
# the devices spread over both, the campaign driven by its lease holder),
# an iPhone fleet (the PCs' OMA-DM sessions dominate a mixed fleet's time
# on PostgreSQL: docs/scaling.md).
echo "-- iPhones only: SQLite, then PostgreSQL with one instance, then two on the one database"
demo_run "$work/sqlite_i.json" --windows-share 0 || status=$?
demo_run "$work/x1.json" --windows-share 0 --store "postgresql:///iphones1?host=$pgdir" ||
  status=$?
# Bounded: on 5 December 2026 (an earlier build) this run stalled with
# answers not replayed between the instances (docs/scaling.md).
DEMO_TIMEOUT=${DEMO_TIMEOUT:-900} demo_run "$work/x2.json" --windows-share 0 --instances 2 \
  --store "postgresql:///iphones2?host=$pgdir" || status=$?
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
def load(name):
    try:
        return json.loads(open(f"{w}/{name}.json").read())
    except Exception:
        return None
ref = load("sqlite")
for name, label in (("pool", "pgsql, pool 4"), ("onloop", "pgsql, pool 0")):
    s = load(name)
    if not s or not ref:
        print(f"  {label}: no summary (see the demo's output)")
        continue
    d = s["duration_s"]
    print(f"  {label}: verified {s['verified']} of {s.get('verifiable', s['devices'])} in {d:.1f} s, "
          f"commands {s['commands_per_s']:.0f}/s, service {s.get('service_cpu_s', 0):.1f} s CPU; "
          f"ratio to SQLite: time {d/ref['duration_s']:.2f}, commands/s "
          f"{s['commands_per_s']/max(ref['commands_per_s'], 1e-9):.2f}, service CPU "
          f"{s.get('service_cpu_s', 0)/max(ref.get('service_cpu_s', 0), 1e-9):.2f}")
p, o = load("pool"), load("onloop")
if p and o:
    print(f"  ratio: pool 4 / pool 0 commands/s = {p['commands_per_s']/max(o['commands_per_s'], 1e-9):.2f}")
m2 = load("mixed2")
if not m2:
    print("  pgsql x2 (iPhones and PCs): no summary (see the demo's output)")
else:
    print(f"  pgsql x2 (iPhones and PCs): verified {m2['verified']} of {m2.get('verifiable', m2['devices'])} in "
          f"{m2['duration_s']:.1f} s (timed out {m2.get('timed_out', 0)}), commands "
          f"{m2['commands_per_s']:.0f}/s, PC sessions per instance "
          f"{m2.get('windows', {}).get('sessions_by_instance')}")
    if p:
        print(f"  ratio: pgsql x2 / x1 (pool 4, iPhones and PCs) commands/s = "
              f"{m2['commands_per_s']/max(p['commands_per_s'], 1e-9):.2f}, time "
              f"{m2['duration_s']/max(p['duration_s'], 1e-9):.2f}")
    if ref:
        print(f"  ratio: pgsql x2 / sqlite (iPhones and PCs) commands/s = "
              f"{m2['commands_per_s']/max(ref['commands_per_s'], 1e-9):.2f}")
one, two = load("x1"), load("x2")
for s, label in ((one, "pgsql x1, iPhones only"), (two, "pgsql x2, iPhones only")):
    if not s:
        print(f"  {label}: no summary (see the demo's output)")
        continue
    print(f"  {label}: verified {s['verified']} of {s.get('verifiable', s['devices'])} in "
          f"{s['duration_s']:.1f} s (timed out {s.get('timed_out', 0)}), commands "
          f"{s['commands_per_s']:.0f}/s, {s['verified']/max(s['duration_s'], 1e-9):.0f} devices verified/s, "
          f"service CPU {s.get('service_cpu_s', 0) + s.get('service2_cpu_s', 0):.1f} s (all instances)")
if one and two:
    print(f"  ratio: pgsql x2 / x1 commands/s = "
          f"{two['commands_per_s']/max(one['commands_per_s'], 1e-9):.2f}, time "
          f"{two['duration_s']/max(one['duration_s'], 1e-9):.2f}")
si = load("sqlite_i")
if si:
    print(f"  sqlite, iPhones only: verified {si['verified']} in {si['duration_s']:.1f} s, "
          f"commands {si['commands_per_s']:.0f}/s")
    for s, label in ((one, "x1"), (two, "x2")):
        if s:
            print(f"  ratio: pgsql {label} / sqlite (iPhones only) commands/s = "
                  f"{s['commands_per_s']/max(si['commands_per_s'], 1e-9):.2f}")
PY
exit $status
