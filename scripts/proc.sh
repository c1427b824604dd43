# Sourced by scripts/services.sh and scripts/tansu.sh: the servers they start by hand,
# each known by a pid file and a pattern in its command line. PIDs are reused on busy
# machines: a pid file alone is never trusted. The sourcing script defines `log`.

# pid_alive PIDFILE PATTERN: the pid in PIDFILE runs and its cmdline contains PATTERN.
pid_alive() {
  local pidfile=$1 pattern=$2 pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

# wait_until_up NAME PID CHECK LOG [LIMIT]: wait until CHECK (a command, with its
# arguments separated by spaces) succeeds, saying so every 10 s; fail at once if process
# PID has exited, or after LIMIT seconds (default DTSS_SERVICE_WAIT, else 180: a JVM on
# a loaded machine, or a host name that has to be looked up in DNS, can take tens of
# seconds before ZooKeeper listens).
wait_until_up() {
  local name=$1 pid=$2 logfile=$4 limit=${5:-${DTSS_SERVICE_WAIT:-180}}
  local start=$SECONDS next=10 check
  read -ra check <<<"$3"
  until "${check[@]}"; do
    if [ ! -d "/proc/$pid" ]; then
      tail -n 40 "$logfile" >&2
      log "$name (pid $pid) exited while starting (log above: $logfile)"
      exit 1
    fi
    if ((SECONDS - start >= limit)); then
      tail -n 40 "$logfile" >&2
      log "$name did not answer within $limit s (log above: $logfile)"
      exit 1
    fi
    if ((SECONDS - start >= next)); then
      log "still waiting for $name ($((SECONDS - start)) s)"
      next=$((next + 10))
    fi
    sleep 0.2
  done
  log "$name answers after $((SECONDS - start)) s"
}

# end_process PID SECONDS: SIGTERM, then SIGKILL if it still runs SECONDS later.
end_process() {
  local pid=$1 tries=$(($2 * 10))
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 "$tries"); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
}
