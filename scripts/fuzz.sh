#!/usr/bin/env bash
# Fuzz every parser of untrusted input with libFuzzer (cargo fuzz, nightly): the wire
# decoder, the order JSON, the config, the broker's request decoding and batch checks.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 600)
#
# Each run starts from the checked-in corpus (fuzz/corpus/TARGET, only read) and keeps
# what it finds in a scratch folder. A crash is written to fuzz/artifacts/TARGET/ and
# makes the script fail: turn it into a regression test and a corpus file. Installs the
# nightly toolchain and cargo-fuzz when missing. Prints executions and crashes per target.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-600}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(wire_decode order_json config broker_request)
target_dir=${DTSS_FUZZ_TARGET:-$HOME/.cache/dtss/fuzz-target}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

echo "== fuzz: building the targets (nightly, address sanitizer)"
cargo +nightly fuzz build -O --target-dir "$target_dir" 2>&1 | tail -1

failed=0
for t in "${targets[@]}"; do
  scratch=$(mktemp -d)
  log=$(mktemp)
  echo "== fuzz: $t for ${seconds} s"
  rc=0
  cargo +nightly fuzz run -O --target-dir "$target_dir" "$t" "$scratch" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo 0)
  found=$(ls "$scratch" | wc -l)
  if [[ $rc -ne 0 ]]; then
    failed=$((failed + 1))
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|artifact' "$log" | head -20
    echo "fuzz $t: CRASH after $runs executions (log: $log)"
  else
    echo "fuzz $t: $runs executions, 0 crashes, $found new inputs"
    rm -f "$log"
  fi
  rm -rf "$scratch"
done
[[ $failed -eq 0 ]] || { echo "fuzz: $failed target(s) crashed"; exit 1; }
