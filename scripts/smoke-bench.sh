#!/usr/bin/env bash
# Smoke bench: bring a fresh local system up (own database, ZooKeeper root and ports;
# MariaDB and ZooKeeper must be up), run a few seconds of open-loop load with
# `dtss bench` (which ends with the invariant checks), run `dtss check`, stop it all.
# Usage: scripts/smoke-bench.sh [path/to/dtss]
set -euo pipefail
cd "$(dirname "$0")/.."
dtss=${1:-target/release/dtss}
[[ -x $dtss ]] || dtss="${CARGO_TARGET_DIR:-target}/release/dtss"

unique="smoke_$$_$(date +%s)"
dir=$(mktemp -d "${TMPDIR:-/tmp}/dtss-$unique.XXXX")
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listen="127.0.0.1:$(port)"
"$dtss" --config cluster.toml config --set "cluster.processes=[\"127.0.0.1:$(port)\"]" \
  --set cluster.data_dir=data --set "zookeeper.root=/dtss_$unique" \
  --set "mysql.url=mysql://dtss@127.0.0.1:3306/dtss_$unique" \
  --set "mysql.password_file=$PWD/.dtss/mysql-password" \
  --set "ingest.listen=$listen" --set currencies.modifier_period_ms=500 >"$dir/cluster.toml"

up_pid=
cleanup() {
  if [[ -n $up_pid ]] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"
    wait "$up_pid" || true
  fi
  MYSQL_PWD=$(cat .dtss/mysql-password) mariadb --no-defaults -h127.0.0.1 -P3306 -udtss -e "DROP DATABASE IF EXISTS dtss_$unique" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

echo "== smoke bench: dtss up (config $dir/cluster.toml)"
"$dtss" --config "$dir/cluster.toml" up --no-services >"$dir/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 600); do
  grep -q "DTSS is up" "$dir/up.log" && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$dir/up.log"; echo "dtss up exited"; exit 1; }
  sleep 0.1
done
grep -q "DTSS is up" "$dir/up.log" || { cat "$dir/up.log"; echo "dtss up did not come up in 60 s"; exit 1; }

echo "== smoke bench: dtss bench (open loop, 1000 orders/s, 1 s ramp + 4 s steady, rate changes)"
"$dtss" --config "$dir/cluster.toml" bench --rate 1000 --ramp 1 --duration 4 \
  --rate-changes-per-s 5 --drain-timeout 60 --out "$dir/bench" \
  --record "$dir/records.jsonl" --label smoke
"$dtss" --config "$dir/cluster.toml" bench records "$dir/records.jsonl" --label smoke
echo "== smoke bench: dtss check (each 202'd order has exactly one result, and no other result exists)"
"$dtss" --config "$dir/cluster.toml" check --accepted "$dir/bench/accepted.txt"
echo "smoke bench: OK"
