#!/usr/bin/env bash
# A private PostgreSQL cluster for development and tests, run from the system's own
# server binaries (initdb, pg_ctl) under the Printworks data directory.
#
#   deploy/embedded-postgres.sh start   start it (creating it the first time); print its URL
#   deploy/embedded-postgres.sh stop    stop it (its data stays)
#   deploy/embedded-postgres.sh url     print its URL
#   deploy/embedded-postgres.sh status  say whether it runs
#
# The cluster listens only on a Unix socket in its own directory (no TCP port, so it
# cannot collide with another PostgreSQL), readable only by its owner. The URL is also
# written to $PRINTWORKS_DATA_DIR/database-url, where `printworks` finds it when
# DATABASE_URL is unset. Progress goes to stderr; stdout carries only the URL.
#
# As root (CI, containers), initdb and pg_ctl refuse to run, so they run as the
# `postgres` system user that Debian's package creates; when the data directory is not
# reachable by that user, the cluster lives under /var/tmp instead.
set -euo pipefail

cmd=${1:-start}
data_dir=${PRINTWORKS_DATA_DIR:-./.printworks}
[ -d "$data_dir" ] || mkdir -p -m 700 "$data_dir"
data_dir=$(cd "$data_dir" && pwd -P)
db_name=printworks
url_file="$data_dir/database-url"

say() { printf 'embedded-postgres: %s\n' "$*" >&2; }
die() { printf 'embedded-postgres: %s\n' "$*" >&2; exit 1; }

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  return 1
}

bindir=$(find_bindir || true)
if [ -z "$bindir" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing PostgreSQL (apt-get install postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq postgresql >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq postgresql >/dev/null; }; } ||
      die "could not install the postgresql package; install it, or set DATABASE_URL"
    bindir=$(find_bindir) || die "postgresql installed but initdb/pg_ctl not found"
  else
    die "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (e.g. 'sudo apt-get install postgresql') or set DATABASE_URL"
  fi
fi

# Who runs the server: ourselves, or the postgres user when we are root.
as_owner() { "$@"; }
owner=$(id -un)
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' system user (created by Debian's postgresql package)"
  owner=postgres
  as_owner() { runuser -u postgres -- "$@"; }
fi

# Where the cluster lives: <data dir>/postgres, unless the owner cannot reach it or the
# socket path would be too long (Unix sockets allow about 100 bytes).
pg_root="$data_dir/postgres"
usable_root() {
  local root=$1
  [ ${#root} -le 80 ] || return 1
  case "$root" in *[!A-Za-z0-9/._-]*) return 1 ;; esac
  if [ "$owner" != "$(id -un)" ]; then
    # The owner must be able to traverse every parent directory.
    chmod o+x "$data_dir" 2>/dev/null || true
    as_owner test -x "$(dirname "$root")" || return 1
  fi
  return 0
}
if ! usable_root "$pg_root"; then
  pg_root="/var/tmp/printworks-postgres-$(printf '%s' "$data_dir" | sha256sum | cut -c1-16)"
fi
pgdata="$pg_root/data"
sockdir="$pg_root/run"
logfile="$pg_root/postgres.log"
db_url="postgres:///$db_name?host=$sockdir&user=postgres"

running() { [ -f "$pgdata/PG_VERSION" ] && as_owner "$bindir/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; }

case "$cmd" in
  start)
    if [ ! -f "$pgdata/PG_VERSION" ]; then
      say "creating a private cluster in $pgdata"
      mkdir -p "$pg_root"
      [ "$owner" = "$(id -un)" ] || chown "$owner" "$pg_root"
      chmod 700 "$pg_root"
      as_owner mkdir -p "$sockdir"
      as_owner "$bindir/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null ||
        as_owner "$bindir/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
      as_owner tee -a "$pgdata/postgresql.conf" >/dev/null <<EOF
# Printworks embedded cluster: Unix socket only, readable by its owner only.
listen_addresses = ''
unix_socket_directories = '$sockdir'
unix_socket_permissions = 0700
max_connections = 200
EOF
    fi
    if ! running; then
      as_owner mkdir -p "$sockdir"
      as_owner "$bindir/pg_ctl" -D "$pgdata" -l "$logfile" -w -t 60 start >/dev/null ||
        die "PostgreSQL did not start; see $logfile"
    fi
    if ! "$bindir/psql" -X -q -h "$sockdir" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1; then
      "$bindir/psql" -X -q -h "$sockdir" -U postgres -d postgres -c "CREATE DATABASE $db_name" >/dev/null
    fi
    printf '%s\n' "$db_url" >"$url_file"
    echo "$db_url"
    ;;
  stop)
    if running; then
      as_owner "$bindir/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null
      say "stopped"
    else
      say "not running"
    fi
    ;;
  url)
    echo "$db_url"
    ;;
  status)
    if running; then say "running: $db_url"; else say "not running"; exit 3; fi
    ;;
  *)
    die "usage: $0 start|stop|url|status"
    ;;
esac
