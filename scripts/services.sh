#!/usr/bin/env bash
# Local MariaDB and ZooKeeper for DTSS, started by hand under a data directory
# on loopback ports (no systemd). Idempotent; safe to call concurrently.
#
#   scripts/services.sh up      install if missing, start, wait until both answer
#   scripts/services.sh down    stop what this script started (and nothing else)
#   scripts/services.sh status  say what runs where
#
#   scripts/services.sh up --galera 3   a 3-node MariaDB Galera cluster on ports
#                                       3311-3313 instead of the single MariaDB
#   scripts/services.sh node-start I    start Galera node I again (it rejoins)
#   scripts/services.sh node-stop I     stop Galera node I (SIGTERM)
#
#   scripts/services.sh up --zookeeper-only   ZooKeeper alone (a member of an ensemble)
#   scripts/services.sh watch [--zookeeper-only]   up, then wait; exits 1 when one dies
#                                       (for scripts/supervise.sh to start it again)
#
# Environment: DTSS_HOME (default: <repo>/.dtss), DTSS_MYSQL_PORT (3306),
# DTSS_ZK_PORT (2181), DTSS_GALERA_PORT (3310: node I listens on 3310+I);
# for a host of several (scripts/hosts.sh): DTSS_BIND (127.0.0.1), the address MariaDB
# and ZooKeeper listen on; DTSS_MYSQL_CLIENTS, a host pattern the dtss user may also
# connect from (e.g. 10.77.0.%); DTSS_ZK_ENSEMBLE, the members' addresses ("A B C"), with
# DTSS_ZK_ID, this member's place in it (1, 2, ...).
#
# Self-contained: `dtss services` runs the copy embedded in the binary, from no checkout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DTSS_HOME=${DTSS_HOME:-$ROOT/.dtss}
# Absolute: mariadb-install-db would take a relative datadir from its own basedir.
mkdir -p "$DTSS_HOME"
DTSS_HOME=$(cd "$DTSS_HOME" && pwd)
SVC=$DTSS_HOME/services
MYSQL_PORT=${DTSS_MYSQL_PORT:-3306}
ZK_PORT=${DTSS_ZK_PORT:-2181}
BIND=${DTSS_BIND:-127.0.0.1}
MYSQL_CLIENTS=${DTSS_MYSQL_CLIENTS:-}
ZK_ENSEMBLE=${DTSS_ZK_ENSEMBLE:-}
ZK_ID=${DTSS_ZK_ID:-}
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
  if [ "$GALERA" -gt 0 ]; then
    [ -f /usr/lib/galera/libgalera_smm.so ] || need+=(galera-4)
    command -v rsync >/dev/null 2>&1 || need+=(rsync)
  fi
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

# already_running NAME PIDFILE PATTERN CHECK LOGFILE WHERE [HINT]: true when the server
# this script started is alive (waiting for CHECK: a busy one can be slow to answer);
# false when none answers. Exits when one it did not start answers CHECK: one started
# here would exit unseen beside it, and `down` could not stop what serves.
already_running() {
  local name=$1 pidfile=$2 pattern=$3 check=$4 logfile=$5 where=$6 hint=${7:-}
  if pid_alive "$pidfile" "$pattern"; then
    "$check" || wait_until_up "$name" "$(cat "$pidfile")" "$check" "$logfile"
    log "$name already running on $where"
    return 0
  fi
  if "$check"; then
    log "a $name not started from $DTSS_HOME answers on $where: stop it${hint:+, or $hint}"
    exit 1
  fi
  return 1
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
  if already_running MariaDB "$MY/mysqld.pid" "$MY/data" mysql_ping "$MY/error.log" \
    "$BIND:$MYSQL_PORT ($MY/mysqld.sock)"; then
    mysql_users "$MY/mysqld.sock"
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
  log "starting MariaDB on $BIND:$MYSQL_PORT as $user (log: $MY/error.log)"
  # secure_file_priv: the server reads and writes files only under $MY/files (and the
  # dtss user, without FILE, not even there). LOCAL INFILE sends the client's data.
  setsid nohup mariadbd --no-defaults --datadir="$MY/data" --socket="$MY/mysqld.sock" \
    --pid-file="$MY/mysqld.pid" --port="$MYSQL_PORT" --bind-address="$BIND" --user="$user" \
    --log-error="$MY/error.log" --skip-name-resolve --max-connections=1000 \
    --innodb-buffer-pool-size=2G --innodb-log-file-size=2G \
    --innodb-io-capacity=2000 --innodb-io-capacity-max=8000 --local-infile=1 \
    --secure-file-priv="$MY/files" \
    </dev/null >/dev/null 2>&1 9>&- &
  wait_until_up MariaDB $! mysql_ping "$MY/error.log"
  # Root only through the socket, as the OS root; dtss only on the databases named
  # dtss…, with no global privilege (no FILE, no SUPER). Applied at every start, so an
  # older data directory is brought to the same state.
  mysql_users "$MY/mysqld.sock"
}

# The dtss user's password: random, made on the first start, kept in $PASSWORD_FILE
# (mode 0600, read by every dtss command as the default mysql.password_file).
PASSWORD_FILE=$DTSS_HOME/mysql-password
mysql_password() {
  if [ ! -s "$PASSWORD_FILE" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '+/=' >"$PASSWORD_FILE.new" &&
      mv "$PASSWORD_FILE.new" "$PASSWORD_FILE")
    log "generated the MySQL password of dtss into $PASSWORD_FILE (mode 0600)"
  fi
  chmod 600 "$PASSWORD_FILE"
  cat "$PASSWORD_FILE"
}

# mysql_users SOCKET: root only through the socket; dtss on the dtss… databases only,
# with the password of $PASSWORD_FILE (set again at every start, so it never drifts).
mysql_users() {
  local pw
  pw=$(mysql_password)
  mariadb --no-defaults --socket="$1" -uroot <<SQL
CREATE USER IF NOT EXISTS 'dtss'@'127.0.0.1' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'dtss'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'dtss'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'dtss'@'localhost' IDENTIFIED BY '$pw';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'dtss'@'127.0.0.1', 'dtss'@'localhost';
GRANT ALL PRIVILEGES ON \`dtss%\`.* TO 'dtss'@'127.0.0.1', 'dtss'@'localhost';
DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1', 'root'@'%';
ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket;
SQL
  mariadb --no-defaults --socket="$1" -uroot \
    -e "DROP USER IF EXISTS 'root'@'$(hostname)'"
  if [ -n "$MYSQL_CLIENTS" ]; then
    case $MYSQL_CLIENTS in *[!0-9.%]*) echo "DTSS_MYSQL_CLIENTS: an address pattern like 10.77.0.%, got $MYSQL_CLIENTS" >&2; exit 2 ;; esac
    mariadb --no-defaults --socket="$1" -uroot <<SQL
CREATE USER IF NOT EXISTS 'dtss'@'$MYSQL_CLIENTS' IDENTIFIED BY '$pw';
ALTER USER 'dtss'@'$MYSQL_CLIENTS' IDENTIFIED BY '$pw';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'dtss'@'$MYSQL_CLIENTS';
GRANT ALL PRIVILEGES ON \`dtss%\`.* TO 'dtss'@'$MYSQL_CLIENTS';
SQL
  fi
}

# A MariaDB Galera cluster of $GALERA nodes. Node I: $SVC/galera/I, client port
# $GALERA_PORT+I, group port 45I7, IST 45I8, rsync state transfer 45I9. Every node runs
# as the mysql OS user (the rsync transfer writes the joiner's data directory as it).
GALERA_PORT=${DTSS_GALERA_PORT:-3310}
GALERA=0
# A dead node is suspected after 3 s without a word from it (Galera's default: 5 s);
# the cluster stops committing until the survivors agree it is gone. The install and
# eviction timeouts stay long: on a loaded machine a shorter install timeout split the
# survivors into two non-primary components.
GALERA_EVS="evs.keepalive_period=PT1S;evs.inactive_check_period=PT1S;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT15S;evs.install_timeout=PT7.5S"

galera_dir() { echo "$SVC/galera/$1"; }
galera_ping() { mariadb-admin --no-defaults --socket="$(galera_dir "$1")/mysqld.sock" -uroot ping >/dev/null 2>&1; }
galera_alive() { pid_alive "$(galera_dir "$1")/mysqld.pid" "$(galera_dir "$1")/data"; }
# Synced: the node has every write set of the cluster and takes queries.
galera_synced() {
  local state
  state=$(mariadb --no-defaults --socket="$(galera_dir "$1")/mysqld.sock" -uroot -Nse \
    "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | cut -f2)
  [ "$state" = Synced ]
}

galera_node_up() {
  local i=$1 bootstrap=${2:-} d addresses=() n
  d=$(galera_dir "$i")
  already_running "Galera node $i" "$d/mysqld.pid" "$d/data" "galera_ready_$i" "$d/error.log" \
    "127.0.0.1:$((GALERA_PORT + i))" && return
  for n in $(seq 1 "$GALERA"); do addresses+=("127.0.0.1:45${n}7"); done
  mkdir -p "$d/data" "$d/files"
  if [ -n "$bootstrap" ] && [ ! -d "$d/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$d/data" --user=mysql \
      --auth-root-authentication-method=socket --skip-test-db >"$d/install.log" 2>&1 || {
      cat "$d/install.log" >&2
      exit 1
    }
  fi
  # A cluster started again after every node stopped: this node's state is the one to
  # start from (nodes of a test cluster on one machine stop together).
  if [ -n "$bootstrap" ] && [ -f "$d/data/grastate.dat" ]; then
    sed -i 's/^safe_to_bootstrap: 0/safe_to_bootstrap: 1/' "$d/data/grastate.dat"
  fi
  chown -R mysql: "$d"
  chmod 750 "$d" "$d/files"
  log "starting Galera node $i on 127.0.0.1:$((GALERA_PORT + i))${bootstrap:+ (new cluster)} (log: $d/error.log)"
  local IFS=,
  setsid nohup mariadbd --no-defaults --datadir="$d/data" --socket="$d/mysqld.sock" \
    --pid-file="$d/mysqld.pid" --port="$((GALERA_PORT + i))" --bind-address=127.0.0.1 --user=mysql \
    --log-error="$d/error.log" --skip-name-resolve --max-connections=1000 \
    --innodb-buffer-pool-size=512M --innodb-log-file-size=256M --local-infile=1 \
    --secure-file-priv="$d/files" --binlog-format=ROW --innodb-autoinc-lock-mode=2 \
    --wsrep-on=ON --wsrep-provider=/usr/lib/galera/libgalera_smm.so --wsrep-cluster-name=dtss \
    --wsrep-cluster-address="gcomm://${addresses[*]}" --wsrep-node-address="127.0.0.1:45${i}7" \
    --wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:45${i}7;ist.recv_addr=127.0.0.1:45${i}8;$GALERA_EVS" \
    --wsrep-sst-receive-address="127.0.0.1:45${i}9" --wsrep-sst-method=rsync \
    ${bootstrap:+--wsrep-new-cluster} </dev/null >/dev/null 2>&1 9>&- &
  unset IFS
  local pid=$!
  wait_until_up "Galera node $i" "$pid" "galera_ready_$i" "$d/error.log"
}

# galera_ready_I: answers and is Synced (one function per node for wait_until_up).
for _n in 1 2 3 4 5 6 7 8 9; do
  eval "galera_ready_$_n() { galera_ping $_n && galera_synced $_n; }"
done

galera_up() {
  local i running=0
  for i in $(seq 1 "$GALERA"); do galera_alive "$i" && running=1; done
  if [ "$running" = 0 ]; then
    galera_node_up 1 bootstrap
  fi
  for i in $(seq 1 "$GALERA"); do galera_node_up "$i"; done
  mysql_users "$(galera_dir 1)/mysqld.sock"
}

galera_nodes() { ls -d "$SVC"/galera/[0-9]* 2>/dev/null | xargs -rn1 basename | sort -n; }

# ZooKeeper answers "imok" to "ruok". Read exactly those 4 bytes rather than up to
# EOF: a ruok that arrives while the server is still loading its database is
# answered, but its socket is never closed (an NPE in ZooKeeper's close path).
zk_ruok() {
  local reply
  reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf ruok >&3 && head -c 4 <&3' _ "$BIND" "$ZK_PORT" 2>/dev/null) || return 1
  [ "$reply" = imok ]
}

zk_up() {
  already_running ZooKeeper "$ZK/zk.pid" "$ZK/zoo.cfg" zk_ruok "$ZK/zk.log" \
    "$BIND:$ZK_PORT" "give this one another port (DTSS_ZK_PORT)" && return
  mkdir -p "$ZK/data"
  cat >"$ZK/zoo.cfg" <<EOF
tickTime=500
initLimit=10
syncLimit=5
dataDir=$ZK/data
clientPort=$ZK_PORT
clientPortAddress=$BIND
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr,stat,ruok,mntr
minSessionTimeout=1000
maxSessionTimeout=30000
EOF
  zk_ensemble
  log "starting ZooKeeper on $BIND:$ZK_PORT${ZK_ID:+ (member $ZK_ID of $ZK_ENSEMBLE)} (log: $ZK/zk.log)"
  setsid nohup java -Xmx512m -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS -cp "$ZK_CP" org.apache.zookeeper.server.quorum.QuorumPeerMain \
    "$ZK/zoo.cfg" </dev/null >"$ZK/zk.log" 2>&1 9>&- &
  echo $! >"$ZK/zk.pid"
  wait_until_up ZooKeeper $! zk_ruok "$ZK/zk.log"
}

# With DTSS_ZK_ENSEMBLE: the members in zoo.cfg (quorum port 2888, election 3888 on
# each member's address) and this one's id in myid.
zk_ensemble() {
  [ -n "$ZK_ENSEMBLE" ] || return 0
  case $ZK_ID in '' | *[!0-9]*) echo "DTSS_ZK_ID: this member's place in DTSS_ZK_ENSEMBLE (1, 2, ...), got ${ZK_ID:-nothing}" >&2; exit 2 ;; esac
  local n=0 a
  for a in $ZK_ENSEMBLE; do
    n=$((n + 1))
    echo "server.$n=$a:2888:3888" >>"$ZK/zoo.cfg"
  done
  [ "$ZK_ID" -ge 1 ] && [ "$ZK_ID" -le "$n" ] || { echo "DTSS_ZK_ID: $ZK_ID is not between 1 and $n" >&2; exit 2; }
  echo "$ZK_ID" >"$ZK/data/myid"
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
    # A live process of another command line (this folder reached through a link)
    # keeps its file: without it, its own `down` could not stop it.
    pid=$(cat "$pidfile" 2>/dev/null) && [ -n "$pid" ] && [ -d "/proc/$pid" ] && return
  fi
  rm -f "$pidfile"
}

mkdir -p "$SVC"
# watch [--zookeeper-only]: up, then return (1) when a service it started dies, for a
# supervisor (scripts/supervise.sh) to call it again; SIGTERM stops them first.
if [ "${1:-}" = watch ]; then
  shift
  bash "$0" up "$@" || exit 1
  trap 'bash "$0" down; exit 0' TERM INT
  while :; do
    pid_alive "$ZK/zk.pid" "$ZK/zoo.cfg" || { log "ZooKeeper is gone"; exit 1; }
    if [ "${1:-}" != --zookeeper-only ] && ! pid_alive "$MY/mysqld.pid" "$MY/data"; then
      log "MariaDB is gone"
      exit 1
    fi
    sleep 0.5 &
    wait $!
  done
fi

exec 9>"$SVC/.lock"
flock 9

galera_count() {
  case "${1:-}" in
  '' | *[!0-9]* | 0 | 1) echo "--galera takes a number of nodes from 2 to 9, got ${1:-nothing}" >&2; exit 2 ;;
  *) [ "$1" -le 9 ] || { echo "--galera takes at most 9 nodes" >&2; exit 2; } ;;
  esac
  GALERA=$1
}

case "${1:-}" in
up)
  if [ "${2:-}" = --galera ]; then
    galera_count "${3:-}"
    install_missing
    galera_up
    ports=$(seq -s, $((GALERA_PORT + 1)) $((GALERA_PORT + GALERA)))
    zk_up
    log "ready: Galera $GALERA nodes on 127.0.0.1 ports $ports (user dtss, password in $PASSWORD_FILE)  zookeeper 127.0.0.1:$ZK_PORT  data $SVC"
  elif [ "${2:-}" = --zookeeper-only ]; then
    install_missing
    zk_up
    log "ready: zookeeper $BIND:$ZK_PORT  data $SVC"
  else
    install_missing
    mysql_up
    zk_up
    log "ready: mysql://dtss@$BIND:$MYSQL_PORT (password in $PASSWORD_FILE)  zookeeper $BIND:$ZK_PORT  data $SVC"
  fi
  ;;
node-start)
  GALERA=$(galera_nodes | wc -l)
  [ -d "$(galera_dir "${2:-x}")" ] || { echo "usage: $0 node-start I (a node of the Galera cluster under $SVC/galera)" >&2; exit 2; }
  galera_node_up "$2"
  ;;
node-stop)
  [ -d "$(galera_dir "${2:-x}")" ] || { echo "usage: $0 node-stop I" >&2; exit 2; }
  stop_pid "$(galera_dir "$2")/mysqld.pid" "$(galera_dir "$2")/data" "Galera node $2"
  ;;
down)
  stop_pid "$ZK/zk.pid" "$ZK/zoo.cfg" ZooKeeper
  stop_pid "$MY/mysqld.pid" "$MY/data" MariaDB
  for i in $(galera_nodes); do
    galera_alive "$i" && stop_pid "$(galera_dir "$i")/mysqld.pid" "$(galera_dir "$i")/data" "Galera node $i"
  done
  true
  ;;
status)
  if pid_alive "$MY/mysqld.pid" "$MY/data" && mysql_ping; then echo "mariadb: up $BIND:$MYSQL_PORT"; else echo "mariadb: down"; fi
  for i in $(galera_nodes); do
    if galera_alive "$i" && galera_synced "$i"; then echo "galera node $i: synced 127.0.0.1:$((GALERA_PORT + i))"; else echo "galera node $i: down or not synced"; fi
  done
  if pid_alive "$ZK/zk.pid" "$ZK/zoo.cfg" && zk_ruok; then echo "zookeeper: up $BIND:$ZK_PORT"; else echo "zookeeper: down"; fi
  ;;
*)
  echo "usage: $0 up [--galera N | --zookeeper-only] | watch [--zookeeper-only] | down | status | node-start I | node-stop I" >&2
  exit 2
  ;;
esac
