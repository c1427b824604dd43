#!/usr/bin/env bash
# What one settlement connection's biggest statement costs MariaDB, per shape of the
# `result` table: LOAD DATA LOCAL of batches of result rows shaped like the bench's
# (10,000 users), one COMMIT (fsynced) per batch, into a scratch database on the server
# `dtss services` started. Prints, per table shape, the rows loaded per second,
# the p50 / max time of a batch, and how busy the machine was and how much of it the
# hypervisor took (steal). The shapes, with time-ordered (UUIDv7) order ids: the first
# version's table with its per-user index `by_user` (`as_created`), without that index,
# with it on a 64-bit hash of the user id instead (`user_hash`), with each batch's rows
# sent in that index's order (`rows_by_user`), one clustered key led by that hash and no
# secondary index (`user_first_key`), and with 16-byte binary order ids. Then with the
# ids of keyed orders (every order `dtss bench` sends has a key): hashes, in no order,
# with and without `by_user` (`keyed_ids`, `keyed_ids_no_by_user`), and user-tagged as
# `dtss init` makes them now, the user's 16-bit tag first and no second index
# (`user_tagged`, the table as created now), and those rows sent in key order as the
# settlement transaction sends them (`user_tagged_in_key_order`), and that with `items` as
# VARCHAR(2000) instead of TEXT (`items_varchar`).
#
# Usage: benches/result-load.sh [batches] [rows per batch]   (default: 40 batches of 20,000)
#        SHAPES="as_created no_by_user" benches/result-load.sh   (a subset)
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-40}
rows=${2:-20000}
. benches/scratch-server.sh
db=dtss_result_load

# The shared columns, then the shapes' keys and the columns that differ.
cols="user_id VARBINARY(256) NOT NULL, initiator CHAR(3) NOT NULL, success BOOL NOT NULL,
  reason VARCHAR(32) NULL, paid DECIMAL(24,2) NOT NULL, rate_version BIGINT UNSIGNED NOT NULL,
  epoch BIGINT UNSIGNED NOT NULL, items TEXT NOT NULL, client_time BIGINT NULL,
  accepted_at BIGINT NOT NULL, settled_at BIGINT NOT NULL, \`partition\` INT NOT NULL,
  \`offset\` BIGINT NOT NULL, digest BINARY(16) NULL"
fields="user_id, initiator, success, reason, paid, rate_version, epoch, items, client_time, accepted_at, settled_at, \`partition\`, \`offset\`, @digest"
declare -A ddl=(
  [as_created]="order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY, $cols, KEY by_user (user_id, accepted_at)"
  [no_by_user]="order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY, $cols"
  [binary_id]="order_id BINARY(16) NOT NULL PRIMARY KEY, $cols, KEY by_user (user_id, accepted_at)"
  [binary_id_no_by_user]="order_id BINARY(16) NOT NULL PRIMARY KEY, $cols"
  [user_hash]="order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY, $cols, user_key BIGINT UNSIGNED NOT NULL, KEY by_user (user_key)"
  [rows_by_user]="order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY, $cols, KEY by_user (user_id, accepted_at)"
  [keyed_ids]="order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY, $cols, KEY by_user (user_id, accepted_at)"
  [keyed_ids_no_by_user]="order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY, $cols"
  [user_tagged_in_key_order]="order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY, $cols"
  [user_tagged]="order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY, $cols"
  [items_varchar]="order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY, ${cols/items TEXT NOT NULL/items VARCHAR(2000) CHARACTER SET ascii NOT NULL}"
  [user_first_key]="order_id CHAR(36) CHARACTER SET ascii NOT NULL, $cols, user_key BIGINT UNSIGNED NOT NULL, PRIMARY KEY (user_key, order_id)"
)

# Batch b's rows: ids ascending in time like UUIDv7 (hyphenated, or 32 hex digits for
# the binary shapes), random (ids of keyed orders, ids=keyed) or a user's tag and then
# random (ids=tagged); users u-1..u-10000, three items of up to 10,000 commodities.
gen() {
  awk -v b="$1" -v n="$rows" -v hyph="$2" -v hash="$3" -v ids="$5" 'BEGIN {
    srand(b); curs[0] = "USD"; curs[1] = "EUR"; curs[2] = "JPY"; curs[3] = "CNY"
    for (i = 0; i < n; i++) {
      seq = b * n + i; t = 1764800000000 + int(seq / 60)
      user = 1 + int(rand() * 10000)
      hi = sprintf("%012x", t); r = sprintf("%04x%016x", seq % 65536, seq)
      if (ids != "time") r = sprintf("%04x%08x%08x", int(rand() * 65536), int(rand() * 4294967296), int(rand() * 4294967296))
      if (ids == "keyed") hi = sprintf("%06x%06x", int(rand() * 16777216), int(rand() * 16777216))
      if (ids == "tagged") hi = sprintf("%04x%02x%06x", (user * 2654435761) % 65536, int(rand() * 256), int(rand() * 16777216))
      id = hyph ? sprintf("%s-%s-7%s-8%s-%s", substr(hi, 1, 8), substr(hi, 9, 4), substr(r, 1, 3), substr(r, 5, 3), substr(r, 9, 12)) \
                : sprintf("%s7%s8%s%s", hi, substr(r, 1, 3), substr(r, 5, 3), substr(r, 9, 12))
      items = sprintf("%d:%d,%d:%d,%d:%d", 1 + int(rand() * 10000), 1 + int(rand() * 3), 1 + int(rand() * 10000), 1, 1 + int(rand() * 10000), 2)
      printf "%s\tu-%d\t%s\t1\t\\N\t%d.%02d\t1\t%d\t%s\t%d\t%d\t%d\t0\t%d\t\\N", id, user, curs[i % 4], int(rand() * 5000), int(rand() * 100), int(t / 10), items, t - 3, t, t + 20, seq
      printf (hash ? "\t%d\n" : "\n"), (user * 2654435761) % 9007199254740881
    }
  }' >"$work/batch.tsv"
  if [[ $4 == key ]]; then
    LC_ALL=C sort -o "$work/batch.tsv" "$work/batch.tsv"
  fi
  if [[ $4 == 1 ]]; then
    LC_ALL=C sort -t "$(printf '\t')" -k2,2 -k11,11n -o "$work/batch.tsv" "$work/batch.tsv"
  fi
}

for shape in ${SHAPES:-as_created no_by_user user_hash rows_by_user user_first_key binary_id binary_id_no_by_user keyed_ids keyed_ids_no_by_user user_tagged user_tagged_in_key_order}; do
  [[ -n ${ddl[$shape]:-} ]] || { echo "unknown shape $shape" >&2; exit 2; }
  sql -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db; CREATE TABLE $db.result (${ddl[$shape]}) ENGINE=InnoDB"
  hyph=1; [[ $shape == binary_id* ]] && hyph=0
  hash=0; [[ $shape == user_hash || $shape == user_first_key ]] && hash=1
  sorted=0; [[ $shape == rows_by_user ]] && sorted=1
  ids=time; [[ $shape == keyed_ids* ]] && ids=keyed; [[ $shape == user_tagged* ]] && ids=tagged
  [[ $shape == items_varchar ]] && ids=tagged
  [[ $shape == user_tagged_in_key_order || $shape == items_varchar ]] && sorted=key
  # The columns each line fills, from the same flags that shape the lines.
  if ((hyph)); then id="order_id" set_id=""; else id="@id" set_id="order_id = UNHEX(@id), "; fi
  key=""; ((hash)) && key=", user_key"
  load="($id, $fields$key) SET ${set_id}digest = UNHEX(@digest)"
  : >"$work/times"
  read -r busy0 steal0 total0 < <(cpu_ticks)
  for ((b = 0; b < batches; b++)); do
    gen "$b" "$hyph" "$hash" "$sorted" "$ids"
    start=$(date +%s%N)
    sql "$db" -e "START TRANSACTION; LOAD DATA LOCAL INFILE '$work/batch.tsv' INTO TABLE result CHARACTER SET binary $load; COMMIT"
    echo $((($(date +%s%N) - start) / 1000000)) >>"$work/times"
    printf '\r[result-load] %s: batch %d/%d' "$shape" $((b + 1)) "$batches" >&2
  done
  printf '\n' >&2
  read -r busy1 steal1 total1 < <(cpu_ticks)
  sort -n "$work/times" | awk -v shape="$shape" -v rows="$rows" \
    -v busy=$(((busy1 - busy0) * 100 / (total1 - total0))) -v steal=$(((steal1 - steal0) * 100 / (total1 - total0))) '
    { t[NR] = $1; sum += $1 }
    END { printf "%-22s %8.0f rows/s   batch p50 %4d ms, max %4d ms   (%d batches of %d; %d %% busy, %d %% steal)\n", shape, NR * rows * 1000 / sum, t[int((NR + 1) / 2)], t[NR], NR, rows, busy, steal }'
done
sql -e "DROP DATABASE IF EXISTS $db"
