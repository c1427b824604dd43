#!/usr/bin/env bash
# How fast a worker catches up on a backlog, with nothing else loading the machine: a
# system started fresh (as benches/settings.sh starts one: epochs and watermark delay of
# 5 ms, its own data directory, database and ZooKeeper root; the embedded broker's
# backlog guard raised to 3,000,000), its worker process paused (SIGSTOP) while
# `dtss bench --direct-kafka` fills the topic for SECONDS, then resumed (SIGCONT). Prints
# the orders settled after the resume, how long from the resume to the last commit, the
# rate, and how busy the machine was and how much the hypervisor took (steal) over that
# time. `dtss bench` then waits for the last order and runs `dtss check` (its lines are
# printed too). The paused worker loses its ZooKeeper session: the warnings in its log
# about that are expected.
#
# With RUNS=N (default 1) it does all that N times, each on a system started fresh, and
# ends with the median rate and the runs' rates in order.
#
# Usage: [RUNS=N] benches/catch-up.sh [dtss binary] [SECONDS]   (default: target/release/dtss, 15)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
dtss=$(realpath "${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dtss}")
seconds=${2:-15}
[[ -x $dtss ]] || { echo "no $dtss: build it with cargo build --release" >&2; exit 2; }
runs=${RUNS:-1}
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "RUNS=$runs: give a whole number of runs, 1 or more" >&2; exit 2; }
if ((runs > 1)); then
  rates=() out=$(mktemp)
  trap 'rm -f "$out"' EXIT
  for i in $(seq 1 "$runs"); do
    echo "== run $i of $runs"
    RUNS=1 "$0" "$dtss" "$seconds" | tee "$out"
    line=$(grep '^catch-up:' "$out") || { echo "run $i gave no rate" >&2; exit 1; }
    rates+=("$(sed -E 's|.*: ([0-9]+) orders/s.*|\1|' <<<"$line")")
  done
  median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }')
  echo "catch-up, median of $runs runs: $median orders/s (runs in order: ${rates[*]})"
  exit 0
fi
. "$ROOT/benches/fresh-system.sh"
ready_to_start
name=catchup_$(date +%s)
dir=$(mktemp -d /tmp/dtss-catch-up.XXXXXX)
fresh_config "$name" "$dir" 5 5 --set kafka.max_backlog_per_partition=3000000
grep -q "= 3000000" "$dir/cluster.toml" || { echo "cluster.toml has no max_backlog_per_partition line" >&2; exit 1; }
pid= worker=
stop() {
  [[ -n $worker ]] && kill -CONT "$worker" 2>/dev/null
  [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  pid=
}
trap stop EXIT
export DTSS_CONFIG=$dir/cluster.toml
start_fresh "$dtss" "$dir"
for _ in $(seq 1 120); do
  worker=$(pgrep -f "$dtss worker" | head -1 || true)
  [[ -n $worker ]] && break
  sleep 0.5
done
[[ -n $worker ]] || { echo "no worker process of $dtss started; see $dir/up.log" >&2; exit 1; }
kill -STOP "$worker"
echo "== worker $worker paused; filling the topic for $seconds s ($(date +%T); $dir)"
"$dtss" bench --direct-kafka --duration "$seconds" --ramp 0 --drain-timeout 600 >"$dir/bench.log" 2>&1 &
bench=$!
sleep $((seconds + 3))
# busy, steal and total ticks of the machine, from /proc/stat.
ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $2 + $3 + $4 + $7 + $8, $9, t }' /proc/stat; }
before=$(ticks)
resumed=$(date +%s%3N)
kill -CONT "$worker"
echo "== resumed at $(date +%T)"
sql() { MYSQL_PWD=$(cat "$ROOT/.dtss/mysql-password") mariadb -h127.0.0.1 -P3306 -udtss -N -B "dtss_$name" -e "$1"; }
# Until the offset stops moving for 2 s: the backlog is settled. The machine's ticks are
# taken when it last moved.
last=-1 same=0
while ((same < 4)); do
  sleep 0.5
  now=$(sql "SELECT next_offset FROM offsets LIMIT 1")
  if [[ $now == "$last" ]]; then same=$((same + 1)); else same=0 last=$now after=$(ticks); fi
  printf '\r   offset %s' "$now"
done
echo
read -r orders end < <(sql "SELECT SUM(orders), MAX(committed_at) FROM settle_batches WHERE started_at >= $resumed")
wait "$bench" || true
grep -E "throughput|dtss check|check:" "$dir/bench.log" | sed 's/^/   /'
echo "$before $after" | awk -v n="$orders" -v ms="$((end - resumed))" '{
  b = $4 - $1; s = $5 - $2; t = $6 - $3
  printf "catch-up: %d orders settled in %.1f s after the resume: %d orders/s; machine %.0f %% busy, %.0f %% steal\n", n, ms / 1000, n * 1000 / ms, 100 * b / t, 100 * s / t
}'
echo "logs: $dir"
