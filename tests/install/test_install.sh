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
echo "test_install: ok ($(wc -l <"$prefix/exported") exported names, all esim_*)"
