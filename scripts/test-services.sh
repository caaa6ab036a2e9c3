#!/usr/bin/env bash
# Start PostgreSQL and Redis on loopback for the test suite, installing them from Debian packages
# when missing. Idempotent: a second run finds them running and only prints the URLs.
#
#   eval "$(bash scripts/test-services.sh)"          # exports TEST_DATABASE_URL and TEST_REDIS_URL
#   bash scripts/test-services.sh restart-redis      # for tests that need a service to bounce
#   bash scripts/test-services.sh restart-postgres
#
# Only the export lines go to stdout; everything else goes to stderr, so `eval` stays safe.
# PostgreSQL refuses to run as root, so its cluster is driven as the postgres user.
set -euo pipefail

PG_PORT="${TEST_PG_PORT:-5432}"
REDIS_PORT="${TEST_REDIS_PORT:-6379}"
PG_USER=selfinstruct
PG_PASSWORD=selfinstruct
PG_DB=selfinstruct_test
PG_CLUSTER=main
# Throwaway test data: durability is not worth the fsyncs; one API and worker per test module
# per xdist worker needs more than the default 100 connections.
PG_SERVER_OPTIONS="-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"

log() { echo "test-services: $*" >&2; }
die() { log "$*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) for: $*"; fi
}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"
  elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -u postgres "$@"
  else die "need root (or sudo) to act as the postgres user"; fi
}

install_packages() {
  local missing=()
  command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from Debian packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

pg_version() {
  find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -1 || true
}

pg_cluster_status() {
  # Prints "online", "down" or nothing (no such cluster).
  as_root pg_lsclusters -h 2>/dev/null | awk -v v="$1" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}'
}

wait_for_postgres() {
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && return
    sleep 0.5
  done
  die "PostgreSQL did not accept connections on 127.0.0.1:$PG_PORT"
}

ensure_role_and_database() {
  # The password is set on every run, so a role left by an older setup still matches the URL.
  as_postgres psql -q -X -p "$PG_PORT" -v ON_ERROR_STOP=1 >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB;
  END IF;
END \$\$;
ALTER ROLE $PG_USER WITH LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
SQL
  if ! as_postgres psql -X -p "$PG_PORT" -tAc "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" | grep -q 1; then
    as_postgres createdb -p "$PG_PORT" -O "$PG_USER" "$PG_DB" >&2
  fi
}

start_postgres() {
  local version status
  version="$(pg_version)"
  [ -n "$version" ] || die "no PostgreSQL server found in /usr/lib/postgresql"
  status="$(pg_cluster_status "$version")"
  if [ -z "$status" ]; then
    log "creating PostgreSQL $version cluster '$PG_CLUSTER'"
    as_root pg_createcluster "$version" "$PG_CLUSTER" -p "$PG_PORT" >&2
    status=down
  fi
  if [ "$status" != online ]; then
    log "starting PostgreSQL $version on 127.0.0.1:$PG_PORT"
    as_postgres pg_ctlcluster "$version" "$PG_CLUSTER" start -- -o "$PG_SERVER_OPTIONS" >&2
  fi
  wait_for_postgres
  ensure_role_and_database
}

stop_postgres() {
  local version
  version="$(pg_version)"
  as_postgres pg_ctlcluster "$version" "$PG_CLUSTER" stop -m fast >&2 || true
}

redis_answers() {
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1
}

start_redis() {
  redis_answers && return
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  local dir="${TMPDIR:-/tmp}"
  # No persistence: tests flush their own db; 64 dbs leave room for one per xdist worker.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
    --databases 64 --dir "$dir" --logfile "$dir/selfinstruct-test-redis-$REDIS_PORT.log" >&2
  for _ in $(seq 1 40); do
    redis_answers && return
    sleep 0.25
  done
  die "Redis did not answer on 127.0.0.1:$REDIS_PORT"
}

stop_redis() {
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  for _ in $(seq 1 40); do
    redis_answers || return 0
    sleep 0.25
  done
  die "Redis did not stop"
}

print_exports() {
  echo "export TEST_DATABASE_URL=postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
  echo "export TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

case "${1:-start}" in
  start)
    install_packages
    start_postgres
    start_redis
    ;;
  restart-redis)
    stop_redis
    start_redis
    ;;
  restart-postgres)
    stop_postgres
    start_postgres
    ;;
  *)
    echo "usage: $0 [start|restart-redis|restart-postgres]" >&2
    exit 2
    ;;
esac
print_exports
