#!/usr/bin/env bash
# Local MariaDB and ZooKeeper for DTSS, started by hand under a data directory
# on loopback ports (no systemd). Idempotent; safe to call concurrently.
#
#   scripts/services.sh up      install if missing, start, wait until both answer
#   scripts/services.sh down    stop what this script started (and nothing else)
#   scripts/services.sh status  say what runs where
#
# Environment: DTSS_HOME (default: <repo>/.dtss), DTSS_MYSQL_PORT (3306),
# DTSS_ZK_PORT (2181).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DTSS_HOME=${DTSS_HOME:-$ROOT/.dtss}
# Absolute: mariadb-install-db would take a relative datadir from its own basedir.
mkdir -p "$DTSS_HOME"
DTSS_HOME=$(cd "$DTSS_HOME" && pwd)
SVC=$DTSS_HOME/services
MYSQL_PORT=${DTSS_MYSQL_PORT:-3306}
ZK_PORT=${DTSS_ZK_PORT:-2181}
MY=$SVC/mariadb
ZK=$SVC/zookeeper
ZK_CP=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-simple.jar

log() { printf '[services] %s\n' "$*" >&2; }

# pid_alive PIDFILE PATTERN: the pid in PIDFILE runs and its cmdline contains PATTERN
# (PIDs are reused on busy machines: never trust a pid file alone).
pid_alive() {
  local pidfile=$1 pattern=$2 pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

install_missing() {
  local need=()
  command -v mariadbd >/dev/null 2>&1 || need+=(mariadb-server)
  [ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
  [ -f /usr/share/java/slf4j-simple.jar ] || need+=(libslf4j-java)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >"$SVC/apt.log" 2>&1 || {
      cat "$SVC/apt.log" >&2
      log "apt-get install failed (see above)"
      exit 1
    }
  fi
}

# wait_until_up NAME PID CHECK LOG: wait until CHECK succeeds, saying so every
# 10 s; fail at once if process PID has exited, or after DTSS_SERVICE_WAIT seconds
# (default 180: a JVM on a loaded machine, or a host name that has to be looked up
# in DNS, can take tens of seconds before ZooKeeper listens).
wait_until_up() {
  local name=$1 pid=$2 check=$3 logfile=$4
  local limit=${DTSS_SERVICE_WAIT:-180} start=$SECONDS next=10
  until "$check"; do
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

mysql_ping() { mariadb-admin --no-defaults --socket="$MY/mysqld.sock" -uroot ping >/dev/null 2>&1; }

# The OS user MariaDB runs as: `mysql` when it can reach the data directory (every
# folder above it searchable by others), else root, with a warning.
mysql_os_user() {
  if id mysql >/dev/null 2>&1 && runuser -u mysql -- test -x "$SVC" 2>/dev/null; then
    echo mysql
  else
    echo root
  fi
}

mysql_up() {
  if pid_alive "$MY/mysqld.pid" "$MY/data" && mysql_ping; then
    log "MariaDB already running on 127.0.0.1:$MYSQL_PORT"
    return
  fi
  mkdir -p "$MY/files"
  local user
  user=$(mysql_os_user)
  if [ "$user" = root ]; then
    log "warning: the mysql OS user cannot reach $MY (a folder above it is not searchable): running MariaDB as root"
  fi
  if [ ! -d "$MY/data/mysql" ]; then
    log "initialising MariaDB data directory $MY/data"
    mariadb-install-db --no-defaults --datadir="$MY/data" --user="$user" \
      --auth-root-authentication-method=socket --skip-test-db >"$MY/install.log" 2>&1 || {
      cat "$MY/install.log" >&2
      exit 1
    }
  fi
  chown -R "$user:" "$MY"
  chmod 750 "$MY" "$MY/files"
  log "starting MariaDB on 127.0.0.1:$MYSQL_PORT as $user (log: $MY/error.log)"
  # secure_file_priv: the server reads and writes files only under $MY/files (and the
  # dtss user, without FILE, not even there). LOCAL INFILE sends the client's data.
  setsid nohup mariadbd --no-defaults --datadir="$MY/data" --socket="$MY/mysqld.sock" \
    --pid-file="$MY/mysqld.pid" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --user="$user" \
    --log-error="$MY/error.log" --skip-name-resolve --max-connections=1000 \
    --innodb-buffer-pool-size=2G --innodb-log-file-size=2G \
    --innodb-io-capacity=2000 --innodb-io-capacity-max=8000 --local-infile=1 \
    --secure-file-priv="$MY/files" \
    </dev/null >/dev/null 2>&1 9>&- &
  wait_until_up MariaDB $! mysql_ping "$MY/error.log"
  # Root only through the socket, as the OS root; dtss only on the databases named
  # dtss…, with no global privilege (no FILE, no SUPER). Applied at every start, so an
  # older data directory is brought to the same state.
  mariadb --no-defaults --socket="$MY/mysqld.sock" -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'dtss'@'127.0.0.1' IDENTIFIED BY 'dtss';
CREATE USER IF NOT EXISTS 'dtss'@'localhost' IDENTIFIED BY 'dtss';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'dtss'@'127.0.0.1', 'dtss'@'localhost';
GRANT ALL PRIVILEGES ON `dtss%`.* TO 'dtss'@'127.0.0.1', 'dtss'@'localhost';
DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1', 'root'@'%';
ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket;
SQL
  mariadb --no-defaults --socket="$MY/mysqld.sock" -uroot \
    -e "DROP USER IF EXISTS 'root'@'$(hostname)'"
}

# ZooKeeper answers "imok" to "ruok". Read exactly those 4 bytes rather than up to
# EOF: a ruok that arrives while the server is still loading its database is
# answered, but its socket is never closed (an NPE in ZooKeeper's close path).
zk_ruok() {
  local reply
  reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf ruok >&3 && head -c 4 <&3' _ "$ZK_PORT" 2>/dev/null) || return 1
  [ "$reply" = imok ]
}

zk_up() {
  if pid_alive "$ZK/zk.pid" "$ZK/zoo.cfg" && zk_ruok; then
    log "ZooKeeper already running on 127.0.0.1:$ZK_PORT"
    return
  fi
  mkdir -p "$ZK/data"
  cat >"$ZK/zoo.cfg" <<EOF
tickTime=500
initLimit=10
syncLimit=5
dataDir=$ZK/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr,stat,ruok,mntr
minSessionTimeout=1000
maxSessionTimeout=30000
EOF
  log "starting ZooKeeper on 127.0.0.1:$ZK_PORT (log: $ZK/zk.log)"
  setsid nohup java -Xmx512m -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS -cp "$ZK_CP" org.apache.zookeeper.server.quorum.QuorumPeerMain \
    "$ZK/zoo.cfg" </dev/null >"$ZK/zk.log" 2>&1 9>&- &
  echo $! >"$ZK/zk.pid"
  wait_until_up ZooKeeper $! zk_ruok "$ZK/zk.log"
}

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

mkdir -p "$SVC"
exec 9>"$SVC/.lock"
flock 9

case "${1:-}" in
up)
  install_missing
  mysql_up
  zk_up
  log "ready: mysql://dtss:dtss@127.0.0.1:$MYSQL_PORT  zookeeper 127.0.0.1:$ZK_PORT  data $SVC"
  ;;
down)
  stop_pid "$ZK/zk.pid" "$ZK/zoo.cfg" ZooKeeper
  stop_pid "$MY/mysqld.pid" "$MY/data" MariaDB
  ;;
status)
  if pid_alive "$MY/mysqld.pid" "$MY/data" && mysql_ping; then echo "mariadb: up 127.0.0.1:$MYSQL_PORT"; else echo "mariadb: down"; fi
  if pid_alive "$ZK/zk.pid" "$ZK/zoo.cfg" && zk_ruok; then echo "zookeeper: up 127.0.0.1:$ZK_PORT"; else echo "zookeeper: down"; fi
  ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
