# Pid-file helpers sourced by scripts/services.sh and scripts/tansu.sh; the caller
# defines log().

# pid_alive PIDFILE PATTERN: the pid in PIDFILE runs and its cmdline contains PATTERN
# (PIDs are reused on busy machines: never trust a pid file alone).
pid_alive() {
  local pidfile=$1 pattern=$2 pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

# stop_pid PIDFILE PATTERN NAME: SIGTERM, up to 10 s for it to go, then SIGKILL.
stop_pid() {
  local pidfile=$1 pattern=$2 name=$3 pid
  if pid_alive "$pidfile" "$pattern"; then
    pid=$(cat "$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  else
    log "$name is not running (from $DTSS_HOME)"
  fi
  rm -f "$pidfile"
}
