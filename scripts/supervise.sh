#!/usr/bin/env bash
# A small supervisor, the role systemd plays in production (deploy/systemd/): run a
# command, and when it exits restart it after a backoff, unless it exited 0 (stopped as
# asked) or 2 (a bad command line: a restart will not help). SIGTERM or SIGINT stops the
# command (SIGTERM, then SIGKILL after 30 s) and then the supervisor.
#
#   scripts/supervise.sh NAME LOG -- COMMAND [ARGS...]
#
# The command's output goes to LOG, with a line of the supervisor's own for every start
# and exit: "[supervise] <unix ms> NAME started pid P" / "... exited C after S s".
# With SUPERVISE_PIDFILE set, the supervisor writes its pid there.
# The backoff starts at 0.2 s and doubles to 5 s; a run of 10 s or more resets it.
set -uo pipefail

[ $# -ge 4 ] && [ "$3" = -- ] || {
  echo "usage: $0 NAME LOG -- COMMAND [ARGS...]" >&2
  exit 2
}
name=$1 log=$2
shift 3
# Where a caller wants the supervisor's own pid (setsid may fork before it runs).
[ -n "${SUPERVISE_PIDFILE:-}" ] && echo $$ >"$SUPERVISE_PIDFILE"

note() { printf '[supervise] %s %s %s\n' "$(date +%s%3N)" "$name" "$*" >>"$log"; }

child=
stopping=
stop() {
  stopping=1
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap stop TERM INT

delay_ms=200
while [ -z "$stopping" ]; do
  started=$SECONDS
  "$@" </dev/null >>"$log" 2>&1 &
  child=$!
  note "started pid $child"
  # A trapped signal interrupts wait; wait again until the child is gone.
  while :; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
    if [ -n "$stopping" ]; then
      for _ in $(seq 1 300); do
        kill -0 "$child" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$child" 2>/dev/null
    fi
  done
  child=
  note "exited $code after $((SECONDS - started)) s"
  [ -n "$stopping" ] && break
  case $code in
  0 | 2)
    note "not restarted (exit $code)"
    exit "$code"
    ;;
  esac
  [ $((SECONDS - started)) -ge 10 ] && delay_ms=200
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  delay_ms=$((delay_ms * 2 > 5000 ? 5000 : delay_ms * 2))
done
note "stopped"
