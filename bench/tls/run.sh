#!/usr/bin/env bash
# TLS resumption benchmark (issue 17), run by bench/run.sh with the release
# build directory as $1: callgrind instructions the service executes per
# resumed TLS connection with --device-auth mtls, for a client that shows a
# certificate of the device CA and for one that shows none, and their ratio
# (the goal: a resumed mTLS session costs what one without a certificate
# costs). Two bounded runs of `esim-mdm serve` under valgrind per kind,
# `openssl s_client` making a full handshake and then 2 and 12 resumed
# connections (GET /healthz); the difference over 10 leaves out start-up,
# the full handshake and shutdown. Then bench/tls/handshake.c
# (tls_handshake_bench: client and server in one process) under callgrind:
# the instructions of each side per full handshake, per full handshake with
# a client certificate and per resumed one, with X25519 and with P-256.
set -euo pipefail
build=$(cd "${1:?usage: bench/tls/run.sh BUILD_DIR}" && pwd)
bin="$build/cli/esim-mdm"
if ! command -v valgrind >/dev/null || ! command -v openssl >/dev/null; then
  echo "tls: skipped (needs valgrind and openssl)"
  exit 0
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" pki --dir "$dir/pki" >/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/dev.key" 2>/dev/null
openssl req -new -key "$dir/dev.key" -subj "/CN=00008110-BENCHTLS00000001" -out "$dir/dev.csr"
openssl x509 -req -in "$dir/dev.csr" -CA "$dir/pki/device-ca.pem" -CAkey "$dir/pki/device-ca.key" \
  -CAcreateserial -days 30 -out "$dir/dev.pem" 2>/dev/null
echo "bench-token-0123456789" >"$dir/token"
chmod 600 "$dir/token"

run() { # RESUMED CERT(yes|no): prints "instructions resumed_count"
  local n=$1 d pid port i cert=() sess=() reused
  d=$(mktemp -d "$dir/run.XXXX")
  [[ $2 == yes ]] && cert=(-cert "$dir/dev.pem" -key "$dir/dev.key")
  timeout 600 valgrind --tool=callgrind --callgrind-out-file="$d/out" \
    "$bin" serve --listen 127.0.0.1:0 --port-file "$d/port" --data-dir "$d/data" \
    --api-token-file "$dir/token" --device-auth mtls --device-ca "$dir/pki/device-ca.pem" \
    --tls-cert "$dir/pki/server.pem" --tls-key "$dir/pki/server.key" >"$d/log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do [[ -s "$d/port" ]] && break; sleep 0.1; done
  port=$(cat "$d/port")
  for i in $(seq 0 "$n"); do
    sess=()
    [[ $i -gt 0 ]] && sess=(-sess_in "$d/s.pem")
    printf 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' |
      timeout 60 openssl s_client -connect "127.0.0.1:$port" -CAfile "$dir/pki/ca.pem" \
        "${cert[@]}" "${sess[@]}" -sess_out "$d/s.pem" -ign_eof >>"$d/client" 2>/dev/null || true
  done
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  reused=$(grep -c '^Reused' "$d/client" || true)
  echo "$(awk '/^(summary|totals):/ {print $2; exit}' "$d/out") $reused"
}
per=()
for kind in yes no; do
  read -r a ra < <(run 2 $kind)
  read -r b rb < <(run 12 $kind)
  if [[ -z "$a" || -z "$b" || "$rb" != 12 ]]; then
    echo "tls: no figure (client certificate: $kind; $rb of 12 connections resumed)" >&2
    exit 1
  fi
  per+=($(((b - a) / 10)))
done
echo "callgrind: ${per[0]} instructions per resumed TLS connection with a client certificate" \
  "(--device-auth mtls), ${per[1]} without one"
awk -v c="${per[0]}" -v n="${per[1]}" \
  'BEGIN { printf "ratio: resumed with a certificate / without = %.2f (goal: about 1)\n", c / n }'

# Each side's instructions per handshake: callgrind's inclusive counts of
# the harness's client_* and server_* functions, 11 handshakes less 1,
# over 10.
hs="$build/bench/tls/tls_handshake_bench"
[[ -x "$hs" ]] || exit 0
cp "$dir/pki/server.pem" "$dir/pki/server.key" "$dir/pki/ca.pem" "$dir/pki/device-ca.pem" "$dir/"
sides() { # ARGS...: prints "client server"
  local n out
  for n in 1 11; do
    out="$dir/hs.$n"
    timeout 600 valgrind --tool=callgrind --callgrind-out-file="$out" "$hs" "$dir" "$n" "$@" \
      >"$out.log" 2>&1
    callgrind_annotate --inclusive=yes --threshold=100 "$out" 2>/dev/null |
      awk -v tag="$n" 'match($0, /:(client|server)_(step|new|end|write|read)[. ]/) {
        v = $1; gsub(",", "", v); sum[substr($0, RSTART + 1, 6)] += v }
        END { print tag, sum["client"] + 0, sum["server"] + 0 }'
  done | awk '{ c[NR] = $2; s[NR] = $3 } END { printf "%d %d\n", (c[2] - c[1]) / 10, (s[2] - s[1]) / 10 }'
}
echo "callgrind, tls_handshake_bench (client / server instructions per handshake):"
for args in "" "--groups P-256" "--client-cert" "--resume" "--resume --groups P-256" \
  "--tickets 2" "--tickets 0"; do
  read -r c s < <(sides $args)
  printf "  %-26s %10d / %10d\n" "${args:-full, X25519, 1 ticket}" "$c" "$s"
done
