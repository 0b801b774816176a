#!/usr/bin/env bash
# Installs the Debian packages esim-mdm builds, tests and benchmarks with.
# Idempotent: when every package is present it does nothing (not even
# `apt-get update`). Uses sudo when not run as root.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libplist-dev libjansson-dev libssl-dev openssl
  libnghttp2-dev libevent-dev libcurl4-openssl-dev curl
  libsqlite3-dev sqlite3 libpq-dev postgresql
  libcmocka-dev nghttp2-client wrk nodejs
  python3 python3-yaml python3-jsonschema valgrind libxml2-dev
  clang libclang-rt-14-dev
  chromium
  pcscd vsmartcard-vpcd pcsc-tools libpcsclite-dev
  asn1c
)
# npm (the dashboard test's `npm ci`): Debian packages it apart from nodejs;
# other builds of nodejs (NodeSource's) carry it and conflict with it.
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
as_root=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
