#!/usr/bin/env bash
# Start, stop or report the services the tests and the dev setup need: PostgreSQL, Azurite
# and Redis.
#
#   scripts/services.sh start    idempotent; reuses what already answers, starts what does not
#   scripts/services.sh stop     stops only what this script started
#   scripts/services.sh status   prints what answers where
#
# After `start`, .cache/services.env holds the exports the tests read:
#   DATASOURCES_TEST_POSTGRES_DSN            an admin DSN (tests create their own databases/roles)
#   DATASOURCES_TEST_AZURITE_CONNECTION_STRING
#   DATASOURCES_TEST_AZURITE_URL
#   DATASOURCES_TEST_REDIS_URL               a Redis the tests share (they use their own prefixes)
#   DATASOURCES_TEST_REDIS_SERVER            the redis-server binary (tests start private ones)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$here/.cache"
mkdir -p "$cache"
envfile="$cache/services.env"

pg_port_default=${DATASOURCES_PG_PORT:-5432}
pg_private_port=${DATASOURCES_PRIVATE_PG_PORT:-55432}
azurite_port=${DATASOURCES_AZURITE_PORT:-10000}
redis_port_default=${DATASOURCES_REDIS_PORT:-6379}
redis_private_port=${DATASOURCES_PRIVATE_REDIS_PORT:-56379}
azurite_url="http://127.0.0.1:${azurite_port}/devstoreaccount1"
# The emulator's published well-known development key: not a secret.
azurite_key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
azurite_cs="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${azurite_key};BlobEndpoint=${azurite_url};"

log() { printf '[services] %s\n' "$*" >&2; }

pg_answers() { # $1 = DSN
  command -v psql >/dev/null 2>&1 || return 1
  PGCONNECT_TIMEOUT=3 psql -w -X -q -tA -d "$1" -c 'select 1' >/dev/null 2>&1
}

pg_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && echo "$d"
}

# When run as root, PostgreSQL's tools refuse to run; they run as the postgres user, whose
# data folder must be reachable by it (a mktemp -d clone is not), so it lives under /var/tmp.
private_pg_dir() {
  if [ "$(id -u)" = 0 ]; then
    echo "/var/tmp/datasources-pg-$(printf '%s' "$here" | cksum | cut -d' ' -f1)"
  else
    echo "$cache/postgres"
  fi
}

as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_private_pg() {
  local bindir dir
  bindir=$(pg_bindir) || true
  if [ -z "$bindir" ]; then
    log "PostgreSQL is not installed (Debian: apt-get install postgresql)"; return 1
  fi
  dir=$(private_pg_dir)
  if [ ! -f "$dir/PG_VERSION" ]; then
    log "initialising a private PostgreSQL cluster in $dir"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    as_pg_owner "$bindir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  if ! as_pg_owner "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    log "starting the private PostgreSQL cluster on 127.0.0.1:$pg_private_port"
    as_pg_owner "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-p $pg_private_port -c listen_addresses=127.0.0.1 -k $dir -c fsync=off" start >/dev/null
  fi
  echo "$dir" > "$cache/postgres.private"
}

start_postgres() {
  local dsn="${DATASOURCES_TEST_POSTGRES_DSN:-}"
  if [ -n "$dsn" ] && pg_answers "$dsn"; then
    log "PostgreSQL: using DATASOURCES_TEST_POSTGRES_DSN"; echo "$dsn"; return
  fi
  dsn="postgresql://postgres@127.0.0.1:${pg_port_default}/postgres"
  if pg_answers "$dsn"; then
    log "PostgreSQL: reusing the server on 127.0.0.1:${pg_port_default}"; echo "$dsn"; return
  fi
  # The machine's own cluster, if it is merely stopped.
  if command -v pg_lsclusters >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    local ver name port status
    while read -r ver name port status _; do
      if [ "$port" = "$pg_port_default" ] && [ "$status" = down ]; then
        log "PostgreSQL: starting the machine's cluster $ver/$name"
        pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start || true
        for _ in $(seq 1 30); do pg_answers "$dsn" && break; sleep 1; done
        if pg_answers "$dsn"; then
          echo "$ver $name" > "$cache/postgres.cluster"; echo "$dsn"; return
        fi
        log "PostgreSQL: the machine's cluster does not accept trust logins; using a private one"
      fi
    done < <(pg_lsclusters -h 2>/dev/null)
  fi
  dsn="postgresql://postgres@127.0.0.1:${pg_private_port}/postgres"
  if ! pg_answers "$dsn"; then
    start_private_pg || return 1
    for _ in $(seq 1 30); do pg_answers "$dsn" && break; sleep 1; done
  fi
  pg_answers "$dsn" || { log "PostgreSQL did not answer on $dsn"; return 1; }
  log "PostgreSQL: private cluster on 127.0.0.1:${pg_private_port}"
  echo "$dsn"
}

azurite_answers() {
  # Azurite answers an unauthenticated request with 403 and its own Server header.
  curl -s -o /dev/null -D - --max-time 3 "$azurite_url?comp=list" 2>/dev/null | grep -qi '^server: azurite'
}

start_azurite() {
  if azurite_answers; then
    log "Azurite: reusing the emulator on 127.0.0.1:${azurite_port}"; return
  fi
  local bin="$here/node_modules/.bin/azurite-blob"
  if [ ! -x "$bin" ]; then
    command -v npm >/dev/null 2>&1 || { log "npm is needed for Azurite (Debian: apt-get install npm)"; return 1; }
    log "Azurite: installing the pinned emulator (npm ci)"
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  mkdir -p "$cache/azurite"
  log "Azurite: starting on 127.0.0.1:${azurite_port}"
  nohup setsid "$bin" --blobHost 127.0.0.1 --blobPort "$azurite_port" \
    --location "$cache/azurite" --disableTelemetry --skipApiVersionCheck \
    > "$cache/azurite.log" 2>&1 < /dev/null &
  echo $! > "$cache/azurite.pid"
  for _ in $(seq 1 60); do azurite_answers && return; sleep 0.5; done
  log "Azurite did not start; see $cache/azurite.log"; tail -n 20 "$cache/azurite.log" >&2 || true
  return 1
}

redis_answers() { # $1 = port; a bare RESP PING over bash's /dev/tcp (no client needed)
  local reply
  reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'PING\r\n' >&3 && IFS= read -r -t 3 line <&3 \
            && printf '%s' "$line") 2>/dev/null ) || return 1
  [ "${reply%$'\r'}" = "+PONG" ]
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The binary is needed even when a Redis already answers: tests start private ones to
# stop them (Redis down). Debian's package, like scripts/install-bwrap.sh does for bwrap.
ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "Redis: installing Debian's redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq redis-server >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq redis-server >/dev/null; }
    # The package's own service is not wanted: this script starts a private one if needed.
  fi
  command -v redis-server >/dev/null 2>&1 || { log "redis-server is not installed (Debian: apt-get install redis-server)"; return 1; }
}

start_redis() {
  ensure_redis_server >&2 || return 1
  local url="${DATASOURCES_TEST_REDIS_URL:-}" port
  if [ -n "$url" ]; then
    port=${url##*:}; port=${port%%/*}
    if redis_answers "$port"; then log "Redis: using DATASOURCES_TEST_REDIS_URL"; echo "$url"; return; fi
  fi
  if redis_answers "$redis_port_default"; then
    log "Redis: reusing the server on 127.0.0.1:${redis_port_default}"
    echo "redis://127.0.0.1:${redis_port_default}/0"; return
  fi
  port=$redis_private_port
  [ -f "$cache/redis.port" ] && port=$(cat "$cache/redis.port")
  if ! redis_answers "$port"; then
    if port_taken "$port"; then  # something else holds it: any free port will do
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    mkdir -p "$cache/redis"
    log "Redis: starting a private server on 127.0.0.1:${port}"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
      --dir "$cache/redis" --daemonize yes --pidfile "$cache/redis.pid" \
      --logfile "$cache/redis.log" >/dev/null
    for _ in $(seq 1 50); do redis_answers "$port" && break; sleep 0.1; done
    echo "$port" > "$cache/redis.port"
  fi
  redis_answers "$port" || { log "Redis did not start; see $cache/redis.log"; return 1; }
  log "Redis: private server on 127.0.0.1:${port}"
  echo "redis://127.0.0.1:${port}/0"
}

cmd_start() {
  local dsn redis_url
  dsn=$(start_postgres)
  start_azurite
  redis_url=$(start_redis)
  cat > "$envfile" <<ENV
export DATASOURCES_TEST_POSTGRES_DSN='$dsn'
export DATASOURCES_TEST_AZURITE_URL='$azurite_url'
export DATASOURCES_TEST_AZURITE_CONNECTION_STRING='$azurite_cs'
export DATASOURCES_TEST_REDIS_URL='$redis_url'
export DATASOURCES_TEST_REDIS_SERVER='$(command -v redis-server)'
ENV
  echo "PostgreSQL  $dsn"
  echo "Azurite     $azurite_url"
  echo "Redis       $redis_url"
  echo "(exports in $envfile)"
}

cmd_stop() {
  if [ -f "$cache/redis.pid" ]; then
    local rpid; rpid=$(cat "$cache/redis.pid")
    if kill -0 "$rpid" 2>/dev/null; then log "stopping the private Redis ($rpid)"; kill "$rpid"; fi
    rm -f "$cache/redis.pid" "$cache/redis.port"
  fi
  if [ -f "$cache/azurite.pid" ]; then
    local pid; pid=$(cat "$cache/azurite.pid")
    if kill -0 "$pid" 2>/dev/null; then log "stopping Azurite ($pid)"; kill -- "-$pid" 2>/dev/null || kill "$pid"; fi
    rm -f "$cache/azurite.pid"
  fi
  if [ -f "$cache/postgres.private" ]; then
    local dir bindir; dir=$(cat "$cache/postgres.private"); bindir=$(pg_bindir)
    log "stopping the private PostgreSQL cluster"
    as_pg_owner "$bindir/pg_ctl" -D "$dir" -m fast stop >/dev/null 2>&1 || true
    rm -f "$cache/postgres.private"
  fi
  if [ -f "$cache/postgres.cluster" ]; then
    local ver name; read -r ver name < "$cache/postgres.cluster"
    log "stopping the machine's cluster $ver/$name (this script started it)"
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" stop || true
    rm -f "$cache/postgres.cluster"
  fi
  rm -f "$envfile"
}

cmd_status() {
  local rc=0
  for dsn in "${DATASOURCES_TEST_POSTGRES_DSN:-}" "postgresql://postgres@127.0.0.1:${pg_port_default}/postgres" \
             "postgresql://postgres@127.0.0.1:${pg_private_port}/postgres"; do
    [ -n "$dsn" ] || continue
    if pg_answers "$dsn"; then echo "PostgreSQL  up    $dsn"; break; fi
    dsn=""
  done
  [ -n "${dsn:-}" ] || { echo "PostgreSQL  down"; rc=1; }
  if azurite_answers; then echo "Azurite     up    $azurite_url"; else echo "Azurite     down"; rc=1; fi
  local rport found=""
  for rport in "$redis_port_default" "$redis_private_port"; do
    if redis_answers "$rport"; then echo "Redis       up    redis://127.0.0.1:${rport}/0"; found=1; break; fi
  done
  [ -n "$found" ] || { echo "Redis       down"; rc=1; }
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
