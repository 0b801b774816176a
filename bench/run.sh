#!/usr/bin/env bash
# Runs every area's benchmark against the release build given as $1. Each
# bench/<area>/run.sh prints its figures as ratios against a reference
# measured in the same run (h2load, the same server's /healthz, ...).
set -euo pipefail
build=$(cd "${1:?usage: bench/run.sh BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
status=0
for area in apns service tls campaign sim scale dashboard; do
  script="$here/$area/run.sh"
  [[ -x "$script" ]] || continue
  echo "== bench: $area"
  "$script" "$build" || { echo "bench $area failed" >&2; status=1; }
done
exit $status
