use std::collections::HashMap;

use anyhow::{Context, Result};
use model::{Decimal, IdScheme};
use mysql_async::prelude::*;
use mysql_async::Row;

use crate::Pool;
use serde::Serialize;

/// A settled order as the query API returns it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ResultRow {
    pub order_id: String,
    pub user_id: String,
    pub initiator: String,
    pub success: bool,
    pub reason: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub paid: Decimal,
    pub rate_version: u64,
    pub epoch: u64,
    pub items: String,
    pub time: Option<i64>,
    pub accepted_at: i64,
    pub settled_at: i64,
    pub partition: i32,
    pub offset: i64,
}

const COLUMNS: &str = "order_id, user_id, initiator, success, reason, paid, rate_version, epoch, \
                       items, client_time, accepted_at, settled_at, `partition`, `offset`";

fn to_result(mut r: Row) -> Result<ResultRow> {
    let mut col = |i: usize| -> Result<mysql_async::Value> {
        r.take::<mysql_async::Value, _>(i)
            .context("missing result column")
    };
    use mysql_async::from_value_opt as v;
    Ok(ResultRow {
        order_id: v(col(0)?)?,
        user_id: v(col(1)?)?,
        initiator: v(col(2)?)?,
        success: v(col(3)?)?,
        reason: v(col(4)?)?,
        paid: v(col(5)?)?,
        rate_version: v(col(6)?)?,
        epoch: v(col(7)?)?,
        items: v(col(8)?)?,
        time: v(col(9)?)?,
        accepted_at: v(col(10)?)?,
        settled_at: v(col(11)?)?,
        partition: v(col(12)?)?,
        offset: v(col(13)?)?,
    })
}

pub async fn result_by_id(pool: &Pool, order_id: &str) -> Result<Option<ResultRow>> {
    let mut conn = pool.get_conn().await?;
    let row: Option<Row> = conn
        .exec_first(
            format!("SELECT {COLUMNS} FROM result WHERE order_id = ?"),
            (order_id,),
        )
        .await?;
    row.map(to_result).transpose()
}

/// A user's results, newest first. With user-tagged ids (`model::ids`) they are among
/// the primary key's range of the user's tag, which other users of that tag share (one
/// in 65,536 of all results, whoever made them); with untagged ids the first version's
/// `by_user` index finds them.
pub async fn results_by_user(pool: &Pool, user_id: &str, limit: u32) -> Result<Vec<ResultRow>> {
    let scheme = crate::id_scheme(pool).await?;
    let mut conn = pool.get_conn().await?;
    let order = "ORDER BY accepted_at DESC, order_id DESC LIMIT ?";
    let rows: Vec<Row> = match scheme {
        IdScheme::Untagged => {
            let sql = format!("SELECT {COLUMNS} FROM result WHERE user_id = ? {order}");
            conn.exec(sql, (user_id, limit)).await?
        }
        IdScheme::UserTagged => {
            // Ids are stored as lower-case hex with hyphens: '~' sorts after all of it.
            let tag = model::ids::tag_prefix(user_id);
            let sql = format!(
                "SELECT {COLUMNS} FROM result WHERE order_id >= ? AND order_id < ? \
                 AND user_id = ? {order}"
            );
            conn.exec(sql, (&tag, format!("{tag}~"), user_id, limit))
                .await?
        }
    };
    rows.into_iter().map(to_result).collect()
}

/// The next offset to read in every partition of `topic` that has settled anything.
pub async fn load_offsets(pool: &Pool, topic: &str) -> Result<HashMap<i32, i64>> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(i32, i64)> = conn
        .exec(
            "SELECT `partition`, next_offset FROM offsets WHERE topic = ?",
            (topic,),
        )
        .await?;
    Ok(rows.into_iter().collect())
}

/// Where partition `partition` of `topic` goes on from: its next offset and the least
/// epoch an order read from there may go to; (0, 0) before it settled anything.
pub async fn load_position(pool: &Pool, topic: &str, partition: i32) -> Result<(i64, u64)> {
    let mut conn = pool.get_conn().await?;
    let row: Option<(i64, u64)> = conn
        .exec_first(
            "SELECT next_offset, next_epoch FROM offsets WHERE topic = ? AND `partition` = ?",
            (topic, partition),
        )
        .await?;
    Ok(row.unwrap_or((0, 0)))
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TotalRow {
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub orders: u64,
}

/// Per-currency totals committed so far (sum over partitions).
pub async fn totals(pool: &Pool) -> Result<Vec<TotalRow>> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(String, Decimal, u64)> = conn
        .query("SELECT currency, SUM(total), CAST(SUM(orders) AS UNSIGNED) FROM totals GROUP BY currency ORDER BY currency")
        .await?;
    Ok(rows
        .into_iter()
        .map(|(currency, total, orders)| TotalRow {
            currency,
            total,
            orders,
        })
        .collect())
}

/// The newest rate snapshot the dataflow recorded: `(version, rates)`.
pub async fn latest_rates(pool: &Pool) -> Result<Option<(u64, Vec<(String, Decimal)>)>> {
    let mut conn = pool.get_conn().await?;
    let version: Option<Option<u64>> = conn
        .query_first("SELECT MAX(version) FROM rate_history")
        .await?;
    let Some(version) = version.flatten() else {
        return Ok(None);
    };
    let rows: Vec<(String, Decimal)> = conn
        .exec(
            "SELECT currency, rate FROM rate_history WHERE version = ? ORDER BY currency",
            (version,),
        )
        .await?;
    Ok(Some((version, rows)))
}

/// A recorded rate table: its version, the epoch it is in force from, its rates.
pub type RecordedTable = (u64, u64, Vec<(String, Decimal)>);

/// The recorded rate tables in force at `epoch` or later, oldest first: the one in force
/// at `epoch` (the newest from before it) and every one after.
pub async fn rate_tables_since(pool: &Pool, epoch: u64) -> Result<Vec<RecordedTable>> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(u64, u64, String, Decimal)> = conn
        .exec(
            "SELECT version, from_epoch, currency, rate FROM rate_history WHERE version >= \
             COALESCE((SELECT MAX(version) FROM rate_history WHERE from_epoch <= ?), 0) \
             ORDER BY version, currency",
            (epoch,),
        )
        .await
        .context("reading rate_history")?;
    let mut tables: Vec<RecordedTable> = Vec::new();
    for (version, from, currency, rate) in rows {
        match tables.last_mut() {
            Some(t) if t.0 == version => t.2.push((currency, rate)),
            _ => tables.push((version, from, vec![(currency, rate)])),
        }
    }
    Ok(tables)
}

/// When the partition least recently committed did so (ms), if any partition of
/// `topic` has a stored offset: orders not yet settled were accepted about then or later.
pub async fn oldest_commit(pool: &Pool, topic: &str) -> Result<Option<i64>> {
    let mut conn = pool.get_conn().await?;
    let at: Option<Option<i64>> = conn
        .exec_first(
            "SELECT MIN(updated_at) FROM offsets WHERE topic = ?",
            (topic,),
        )
        .await
        .context("reading offsets")?;
    Ok(at.flatten())
}

/// Record the snapshot `version`, in force from `from_epoch` on. Idempotent.
pub async fn record_rates(
    pool: &Pool,
    version: u64,
    from_epoch: u64,
    rates: &[(model::Currency, Decimal)],
) -> Result<()> {
    let now = model::now_ms();
    let params: Vec<(u64, String, Decimal, u64, i64)> = rates
        .iter()
        .map(|(c, r)| (version, c.to_string(), *r, from_epoch, now))
        .collect();
    // INSERT IGNORE: a second try after a lost answer finds its rows there.
    crate::retry::idempotent("recording rate history", || async {
        let mut conn = pool.get_conn().await?;
        conn.exec_batch(
            "INSERT IGNORE INTO rate_history (version, currency, rate, from_epoch, recorded_at) VALUES (?,?,?,?,?)",
            params.clone(),
        )
        .await
        .context("recording rate history")
    })
    .await
}

/// Record that the log of `topic`/`partition` lost its offsets `log_end..settled` (settled
/// in MySQL, gone from the log) and goes on at `settled`: an operator accepted the loss.
pub async fn record_lost_log(
    pool: &Pool,
    topic: &str,
    partition: i32,
    log_end: i64,
    settled: i64,
) -> Result<()> {
    let mut conn = pool.get_conn().await?;
    conn.exec_drop(
        "INSERT INTO lost_log (topic, `partition`, log_end, settled, recorded_at) VALUES (?,?,?,?,?)",
        (topic, partition, log_end, settled, model::now_ms()),
    )
    .await
    .context("recording a lost log in lost_log")
}

/// Every recorded loss of `topic`'s log: (partition, log end, settled offset, when).
pub async fn lost_logs(pool: &Pool, topic: &str) -> Result<Vec<(i32, i64, i64, i64)>> {
    let mut conn = pool.get_conn().await?;
    conn.exec(
        "SELECT `partition`, log_end, settled, recorded_at FROM lost_log WHERE topic = ? \
         ORDER BY recorded_at",
        (topic,),
    )
    .await
    .context("reading lost_log")
}

/// How many messages of `topic` were kept as dead letters, and how many copies of
/// settled orders were skipped (for `/metrics`).
pub async fn poison_counts(pool: &Pool, topic: &str) -> Result<(u64, u64)> {
    let mut conn = pool.get_conn().await?;
    let counts: Option<(u64, u64)> = conn
        .exec_first(
            "SELECT (SELECT COUNT(*) FROM dead_letter WHERE topic = ?), \
             (SELECT COUNT(*) FROM skipped_copy WHERE topic = ?)",
            (topic, topic),
        )
        .await
        .context("counting dead letters and skipped copies")?;
    Ok(counts.unwrap_or_default())
}

/// The dearest price in the catalogue per currency (`model::payable`'s input).
pub async fn max_prices(pool: &Pool) -> Result<Vec<(String, Decimal)>> {
    let mut conn = pool.get_conn().await?;
    conn.query("SELECT currency, MAX(price) FROM commodity GROUP BY currency")
        .await
        .context("reading the catalogue's dearest prices")
}

/// The commodities with less stock than `below`: (id, inventory), by id.
pub async fn low_stock(pool: &Pool, below: u32) -> Result<Vec<(u32, u32)>> {
    let mut conn = pool.get_conn().await?;
    conn.exec(
        "SELECT id, inventory FROM commodity WHERE inventory < ? ORDER BY id",
        (below,),
    )
    .await
    .context("reading the commodities low on stock")
}

/// A commodity as the console's catalogue search shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CommodityRow {
    pub id: u32,
    pub name: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    pub currency: String,
    pub inventory: u32,
}

/// At most `limit` commodities whose name contains `text` (no wildcards: `%` and `_`
/// match themselves) or whose id it is, by id.
pub async fn search_catalogue(pool: &Pool, text: &str, limit: u32) -> Result<Vec<CommodityRow>> {
    let mut conn = pool.get_conn().await?;
    let pattern = format!(
        "%{}%",
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let id: u32 = text.trim().parse().unwrap_or(0);
    let rows: Vec<(u32, String, Decimal, String, u32)> = conn
        .exec(
            "SELECT id, name, price, currency, inventory FROM commodity \
             WHERE name LIKE ? OR id = ? ORDER BY id = ? DESC, id LIMIT ?",
            (pattern, id, id, limit),
        )
        .await
        .context("searching the catalogue")?;
    Ok(rows
        .into_iter()
        .map(|(id, name, price, currency, inventory)| CommodityRow {
            id,
            name,
            price,
            currency,
            inventory,
        })
        .collect())
}

/// One currency's rate at one recorded version.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RateVersion {
    pub version: u64,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    pub recorded_at: i64,
}

/// The rates of the newest `versions` snapshots the dataflow recorded, oldest first.
pub async fn recent_rates(pool: &Pool, versions: u32) -> Result<Vec<RateVersion>> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(u64, String, Decimal, i64)> = conn
        .exec(
            "SELECT version, currency, rate, recorded_at FROM rate_history WHERE version >= \
             (SELECT COALESCE(MIN(version), 0) FROM \
              (SELECT DISTINCT version FROM rate_history ORDER BY version DESC LIMIT ?) newest) \
             ORDER BY version, currency",
            (versions,),
        )
        .await
        .context("reading recent rate versions")?;
    Ok(rows
        .into_iter()
        .map(|(version, currency, rate, recorded_at)| RateVersion {
            version,
            currency,
            rate,
            recorded_at,
        })
        .collect())
}
