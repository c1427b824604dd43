#!/usr/bin/env bash
# What the settlement transaction's stock update costs MariaDB per commodity row, by the
# form of its statements. A scratch database on the server `dtss services`
# started holds `commodity` as `dtss init` makes it (10,000 rows); each transaction
# changes ROWS distinct random commodities, each only if it still holds the inventory
# read before (a stale view makes the count short), and commits. Prints, per form, the
# server's CPU per changed row (mariadbd's user + system time, from /proc), the wall time
# of a transaction, how busy the machine was and how much the hypervisor took (steal).
#
# The forms:
#   join_in     the values into a MEMORY scratch table by INSERT … VALUES, then UPDATE
#               commodity STRAIGHT_JOIN the scratch table, by IN lists of 999 ids
#   join_load   the same, the scratch table filled by LOAD DATA LOCAL
#   scratch_first  the scratch table filled by LOAD DATA LOCAL, then one UPDATE that
#               reads it first and each commodity by its primary key (no IN list)
#   iodku       one INSERT … ON DUPLICATE KEY UPDATE of commodity: inventory set when it
#               holds the value before, else NULL (an error in strict mode: no commit)
#   row_updates one single-row UPDATE per commodity, each counted
#
# Usage: benches/stock-update.sh [transactions] [rows per transaction]  (default: 40 of 2,200)
#        FORMS="join_in iodku" benches/stock-update.sh   (a subset)
set -euo pipefail
cd "$(dirname "$0")/.."
txns=${1:-40}
rows=${2:-2200}
((rows >= 1 && rows <= 10000)) || { echo "rows per transaction must be 1 to 10,000 (the catalogue's size)" >&2; exit 2; }
. benches/scratch-server.sh
db=dtss_stock_update
server_ticks() { awk '{ print $14 + $15 }' "/proc/$(pgrep -x mariadbd | head -n 1)/stat"; }

# Transaction t's changes: ROWS distinct ids in id order, each "id was inventory", `was`
# the inventory the table holds now (every form leaves inventory = 1,000,000 - changes).
changes() {
  sql "$db" -e "SELECT id, inventory FROM commodity" |
    awk -v t="$1" -v n="$rows" 'BEGIN { srand(t) } { inv[$1] = $2; ids[NR] = $1 }
      END { for (i = NR; i > 1; i--) { j = 1 + int(rand() * i); x = ids[i]; ids[i] = ids[j]; ids[j] = x }
            for (i = 1; i <= n; i++) print ids[i], inv[ids[i]], inv[ids[i]] - 1 }' |
    sort -n >"$work/changes"
}

# The transaction's statements, in the form `$1`, into $work/txn.sql.
statements() {
  local form=$1
  # One query of many statements, as settlement sends it (the client splits at `//` only).
  {
    echo "DELIMITER //"
    echo "START TRANSACTION; SET @n = 0;"
    case $form in
      join_in | join_load | scratch_first)
        echo "CREATE TEMPORARY TABLE IF NOT EXISTS settle_stock (id INT UNSIGNED NOT NULL PRIMARY KEY, was INT UNSIGNED NOT NULL, inventory INT UNSIGNED NOT NULL) ENGINE=MEMORY; DELETE FROM settle_stock;"
        if [[ $form == scratch_first ]]; then
          tr ' ' '\t' <"$work/changes" >"$work/changes.tsv"
          echo "LOAD DATA LOCAL INFILE '$work/changes.tsv' INTO TABLE settle_stock (id, was, inventory);"
          echo "UPDATE settle_stock s STRAIGHT_JOIN commodity c ON c.id = s.id SET c.inventory = s.inventory WHERE c.inventory = s.was; SET @n = ROW_COUNT();"
        elif [[ $form == join_in ]]; then
          awk 'BEGIN { printf "INSERT INTO settle_stock (id, was, inventory) VALUES " }
            { printf "%s(%d,%d,%d)", (NR > 1 ? "," : ""), $1, $2, $3 } END { print ";" }' "$work/changes"
        else
          tr ' ' '\t' <"$work/changes" >"$work/changes.tsv"
          echo "LOAD DATA LOCAL INFILE '$work/changes.tsv' INTO TABLE settle_stock (id, was, inventory);"
        fi
        [[ $form == scratch_first ]] || awk '{ ids[NR] = $1 } END { for (i = 1; i <= NR; i += 999) {
            printf "UPDATE commodity c STRAIGHT_JOIN settle_stock s ON s.id = c.id SET c.inventory = s.inventory WHERE c.id IN ("
            for (j = i; j < i + 999 && j <= NR; j++) printf "%s%d", (j > i ? "," : ""), ids[j]
            print ") AND c.inventory = s.was; SET @n = @n + ROW_COUNT();" } }' "$work/changes"
        ;;
      iodku)
        awk 'BEGIN { printf "INSERT INTO commodity (id, name, price, currency, inventory, initial_inventory) VALUES " }
          { printf "%s(%d,%s,0,%s,%d,%d)", (NR > 1 ? "," : ""), $1, "\x27\x27", "\x27\x27", $3, $2 }
          END { print " ON DUPLICATE KEY UPDATE inventory = IF(inventory = VALUES(initial_inventory), VALUES(inventory), NULL); SET @n = ROW_COUNT() DIV 2;" }' "$work/changes"
        ;;
      row_updates)
        awk '{ printf "UPDATE commodity SET inventory = %d WHERE id = %d AND inventory = %d; SET @n = @n + ROW_COUNT();\n", $3, $1, $2 }' "$work/changes"
        ;;
      *) echo "unknown form $form" >&2; exit 2 ;;
    esac
    echo "SELECT IF(@n = $rows, 'ok', CONCAT('short: ', @n)); COMMIT //"
  } >"$work/txn.sql"
}

for form in ${FORMS:-join_in join_load scratch_first iodku row_updates}; do
  sql -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db; CREATE TABLE $db.commodity (
    id INT UNSIGNED NOT NULL PRIMARY KEY, name VARCHAR(128) NOT NULL, price DECIMAL(20,6) NOT NULL,
    currency CHAR(3) NOT NULL, inventory INT UNSIGNED NOT NULL, initial_inventory INT UNSIGNED NOT NULL) ENGINE=InnoDB"
  seq 1 10000 | awk '{ printf "%d\tcommodity %d\t%d.%06d\tUSD\t1000000\t1000000\n", $1, $1, 1 + $1 % 500, $1 % 1000000 }' >"$work/catalogue.tsv"
  sql "$db" -e "LOAD DATA LOCAL INFILE '$work/catalogue.tsv' INTO TABLE commodity"
  : >"$work/times"
  read -r busy0 steal0 total0 < <(cpu_ticks)
  server=0
  for ((t = 0; t < txns; t++)); do
    changes "$t"
    statements "$form"
    s0=$(server_ticks)
    start=$(date +%s%N)
    answer=$(sql "$db" --init-command="SET SESSION sql_mode = 'STRICT_ALL_TABLES'" <"$work/txn.sql")
    echo $((($(date +%s%N) - start) / 1000000)) >>"$work/times"
    server=$((server + $(server_ticks) - s0))
    [[ $answer == ok ]] || { echo "$form: transaction $t: $answer" >&2; exit 1; }
    printf '\r[stock-update] %s: transaction %d/%d' "$form" $((t + 1)) "$txns" >&2
  done
  printf '\n' >&2
  read -r busy1 steal1 total1 < <(cpu_ticks)
  sort -n "$work/times" | awk -v form="$form" -v rows="$rows" -v server="$server" -v hz="$(getconf CLK_TCK)" \
    -v busy=$(((busy1 - busy0) * 100 / (total1 - total0))) -v steal=$(((steal1 - steal0) * 100 / (total1 - total0))) '
    { t[NR] = $1 }
    END { printf "%-12s %6.2f µs of server CPU per row   transaction p50 %4d ms, max %4d ms   (%d of %d rows; %d %% busy, %d %% steal)\n", form, server * 1e6 / hz / (NR * rows), t[int((NR + 1) / 2)], t[NR], NR, rows, busy, steal }'
done
sql -e "DROP DATABASE IF EXISTS $db"
