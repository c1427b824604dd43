# Sourced by benches/result-load.sh and benches/stock-update.sh (after `cd` to the
# repository): what a bench of one statement on the server `dtss services` started
# needs. `home` (the data directory), `work` (a directory removed on exit), `cpu_ticks`
# and `sql`.
home=${DTSS_HOME:-.dtss}
[[ -r $home/mysql-password ]] || { echo "no $home/mysql-password: run dtss services up first" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# cpu_ticks: the machine's busy and steal ticks and their total, from /proc/stat.
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $2 + $3 + $4 + $7 + $8, $9, t }' /proc/stat; }
# sql ARGS…: the mariadb client as the `dtss` user, LOAD DATA LOCAL allowed, bare output.
sql() { MYSQL_PWD=$(cat "$home/mysql-password") mariadb --local-infile=1 -h127.0.0.1 -P3306 -udtss -N -B "$@"; }
