#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz for SECONDS each (default 600;
# `make test` passes a few), from a working copy of its committed corpus in
# tests/data/fuzz/<target>. Builds build/fuzz with clang, libFuzzer,
# ASan and UBSan first. Findings land in build/fuzz/findings/<target>/ and
# make the script fail; new corpus entries stay in build/fuzz/corpus/<target>
# (copy the interesting ones into tests/data/fuzz/<target> by hand).
# Without clang it says so and exits 0: ctest's fuzz_smoke_* tests have
# already replayed every corpus with gcc.
#   usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(msg_parse sig_split token_file csv_import api es9 syncml esipa_poll esipa_result esipa_download es9_relay http_response cert_view cert_der p256_sig winpc_reader syncml_readers)

if ! command -v clang >/dev/null; then
  echo "fuzz: clang not found; the gcc smoke drivers (ctest -L fuzz) replayed the corpora instead" >&2
  exit 0
fi
build=build/fuzz
# FUZZ_NO_BUILD=1: use the binaries already in build/fuzz (parallel runs).
if [[ -z ${FUZZ_NO_BUILD:-} ]]; then
# cmake drives its own make; keep an outer make's flags out of it.
env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang \
  -DCMAKE_BUILD_TYPE=Debug -DESIM_SANITIZE=ON -DESIM_LIBFUZZER=ON >/dev/null
env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS cmake --build "$build" -j "${FUZZ_JOBS:-2}" \
  --target $(printf 'fuzz_%s ' "${targets[@]}") >/dev/null
fi

failed=0
printf '%-12s %12s %10s %8s\n' target executions exec/s findings
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t" findings="$build/findings/$t"
  mkdir -p "$corpus" "$findings"
  log="$build/fuzz_$t.log"
  marker="$build/.fuzz_$t.start"
  touch "$marker"
  # libFuzzer: -max_total_time bounds the run; it stops at the first finding.
  rc=0
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$findings/" "$corpus" \
    "tests/data/fuzz/$t" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  n=$(find "$findings" -type f -newer "$marker" | wc -l) # this run's findings only
  printf '%-12s %12s %10s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$n"
  if [[ $rc -ne 0 || $n -ne 0 ]]; then
    failed=1
    echo "fuzz: $t found something (exit $rc); see $log and $findings" >&2
  fi
done
exit $failed
