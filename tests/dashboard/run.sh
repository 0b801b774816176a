#!/usr/bin/env bash
# tests/dashboard/run.sh BUILD_DIR: the dashboard in headless Chromium.
# Installs playwright-core from the committed lockfile (npm ci, into
# BUILD_DIR/dashboard-test; again only when the lockfile changed), starts
# `esim-mdm demo --keep-running` (20 simulated iPhones: service, APNs mock,
# SM-DP+ and device simulators), runs dashboard.test.mjs against it, stops
# the demo. Screenshots land in BUILD_DIR/dashboard-screenshots/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: run.sh BUILD_DIR}" && pwd)
bin=${ESIM_MDM_BIN:-$build/cli/esim-mdm}
chromium=${CHROMIUM:-/usr/bin/chromium}
for tool in node npm "$chromium"; do
  command -v "$tool" >/dev/null || { echo "dashboard test: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

deps=$build/dashboard-test
mkdir -p "$deps"
if ! cmp -s "$here/package-lock.json" "$deps/package-lock.json" || [ ! -d "$deps/node_modules/playwright-core" ]; then
  cp "$here/package.json" "$here/package-lock.json" "$deps/"
  (cd "$deps" && npm ci --no-audit --no-fund --loglevel=error)
fi
cp "$here/dashboard.test.mjs" "$deps/"

work=$(mktemp -d "${TMPDIR:-/tmp}/esim-dash-test-XXXXXX")
demo_pid=
cleanup() {
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -INT "$demo_pid"
    for _ in $(seq 50); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$demo_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Seed 4 gives one device without eSIM hardware among the 20: a failed
# device to diagnose.
"$bin" demo --devices 20 --seed 4 --windows-share 0 --iot-share 0 --no-extras --timeout 120 --keep "$work/demo" --keep-running \
  >"$work/demo.out" 2>&1 &
demo_pid=$!
for _ in $(seq 300); do
  grep -q '^kept running' "$work/demo.out" 2>/dev/null && break
  kill -0 "$demo_pid" 2>/dev/null || { cat "$work/demo.out" >&2; echo "dashboard test: the demo stopped" >&2; exit 1; }
  sleep 0.5
done
grep -q '^kept running' "$work/demo.out" || { cat "$work/demo.out" >&2; echo "dashboard test: the demo did not finish in 150 s" >&2; exit 1; }

read_key=
[ -f "$work/demo/read-only-key" ] && read_key=$(cat "$work/demo/read-only-key")
DASH_URL="http://127.0.0.1:$(tr -d '\n' <"$work/demo/service.port")" \
DASH_ADMIN_KEY="$(cat "$work/demo/service/api-token")" \
DASH_READ_KEY="$read_key" \
DASH_SHOTS="$build/dashboard-screenshots" \
CHROMIUM="$chromium" \
  node "$deps/dashboard.test.mjs"
