#!/usr/bin/env bash
# APNs client throughput against h2load, both sending the same requests
# (POST /3/device/<token>, same headers, body {"mdm":"<magic>"}) to the same
# `esim-mdm apns-mock --benchmark`, with the same connections and streams,
# over TLS and over h2c; prints both rates and their ratio (target >= 0.9).
# Then the client's heap per thousand pushes in flight.
#
# usage: bench/apns/run.sh BUILD_DIR [PUSHES] [CONNECTIONS] [STREAMS]
#        (ROUNDS=N in the environment: best of N runs each, default 3)
set -euo pipefail
build=$(cd "${1:?usage: bench/apns/run.sh BUILD_DIR}" && pwd)
pushes=${2:-200000}
conns=${3:-2}
streams=${4:-100}
rounds=${ROUNDS:-3}
bin="$build/cli/esim-mdm"
membench="$build/bench/apns/bench_apns_memory"
command -v h2load >/dev/null || { echo "bench apns: h2load missing (apt-get install nghttp2-client)" >&2; exit 1; }

work=$(mktemp -d)
mock_pid=""
cleanup() {
  [[ -n "$mock_pid" ]] && kill "$mock_pid" 2>/dev/null && wait "$mock_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" pki --dir "$work/pki" >/dev/null
topic=$(cat "$work/pki/push.topic")
token=$(printf '%064x' 48879)
magic="f3a1c2d4-5b6e-4f70-8192-a3b4c5d6e7f8"
printf '{"mdm":"%s"}' "$magic" > "$work/body.json"
# The same token on every line: h2load repeats one URL, so we do too.
awk -v t="$token" -v m="$magic" -v n="$pushes" 'BEGIN { for (i = 0; i < n; i++) print t, m }' > "$work/tokens.txt"

start_mock() { # extra mock flags...
  rm -f "$work/mock.out" # the redirection below happens in the child, later
  "$bin" apns-mock --benchmark --open-listen 127.0.0.1:0 --h2c-listen 127.0.0.1:0 \
    --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server.key" "$@" > "$work/mock.out" &
  mock_pid=$!
  for _ in $(seq 200); do [[ -s "$work/mock.out" ]] && break; sleep 0.05; done
  [[ -s "$work/mock.out" ]] || { echo "bench apns: the mock did not start" >&2; exit 1; }
  open_port=$(sed -n 's/.*"open":\([0-9]*\).*/\1/p' "$work/mock.out" | head -1)
  h2c_port=$(sed -n 's/.*"h2c":\([0-9]*\).*/\1/p' "$work/mock.out" | head -1)
}
stop_mock() {
  kill "$mock_pid" 2>/dev/null; wait "$mock_pid" 2>/dev/null || true; mock_pid=""
}

rate_h2load() { # url
  h2load -n "$pushes" -c "$conns" -m "$streams" -t 1 \
    -H "apns-push-type: mdm" -H "apns-topic: $topic" -H "apns-priority: 10" \
    -d "$work/body.json" "$1/3/device/$token" > "$work/h2load.out" 2>&1 || {
      cat "$work/h2load.out" >&2; return 1; }
  grep -q "$pushes succeeded" "$work/h2load.out" || { echo "bench apns: h2load did not finish cleanly" >&2; cat "$work/h2load.out" >&2; return 1; }
  sed -n 's/^finished in [0-9.]*[a-z]*, \([0-9.]*\) req\/s.*/\1/p' "$work/h2load.out"
}

rate_client() { # url extra-args...
  local url=$1; shift
  "$bin" push --apns "$url" --tokens "$work/tokens.txt" --topic "$topic" --quiet \
    --connections "$conns" --concurrency "$streams" "$@" > "$work/push.out"
  local n
  n=$(sed -n 's/.*"accepted":\([0-9]*\).*/\1/p' "$work/push.out")
  [[ "$n" == "$pushes" ]] || { echo "bench apns: only $n of $pushes accepted" >&2; cat "$work/push.out" >&2; return 1; }
  sed -n 's/.*"pushes_per_second":\([0-9.]*\).*/\1/p' "$work/push.out"
}

report() { # name ours theirs
  awk -v name="$1" -v ours="$2" -v ref="$3" -v n="$pushes" -v c="$conns" -v m="$streams" 'BEGIN {
    printf "apns %-4s %d pushes, %d connections x %d streams: esim-mdm push %.0f/s, h2load %.0f/s, ratio %.2f (target >= 0.90)\n",
           name, n, c, m, ours, ref, ours / ref }'
}

best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }

# Best of $rounds alternating runs each: the machine is shared, and the best
# run is the one least disturbed by everything else on it.
start_mock
tls_ref=0 tls_ours=0 h2c_ref=0 h2c_ours=0
for _ in $(seq "$rounds"); do
  r=$(rate_h2load "https://127.0.0.1:$open_port") || exit 1
  tls_ref=$(best "$tls_ref" "$r")
  r=$(rate_client "https://127.0.0.1:$open_port" --cert "$work/pki/push.pem" \
        --key "$work/pki/push.key" --ca "$work/pki/ca.pem") || exit 1
  tls_ours=$(best "$tls_ours" "$r")
  r=$(rate_h2load "http://127.0.0.1:$h2c_port") || exit 1
  h2c_ref=$(best "$h2c_ref" "$r")
  r=$(rate_client "http://127.0.0.1:$h2c_port") || exit 1
  h2c_ours=$(best "$h2c_ours" "$r")
done
stop_mock
report TLS "$tls_ours" "$tls_ref"
report h2c "$h2c_ours" "$h2c_ref"

# Memory: a mock that holds every answer keeps all pushes in flight.
rm -f "$work/mock.out"
"$bin" apns-mock --h2c-listen 127.0.0.1:0 --delay-ms 60000 --max-streams 20000 > "$work/mock.out" &
mock_pid=$!
for _ in $(seq 200); do [[ -s "$work/mock.out" ]] && break; sleep 0.05; done
[[ -s "$work/mock.out" ]] || { echo "bench apns: the mock did not start" >&2; exit 1; }
h2c_port=$(sed -n 's/.*"h2c":\([0-9]*\).*/\1/p' "$work/mock.out" | head -1)
mem=$("$membench" "http://127.0.0.1:$h2c_port" 10000)
stop_mock
echo "apns memory: $mem" | sed 's/{"in_flight":\([0-9]*\),"bytes_per_push":\([0-9]*\),"kib_per_1000_in_flight":\([0-9.]*\)}/client heap \3 KiB per 1000 pushes in flight (\2 bytes each, measured with \1 in flight)/'
