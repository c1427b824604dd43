//! The settlement transaction's statements, as text. Every value written into them is a
//! number, a validated code, or hex: nothing from a client is spliced in unescaped.
//!
//! Multi-statements go through `query_drop`, never `query_iter`: iterating a
//! multi-statement result loses an error of a later statement (mysql_async 0.37), while
//! `query_drop` returns it, and the server runs none of the statements after it.

use std::fmt::Write as _;

use model::{Order, Reason};

use super::plan::Plan;
use super::record::Committed;
use super::ReadyOrder;

/// The columns a result row is written with, in the order `results_insert` and
/// `results_tsv` give them, but for the last: the digest of a keyed order.
macro_rules! result_fields {
    () => {
        "order_id, user_id, initiator, success, reason, paid, rate_version, epoch, items, \
         client_time, accepted_at, settled_at, `partition`, `offset`"
    };
}

macro_rules! result_columns {
    () => {
        concat!("(", result_fields!(), ", digest)")
    };
}

/// Opens a settlement transaction and zeroes the row counters round trip 3 checks.
/// READ COMMITTED (the session's level, set by `connect`): no gap locks; FOR UPDATE
/// still locks every row it reads, and rows are always locked offsets → commodities (by
/// id) → own totals, so two transactions can wait on each other but never deadlock.
pub(super) const BEGIN: &str = "START TRANSACTION; SET @n = 0, @c = 0";

/// Reads the rows of `results_tsv` (MySQL's defaults: tab-separated, `\` escapes, `\N`
/// is NULL; binary: the user id's and the digest's bytes as they are, escaped). The
/// digest as its 16 bytes rather than hex: no `UNHEX` per row for the server to run.
pub(super) const LOAD_RESULTS: &str = concat!(
    "LOAD DATA LOCAL INFILE 'results' INTO TABLE result CHARACTER SET binary ",
    result_columns!()
);

const INSERT_RESULTS: &str = concat!("INSERT INTO result ", result_columns!(), " VALUES ");

/// The scratch table of a connection's stock update (temporary: private to the
/// connection; MEMORY: no undo or redo log). Creating a temporary table does not end
/// the transaction.
const STOCK_TABLE: &str = "CREATE TEMPORARY TABLE IF NOT EXISTS settle_stock \
    (id INT UNSIGNED NOT NULL PRIMARY KEY, was INT UNSIGNED NOT NULL, \
    inventory INT UNSIGNED NOT NULL) ENGINE=MEMORY;";

/// The stock rows' scratch input, read from `stock_tsv` (see `LOAD_RESULTS`).
const LOAD_STOCK: &str =
    "LOAD DATA LOCAL INFILE 'stock' INTO TABLE settle_stock (id, was, inventory); ";

/// How a transaction's rows go to the server: as tab-separated lines (LOAD DATA LOCAL),
/// or, to a server that refuses that, as INSERT … VALUES.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rows {
    Loaded,
    Inserted,
}

/// The most values in one IN list of a stock UPDATE: MariaDB turns a list of 1,000 or
/// more into a join with a temporary table, and the row-by-row update is lost.
pub(super) const IN_LIST_MAX: usize = 999;

/// Commodities `ids` without locks (those the view lacks).
pub(super) fn read_commodities(ids: &[u32]) -> String {
    format!(
        "SELECT id, price, currency, inventory FROM commodity WHERE id IN ({})",
        join(ids.iter())
    )
}

/// Lock the partition's offsets row and read the stored offset.
pub(super) fn lock_offset(topic: &str, partition: i32) -> String {
    format!(
        "SELECT next_offset FROM offsets WHERE topic = X'{}' AND `partition` = {partition} FOR UPDATE",
        Hex(topic.as_bytes())
    )
}

/// Lock the partition's offsets row and then the commodities `ids` (in id order: a range
/// scan of the primary key; in a join's ON clause MariaDB keeps a long IN list a range,
/// where in a WHERE clause it turns 1,000 or more values into a temporary table), and
/// read them: rows of (stored offset, id, price, currency, inventory).
pub(super) fn lock_rows<'a>(
    topic: &str,
    partition: i32,
    ids: impl ExactSizeIterator<Item = &'a u32>,
) -> String {
    let topic = Hex(topic.as_bytes());
    if ids.len() == 0 {
        format!(
            "SELECT next_offset, NULL, NULL, NULL, NULL FROM offsets \
             WHERE topic = X'{topic}' AND `partition` = {partition} FOR UPDATE"
        )
    } else {
        format!(
            "SELECT o.next_offset, c.id, c.price, c.currency, c.inventory \
             FROM offsets o LEFT JOIN commodity c ON c.id IN ({}) \
             WHERE o.topic = X'{topic}' AND o.`partition` = {partition} FOR UPDATE",
            join(ids)
        )
    }
}

/// Round trip 3 of a planned batch, ending with COMMIT: the corrections, the stock, the
/// totals delta, the last batch's commit record (`unrecorded`) and the next offset.
pub(super) fn finish(
    plan: &Plan,
    topic: &str,
    partition: i32,
    (next_offset, next_epoch): (i64, u64),
    settled_at: i64,
    unrecorded: Option<&Committed>,
    rows: Rows,
) -> String {
    let mut sql = String::with_capacity(1024);
    corrections(&mut sql, plan);
    dead_and_skipped(&mut sql, plan, topic, partition, settled_at);
    stock_update(&mut sql, &plan.stock_changes, rows);
    totals_delta(&mut sql, partition, plan);
    if let Some(c) = unrecorded {
        sql.push_str(&c.statement());
        sql.push_str("; ");
    }
    // The next offset, written only if the checks hold (else NULL: an error in strict
    // mode, and nothing after it runs). The row exists and is locked.
    write!(
        sql,
        "INSERT INTO offsets (topic, `partition`, next_offset, next_epoch, updated_at) VALUES \
         (X'{}', {partition}, IF(@c = {} AND @n = {}, {next_offset}, NULL), {next_epoch}, {settled_at}) \
         ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset), \
         next_epoch = GREATEST(next_epoch, VALUES(next_epoch)), updated_at = VALUES(updated_at); \
         COMMIT",
        Hex(topic.as_bytes()),
        plan.corrections.len(),
        plan.stock_changes.len()
    )
    .unwrap();
    sql
}

/// The results whose decision changed under the lock, each counted in `@c`.
fn corrections(sql: &mut String, plan: &Plan) {
    for (id, d) in &plan.corrections {
        write!(
            sql,
            "UPDATE result SET success = {}, reason = {}, paid = {} WHERE order_id = '{}'; \
             SET @c = @c + ROW_COUNT(); ",
            d.reason.is_none(),
            reason_sql(d.reason),
            d.paid,
            id.hyphenated()
        )
        .unwrap();
    }
}

/// Stock: the values before and after go into a per-connection MEMORY table, loaded from
/// `stock_tsv` (a fifth less of the server's CPU per row than parsing them as VALUES,
/// `benches/stock-update.sh`), and UPDATEs of commodity join it by primary key, each
/// row only if it holds the value before, each counted in `@n` (rows found, changed or
/// not: `connect` sets CLIENT_FOUND_ROWS). A locked row always does; a row the view
/// said and the UPDATE locks may not (the view was stale), and then the count is short:
/// no commit. A scratch row LOAD DATA LOCAL skipped (it turns errors into warnings)
/// would make the count short too.
///
/// commodity comes first (STRAIGHT_JOIN), read by a range scan of the ids that change,
/// so each row is updated as it is read. From the MEMORY table, MariaDB would note every
/// row in a temporary table and read it again to update it; left to the optimizer, for
/// large batches it scans all of commodity, and an UPDATE locks what it scans, other
/// workers' rows included (deadlocks). Cheaper per row than `SET inventory = CASE id …`
/// (a linear search) and than `INSERT … ON DUPLICATE KEY UPDATE` (docs/PERFORMANCE.md).
fn stock_update(sql: &mut String, changes: &[(u32, u32, u32)], rows: Rows) {
    if changes.is_empty() {
        return;
    }
    sql.push_str(STOCK_TABLE);
    sql.push_str("DELETE FROM settle_stock; ");
    match rows {
        Rows::Loaded => sql.push_str(LOAD_STOCK),
        Rows::Inserted => {
            sql.push_str("INSERT INTO settle_stock (id, was, inventory) VALUES ");
            for (i, (id, was, inv)) in changes.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                write!(sql, "({id},{was},{inv})").unwrap();
            }
            sql.push_str("; ");
        }
    }
    sql.push_str("SET @n = 0; ");
    for chunk in changes.chunks(IN_LIST_MAX) {
        write!(
            sql,
            "UPDATE commodity c STRAIGHT_JOIN settle_stock s ON s.id = c.id \
             SET c.inventory = s.inventory WHERE c.id IN ({}) AND c.inventory = s.was; \
             SET @n = @n + ROW_COUNT(); ",
            join(chunk.iter().map(|(id, ..)| id))
        )
        .unwrap();
    }
}

/// Adds the batch's paid sums and counts to the partition's totals rows (they exist,
/// `prepare_partition`; if one did not, inserting it would still be right).
fn totals_delta(sql: &mut String, partition: i32, plan: &Plan) {
    if plan.totals_delta.is_empty() {
        return;
    }
    sql.push_str("INSERT INTO totals (`partition`, currency, total, orders) VALUES ");
    for (i, (c, (t, n))) in plan.totals_delta.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        write!(sql, "({partition},'{c}',{t},{n})").unwrap();
    }
    sql.push_str(
        " ON DUPLICATE KEY UPDATE total = total + VALUES(total), orders = orders + VALUES(orders); ",
    );
}

/// The order to write `todo`'s rows in: by order id, the primary key's order (the
/// hyphenated hex the table stores sorts as the bytes do). Rows in key order go into
/// neighbouring places of the B-tree one after the other: loading a batch so costs
/// MariaDB about a quarter less than in the order the orders came
/// (docs/decisions/user-tagged-ids.md).
fn key_order(todo: &[&ReadyOrder]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..todo.len()).collect();
    order.sort_by_key(|&i| todo[i].order.order_id);
    order
}

/// `todo`'s result rows as LOAD DATA input: one line each, fields separated by tabs. Only
/// the user id and the digest can hold a tab, newline, backslash or NUL: those are
/// escaped. Written with `itoa` and byte pushes rather than `write!`, which was the
/// settlement thread's largest cost at full speed (docs/PERFORMANCE.md). Public for
/// `benches/settlement.rs`.
pub fn results_tsv(
    todo: &[&ReadyOrder],
    decisions: &[model::Decision],
    partition: i32,
    settled_at: i64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(todo.len() * 180);
    let mut num = itoa::Buffer::new();
    let mut id = uuid::Uuid::encode_buffer();
    for i in key_order(todo) {
        let (s, d) = (todo[i], &decisions[i]);
        let ord = &s.order;
        out.extend_from_slice(ord.order_id.hyphenated().encode_lower(&mut id).as_bytes());
        out.push(b'\t');
        escape_into(&mut out, ord.user_id.as_bytes());
        push_field(&mut out, ord.initiator.as_str().as_bytes());
        push_field(&mut out, if d.reason.is_none() { b"1" } else { b"0" });
        push_field(&mut out, d.reason.map_or("\\N", |r| r.as_str()).as_bytes());
        push_field(&mut out, d.paid.to_string().as_bytes());
        push_field(&mut out, num.format(s.rates.version).as_bytes());
        push_field(&mut out, num.format(s.epoch).as_bytes());
        out.push(b'\t');
        items_into(&mut out, ord, &mut num);
        match ord.time {
            Some(t) => push_field(&mut out, num.format(t).as_bytes()),
            None => push_field(&mut out, b"\\N"),
        }
        push_field(&mut out, num.format(ord.accepted_at).as_bytes());
        push_field(&mut out, num.format(settled_at).as_bytes());
        push_field(&mut out, num.format(partition).as_bytes());
        push_field(&mut out, num.format(s.offset).as_bytes());
        out.push(b'\t');
        match ord.digest() {
            Some(digest) => escape_into(&mut out, &digest),
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\n');
    }
    out
}

/// `changes` as the lines `LOAD_STOCK` reads: id, inventory before, inventory after.
pub(super) fn stock_tsv(changes: &[(u32, u32, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(changes.len() * 24);
    let mut num = itoa::Buffer::new();
    for &(id, was, inv) in changes {
        out.extend_from_slice(num.format(id).as_bytes());
        push_field(&mut out, num.format(was).as_bytes());
        push_field(&mut out, num.format(inv).as_bytes());
        out.push(b'\n');
    }
    out
}

/// A tab, then `bytes`: the next field of a LOAD DATA line.
fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'\t');
    out.extend_from_slice(bytes);
}

/// `bytes` as LOAD DATA reads them back: backslash, tab, newline and NUL escaped.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0 => out.extend_from_slice(b"\\0"),
            b => out.push(b),
        }
    }
}

/// `items_text` of `order`, written into `out`.
fn items_into(out: &mut Vec<u8>, order: &Order, num: &mut itoa::Buffer) {
    for (i, it) in order.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(num.format(it.id).as_bytes());
        out.push(b':');
        out.extend_from_slice(num.format(it.number).as_bytes());
    }
}

/// `bytes` as upper-case hex digits.
fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        out.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]);
    }
}

/// One multi-row insert of `todo`'s results, for a server that refuses LOAD DATA LOCAL:
/// one round trip whatever the batch's size. User ids go in as hex.
pub(super) fn results_insert(
    todo: &[&ReadyOrder],
    decisions: &[model::Decision],
    partition: i32,
    settled_at: i64,
) -> String {
    let mut sql = String::with_capacity(256 + todo.len() * 220);
    sql.push_str(INSERT_RESULTS);
    for (n, i) in key_order(todo).into_iter().enumerate() {
        let (s, d) = (todo[i], &decisions[i]);
        let ord = &s.order;
        if n > 0 {
            sql.push(',');
        }
        write!(
            sql,
            "('{}',X'{}','{}',{},{},{},{},{},'{}',{},{},{},{},{},{})",
            ord.order_id.hyphenated(),
            Hex(ord.user_id.as_bytes()),
            ord.initiator.as_str(),
            d.reason.is_none(),
            reason_sql(d.reason),
            d.paid,
            s.rates.version,
            s.epoch,
            items_text(ord),
            ord.time.map_or("NULL".into(), |t| t.to_string()),
            ord.accepted_at,
            settled_at,
            partition,
            s.offset,
            ord.digest()
                .map_or("NULL".into(), |d| format!("X'{}'", Hex(&d))),
        )
        .unwrap();
    }
    sql
}

/// The committed results of `batch` at its partition (read back after a commit whose
/// answer was lost; a copy's original, settled elsewhere, is not the batch's).
pub(super) fn committed_results(batch: &[ReadyOrder], partition: i32) -> String {
    format!(
        "SELECT order_id, initiator, reason, paid, epoch, accepted_at, settled_at, items FROM result \
         WHERE `partition` = {partition} AND order_id IN ({})",
        join(batch.iter().map(|s| format!("'{}'", s.order.order_id)))
    )
}

/// The ids of `orders` that have a result, and the digests those results were settled with.
pub(super) fn existing_results(orders: &[ReadyOrder]) -> String {
    format!(
        "SELECT order_id, digest FROM result WHERE order_id IN ({})",
        join(orders.iter().map(|s| format!("'{}'", s.order.order_id)))
    )
}

/// The batch's dead letters, the results of those whose order id is known (unless it
/// has one: an order the rule could not settle has its result written already), and
/// its skipped copies. INSERT IGNORE: a replayed message finds its row there.
fn dead_and_skipped(sql: &mut String, plan: &Plan, topic: &str, partition: i32, settled_at: i64) {
    let topic = Hex(topic.as_bytes());
    if !plan.dead.is_empty() {
        sql.push_str(
            "INSERT IGNORE INTO dead_letter (topic, `partition`, `offset`, order_id, reason, \
             detail, bytes, size, recorded_at) VALUES ",
        );
        for (i, d) in plan.dead.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            let id = d.order_id.map_or("NULL".into(), |id| format!("'{id}'"));
            write!(
                sql,
                "(X'{topic}',{partition},{},{id},'{}',X'{}',X'{}',{},{settled_at})",
                d.offset,
                d.reason,
                Hex(d.detail.as_bytes()),
                Hex(&d.bytes),
                d.size
            )
            .unwrap();
        }
        sql.push_str("; ");
    }
    let stubs: Vec<_> = plan
        .dead
        .iter()
        .filter_map(|d| Some((d, d.order_id?)))
        .collect();
    if !stubs.is_empty() {
        sql.push_str(concat!(
            "INSERT IGNORE INTO result ",
            result_columns!(),
            " VALUES "
        ));
        for (i, (d, id)) in stubs.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            write!(
                sql,
                "('{id}',X'','',false,'{}',0,0,{},'',NULL,0,{settled_at},{partition},{},NULL)",
                Reason::InvalidOrder.as_str(),
                d.epoch,
                d.offset
            )
            .unwrap();
        }
        sql.push_str("; ");
    }
    if !plan.skipped.is_empty() {
        sql.push_str(
            "INSERT IGNORE INTO skipped_copy (topic, `partition`, `offset`, order_id, recorded_at) VALUES ",
        );
        for (i, s) in plan.skipped.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            write!(
                sql,
                "(X'{topic}',{partition},{},'{}',{settled_at})",
                s.offset, s.order_id
            )
            .unwrap();
        }
        sql.push_str("; ");
    }
}

/// `id:number,id:number`, the form the result table keeps an order's items in.
pub fn items_text(order: &Order) -> String {
    let mut out = Vec::with_capacity(order.items.len() * 8);
    items_into(&mut out, order, &mut itoa::Buffer::new());
    String::from_utf8(out).expect("digits, ':' and ','")
}

/// An order's items as `items_text` wrote them: `(id, number)` pairs, or None if the
/// text is not of that form.
pub fn parse_items_text(text: &str) -> Option<Vec<(u32, u32)>> {
    text.split(',')
        .map(|part| {
            let (id, n) = part.split_once(':')?;
            Some((id.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// Bytes as hex digits, for an `X'…'` literal.
struct Hex<'a>(&'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut digits = Vec::with_capacity(self.0.len() * 2);
        hex_into(&mut digits, self.0);
        f.write_str(std::str::from_utf8(&digits).expect("hex digits"))
    }
}

fn reason_sql(r: Option<Reason>) -> String {
    r.map_or("NULL".into(), |r| format!("'{}'", r.as_str()))
}

fn join<T: std::fmt::Display>(it: impl Iterator<Item = T>) -> String {
    let mut s = String::new();
    for (i, v) in it.enumerate() {
        if i > 0 {
            s.push(',');
        }
        write!(s, "{v}").unwrap();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::str::FromStr;
    use std::sync::Arc;

    use model::{Currency, Decimal, Decision, Item, OrderRequest, RateTable, Uuid};

    use super::*;

    fn settling(user: &str, time: Option<i64>) -> ReadyOrder {
        let order = OrderRequest {
            user_id: user.into(),
            initiator: Currency::from_str("USD").unwrap(),
            items: vec![Item { id: 3, number: 2 }, Item { id: 1, number: 1 }],
            time,
        }
        .accept(Uuid::nil(), 1_000);
        ReadyOrder {
            offset: 41,
            epoch: 100,
            order,
            rates: Arc::new(RateTable {
                version: 6,
                rates: vec![],
            }),
        }
    }

    const PAID: Decision = Decision {
        reason: None,
        paid: Decimal::from_parts(1234, 0, 0, false, 2),
    };
    const SHORT: Decision = Decision {
        reason: Some(Reason::InsufficientInventory),
        paid: Decimal::ZERO,
    };

    #[test]
    fn a_tsv_line_escapes_the_user_id_and_the_digest_and_writes_null_as_backslash_n() {
        let mut keyed = settling("k", None);
        let mut digest = [0xab; 16];
        digest[..6].copy_from_slice(b"\t\n\\\0N\r");
        keyed.order.keyed = Some(model::idempotency::Keyed {
            key: "key".into(),
            digest,
        });
        let rows = [
            settling("a\tb\nc\\d\0e", None),
            settling("plain", Some(5)),
            keyed,
        ];
        let all = [&rows[0], &rows[1], &rows[2]];
        let tsv = results_tsv(&all, &[SHORT, PAID, PAID], 2, 999);
        let mut digest_field = b"\t41\t\\t\\n\\\\\\0N\r".to_vec();
        digest_field.extend([0xab; 10]);
        digest_field.push(b'\n');
        assert!(tsv.ends_with(&digest_field), "{tsv:?}");
        let tsv = String::from_utf8_lossy(&tsv);
        let lines: Vec<&str> = tsv.lines().collect();
        assert_eq!(lines.len(), 3);
        let nil = "00000000-0000-0000-0000-000000000000";
        assert_eq!(
            lines[0],
            format!(
                "{nil}\ta\\tb\\nc\\\\d\\0e\tUSD\t0\tinsufficient_inventory\t0\t6\t100\t3:2,1:1\t\\N\t1000\t999\t2\t41\t\\N"
            )
        );
        assert_eq!(
            lines[1],
            format!("{nil}\tplain\tUSD\t1\t\\N\t12.34\t6\t100\t3:2,1:1\t5\t1000\t999\t2\t41\t\\N")
        );
    }

    #[test]
    fn rows_are_written_in_order_id_order_each_with_its_own_decision() {
        let ids = ["c0000000", "0a000000", "b1000000", "0a000001"];
        let rows: Vec<ReadyOrder> = ids
            .iter()
            .map(|id| {
                let mut s = settling(id, None);
                s.order.order_id = format!("{id}-0000-8000-8000-000000000000").parse().unwrap();
                s
            })
            .collect();
        let all: Vec<&ReadyOrder> = rows.iter().collect();
        let decisions = [PAID, SHORT, PAID, SHORT];
        let tsv = String::from_utf8(results_tsv(&all, &decisions, 0, 1)).unwrap();
        let written: Vec<(&str, &str, &str)> = tsv
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (&f[0][..8], f[1], f[3])
            })
            .collect();
        // user id = the id's first 8 digits; success 1 for PAID, 0 for SHORT
        assert_eq!(
            written,
            [
                ("0a000000", "0a000000", "0"),
                ("0a000001", "0a000001", "0"),
                ("b1000000", "b1000000", "1"),
                ("c0000000", "c0000000", "1"),
            ]
        );
        let sql = results_insert(&all, &decisions, 0, 1);
        let at = |id: &str| sql.find(id).unwrap();
        assert!(at("'0a000000") < at("'0a000001") && at("'0a000001") < at("'b1000000"));
        assert!(at("'b1000000") < at("'c0000000"), "{sql}");
    }

    #[test]
    fn an_insert_writes_user_ids_as_hex() {
        let sql = results_insert(&[&settling("o'; --", None)], &[PAID], 0, 7);
        assert!(
            sql.starts_with("INSERT INTO result (order_id, user_id,"),
            "{sql}"
        );
        assert!(sql.contains("X'6F273B202D2D'"), "{sql}");
        assert!(!sql.contains("o';"), "{sql}");
        assert!(
            sql.ends_with(",'USD',true,NULL,12.34,6,100,'3:2,1:1',NULL,1000,7,0,41,NULL)"),
            "{sql}"
        );
    }

    fn plan(changes: Vec<(u32, u32, u32)>, corrections: Vec<(Uuid, Decision)>) -> Plan {
        Plan {
            outcomes: vec![],
            corrections,
            stock_changes: changes,
            totals_delta: BTreeMap::from([(
                Currency::from_str("EUR").unwrap(),
                (Decimal::from(5), 2),
            )]),
            stock: HashMap::new(),
            verified: false,
            dead: vec![],
            skipped: vec![],
        }
    }

    #[test]
    fn round_trip_three_commits_only_if_every_count_matches() {
        let sql = finish(
            &plan(vec![(1, 5, 3), (2, 1, 0)], vec![(Uuid::nil(), SHORT)]),
            "orders",
            3,
            (77, 4),
            9,
            None,
            Rows::Inserted,
        );
        assert!(
            sql.starts_with(
                "UPDATE result SET success = false, reason = 'insufficient_inventory', paid = 0 \
             WHERE order_id = '00000000-0000-0000-0000-000000000000'; SET @c = @c + ROW_COUNT(); "
            ),
            "{sql}"
        );
        assert!(
            sql.contains("INSERT INTO settle_stock (id, was, inventory) VALUES (1,5,3),(2,1,0);")
        );
        assert!(sql.contains("WHERE c.id IN (1,2) AND c.inventory = s.was"));
        assert!(sql.contains(
            "VALUES (3,'EUR',5,2) ON DUPLICATE KEY UPDATE total = total + VALUES(total)"
        ));
        // "orders" in hex, the guard on both counts, and the partition's next epoch,
        // which never moves back.
        assert!(sql.contains("next_epoch = GREATEST(next_epoch, VALUES(next_epoch))"));
        assert!(
            sql.contains("(X'6F7264657273', 3, IF(@c = 1 AND @n = 2, 77, NULL), 4, 9)"),
            "{sql}"
        );
        assert!(sql.ends_with("COMMIT"));
        assert!(!sql.contains("settle_batches"));
    }

    #[test]
    fn a_long_stock_update_goes_in_statements_of_under_a_thousand_ids() {
        let changes: Vec<_> = (1..=2500).map(|id| (id, 2, 1)).collect();
        let sql = finish(
            &plan(changes, vec![]),
            "t",
            0,
            (1, 0),
            1,
            None,
            Rows::Loaded,
        );
        assert_eq!(sql.matches("UPDATE commodity").count(), 3);
        assert!(sql.contains("WHERE c.id IN (1999,2000,"));
        assert!(sql.contains("IF(@c = 0 AND @n = 2500,"));
    }

    #[test]
    fn stock_rows_are_loaded_as_lines_unless_the_server_refuses() {
        let changes = vec![(1, 5, 3), (40_000, 4_294_967_295, 0)];
        let loaded = finish(
            &plan(changes.clone(), vec![]),
            "t",
            0,
            (1, 0),
            1,
            None,
            Rows::Loaded,
        );
        assert!(loaded.contains("DELETE FROM settle_stock; LOAD DATA LOCAL INFILE 'stock'"));
        assert!(!loaded.contains("INSERT INTO settle_stock"), "{loaded}");
        assert_eq!(stock_tsv(&changes), b"1\t5\t3\n40000\t4294967295\t0\n");
        let inserted = finish(
            &plan(changes, vec![]),
            "t",
            0,
            (1, 0),
            1,
            None,
            Rows::Inserted,
        );
        assert!(inserted.contains("VALUES (1,5,3),(40000,4294967295,0); SET @n = 0;"));
        assert!(!inserted.contains("LOAD DATA"), "{inserted}");
    }

    #[test]
    fn the_last_batch_is_recorded_with_the_next() {
        let c = Committed {
            partition: 1,
            first_offset: 10,
            next_offset: 20,
            orders: 9,
            started_at: 100,
            committed_at: 130,
        };
        let sql = finish(
            &plan(vec![], vec![]),
            "t",
            1,
            (30, 0),
            1,
            Some(&c),
            Rows::Loaded,
        );
        assert!(sql.contains(
            "INSERT IGNORE INTO settle_batches (`partition`, next_offset, first_offset, orders, \
             started_at, committed_at) VALUES (1,20,10,9,100,130); "
        ));
        assert!(
            !sql.contains("settle_stock"),
            "no stock statements without changes"
        );
    }

    #[test]
    fn items_text_reads_back() {
        let s = settling("u", None);
        assert_eq!(
            parse_items_text(&items_text(&s.order)),
            Some(vec![(3, 2), (1, 1)])
        );
        assert_eq!(parse_items_text("3:2,x"), None);
        assert_eq!(parse_items_text("3:-1"), None);
    }

    #[test]
    fn locking_reads_keep_the_ids_in_the_join() {
        let none = lock_rows("t", 2, [].iter());
        assert!(none.starts_with("SELECT next_offset, NULL"), "{none}");
        let some = lock_rows("t", 2, [4, 9].iter());
        assert!(
            some.contains("LEFT JOIN commodity c ON c.id IN (4,9)"),
            "{some}"
        );
        assert!(some.ends_with("o.`partition` = 2 FOR UPDATE"));
    }
}
