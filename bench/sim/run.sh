#!/usr/bin/env bash
# Simulator benchmark (issue 17), run by bench/run.sh with the release build
# directory as $1: the CPU each simulator spends per device over a whole
# demo run (enrolment, inventory, the campaign with its profile download),
# for the device simulator and for the SM-DP+ simulator, over
# ESIM_BENCH_SIM_DEVICES devices (default 2000). Each figure is printed
# beside a reference measured in the same run on the same machine: the CPU
# of one ECDSA P-256 signature (openssl speed), so a busy machine shows up in
# both numbers and the ratio stays comparable. The goal: under 0.5 ms of CPU
# per device in each simulator.
set -euo pipefail
build=$(cd "${1:?usage: bench/sim/run.sh BUILD_DIR}" && pwd)
bin="$build/cli/esim-mdm"
n=${ESIM_BENCH_SIM_DEVICES:-2000}

# The reference: signatures per CPU second, before and after the run.
ref() {
  openssl speed -seconds 2 ecdsap256 2>/dev/null | awk '/ecdsa \(nistp256\)/ {print $(NF-1)}'
}
ref_before=$(ref || true)

echo "-- simulators' CPU per device, $n devices (esim-mdm demo, release build)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
# --iot-share 0: the iPhones and PCs alone, as the figures below assume
"$bin" demo --devices "$n" --no-extras --iot-share 0 --json --timeout 3600 >"$out" 2>/dev/null || status=$?
ref_after=$(ref || true)
summary=$(tail -n 1 "$out")
if ! command -v python3 >/dev/null; then
  echo "$summary"
  exit $status
fi
python3 - "$summary" "$n" "${ref_before:-0}" "${ref_after:-0}" <<'PY'
import json, sys
s = json.loads(sys.argv[1]); n = int(sys.argv[2])
refs = [float(x) for x in sys.argv[3:5] if float(x) > 0]
sign_ms = 1000.0 / (sum(refs) / len(refs)) if refs else 0.0
if sign_ms:
    print(f"  reference: one ECDSA P-256 signature = {sign_ms*1000:.1f} us of CPU "
          f"(openssl speed, before and after the run: {', '.join(f'{r:.0f}/s' for r in refs)})")
print(f"  verified {s['verified']} of {s.get('verifiable', s['devices'])}, ok={s.get('ok')}")
# The campaign goals, from the same run (issue 17).
dev = max(int(s.get("devices", n)), 1)
ver = max(int(s.get("verified", 0)), 1)
dur = float(s.get("duration_s", 0)) or 1e-9
rate = s.get("verified", 0) / dur
print(f"  campaign: {s.get('verified', 0)} verified in {dur:.1f} s = {rate:.0f} verified/s "
      f"(100,000 in 60 s needs 1667/s: ratio {rate/1667:.2f})")
print(f"  pushes per device {s.get('pushes', 0)/dev:.2f} (goal 1), commands per device "
      f"{s.get('commands', 0)/dev:.2f}")
svc_ms = s.get("service_cpu_s", 0) * 1000.0 / ver
ratio = f" = {svc_ms/sign_ms:6.1f} signatures" if sign_ms else ""
print(f"  service          {svc_ms:6.3f} ms CPU per verified device{ratio}  "
      f"(goal 0.5 ms: {'met' if svc_ms <= 0.5 else 'not met'}; whole run, enrolment included)")
kib = s.get("service_campaign_kib_per_device", 0)
print(f"  service memory   {kib*1024:6.0f} bytes per device during the campaign beyond the store "
      f"(goal 1024: {'met' if kib < 1 else 'not met'})")
for part, name in (("devsim", "device simulator"), ("smdp", "SM-DP+ simulator")):
    ms = s.get(f"{part}_cpu_s", 0) * 1000.0 / n
    ratio = f" = {ms/sign_ms:6.1f} signatures" if sign_ms else ""
    print(f"  {name:17s} {ms:6.3f} ms CPU per device{ratio}  "
          f"(goal 0.5 ms{f' = {0.5/sign_ms:.1f} signatures' if sign_ms else ''}: "
          f"{'met' if ms <= 0.5 else 'not met'})")
PY
# The device simulator's CPU per Windows PC: N PCs against a scripted OMA-DM
# server and the SM-DP+ on another thread (bench/sim/winpc_bench.c).
wn=${ESIM_BENCH_WIN_PCS:-500}
if [[ -x "$build/bench/sim/winpc_bench" ]]; then
  echo "-- device simulator's CPU per Windows PC, $wn PCs (scripted OMA-DM server, release build)"
  "$build/bench/sim/winpc_bench" "$wn" 2000 || status=1
fi
exit $status
