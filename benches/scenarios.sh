#!/usr/bin/env bash
# The end-to-end scenarios of docs/PERFORMANCE.md, in its order, against a running system
# (`cargo run --release -- up` in another terminal; a fresh one for comparable figures).
# Each bench ends with `dtss check`. Logs, JSON and HTML reports go under
# {data_dir}/bench/; this prints each scenario's summary lines.
#
# Usage: benches/scenarios.sh [dtss binary]   (default: target/release/dtss)
#        SCENARIOS="http direct" benches/scenarios.sh   (a subset, by name; also the
#        latency scenarios h1k, d1k and d10k: 1,000/s over HTTP and direct, 10,000/s direct;
#        http64 and http128: full speed over HTTP at 64 and 128 connections instead of 256;
#        direct2k: full speed direct with 2,048 sends in flight instead of 256)
#        DURATION=10 RUNS=1 benches/scenarios.sh        (shorter runs than the figures of record)
#        RECORDS=docs/bench-records.jsonl                (append each run's record there,
#        labelled LABEL_PREFIX + the scenario's name;
#        `dtss bench records FILE [--label NAME]` prints them)
set -euo pipefail
cd "$(dirname "$0")/.."
dtss=${1:-${CARGO_TARGET_DIR:-target}/release/dtss}
[[ -x $dtss ]] || { echo "no $dtss: build it with cargo build --release" >&2; exit 2; }
runs=${RUNS:-3}
duration=${DURATION:-60}
url=http://127.0.0.1:8080
curl -sf "$url/healthz" >/dev/null || {
  echo "nothing answers at $url: start the system first (cargo run --release -- up)" >&2
  exit 2
}
declare -A args=(
  [http]="--runs $runs --duration $duration"
  [http64]="--runs $runs --duration $duration --connections 64"
  [http128]="--runs $runs --duration $duration --connections 128"
  [r10k]="--runs $runs --duration $duration --rate 10000 --connections 256"
  [direct]="--runs $runs --duration $duration --direct-kafka"
  [direct2k]="--runs $runs --duration $duration --direct-kafka --connections 2048"
  [r5k]="--duration $((duration / 2)) --rate 5000 --connections 128"
  [h1k]="--runs $runs --duration $duration --rate 1000"
  [d1k]="--runs $runs --duration $duration --rate 1000 --direct-kafka"
  [d10k]="--runs $runs --duration $duration --rate 10000 --direct-kafka"
)
logs=$(mktemp -d)
status=0
for name in ${SCENARIOS:-http r10k direct r5k}; do
  [[ -n ${args[$name]:-} ]] || { echo "unknown scenario $name (http http64 http128 r10k direct direct2k r5k h1k d1k d10k)" >&2; exit 2; }
  echo "== $name: dtss bench ${args[$name]}   ($(date +%T))"
  # shellcheck disable=SC2086
  record=()
  [[ -z ${RECORDS:-} ]] || record=(--record "$RECORDS" --label "${LABEL_PREFIX:-}$name")
  if ! "$dtss" bench ${args[$name]} "${record[@]}" >"$logs/$name.log" 2>&1; then
    status=1
    echo "   FAILED (exit $?): $logs/$name.log"
  fi
  log=$logs/$name.log
  if grep -q "^medians of" "$log"; then
    grep -A 12 "^medians of" "$log"
  else
    grep -E "^(throughput|late|ack|accepted →|settlement transaction|slowest|floor)" "$log"
  fi | sed 's/^/   /'
  grep -E "^CPU" "$log" | sed 's/^/   /'
  echo "   dtss check: $(grep -c '^check: PASS' "$log") passed, $(grep -c '^check: FAIL' "$log") failed"
done
echo "full logs: $logs"
exit $status
