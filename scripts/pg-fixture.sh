#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the tests (ctest fixture `pgsql`):
#
#   pg-fixture.sh start DIR   initdb + pg_ctl start in DIR (created, emptied
#                             first): unix socket in DIR only, no TCP, trust
#                             authentication for the one local user.
#   pg-fixture.sh stop DIR    stops the server and removes DIR.
#   pg-fixture.sh stop-keep DIR / restart DIR
#                             stops the server keeping its data, starts it
#                             again (a test of a database restart).
#   pg-fixture.sh spec DIR    prints the store spec of the cluster's
#                             database, with {n} for a fresh schema per case
#                             (the tests' ESIM_TEST_STORE).
#
# PostgreSQL refuses to run as root; as root (CI on a fresh machine) the
# cluster belongs to the unprivileged `postgres` user the Debian package
# creates and runs under `runuser -u postgres`. A watchdog stops the server
# after ESIM_PG_MAX_SECONDS (default 3600) even if nobody calls stop (ctest
# killed), so no server outlives a test run for long.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop|stop-keep|restart|spec DIR" >&2; exit 2; }

bindir=${ESIM_PG_BINDIR:-}
if [[ -z "$bindir" ]]; then
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/initdb" ]] && bindir=$d
  done
fi
if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
  echo "pg-fixture: no initdb found (install the postgresql package: make deps)" >&2
  exit 1
fi

as_owner=()
owner=$(id -un)
if [[ $(id -u) -eq 0 ]]; then
  owner=postgres
  as_owner=(runuser -u postgres --)
fi

stop() {
  if [[ -f "$dir/watchdog.pid" ]]; then
    kill -- -"$(cat "$dir/watchdog.pid")" 2>/dev/null || true
  fi
  if [[ -f "$dir/data/postmaster.pid" ]]; then
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
      kill -9 "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null || true
  fi
  rm -rf "$dir"
}

server_start() {
  # Throw-away data: no fsync. Enough connections for several instances
  # and the tests running beside each other.
  "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-k $dir -c listen_addresses= -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
}

case "$cmd" in
stop-keep)
  "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
  ;;
restart)
  server_start
  ;;
spec)
  echo "postgresql:///postgres?host=$dir&options=-csearch_path%3Dt{n}"
  ;;
stop)
  stop
  ;;
start)
  stop # a cluster left by a killed run
  mkdir -p "$dir"
  chmod 700 "$dir"
  [[ "$owner" == "$(id -un)" ]] || chown "$owner" "$dir"
  # The superuser is named after whoever runs the tests, so libpq's default
  # user (the login name) needs no user= in the spec.
  "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U "$(id -un)" --auth=trust --no-sync \
    -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  server_start
  # The watchdog: bounded, and stop() kills it first.
  max=${ESIM_PG_MAX_SECONDS:-3600}
  setsid bash -c "sleep $max; rm -f '$dir/watchdog.pid'; '$0' stop '$dir'" </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/watchdog.pid"
  echo "pg-fixture: PostgreSQL ($("$bindir/postgres" --version | awk '{print $3}')) on $dir" >&2
  ;;
*)
  echo "usage: $0 start|stop|stop-keep|restart|spec DIR" >&2
  exit 2
  ;;
esac
