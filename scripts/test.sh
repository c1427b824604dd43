#!/usr/bin/env bash
# The test suite: unit tests, then end-to-end tests against the real MariaDB and
# ZooKeeper (started by `dtss services up`, installed if missing) and the embedded Kafka
# broker, a 3-node MariaDB Galera cluster (`dtss services up --galera 3`) and Tansu
# (`dtss services tansu up`: one broker on SQLite, three on one PostgreSQL; built once into
# ~/.cache/dtss/tansu, about 13 minutes on a machine that never built it), then 30 s of
# each fuzz target (scripts/fuzz.sh), then a smoke bench (scripts/smoke-bench.sh), then
# the three-host scenario (`dtss campaign --rounds 1 --steady 60 host`).
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== build (release: the same one \`cargo run --release -- up\` uses)"
cargo build --release --workspace --benches   # the benchmarks must keep building (run them with cargo bench)
dtss=${CARGO_TARGET_DIR:-target}/release/dtss

echo "== services"
"$dtss" services --home .dtss up
# promtool (Debian's prometheus package) checks the scrape configs and every process's
# metrics (tests/metrics.rs).
if ! command -v promtool >/dev/null; then
  echo "installing promtool (apt-get install prometheus)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "== cargo test"
# One test at a time: the end-to-end tests run whole clusters of processes on 2 cores.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --tests --no-run "$@"
# A test that hangs fails the suite here, naming itself, rather than stalling it (the tests
# take about 8 minutes).
minutes=${DTSS_TEST_MINUTES:-40}
timeout --kill-after=30 "${minutes}m" \
  cargo test --release --workspace --tests "$@" -- --test-threads=1 2>&1 | tee "$log" || status=$?
if [[ $status -eq 124 || $status -eq 137 ]]; then
  echo; echo "cargo test did not finish within $minutes minutes; it hung in: $(grep '^test ' "$log" | grep -vE '(ok|FAILED|ignored)$' | tail -1)"
fi

# Each fuzz target briefly over its checked-in corpus (scripts/fuzz.sh for long runs).
if [[ $status -eq 0 ]]; then
  scripts/fuzz.sh "${DTSS_FUZZ_SECONDS:-30}" || { echo "fuzz FAILED"; status=1; }
fi

# A few seconds of `dtss bench` against a fresh local system, then `dtss check`.
smoke=0
if [[ $status -eq 0 ]]; then
  scripts/smoke-bench.sh "$dtss" || smoke=$?
  [[ $smoke -eq 0 ]] || { echo "smoke bench FAILED"; status=$smoke; }
fi

# Three hosts (network namespaces, scripts/hosts.sh): a minute of 2,000 orders/s through
# nginx, every process of host 3 killed 10 s in, the cluster back and settling, strict
# `dtss check --accepted`.
hosts=0
if [[ $status -eq 0 ]]; then
  "$dtss" campaign --rounds 1 --steady 60 host || hosts=$?
  [[ $hosts -eq 0 ]] || { echo "three-host scenario FAILED"; status=$hosts; }
fi

# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit $status
