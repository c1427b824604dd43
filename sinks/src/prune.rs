//! Bounded side tables: `skipped_copy` and `dead_letter` (a row per copy skipped and per
//! message that could not be settled, from anyone who can write to the topic) are pruned
//! by age and by count per partition, and `settle_batches` (a row per transaction) by
//! age, in small steps on a connection of their own, so settlement is never held.
//! `result` is the record: it keeps every row.
//!
//! Invariant 5 (every offset below the stored one is a result, a skipped copy or a dead
//! letter) stays provable: each partition's pruning goes forward in offset order up to a
//! cut, and `pruned` records the cut and how many offsets below it are now accounted for
//! by pruned rows alone (`gaps`: pruned skipped copies, and pruned dead letters with no
//! result at their offset). The checker counts the offsets missing below the cut against
//! `gaps`, and allows none above it.

use anyhow::{Context, Result};
use model::Retention;
use mysql_async::prelude::*;

use crate::Pool;

/// Rows deleted per table per step: a step is short, whatever is due.
const STEP: u64 = 1_000;

/// What one pruning pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub skipped: u64,
    pub dead: u64,
    pub batches: u64,
}

/// One step of pruning for every partition of `topic` with a stored offset, and one for
/// `settle_batches`; `now` in ms.
pub async fn prune_step(pool: &Pool, topic: &str, keep: &Retention, now: i64) -> Result<Pruned> {
    let mut conn = pool.get_conn().await?;
    let partitions: Vec<(i32, i64)> = conn
        .exec(
            "SELECT `partition`, next_offset FROM offsets WHERE topic = ?",
            (topic,),
        )
        .await
        .context("reading stored offsets")?;
    drop(conn);
    let mut total = Pruned::default();
    for (p, stored) in partitions {
        let (skipped, dead) = prune_partition(pool, topic, p, stored, keep, now).await?;
        total.skipped += skipped;
        total.dead += dead;
    }
    let before = now - keep.batches_age.as_millis() as i64;
    let mut conn = pool.get_conn().await?;
    conn.exec_drop(
        format!("DELETE FROM settle_batches WHERE committed_at < ? LIMIT {STEP}"),
        (before,),
    )
    .await
    .context("pruning settle_batches")?;
    total.batches = conn.affected_rows();
    Ok(total)
}

/// Prune partition `p` up to its cut (`cut`), in one transaction: (skipped, dead) rows
/// removed.
async fn prune_partition(
    pool: &Pool,
    topic: &str,
    p: i32,
    stored: i64,
    keep: &Retention,
    now: i64,
) -> Result<(u64, u64)> {
    let mut conn = pool.get_conn().await?;
    let Some((from, to)) = cut(&mut conn, topic, p, stored, keep, now).await? else {
        return Ok((0, 0));
    };
    conn.query_drop("BEGIN").await?;
    let done = async {
        let gaps: Option<i64> = conn
            .exec_first(
                "SELECT (SELECT COUNT(*) FROM skipped_copy WHERE topic = ? AND `partition` = ? \
                   AND `offset` >= ? AND `offset` < ?) \
                 + (SELECT COUNT(*) FROM dead_letter d WHERE topic = ? AND `partition` = ? \
                   AND `offset` >= ? AND `offset` < ? AND NOT EXISTS (SELECT 1 FROM result r \
                   WHERE r.order_id = d.order_id AND r.`partition` = d.`partition` \
                   AND r.`offset` = d.`offset`))",
                (topic, p, from, to, topic, p, from, to),
            )
            .await?;
        let mut removed = [0u64; 2];
        for (i, table) in ["skipped_copy", "dead_letter"].iter().enumerate() {
            conn.exec_drop(
                format!("DELETE FROM {table} WHERE topic = ? AND `partition` = ? AND `offset` < ?"),
                (topic, p, to),
            )
            .await?;
            removed[i] = conn.affected_rows();
        }
        conn.exec_drop(
            "INSERT INTO pruned (topic, `partition`, below, gaps, skipped, dead) \
             VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE below = VALUES(below), \
             gaps = gaps + VALUES(gaps), skipped = skipped + VALUES(skipped), \
             dead = dead + VALUES(dead)",
            (topic, p, to, gaps.unwrap_or(0), removed[0], removed[1]),
        )
        .await?;
        conn.query_drop("COMMIT").await?;
        anyhow::Ok((removed[0], removed[1]))
    };
    match done.await {
        Ok(removed) => Ok(removed),
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            Err(e).with_context(|| format!("pruning partition {p}'s side tables"))
        }
    }
}

/// The offsets `[from, to)` of partition `p` whose side rows are due now, at most `STEP`
/// of them per table: everything below the first row still young, and beyond the count
/// the oldest; never at or above the stored offset. None when nothing is due.
async fn cut(
    conn: &mut mysql_async::Conn,
    topic: &str,
    p: i32,
    stored: i64,
    keep: &Retention,
    now: i64,
) -> Result<Option<(i64, i64)>> {
    let from: i64 = conn
        .exec_first(
            "SELECT below FROM pruned WHERE topic = ? AND `partition` = ?",
            (topic, p),
        )
        .await?
        .unwrap_or(0);
    let young = now - keep.side_rows_age.as_millis() as i64;
    let mut to = stored;
    for table in ["skipped_copy", "dead_letter"] {
        // The first row still young, the first row of the newest `side_rows_per_partition`,
        // and the row `STEP` on from the last cut: rows below all three are due.
        let bounds: (Option<i64>, Option<i64>, Option<i64>) = conn
            .exec_first(
                format!(
                    "SELECT (SELECT MIN(`offset`) FROM {table} WHERE topic = ? AND `partition` = ? \
                       AND recorded_at >= ?), \
                     (SELECT `offset` FROM {table} WHERE topic = ? AND `partition` = ? \
                       ORDER BY `offset` DESC LIMIT 1 OFFSET ?), \
                     (SELECT `offset` FROM {table} WHERE topic = ? AND `partition` = ? \
                       AND `offset` >= ? ORDER BY `offset` LIMIT 1 OFFSET ?)"
                ),
                (
                    topic,
                    p,
                    young,
                    topic,
                    p,
                    keep.side_rows_per_partition.saturating_sub(1),
                    topic,
                    p,
                    from,
                    STEP,
                ),
            )
            .await?
            .unwrap_or_default();
        let (first_young, first_kept, step_end) = bounds;
        // Rows below the first young one are old; rows below the first kept one are
        // beyond the count: either way due.
        let due = first_young
            .unwrap_or(i64::MAX)
            .max(first_kept.unwrap_or(i64::MIN));
        to = to.min(due).min(step_end.unwrap_or(i64::MAX));
    }
    Ok((to > from).then_some((from, to)))
}

/// Each partition's cut and the offsets below it that pruned rows alone accounted for.
pub async fn pruned(pool: &Pool, topic: &str) -> Result<Vec<(i32, i64, i64)>> {
    let mut conn = pool.get_conn().await?;
    conn.exec(
        "SELECT `partition`, below, gaps FROM pruned WHERE topic = ?",
        (topic,),
    )
    .await
    .context("reading pruned")
}
