#!/usr/bin/env bash
# Start PostgreSQL and Redis on loopback for the test suite, installing them from Debian packages
# when missing. Idempotent: a second run finds them running and only prints the URLs.
#
#   eval "$(scripts/test-services.sh)"   # exports TEST_DATABASE_URL and TEST_REDIS_URL
#
# PostgreSQL refuses to run as root, so its cluster is started as the postgres user.
set -euo pipefail

PG_PORT="${TEST_PG_PORT:-5432}"
REDIS_PORT="${TEST_REDIS_PORT:-6379}"
PG_USER=selfinstruct
PG_PASSWORD=selfinstruct
PG_DB=selfinstruct_test

log() { echo "test-services: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@";
  elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@";
  else sudo -u postgres "$@"; fi
}

install_packages() {
  local missing=()
  command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

start_postgres() {
  local version cluster
  version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
  cluster=main
  if ! as_root pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$version $cluster"; then
    log "creating PostgreSQL $version cluster"
    as_root pg_createcluster "$version" "$cluster" -p "$PG_PORT" >&2
  fi
  if ! as_root pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online; then
    log "starting PostgreSQL $version on 127.0.0.1:$PG_PORT"
    as_postgres pg_ctlcluster "$version" "$cluster" start -- -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c fsync=off -c synchronous_commit=off -c max_connections=200" >&2 \
      || as_root pg_ctlcluster "$version" "$cluster" start >&2
  fi
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.5
  done
  pg_isready -h 127.0.0.1 -p "$PG_PORT" >&2
  as_postgres psql -q -p "$PG_PORT" -v ON_ERROR_STOP=1 >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
  if ! as_postgres psql -p "$PG_PORT" -tAc "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" | grep -q 1; then
    as_postgres createdb -p "$PG_PORT" -O "$PG_USER" "$PG_DB" >&2
  fi
}

start_redis() {
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    return
  fi
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
    --databases 64 --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/selfinstruct-test-redis.log" >&2
  for _ in $(seq 1 40); do
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
    sleep 0.25
  done
  log "Redis did not start"; exit 1
}

case "${1:-start}" in
  start)
    install_packages
    start_postgres
    start_redis
    ;;
  restart-redis)
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    sleep 0.5
    start_redis
    ;;
  restart-postgres)
    version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
    as_postgres pg_ctlcluster "$version" main restart >&2 || as_root pg_ctlcluster "$version" main restart >&2
    start_postgres
    ;;
  *) echo "usage: $0 [start|restart-redis|restart-postgres]" >&2; exit 2 ;;
esac

echo "export TEST_DATABASE_URL=postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
echo "export TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
