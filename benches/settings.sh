#!/usr/bin/env bash
# The latency scenarios at several epoch / watermark-delay settings, each on a system of
# its own started fresh: `dtss up --no-services` with cluster.toml's epoch_ms and
# watermark_delay_ms replaced, its own data directory, database and ZooKeeper root, then
# benches/scenarios.sh against it (every bench ends with `dtss check` and reports how
# many orders were late). MariaDB and ZooKeeper come from dtss services.
#
# Usage: benches/settings.sh [dtss binary]          (default: target/release/dtss)
#        SETTINGS="10/20 5/5" SCENARIOS="d1k d10k" RUNS=3 DURATION=20 benches/settings.sh
# A setting EPOCH_MS/DELAY_MS/nofsync runs the embedded broker with
# kafka.embedded_fsync = false (acks from the page cache): the fsync's cost, alternated
# with the same setting without the suffix, e.g. SETTINGS="5/5 5/5/nofsync 5/5 5/5/nofsync".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
dtss=$(realpath "${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dtss}")
[[ -x $dtss ]] || { echo "no $dtss: build it with cargo build --release" >&2; exit 2; }
. "$ROOT/benches/fresh-system.sh"
ready_to_start
out=$(mktemp -d /tmp/dtss-settings.XXXXXX)
pid=
stop() { [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap stop EXIT
status=0
for setting in ${SETTINGS:-10/20 5/5}; do
  [[ $setting =~ ^([0-9]+)/([0-9]+)(/nofsync)?$ ]] || { echo "a setting is EPOCH_MS/DELAY_MS[/nofsync] (got $setting)" >&2; exit 2; }
  epoch=${BASH_REMATCH[1]} delay=${BASH_REMATCH[2]} nofsync=${BASH_REMATCH[3]}
  name=e${epoch}_w${delay}${nofsync:+_nofsync}_$(date +%s)
  dir=$out/$name
  mkdir -p "$dir"
  if [[ -n $nofsync ]]; then
    fresh_config "$name" "$dir" "$epoch" "$delay" --set kafka.embedded_fsync=false
    grep -q '^embedded_fsync = false' "$dir/cluster.toml" || { echo "cluster.toml no longer has the topic line this script extends" >&2; exit 1; }
  else
    fresh_config "$name" "$dir" "$epoch" "$delay"
  fi
  echo "== epoch $epoch ms, watermark delay $delay ms${nofsync:+, acks from the page cache} ($(date +%T); $dir)"
  start_fresh "$dtss" "$dir"
  LABEL_PREFIX="$setting " DTSS_CONFIG=$dir/cluster.toml "$ROOT/benches/scenarios.sh" "$dtss" | tee "$dir/scenarios.log" || status=1
  stop
done
echo "per setting: $out"
exit $status
