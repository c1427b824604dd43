# Sourced by benches/settings.sh and benches/catch-up.sh (after setting ROOT): a DTSS of
# its own, started fresh against the MariaDB and ZooKeeper of dtss services.

# fresh_config NAME DIR EPOCH_MS DELAY_MS [--set KEY=VALUE...]: DIR/cluster.toml, the
# shipped cluster.toml with the given epoch and watermark delay, data in DIR, its own
# database dtss_NAME and ZooKeeper root /dtss_NAME, and any further overrides applied.
fresh_config() {
  local name=$1 dir=$2 epoch=$3 delay=$4
  # This checkout's build derives it (the binary under test may be an older one).
  local tool=${CARGO_TARGET_DIR:-$ROOT/target}/release/dtss
  shift 4
  "$tool" --config "$ROOT/cluster.toml" config --set "cluster.epoch_ms=$epoch" \
    --set "cluster.watermark_delay_ms=$delay" --set "cluster.data_dir=$dir" \
    --set "zookeeper.root=/dtss_$name" --set "mysql.url=mysql://dtss@127.0.0.1:3306/dtss_$name" \
    --set "mysql.password_file=$ROOT/.dtss/mysql-password" "$@" >"$dir/cluster.toml"
}

# start_fresh DTSS DIR: `DTSS up --no-services` with DIR/cluster.toml in the background
# (its pid in `pid`, its output in DIR/up.log), returning once it answers.
start_fresh() {
  local dtss=$1 dir=$2
  DTSS_CONFIG=$dir/cluster.toml "$dtss" up --no-services >"$dir/up.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do
    curl -sf http://127.0.0.1:8080/healthz >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/up.log" >&2; echo "dtss up exited" >&2; exit 1; }
    sleep 1
  done
  echo "dtss up did not answer within 120 s; see $dir/up.log" >&2
  exit 1
}

# ready_to_start: MariaDB and ZooKeeper up (`$dtss services`), and nothing answering
# where the system will.
ready_to_start() {
  "$dtss" services --home "$ROOT/.dtss" up >/dev/null
  if curl -sf http://127.0.0.1:8080/healthz >/dev/null; then
    echo "something already answers at 127.0.0.1:8080: stop that system first" >&2
    exit 2
  fi
}
