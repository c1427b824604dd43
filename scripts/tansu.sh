#!/usr/bin/env bash
# Tansu (crates.io `tansu`), a Kafka-protocol broker not written here, for running DTSS
# against a broker it did not write. Built once into ~/.cache/dtss/tansu (outside the
# clone), started by hand on loopback with its SQLite storage under the data directory,
# no systemd. Idempotent.
#
#   scripts/tansu.sh up      build if missing, start, wait until it answers
#   scripts/tansu.sh down    stop the broker this script started
#   scripts/tansu.sh status
#
# Environment: DTSS_HOME (default: <repo>/.dtss), DTSS_TANSU_PORT (9092),
# DTSS_TANSU_HOME (~/.cache/dtss/tansu: where the binary is built).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DTSS_HOME=${DTSS_HOME:-$ROOT/.dtss}
mkdir -p "$DTSS_HOME"
DTSS_HOME=$(cd "$DTSS_HOME" && pwd)
PORT=${DTSS_TANSU_PORT:-9092}
DIR=$DTSS_HOME/services/tansu
BUILD=${DTSS_TANSU_HOME:-$HOME/.cache/dtss/tansu}
BIN=$BUILD/bin/tansu
VERSION=0.6.0

log() { printf '[tansu] %s\n' "$*" >&2; }

alive() {
  local pid
  [ -f "$DIR/tansu.pid" ] || return 1
  pid=$(cat "$DIR/tansu.pid")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--listener-url tcp://127.0.0.1:$PORT"
}

answers() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$PORT" 2>/dev/null; }

build() {
  if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -qF "$VERSION"; then
    return
  fi
  command -v cargo >/dev/null || { log "cargo is needed to build Tansu"; exit 1; }
  log "building tansu $VERSION into $BUILD (once; about 10 minutes on 2 cores; log: $BUILD/build.log)"
  mkdir -p "$BUILD"
  CARGO_TARGET_DIR=$BUILD/target cargo install "tansu@$VERSION" --locked \
    --features libsql,postgres --root "$BUILD" >"$BUILD/build.log" 2>&1 || {
    tail -n 30 "$BUILD/build.log" >&2
    log "building Tansu failed (log above)"
    exit 1
  }
}

up() {
  if alive && answers; then
    log "Tansu already running on 127.0.0.1:$PORT"
    return
  fi
  build
  mkdir -p "$DIR"
  log "starting Tansu on 127.0.0.1:$PORT (storage $DIR/tansu.db, relative to its folder; log: $DIR/tansu.log)"
  (
    cd "$DIR"
    setsid nohup "$BIN" broker --listener-url "tcp://127.0.0.1:$PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$PORT" \
      --storage-engine "sqlite://tansu.db" </dev/null >>"$DIR/tansu.log" 2>&1 9>&- &
    echo $! >"$DIR/tansu.pid"
  )
  local start=$SECONDS
  until answers; do
    if ! alive; then
      tail -n 30 "$DIR/tansu.log" >&2
      log "Tansu exited while starting (log above)"
      exit 1
    fi
    if ((SECONDS - start > 60)); then
      log "Tansu did not answer within 60 s (log: $DIR/tansu.log)"
      exit 1
    fi
    sleep 0.2
  done
  log "Tansu answers after $((SECONDS - start)) s"
}

down() {
  if alive; then
    local pid
    pid=$(cat "$DIR/tansu.pid")
    log "stopping Tansu (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  else
    log "Tansu is not running (from $DTSS_HOME)"
  fi
  rm -f "$DIR/tansu.pid"
}

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9

case "${1:-}" in
up) up ;;
down) down ;;
status) if alive && answers; then echo "tansu: up 127.0.0.1:$PORT"; else echo "tansu: down"; fi ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
