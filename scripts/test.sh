#!/usr/bin/env bash
# The test suite: unit tests, then end-to-end tests against the real MariaDB and
# ZooKeeper (started here by scripts/services.sh, installed if missing) and the
# embedded Kafka broker. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== services"
scripts/services.sh up

echo "== cargo test (release build: the same one \`cargo run --release -- up\` uses)"
# One test at a time: the end-to-end tests run whole clusters of processes on 2 cores.
cargo test --release --workspace "$@" -- --test-threads=1
