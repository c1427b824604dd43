//! What the load generator, the bench and the checker read from MySQL: this crate owns
//! the schema, so every query of its tables lives here. Each read is one of an
//! invariant's inputs (docs/DESIGN.md, "Invariants") or one of the bench's figures.

use crate::Pool;
use anyhow::{Context, Result};
use model::{Decimal, Reason, Uuid};
use mysql_async::prelude::*;

/// The most ids in one `IN` list of these reads.
const IDS_PER_QUERY: usize = 5000;

/// A settled order's outcome and timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultTiming {
    pub reason: Option<Reason>,
    pub accepted_at: i64,
    /// When its transaction started (its results were stamped then).
    pub settled_at: i64,
    pub partition: i32,
    pub offset: i64,
    /// The epoch it was settled in.
    pub epoch: u64,
}

/// One settlement transaction as the sink logged it in `settle_batches`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub partition: i32,
    /// The partition's offset after the transaction's last message.
    pub next_offset: i64,
    pub started_at: i64,
    pub committed_at: i64,
    pub orders: u32,
}

/// A result as the checker recomputes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditResult {
    pub order_id: String,
    pub initiator: String,
    pub success: bool,
    pub paid: Decimal,
    pub rate_version: u64,
    pub epoch: u64,
    /// When ingest took it (ms): its own epoch is `accepted_at / epoch_ms`.
    pub accepted_at: i64,
    /// `id:number,…` (`parse_items_text`).
    pub items: String,
    /// Why it failed (`Reason::as_str`), if it did.
    pub reason: Option<String>,
    pub partition: i32,
    pub offset: i64,
}

/// Where one message of a partition went: a result, a skipped copy or a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Accounted {
    Result,
    Skipped,
    Dead,
}

/// A message kept as a dead letter (`dtss dead-letters`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterRow {
    pub partition: i32,
    pub offset: i64,
    pub order_id: Option<String>,
    pub reason: String,
    pub detail: String,
    /// The message's first bytes (at most `MAX_DEAD_BYTES`), and its length.
    #[serde(skip)]
    pub bytes: Vec<u8>,
    pub size: u32,
    pub recorded_at: i64,
}

/// A commodity's stock and price, with the inventory it was loaded with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockRow {
    pub id: u32,
    pub initial: i64,
    pub inventory: i64,
    pub price: Decimal,
    pub currency: String,
}

/// One currency's rate at one version of `rate_history`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateRow {
    pub version: u64,
    pub currency: String,
    pub rate: Decimal,
    pub from_epoch: u64,
}

/// `'id','id',…` of the ids that look like order ids (hex digits and dashes); nothing
/// else is spliced into SQL.
fn quoted<S: AsRef<str>>(ids: &[S]) -> String {
    ids.iter()
        .map(AsRef::as_ref)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How many of `ids` have a result.
pub async fn count_results<S: AsRef<str>>(pool: &Pool, ids: &[S]) -> Result<u64> {
    let mut conn = pool.get_conn().await?;
    let mut n = 0;
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let list = quoted(chunk);
        if list.is_empty() {
            continue;
        }
        let c: Option<u64> = conn
            .query_first(format!(
                "SELECT COUNT(*) FROM result WHERE order_id IN ({list})"
            ))
            .await
            .context("counting results")?;
        n += c.unwrap_or(0);
    }
    Ok(n)
}

/// The outcomes and timings of those of `ids` that have a result.
pub async fn result_timings(pool: &Pool, ids: &[Uuid]) -> Result<Vec<ResultTiming>> {
    let ids: Vec<String> = ids.iter().map(|id| id.hyphenated().to_string()).collect();
    result_timings_of(pool, &ids).await
}

/// `result_timings`, for ids as text.
pub async fn result_timings_of<S: AsRef<str>>(pool: &Pool, ids: &[S]) -> Result<Vec<ResultTiming>> {
    let mut conn = pool.get_conn().await?;
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let list = quoted(chunk);
        if list.is_empty() {
            continue;
        }
        type Row = (bool, Option<String>, i64, i64, i32, i64, u64);
        let rows: Vec<Row> = conn
            .query(format!(
                "SELECT success, reason, accepted_at, settled_at, `partition`, `offset`, epoch \
                 FROM result WHERE order_id IN ({list})"
            ))
            .await
            .context("reading results")?;
        for (ok, reason, accepted_at, settled_at, partition, offset, epoch) in rows {
            let reason = match (ok, reason) {
                (true, _) => None,
                (false, r) => Some(
                    r.unwrap_or_default()
                        .parse::<Reason>()
                        .map_err(anyhow::Error::msg)?,
                ),
            };
            out.push(ResultTiming {
                reason,
                accepted_at,
                settled_at,
                partition,
                offset,
                epoch,
            });
        }
    }
    Ok(out)
}

/// The settlement transactions that committed at or after `since_ms`, by partition and
/// offset.
pub async fn commits_since(pool: &Pool, since_ms: i64) -> Result<Vec<CommitRecord>> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(i32, i64, i64, i64, u32)> = conn
        .exec(
            "SELECT `partition`, next_offset, committed_at, started_at, orders \
             FROM settle_batches WHERE committed_at >= ? ORDER BY `partition`, next_offset",
            (since_ms,),
        )
        .await
        .context("reading the settlement transactions' commit times")?;
    Ok(rows
        .into_iter()
        .map(
            |(partition, next_offset, committed_at, started_at, orders)| CommitRecord {
                partition,
                next_offset,
                started_at,
                committed_at,
                orders,
            },
        )
        .collect())
}

/// Every result's order id.
pub async fn result_ids(pool: &Pool) -> Result<Vec<String>> {
    let mut conn = pool.get_conn().await?;
    conn.query("SELECT order_id FROM result")
        .await
        .context("reading result ids")
}

/// Every result, as the checker recomputes it.
pub async fn audit_results(pool: &Pool) -> Result<Vec<AuditResult>> {
    let mut conn = pool.get_conn().await?;
    type Row = (
        String,
        String,
        bool,
        Decimal,
        u64,
        u64,
        i64,
        String,
        Option<String>,
        i32,
        i64,
    );
    let rows: Vec<Row> = conn
        .query(
            "SELECT order_id, initiator, success, paid, rate_version, epoch, accepted_at, \
             items, reason, `partition`, `offset` FROM result",
        )
        .await
        .context("reading results")?;
    Ok(rows
        .into_iter()
        .map(
            |(
                order_id,
                initiator,
                success,
                paid,
                rate_version,
                epoch,
                accepted_at,
                items,
                reason,
                partition,
                offset,
            )| {
                AuditResult {
                    order_id,
                    initiator,
                    success,
                    paid,
                    rate_version,
                    epoch,
                    accepted_at,
                    items,
                    reason,
                    partition,
                    offset,
                }
            },
        )
        .collect())
}

/// Every message of `topic` accounted for, as (partition, offset, where it went); and
/// each partition's stored offset.
pub async fn accounted_offsets(
    pool: &Pool,
    topic: &str,
) -> Result<(Vec<(i32, i64, Accounted)>, Vec<(i32, i64)>)> {
    let mut conn = pool.get_conn().await?;
    let mut out = Vec::new();
    let reads = [
        (
            "SELECT `partition`, `offset` FROM result",
            Accounted::Result,
        ),
        (
            "SELECT `partition`, `offset` FROM skipped_copy WHERE topic = ?",
            Accounted::Skipped,
        ),
        (
            "SELECT `partition`, `offset` FROM dead_letter WHERE topic = ?",
            Accounted::Dead,
        ),
    ];
    for (sql, what) in reads {
        let rows: Vec<(i32, i64)> = if what == Accounted::Result {
            conn.query(sql).await
        } else {
            conn.exec(sql, (topic,)).await
        }
        .context("reading where each offset went")?;
        out.extend(rows.into_iter().map(|(p, o)| (p, o, what)));
    }
    let stored: Vec<(i32, i64)> = conn
        .exec(
            "SELECT `partition`, next_offset FROM offsets WHERE topic = ? ORDER BY `partition`",
            (topic,),
        )
        .await
        .context("reading stored offsets")?;
    Ok((out, stored))
}

/// The dead letters of `topic`, oldest offset first per partition; only `offset` of
/// `partition` when given.
pub async fn dead_letters(
    pool: &Pool,
    topic: &str,
    at: Option<(i32, i64)>,
) -> Result<Vec<DeadLetterRow>> {
    let mut conn = pool.get_conn().await?;
    let (p, o) = at.unwrap_or((-1, -1));
    type Row = (i32, i64, Option<String>, String, Vec<u8>, Vec<u8>, u32, i64);
    let rows: Vec<Row> = conn
        .exec(
            "SELECT `partition`, `offset`, order_id, reason, detail, bytes, size, recorded_at \
             FROM dead_letter WHERE topic = ? AND (? < 0 OR (`partition` = ? AND `offset` = ?)) \
             ORDER BY `partition`, `offset`",
            (topic, p, p, o),
        )
        .await
        .context("reading dead letters")?;
    Ok(rows
        .into_iter()
        .map(
            |(partition, offset, order_id, reason, detail, bytes, size, recorded_at)| {
                DeadLetterRow {
                    partition,
                    offset,
                    order_id,
                    reason,
                    detail: String::from_utf8_lossy(&detail).into_owned(),
                    bytes,
                    size,
                    recorded_at,
                }
            },
        )
        .collect())
}

/// Every commodity's stock.
pub async fn stock(pool: &Pool) -> Result<Vec<StockRow>> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(u32, i64, i64, Decimal, String)> = conn
        .query("SELECT id, initial_inventory, inventory, price, currency FROM commodity")
        .await
        .context("reading the commodities")?;
    Ok(rows
        .into_iter()
        .map(|(id, initial, inventory, price, currency)| StockRow {
            id,
            initial,
            inventory,
            price,
            currency,
        })
        .collect())
}

/// Every rate the dataflow recorded, by version.
pub async fn rate_history(pool: &Pool) -> Result<Vec<RateRow>> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(u64, String, Decimal, u64)> = conn
        .query("SELECT version, currency, rate, from_epoch FROM rate_history ORDER BY version")
        .await
        .context("reading rate_history")?;
    Ok(rows
        .into_iter()
        .map(|(version, currency, rate, from_epoch)| RateRow {
            version,
            currency,
            rate,
            from_epoch,
        })
        .collect())
}

/// The first rate version that gave `currency` the value `rate`, recorded at or after
/// `since_ms`.
pub async fn first_version_with(
    pool: &Pool,
    currency: &str,
    rate: Decimal,
    since_ms: i64,
) -> Result<Option<u64>> {
    let mut conn = pool.get_conn().await?;
    let v: Option<Option<u64>> = conn
        .exec_first(
            "SELECT MIN(version) FROM rate_history WHERE currency = ? AND rate = ? AND recorded_at >= ?",
            (currency, rate, since_ms),
        )
        .await?;
    Ok(v.flatten())
}

/// When the first order at rate version `version` or later was settled.
pub async fn first_settled_at_version(pool: &Pool, version: u64) -> Result<Option<i64>> {
    let mut conn = pool.get_conn().await?;
    let at: Option<Option<i64>> = conn
        .exec_first(
            "SELECT MIN(settled_at) FROM result WHERE rate_version >= ?",
            (version,),
        )
        .await?;
    Ok(at.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_order_ids_reach_the_sql() {
        let ids = ["0199ab-01", "x' OR 1=1 --", "", "ABCDEF"];
        assert_eq!(quoted(&ids), "'0199ab-01','ABCDEF'");
    }
}
