#!/usr/bin/env bash
# The same short bench against the embedded broker, one Tansu on SQLite and three Tansu
# brokers sharing one PostgreSQL, one after the other, each on a fresh system (its own data directory, database and topic), then
# `dtss check --accepted`. Prints one line per backend.
#
#   scripts/bench-brokers.sh [SECONDS] [extra dtss bench options…]
#
# Needs the release binary (cargo build --release) and the services
# (dtss services up); starts Tansu itself (dtss services tansu up, up --postgres 3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_OF_LOAD=${1:-10}
shift || true
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/dtss
[ -x "$BIN" ] || { echo "build the release binary first: cargo build --release" >&2; exit 1; }
"$BIN" services --home "$ROOT/.dtss" up
"$BIN" services --home "$ROOT/.dtss" tansu up
"$BIN" services --home "$ROOT/.dtss" tansu up --postgres 3
OUT=$(mktemp -d /tmp/dtss-bench-brokers.XXXXXX)

# run NAME BROKERS: a fresh dtss up with kafka.brokers = BROKERS ("" = embedded), a bench.
run() {
  local name=$1 brokers=$2 dir=$OUT/$1 stamp
  shift 2
  stamp=$(date +%s%N | cut -c1-13)
  mkdir -p "$dir"
  # Tansu 0.6 drops records under retention -1: a retention of 100 years instead.
  "$BIN" --config "$ROOT/cluster.toml" config --set "cluster.data_dir=$dir/data" \
    --set "mysql.url=mysql://dtss@127.0.0.1:3306/dtss_bench_${name}_$stamp" \
    --set "mysql.password_file=$ROOT/.dtss/mysql-password" \
    --set "zookeeper.root=/dtss_bench_${name}_$stamp" --set "kafka.topic=orders_${name}_$stamp" \
    --set kafka.retention_ms=3153600000000 --set "kafka.brokers=[$brokers]" >"$dir/cluster.toml"
  "$BIN" up --no-services --config "$dir/cluster.toml" >"$dir/up.log" 2>&1 &
  local up=$!
  for _ in $(seq 1 300); do
    grep -q "DTSS is up" "$dir/up.log" && break
    kill -0 "$up" 2>/dev/null || { cat "$dir/up.log" >&2; exit 1; }
    sleep 0.2
  done
  "$BIN" bench --duration "$SECONDS_OF_LOAD" --ramp 2 --config "$dir/cluster.toml" \
    --out "$dir/bench" "$@" >"$dir/bench.log" 2>&1 || { tail -n 30 "$dir/bench.log" >&2; kill "$up"; exit 1; }
  "$BIN" check --accepted "$dir/bench/accepted.txt" --config "$dir/cluster.toml" >"$dir/check.log" 2>&1 ||
    { cat "$dir/check.log" >&2; kill "$up"; exit 1; }
  kill -TERM "$up"
  wait "$up" || true
  printf '%-9s %s | %s | check passed\n' "$name" \
    "$(grep -m1 '^throughput' "$dir/bench.log")" "$(grep -m1 'CPU in the steady' "$dir/bench.log")"
}

run embedded "" "$@"
run tansu '"127.0.0.1:9092"' "$@"
run tansu_pg '"127.0.0.1:9093","127.0.0.1:9094","127.0.0.1:9095"' "$@"
echo "reports under $OUT"
