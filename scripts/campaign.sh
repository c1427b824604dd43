#!/usr/bin/env bash
# The fault campaign: on the three hosts of scripts/hosts.sh (made fresh first), each
# scenario ROUNDS times under steady load through nginx, every round ending with a
# strict `dtss check --accepted` over every order accepted so far. Prints one table:
#
#   fault | rounds | accepted | settled | lost | duplicated | recovery p50 | max | restarted p50
#
# recovery: from the fault until every partition has committed twice more (the
# cluster back and settling everywhere); restarted: from the fault until the last
# process the supervisors restarted was started again.
#
#   scripts/campaign.sh [--rounds N] [--steady S] [--rate R] [SCENARIO...]
#
# Scenarios (default all): worker (kill -9 host 2's timely process), host (kill -9
# every process of host 3), cut (host 3 off the network for 10 s), ingest (kill -9
# host 2's ingest replica), zk-leader (kill -9 the ZooKeeper leader), mariadb (kill -9
# MariaDB), broker (kill -9 the broker). Defaults: 5 rounds of 30 s at 2,000 orders/s,
# the fault 10 s in. Results under $DTSS_HOME/campaign/<time>/. Exit 1 if any round
# lost or duplicated an order or did not recover.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DTSS_HOME=${DTSS_HOME:-$ROOT/.dtss}
BIN=${DTSS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dtss}
[ -e "$BIN" ] && BIN=$(realpath "$BIN")
ROUNDS=5 STEADY=30 RATE=2000 FAULT_AT=10
SCENARIOS=()
while [ $# -gt 0 ]; do
  case $1 in
  --rounds) ROUNDS=$2; shift 2 ;;
  --steady) STEADY=$2; shift 2 ;;
  --rate) RATE=$2; shift 2 ;;
  worker | host | cut | ingest | zk-leader | mariadb | broker) SCENARIOS+=("$1"); shift ;;
  *) echo "usage: $0 [--rounds N] [--steady S] [--rate R] [worker|host|cut|ingest|zk-leader|mariadb|broker ...]" >&2; exit 2 ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(worker host cut ingest zk-leader mariadb broker)
for n in "$ROUNDS" "$STEADY" "$RATE"; do
  case $n in '' | *[!0-9]* | 0) echo "--rounds, --steady and --rate take positive whole numbers" >&2; exit 2 ;; esac
done
[ "$STEADY" -gt $((FAULT_AT + 5)) ] || { echo "--steady must be over $((FAULT_AT + 5)) s (the fault comes $FAULT_AT s in)" >&2; exit 2; }

hosts() { DTSS_HOME=$DTSS_HOME DTSS_BIN=$BIN bash "$ROOT/scripts/hosts.sh" "$@"; }
log() { printf '[campaign] %s\n' "$*" >&2; }
now_ms() { date +%s%3N; }

OUT=$DTSS_HOME/campaign/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
H=$DTSS_HOME/hosts
log "fresh hosts (results in $OUT)"
hosts down >/dev/null 2>&1 || true
rm -rf "$H"
hosts up
CONFIG=$(hosts config)
ACCEPTED=$OUT/accepted-all.txt
: >"$ACCEPTED"

sql() {
  MYSQL_PWD=$(cat "$H/h1/mysql-password") ip netns exec dtss-h1 mariadb --no-defaults \
    -h10.77.0.11 -udtss -N -B --connect-timeout=1 dtss -e "$1" 2>/dev/null
}
offsets() { sql "SELECT GROUP_CONCAT(next_offset ORDER BY \`partition\`) FROM offsets WHERE topic = 'orders'"; }

zk_leader() {
  local i mode
  for i in 1 2 3; do
    mode=$(timeout 2 bash -c 'exec 3<>/dev/tcp/10.77.0.1'"$i"'/2181 && printf srvr >&3 && cat <&3' 2>/dev/null | grep '^Mode:' || true)
    [ "$mode" = "Mode: leader" ] && { echo "$i"; return; }
  done
  echo 1
}

fault() {
  case $1 in
  worker) hosts kill 2 worker ;;
  host) hosts kill-host 3 ;;
  cut)
    # Down now (the fault's time is taken just before), back up 10 s later.
    ip -n dtss-h3 link set eth0 down
    (sleep 10 && ip -n dtss-h3 link set eth0 up) &
    ;;
  ingest) hosts kill 2 ingest ;;
  zk-leader) hosts kill "$(zk_leader)" zookeeper ;;
  mariadb) hosts kill 1 mariadb ;;
  broker) hosts kill 1 broker ;;
  esac
}

# recovery FAULT_MS: ms until every partition's stored offset moved twice, or -1.
recovery() {
  local t0=$1 before last now moves=0 cur
  before=$(offsets || true)
  last=$before
  declare -A moved=()
  while :; do
    now=$(now_ms)
    [ $((now - t0)) -lt 120000 ] || { echo -1; return; }
    cur=$(offsets || true)
    if [ -n "$cur" ] && [ "$cur" != "$last" ]; then
      IFS=, read -ra a <<<"$last"
      IFS=, read -ra b <<<"$cur"
      for p in "${!b[@]}"; do
        [ "${b[$p]}" != "${a[$p]:-}" ] && moved[$p]=$((${moved[$p]:-0} + 1))
      done
      last=$cur
      moves=0
      for p in "${!b[@]}"; do [ "${moved[$p]:-0}" -ge 2 ] && moves=$((moves + 1)); done
      [ "$moves" -eq "${#b[@]}" ] && { echo $(($(now_ms) - t0)); return; }
    fi
    sleep 0.1
  done
}

# restarted FAULT_MS: ms from the fault to the last supervised start after it (0: none).
restarted() {
  awk -v t0="$1" '$1 == "[supervise]" && $4 == "started" && $2 > t0 && $2 - t0 < 120000 { d = $2 - t0; if (d > m) m = d } END { print m + 0 }' "$H"/h*/*.log
}

percentile() { sort -n | awk -v q="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int((NR - 1) * q + 0.5) + 1; print v[i] }'; }

cpu() { awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9 }' /proc/stat; }
read -r cpu0 steal0 < <(cpu)
failed=0
printf 'scenario\tround\taccepted\tsettled\tlost\tduplicated\trecovery_ms\trestarted_ms\n' >"$OUT/rounds.tsv"
for s in "${SCENARIOS[@]}"; do
  for r in $(seq 1 "$ROUNDS"); do
    dir=$OUT/$s-$r
    mkdir -p "$dir"
    log "$s, round $r of $ROUNDS: $RATE orders/s for $STEADY s, the fault $FAULT_AT s in"
    "$BIN" bench --config "$CONFIG" --url "http://127.0.0.1:${DTSS_NGINX_PORT:-8090}" --rate "$RATE" --connections 64 \
      --duration "$STEADY" --ramp 1 --out "$dir/bench" >"$dir/bench.log" 2>&1 &
    bench=$!
    sleep $((FAULT_AT + 1))
    t0=$(now_ms)
    fault "$s" >>"$dir/fault.log" 2>&1
    rec=$(recovery "$t0")
    wait "$bench" || true
    rst=$(restarted "$t0")
    cat "$dir/bench/accepted.txt" >>"$ACCEPTED" 2>/dev/null || true
    # Let every replica settle what it took, then the strict check over all rounds.
    "$BIN" check --config "$CONFIG" --accepted "$ACCEPTED" >"$dir/check.log" 2>&1 && ok=1 || ok=0
    read -r acc set < <(sed -n 's/^orders: sent [0-9]*, accepted \([0-9]*\), settled \([0-9]*\).*/\1 \2/p' "$dir/bench.log")
    lost=$(sed -n 's/.* \([0-9]*\) accepted orders have no result.*/\1/p' "$dir/check.log" | head -1)
    dup=$(sed -n 's/.* \([0-9]*\) results for orders never accepted.*/\1/p' "$dir/check.log" | head -1)
    lost=${lost:-0} dup=${dup:-0}
    if [ "$ok" = 0 ] || [ "$rec" = -1 ] || [ -z "${acc:-}" ]; then
      failed=1
      log "round failed: see $dir (check.log, bench.log)"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$r" "${acc:--}" "${set:--}" "$lost" "$dup" "$rec" "$rst" >>"$OUT/rounds.tsv"
    log "  accepted ${acc:--}, settled ${set:--}, lost $lost, duplicated $dup, recovered in $rec ms, restarted in $rst ms, check $([ "$ok" = 1 ] && echo PASS || echo FAIL)"
    sleep 3
  done
done

{
  printf '| fault | rounds | accepted | settled | lost | duplicated | recovery p50 (s) | recovery max (s) | restarted p50 (s) |\n'
  printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
  for s in "${SCENARIOS[@]}"; do
    rows=$(awk -F'\t' -v s="$s" '$1 == s' "$OUT/rounds.tsv")
    sum() { awk -F'\t' -v c="$1" '{ t += $c } END { print t + 0 }' <<<"$rows"; }
    col() { awk -F'\t' -v c="$1" '{ print $c }' <<<"$rows"; }
    secs() { awk '{ if ($1 == "-" || $1 < 0) print $1; else printf "%.2f\n", $1 / 1000 }'; }
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$s" "$(wc -l <<<"$rows")" \
      "$(sum 3)" "$(sum 4)" "$(sum 5)" "$(sum 6)" \
      "$(col 7 | percentile 0.5 | secs)" "$(col 7 | sort -n | tail -1 | secs)" \
      "$(col 8 | percentile 0.5 | secs)"
  done
  read -r cpu1 steal1 < <(cpu)
  printf '\nCPU time taken by the hypervisor (steal) over the campaign: %s %%\n' \
    "$(awk -v c=$((cpu1 - cpu0)) -v s=$((steal1 - steal0)) 'BEGIN { printf "%.1f", c ? 100 * s / c : 0 }')"
} | tee "$OUT/table.md"
hosts down >/dev/null 2>&1 || true
exit $failed
