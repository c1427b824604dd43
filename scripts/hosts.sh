#!/usr/bin/env bash
# Three hosts on one machine, each a Linux network namespace with its own address, and
# DTSS across them as deploy/cluster.3hosts.toml lays it out:
#
#   root namespace: bridge dtss-br 10.77.0.1/24, nginx on 127.0.0.1:$NGINX_PORT (8090)
#     in front of the ingest replicas (deploy/nginx.conf, its addresses replaced)
#   dtss-hI (10.77.0.1I): a ZooKeeper member, one timely process of 2 workers, an ingest
#     replica on :8080, a rate modifier (one leads); host 1 also MariaDB and the broker
#
# Every process runs under `dtss supervise` (the role systemd plays in production),
# which restarts it with backoff when it exits. State lives under $DTSS_HOME/hosts.
#
#   scripts/hosts.sh up             make the hosts, start everything, wait until orders
#                                   through nginx are answered (idempotent)
#   scripts/hosts.sh down           stop everything and remove the hosts
#   scripts/hosts.sh status         what runs on each host
#   scripts/hosts.sh kill-host I    kill -9 every process of host I but its supervisors
#                                   (a crashed host whose init system starts it all again)
#   scripts/hosts.sh kill I ROLE    kill -9 host I's ROLE: worker, ingest, rates, broker,
#                                   zookeeper or mariadb
#   scripts/hosts.sh cut I SECONDS  cut host I off the network for SECONDS, then restore it
#   scripts/hosts.sh config         print the path of the cluster's config file
#
# Environment: DTSS_HOME (default <repo>/.dtss), DTSS_BIN (default the release build),
# DTSS_NGINX_PORT (8090).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DTSS_HOME=${DTSS_HOME:-$ROOT/.dtss}
mkdir -p "$DTSS_HOME"
H=$(cd "$DTSS_HOME" && pwd)/hosts
BIN=${DTSS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dtss}
[ -e "$BIN" ] && BIN=$(realpath "$BIN")
NGINX_PORT=${DTSS_NGINX_PORT:-8090}
HOSTS=3
NET=10.77.0
BRIDGE=dtss-br
CONFIG=$H/cluster.toml

log() { printf '[hosts] %s\n' "$*" >&2; }
ns() { echo "dtss-h$1"; }
addr() { echo "$NET.1$1"; }
in_host() {
  local i=$1
  shift
  ip netns exec "$(ns "$i")" "$@"
}

install_missing() {
  local need=()
  command -v ip >/dev/null || need+=(iproute2)
  command -v nginx >/dev/null || need+=(nginx-light)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

net_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  for i in $(seq 1 $HOSTS); do
    ip netns list | grep -qw "$(ns "$i")" || ip netns add "$(ns "$i")"
    if ! ip link show "$(ns "$i")" >/dev/null 2>&1; then
      ip link add "$(ns "$i")" type veth peer name eth0 netns "$(ns "$i")"
      ip -n "$(ns "$i")" addr add "$(addr "$i")/24" dev eth0
    fi
    ip link set "$(ns "$i")" master "$BRIDGE" up
    ip -n "$(ns "$i")" link set lo up
    ip -n "$(ns "$i")" link set eth0 up
  done
  log "hosts $(for i in $(seq 1 $HOSTS); do printf '%s=%s ' "$(ns "$i")" "$(addr "$i")"; done)on bridge $BRIDGE"
}

net_down() {
  for i in $(seq 1 $HOSTS); do
    ip netns del "$(ns "$i")" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

# The cluster's config: the repository's cluster.toml with the hosts' addresses.
write_config() {
  local procs zk
  procs=$(for i in $(seq 1 $HOSTS); do printf '"%s:2101", ' "$(addr "$i")"; done)
  zk=$(for i in $(seq 1 $HOSTS); do printf '%s:2181,' "$(addr "$i")"; done)
  mkdir -p "$H/data"
  "$BIN" --config "$ROOT/cluster.toml" config --set "cluster.processes=[${procs%, }]" \
    --set cluster.workers_per_process=2 --set cluster.data_dir=data \
    --set "kafka.brokers=[\"$(addr 1):9092\"]" --set "zookeeper.connect=${zk%,}" \
    --set "mysql.url=mysql://dtss@$(addr 1):3306/dtss" --set mysql.password_file=h1/mysql-password \
    --set ingest.listen=0.0.0.0:8080 --set currencies.modifier_period_ms=2000 >"$CONFIG"
}

# supervised I NAME -- COMMAND...: COMMAND on host I under `dtss supervise`, unless
# its supervisor already runs. Log: $H/hI/NAME.log; the supervisor's pid: NAME.pid.
supervised() {
  local i=$1 name=$2 dir=$H/h$1 pid
  shift 3
  mkdir -p "$dir"
  if [ -f "$dir/$name.pid" ]; then
    pid=$(cat "$dir/$name.pid")
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF " supervise $name $dir"; then
      return
    fi
  fi
  rm -f "$dir/$name.pid"
  SUPERVISE_PIDFILE=$dir/$name.pid in_host "$i" setsid nohup "$BIN" supervise \
    "$name" "$dir/$name.log" -- "$@" </dev/null >/dev/null 2>&1 &
  for _ in $(seq 1 50); do
    [ -s "$dir/$name.pid" ] && return
    sleep 0.1
  done
  log "the supervisor of $name on host $i did not start"
  exit 1
}

services_up() {
  local ensemble i
  ensemble=$(for i in $(seq 1 $HOSTS); do printf '%s ' "$(addr "$i")"; done)
  for i in $(seq 1 $HOSTS); do
    local only=--zookeeper-only
    [ "$i" = 1 ] && only=
    supervised "$i" services -- env DTSS_HOME="$H/h$i" DTSS_BIND="$(addr "$i")" \
      DTSS_MYSQL_CLIENTS="$NET.%" DTSS_ZK_ENSEMBLE="${ensemble% }" DTSS_ZK_ID="$i" \
      "$BIN" services watch $only
  done
  # The broker first: init creates the topic on it.
  supervised 1 broker -- "$BIN" --config "$CONFIG" broker --listen "$(addr 1):9092"
  log "waiting for MariaDB on host 1, a ZooKeeper quorum and the broker"
  local start=$SECONDS
  until [ -s "$H/h1/mysql-password" ] && in_host 1 "$BIN" --config "$CONFIG" init --admin-token >"$H/init.log" 2>&1; do
    [ $((SECONDS - start)) -lt 300 ] || { log "no quorum or MariaDB after 300 s; see $H/h*/services.log and $H/init.log"; exit 1; }
    sleep 1
  done
  log "schema, catalogue and rates ready after $((SECONDS - start)) s"
}

dtss_up() {
  for i in $(seq 1 $HOSTS); do
    supervised "$i" worker -- "$BIN" --config "$CONFIG" worker --process $((i - 1)) --metrics-listen "$(addr "$i"):9101"
    supervised "$i" ingest -- "$BIN" --config "$CONFIG" ingest --listen "$(addr "$i"):8080"
    supervised "$i" rates -- "$BIN" --config "$CONFIG" rates run
  done
}

nginx_up() {
  local d=$H/nginx
  mkdir -p "$d/logs" "$d/tmp"
  chown -R www-data: "$d/tmp" 2>/dev/null || true
  {
    echo "user www-data;"
    echo "worker_processes 2;"
    echo "pid $d/nginx.pid;"
    echo "error_log $d/logs/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log off;"
    echo "  client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy;"
    echo "  fastcgi_temp_path $d/tmp/fastcgi; uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;"
    sed -e "s|10\.0\.0\.1\([0-9]\):8080|$NET.1\1:8080|" -e "s|listen 80;|listen 127.0.0.1:$NGINX_PORT;|" \
      "$ROOT/deploy/nginx.conf"
    echo "}"
  } >"$d/nginx.conf"
  if [ -f "$d/nginx.pid" ] && kill -0 "$(cat "$d/nginx.pid")" 2>/dev/null; then
    nginx -p "$d" -c "$d/nginx.conf" -s reload
  else
    nginx -p "$d" -c "$d/nginx.conf"
  fi
}

wait_serving() {
  local start=$SECONDS
  until curl -sf -m 2 "http://127.0.0.1:$NGINX_PORT/healthz" >/dev/null &&
    [ "$(healthy_replicas)" = $HOSTS ]; do
    [ $((SECONDS - start)) -lt 180 ] || { log "not serving after 180 s; see $H/h*/*.log"; exit 1; }
    sleep 1
  done
  log "serving through nginx at http://127.0.0.1:$NGINX_PORT after $((SECONDS - start)) s (config $CONFIG)"
}

healthy_replicas() {
  local n=0 i
  for i in $(seq 1 $HOSTS); do
    curl -sf -m 1 "http://$(addr "$i"):8080/healthz" >/dev/null && n=$((n + 1))
  done
  echo $n
}

# The pids of host I's processes, its supervisors left out.
host_pids() {
  local pid
  for pid in $(ip netns pids "$(ns "$1")"); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q " supervise " || echo "$pid"
  done
}

# The pid of the process host I's supervisor NAME runs now.
role_pid() {
  local sup
  sup=$(cat "$H/h$1/$2.pid")
  pgrep -P "$sup" | head -1
}

kill_role() {
  local i=$1 role=$2 pid
  case $role in
  worker | ingest | rates | broker) pid=$(role_pid "$i" "$role") ;;
  zookeeper) pid=$(cat "$H/h$i/services/zookeeper/zk.pid") ;;
  mariadb) pid=$(cat "$H/h$i/services/mariadb/mysqld.pid") ;;
  *) echo "kill: a role is worker, ingest, rates, broker, zookeeper or mariadb" >&2; exit 2 ;;
  esac
  [ -n "$pid" ] || { log "host $i runs no $role now"; exit 1; }
  log "kill -9 $role of host $i (pid $pid)"
  kill -KILL "$pid"
}

stop_all() {
  local i name
  if [ -f "$H/nginx/nginx.pid" ]; then nginx -p "$H/nginx" -c "$H/nginx/nginx.conf" -s stop 2>/dev/null || true; fi
  for name in ingest rates worker broker services; do
    for i in $(seq 1 $HOSTS); do
      [ -f "$H/h$i/$name.pid" ] && kill -TERM "$(cat "$H/h$i/$name.pid")" 2>/dev/null || true
    done
    for i in $(seq 1 $HOSTS); do
      [ -f "$H/h$i/$name.pid" ] || continue
      for _ in $(seq 1 400); do
        kill -0 "$(cat "$H/h$i/$name.pid")" 2>/dev/null || break
        sleep 0.1
      done
      rm -f "$H/h$i/$name.pid"
    done
  done
  for i in $(seq 1 $HOSTS); do
    ip netns list | grep -qw "$(ns "$i")" || continue
    for pid in $(ip netns pids "$(ns "$i")"); do kill -KILL "$pid" 2>/dev/null || true; done
  done
}

host_index() {
  case ${1:-} in
  [1-3]) ;;
  *) echo "a host is 1, 2 or 3, got ${1:-nothing}" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
up)
  [ -x "$BIN" ] || { echo "no dtss binary at $BIN: cargo build --release first, or set DTSS_BIN" >&2; exit 2; }
  install_missing
  net_up
  write_config
  services_up
  dtss_up
  nginx_up
  wait_serving
  ;;
down)
  stop_all
  net_down
  log "hosts removed (state kept in $H)"
  ;;
status)
  for i in $(seq 1 $HOSTS); do
    ip netns list | grep -qw "$(ns "$i")" || { echo "host $i: absent"; continue; }
    printf 'host %s (%s):' "$i" "$(addr "$i")"
    for name in services broker worker ingest rates; do
      [ -f "$H/h$i/$name.pid" ] && kill -0 "$(cat "$H/h$i/$name.pid")" 2>/dev/null && printf ' %s' "$name"
    done
    echo
  done
  echo "ingest replicas answering: $(healthy_replicas) of $HOSTS"
  ;;
kill-host)
  host_index "${2:-}"
  pids=$(host_pids "$2" | tr '\n' ' ')
  log "kill -9 every process of host $2: $pids"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  ;;
kill)
  host_index "${2:-}"
  kill_role "$2" "${3:-}"
  ;;
cut)
  host_index "${2:-}"
  case ${3:-} in '' | *[!0-9]*) echo "cut I SECONDS: SECONDS is a whole number" >&2; exit 2 ;; esac
  log "host $2 off the network for $3 s"
  ip -n "$(ns "$2")" link set eth0 down
  sleep "$3"
  ip -n "$(ns "$2")" link set eth0 up
  log "host $2 back on the network"
  ;;
config)
  echo "$CONFIG"
  ;;
*)
  echo "usage: $0 up | down | status | kill-host I | kill I ROLE | cut I SECONDS | config" >&2
  exit 2
  ;;
esac
