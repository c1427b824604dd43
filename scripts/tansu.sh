#!/usr/bin/env bash
# Tansu (crates.io `tansu`), a Kafka-protocol broker not written here, for running DTSS
# against a broker it did not write. Built once into ~/.cache/dtss/tansu (outside the
# clone, with scripts/tansu-pg15.patch applied), started by hand on loopback under the
# data directory, no systemd. Idempotent: `up` starts only what is not running.
#
#   scripts/tansu.sh up               one broker on 127.0.0.1:9092, SQLite storage
#   scripts/tansu.sh up --postgres N  N brokers on 127.0.0.1:9093.. sharing one PostgreSQL
#                                     (Debian's, installed if missing, started by hand as
#                                     the postgres OS user on 127.0.0.1:5433, its schema
#                                     from scripts/tansu-postgres.sql)
#   scripts/tansu.sh down             stop every broker and the PostgreSQL this script started
#   scripts/tansu.sh status
#
# Broker i keeps its pid and log in services/tansu/broker-i/ (the SQLite one in
# services/tansu/). The PostgreSQL role `tansu` gets a generated password, kept in
# {DTSS_HOME}/tansu-pg-password (mode 0600) and handed to the brokers in their
# environment, never on a command line.
#
# Environment: DTSS_HOME (default: <repo>/.dtss), DTSS_TANSU_PORT (9092: the first
# broker's), DTSS_TANSU_PG_PORT (5433), DTSS_TANSU_HOME (~/.cache/dtss/tansu: where the
# binary is built).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DTSS_HOME=${DTSS_HOME:-$ROOT/.dtss}
mkdir -p "$DTSS_HOME"
DTSS_HOME=$(cd "$DTSS_HOME" && pwd)
PORT=${DTSS_TANSU_PORT:-9092}
PG_PORT=${DTSS_TANSU_PG_PORT:-5433}
DIR=$DTSS_HOME/services/tansu
# PostgreSQL's folder: DIR/postgres, or a folder under /var/lib/dtss-tansu when the
# postgres OS user cannot reach DIR; the first start records which in DIR/postgres.path.
PG=$DIR/postgres
[ -f "$DIR/postgres.path" ] && PG=$(cat "$DIR/postgres.path")
PG_PASSWORD_FILE=$DTSS_HOME/tansu-pg-password
BUILD=${DTSS_TANSU_HOME:-$HOME/.cache/dtss/tansu}
BIN=$BUILD/bin/tansu
VERSION=0.6.0

log() { printf '[tansu] %s\n' "$*" >&2; }

# runs PIDFILE PATTERN: the pid in PIDFILE runs and its cmdline contains PATTERN (a pid
# is reused once its process is gone: a pid file alone is not trusted).
runs() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"
}

# alive DIR PORT: the broker whose pid DIR/tansu.pid holds runs and listens on PORT.
alive() { runs "$1/tansu.pid" "--listener-url tcp://127.0.0.1:$2"; }

answers() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

# The crates Tansu is built from, pinned by their SHA-256 (crates.io's checksums).
CRATES=(
  "tansu 4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d"
  "tansu-storage 720d2ed8e6010c70f7f06e5af5a7274ebbf6e42fdcd9e46de542b10dc4d2f35d"
)
# What DTSS changes in them (scripts/tansu-pg15.patch): one alias that PostgreSQL 15 needs.
PATCH=$ROOT/scripts/tansu-pg15.patch
STAMP=$BUILD/bin/.dtss-patch

built() {
  [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -qF "$VERSION" &&
    [ -f "$STAMP" ] && cmp -s "$STAMP" "$PATCH"
}

# Tansu $VERSION from its crates.io sources, with tansu-storage patched (tansu's own
# Cargo.lock for every other crate).
build() {
  built && return
  command -v cargo >/dev/null || { log "cargo is needed to build Tansu"; exit 1; }
  log "building tansu $VERSION into $BUILD (once; about 12 minutes on 2 cores; log: $BUILD/build.log)"
  local src=$BUILD/src entry name sum
  rm -rf "$src"
  mkdir -p "$src" "$BUILD/bin"
  for entry in "${CRATES[@]}"; do
    read -r name sum <<<"$entry"
    curl -sSfL --retry 3 -o "$src/$name.crate" "https://static.crates.io/crates/$name/$VERSION/download" ||
      { log "downloading the $name $VERSION crate failed"; exit 1; }
    echo "$sum  $src/$name.crate" | sha256sum -c --quiet - ||
      { log "the $name $VERSION crate does not match its checksum"; exit 1; }
    tar xzf "$src/$name.crate" -C "$src"
  done
  (cd "$src" && git apply -p1 "$PATCH")
  printf '\n[patch.crates-io]\ntansu-storage = { path = "../tansu-storage-%s" }\n' "$VERSION" \
    >>"$src/tansu-$VERSION/Cargo.toml"
  (cd "$src/tansu-$VERSION" && CARGO_TARGET_DIR=$BUILD/target cargo build --release \
    --features libsql,postgres --bin tansu) >"$BUILD/build.log" 2>&1 || {
    tail -n 30 "$BUILD/build.log" >&2
    log "building Tansu failed (log above)"
    exit 1
  }
  install -m 0755 "$BUILD/target/release/tansu" "$BIN"
  cp "$PATCH" "$STAMP"
}

# broker_up DIR PORT STORAGE: start one broker (its storage URL in STORAGE_ENGINE, so
# that a password in it stays off the command line) unless it runs; wait until it
# answers. A broker of DIR that runs but does not answer yet is waited for, not
# started again (the second would exit, and its pid file would orphan the first); a
# listener on PORT that this script did not start is refused.
broker_up() {
  local dir=$1 port=$2
  if alive "$dir" "$port"; then
    answers "$port" || wait_for_broker "$dir" "$port"
    log "Tansu already running on 127.0.0.1:$port"
    return
  fi
  if answers "$port"; then
    log "something not started from $dir answers on 127.0.0.1:$port: stop it, or give Tansu another port (DTSS_TANSU_PORT)"
    exit 1
  fi
  mkdir -p "$dir"
  log "starting Tansu on 127.0.0.1:$port (log: $dir/tansu.log)"
  (
    cd "$dir"
    STORAGE_ENGINE=$3 setsid nohup "$BIN" broker --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" </dev/null >>"$dir/tansu.log" 2>&1 9>&- &
    echo $! >"$dir/tansu.pid"
  )
  wait_for_broker "$dir" "$port"
}

# wait_for_broker DIR PORT: until the broker of DIR answers on PORT; fail if it exits,
# or after 60 s.
wait_for_broker() {
  local dir=$1 port=$2 start=$SECONDS
  until answers "$port"; do
    if ! alive "$dir" "$port"; then
      tail -n 30 "$dir/tansu.log" >&2
      log "Tansu exited while starting (log above)"
      exit 1
    fi
    if ((SECONDS - start > 60)); then
      log "Tansu did not answer within 60 s (log: $dir/tansu.log)"
      exit 1
    fi
    sleep 0.2
  done
  log "Tansu on 127.0.0.1:$port answers after $((SECONDS - start)) s"
}

# stop PIDFILE NAME: SIGTERM, then SIGKILL after 5 s, to the process the pid file names
# if it is a Tansu broker.
stop() {
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  if runs "$1" " broker --listener-url "; then
    log "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

pg_ready() { "$(pg_bin)/pg_isready" -q -h "$PG" -p "$PG_PORT"; }

# psql as the postgres superuser over the server's own socket (peer authentication).
pg_sql() { runuser -u postgres -- "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG" -p "$PG_PORT" "$@"; }

pg_install() {
  [ -n "$(pg_bin)" ] && return
  log "installing postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >"$DIR/apt.log" 2>&1 || {
    cat "$DIR/apt.log" >&2
    log "apt-get install postgresql failed (see above)"
    exit 1
  }
}

# PostgreSQL for the brokers: initialised once (TCP connections need the password, local
# ones are the postgres OS user's only), started by hand, the role and database `tansu`
# and the schema created if missing.
pg_up() {
  pg_install
  if [ ! -f "$DIR/postgres.path" ]; then
    if ! runuser -u postgres -- test -x "$DIR" 2>/dev/null; then
      PG=/var/lib/dtss-tansu/$(printf %s "$DIR" | sha256sum | cut -c1-16)
      log "the postgres OS user cannot reach $DIR (a folder above it is not searchable): PostgreSQL's data goes to $PG"
      mkdir -p /var/lib/dtss-tansu
    fi
    echo "$PG" >"$DIR/postgres.path"
  fi
  if [ -f "$PG/data/postmaster.pid" ] && pg_ready; then
    log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
  else
    if [ ! -f "$PG/data/PG_VERSION" ]; then
      mkdir -p "$PG"
      chown postgres: "$PG"
      chmod 700 "$PG"
      runuser -u postgres -- "$(pg_bin)/initdb" -D "$PG/data" -U postgres --auth-local=peer \
        --auth-host=scram-sha-256 >"$PG/initdb.log" 2>&1 || {
        cat "$PG/initdb.log" >&2
        log "initdb failed (log above)"
        exit 1
      }
    fi
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT (log: $PG/postgres.log)"
    runuser -u postgres -- setsid nohup "$(pg_bin)/postgres" -D "$PG/data" \
      -c listen_addresses=127.0.0.1 -c port="$PG_PORT" -c unix_socket_directories="$PG" \
      </dev/null >>"$PG/postgres.log" 2>&1 9>&- &
    local start=$SECONDS
    until pg_ready; do
      if ((SECONDS - start > 60)); then
        tail -n 30 "$PG/postgres.log" >&2
        log "PostgreSQL did not answer within 60 s (log above)"
        exit 1
      fi
      sleep 0.2
    done
  fi
  if [ ! -s "$PG_PASSWORD_FILE" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$PG_PASSWORD_FILE")
    log "generated the PostgreSQL password of tansu into $PG_PASSWORD_FILE (mode 0600)"
  fi
  # The password goes to psql on stdin, never on a command line.
  pg_sql -d postgres <<SQL
SELECT 'CREATE ROLE tansu LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tansu') \\gexec
ALTER ROLE tansu PASSWORD '$(cat "$PG_PASSWORD_FILE")';
SELECT 'CREATE DATABASE tansu OWNER tansu' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tansu') \\gexec
SQL
  pg_sql -d tansu -c "SET client_min_messages = warning" -c "SET ROLE tansu" -f "$ROOT/scripts/tansu-postgres.sql"
}

up() {
  build
  if [ "${1:-}" = --postgres ]; then
    local n=${2:-}
    [[ $n =~ ^[1-9]$ ]] || { log "--postgres takes the number of brokers, 1 to 9 (got '$n')"; exit 2; }
    pg_up
    local url i
    url="postgres://tansu:$(cat "$PG_PASSWORD_FILE")@127.0.0.1:$PG_PORT/tansu"
    for ((i = 0; i < n; i++)); do
      broker_up "$DIR/broker-$i" $((PORT + 1 + i)) "$url"
    done
  else
    [ -z "${1:-}" ] || { log "unknown option $1 (up [--postgres N])"; exit 2; }
    broker_up "$DIR" "$PORT" "sqlite://tansu.db"
  fi
}

down() {
  stop "$DIR/tansu.pid" Tansu
  local d
  for d in "$DIR"/broker-*; do
    [ -d "$d" ] && stop "$d/tansu.pid" "Tansu $(basename "$d")"
  done
  if [ -f "$PG/data/postmaster.pid" ]; then
    log "stopping PostgreSQL"
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$PG/data" -m fast -w stop >/dev/null || true
  fi
}

status() {
  local d port
  if alive "$DIR" "$PORT"; then echo "tansu: up 127.0.0.1:$PORT (SQLite)"; fi
  for d in "$DIR"/broker-*; do
    [ -d "$d" ] || continue
    port=$((PORT + 1 + ${d##*-}))
    if alive "$d" "$port" && answers "$port"; then echo "tansu: up 127.0.0.1:$port (PostgreSQL)"; else echo "tansu: down 127.0.0.1:$port"; fi
  done
  if [ -f "$PG/data/postmaster.pid" ] && pg_ready; then echo "postgresql: up 127.0.0.1:$PG_PORT"; fi
}

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9

case "${1:-}" in
up) shift; up "$@" ;;
down) down ;;
status) status ;;
*)
  echo "usage: $0 up [--postgres N] | down | status" >&2
  exit 2
  ;;
esac
