#!/usr/bin/env bash
# A private PostgreSQL cluster for Prefect's server in the deployment end-to-end test.
#
#   tests/deploy/postgres.sh install      install Debian's postgresql when missing (CI)
#   tests/deploy/postgres.sh start DIR    init (once) and start a cluster in DIR; prints
#                                         the URL for PREFECT_API_DATABASE_CONNECTION_URL
#   tests/deploy/postgres.sh url DIR      print that URL again
#   tests/deploy/postgres.sh stop DIR     stop the cluster (DIR is kept)
#
# Idempotent: `start` on a running cluster only prints its URL. The cluster listens on
# 127.0.0.1 only (port chosen once, kept in DIR), with a generated password. As root it
# runs as the `postgres` user (PostgreSQL refuses root), so DIR must not sit inside a
# directory only root can enter: use a fresh path directly under /tmp.
# Everything but the URL goes to stderr.
set -euo pipefail

command=${1:-start}
data=${2:-${NBT_PG_DIR:-/tmp/nbt-deploy-postgres}}
user=prefect
database=prefect

say() { echo "postgres.sh: $*" >&2; }

bindir() {
  local found
  if command -v pg_config >/dev/null 2>&1; then
    found=$(pg_config --bindir)
    [ -x "$found/initdb" ] && { echo "$found"; return; }
  fi
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$found" ] && [ -x "$found/initdb" ] && echo "$found"
}

install() {
  if [ -n "$(bindir)" ]; then
    return
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "PostgreSQL server binaries not found; install them (apt-get install postgresql)"
    exit 1
  fi
  say "installing postgresql (Debian package)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

url() {
  local port password
  port=$(cat "$data.port")
  password=$(cat "$data.password")
  echo "postgresql+asyncpg://$user:$password@127.0.0.1:$port/$database"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  install
  local bin
  bin=$(bindir)
  if [ ! -f "$data/PG_VERSION" ]; then
    if [ -d "$data" ] && [ -n "$(ls -A "$data")" ]; then
      say "$data is not empty and holds no cluster: give a new or empty directory"
      exit 1
    fi
    mkdir -p "$data"
    chmod 700 "$data"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$data"; fi
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(16))' >"$data.password")
    free_port >"$data.port"
    local pwfile="$data.initdb-pw"
    as_owner sh -c "umask 077 && cat > '$pwfile'" <"$data.password"
    as_owner "$bin/initdb" -D "$data" -U "$user" --pwfile="$pwfile" --auth=scram-sha-256 \
      -E UTF8 --no-instructions >&2
    rm -f "$pwfile"
  fi
  local port
  port=$(cat "$data.port")
  if ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
      -o "-p $port -h 127.0.0.1 -k $data" start >&2
  fi
  if ! PGPASSWORD=$(cat "$data.password") "$bin/psql" -h 127.0.0.1 -p "$port" -U "$user" \
      -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
    PGPASSWORD=$(cat "$data.password") "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$user" \
      "$database" >&2
  fi
  url
}

stop() {
  local bin
  bin=$(bindir)
  if [ -n "$bin" ] && [ -f "$data/PG_VERSION" ]; then
    as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >&2 || true
  fi
}

case "$command" in
  install) install ;;
  start) start ;;
  url) url ;;
  stop) stop ;;
  *) say "unknown command $command (install | start DIR | url DIR | stop DIR)"; exit 2 ;;
esac
