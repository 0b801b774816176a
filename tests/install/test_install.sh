#!/bin/sh
# Installs the build into a fresh temporary prefix as a vendor would, then:
#  - the installed esim-mdm.pc names that prefix;
#  - vendor.c compiles and links with `pkg-config --cflags --libs esim-mdm`
#    alone, and runs against the installed libesim-mdm.so;
#  - libesim-mdm.so exports only esim_* names, and every function an
#    installed header marks ESIM_EXTERN is among them.
# Usage: test_install.sh BUILD_DIR SOURCE_DIR CC [EXTRA_CFLAGS...]
set -eu
build=$1 src=$2 cc=$3
shift 3
prefix=$(mktemp -d "${TMPDIR:-/tmp}/esim-install.XXXXXX")
trap 'rm -rf "$prefix"' EXIT INT TERM
fail() { echo "test_install: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >"$prefix/install.log" 2>&1 ||
    { cat "$prefix/install.log" >&2; fail "cmake --install failed"; }

pc=$(find "$prefix" -name esim-mdm.pc)
[ -n "$pc" ] || fail "no esim-mdm.pc installed under $prefix"
grep -qx "prefix=$prefix" "$pc" || fail "$pc does not say prefix=$prefix: $(grep '^prefix=' "$pc")"

PKG_CONFIG_PATH="$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_PATH
flags=$(pkg-config --cflags --libs esim-mdm) || fail "pkg-config does not know esim-mdm"
# shellcheck disable=SC2086 # the flags are words
"$cc" -std=c11 -Wall -Werror "$@" -o "$prefix/vendor" "$src/tests/install/vendor.c" $flags ||
    fail "vendor.c does not build with: $flags"
libdir=$(pkg-config --variable=libdir esim-mdm)
out=$(LD_LIBRARY_PATH="$libdir" "$prefix/vendor") || fail "vendor program failed"
case $out in
"89049032000000000000000000000"???" not found") ;;
*) fail "vendor program printed '$out'" ;;
esac
LD_LIBRARY_PATH="$libdir" ldd "$prefix/vendor" | grep -q "$libdir/libesim-mdm.so" ||
    fail "vendor program did not load the installed library"

lib="$libdir/libesim-mdm.so"
nm -D --defined-only "$lib" | awk '{ print $3 }' | sort -u >"$prefix/exported"
stray=$(grep -v '^esim_' "$prefix/exported" || true)
[ -z "$stray" ] || fail "libesim-mdm.so exports names without the esim_ prefix: $(echo "$stray" | tr "\n" " ")"
declared=$(find "$prefix/include/esim-mdm" -name '*.h' -exec cat {} + |
    sed -n 's/^ESIM_EXTERN[^(]*[ *]\(esim_[a-z0-9_]*\)[[(].*/\1/p' | sort -u)
[ -n "$declared" ] || fail "no ESIM_EXTERN declarations in the installed headers"
missing=$(printf '%s\n' "$declared" | comm -23 - "$prefix/exported")
[ -z "$missing" ] || fail "declared ESIM_EXTERN but not exported: $(echo "$missing" | tr "\n" " ")"
# For operators: the man page (a section for every subcommand), the hardened
# systemd unit naming the installed binary, its user, an example config.
man="$prefix/share/man/man1/esim-mdm.1"
[ -f "$man" ] || fail "no man page at $man"
grep -q '^\.TH ESIM-MDM 1' "$man" || fail "$man has no .TH ESIM-MDM 1 header"
bin="$prefix/bin/esim-mdm"
cmds=$("$bin" --help | sed -n 's/^  \([a-z][a-z-]*\)  .*/\1/p')
[ -n "$cmds" ] || fail "esim-mdm --help lists no commands"
for c in $cmds; do
    grep -qx "\.SS $c" "$man" || fail "the man page has no section for '$c'"
    "$bin" "$c" --help >/dev/null 2>&1 || fail "esim-mdm $c --help fails"
done
unit="$prefix/lib/systemd/system/esim-mdm.service"
[ -f "$unit" ] || fail "no systemd unit at $unit"
grep -qx "ExecStart=$bin serve .*" "$unit" || fail "$unit does not start $bin: $(grep ExecStart "$unit")"
for line in User=esim-mdm NoNewPrivileges=yes ProtectSystem=strict StateDirectory=esim-mdm \
    'ExecReload=/bin/kill -HUP $MAINPID' CapabilityBoundingSet=; do
    grep -qxF "$line" "$unit" || fail "$unit lacks $line"
done
grep -q '^u esim-mdm ' "$prefix/lib/sysusers.d/esim-mdm.conf" || fail "no sysusers entry for esim-mdm"
[ -f "$prefix/share/doc/esim-mdm/esim-mdm.conf.example" ] || fail "no example configuration"
if command -v systemd-analyze >/dev/null 2>&1; then
    # Only the unit's own syntax is judged: a build machine has no esim-mdm
    # user and may run no systemd.
    if systemd-analyze verify "$unit" 2>&1 | grep -Ei "unknown (key|section)|failed to parse|invalid"; then
        fail "systemd-analyze verify finds errors in $unit"
    fi
fi
echo "test_install: ok ($(wc -l <"$prefix/exported") exported names, all esim_*)"
