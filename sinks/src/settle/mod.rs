//! One MySQL transaction per batch of a partition: its results, its stock changes, its
//! totals delta and the partition's next offset commit together, or none of them do
//! (docs/DESIGN.md, "Exactly once").
//!
//! ```text
//!             worker's view of the stock (view.rs)
//!                          │ guess each order's decision
//!                          ▼
//!  round trip 1   START TRANSACTION; LOAD DATA LOCAL the result rows as guessed
//!                 (all new, unless part of the batch committed before: then lock the
//!                 offsets row first and settle only what lies at or above it)
//!  round trip 2   SELECT … FOR UPDATE: the partition's offsets row, then the batch's
//!                 commodities in id order (only the offsets row when the view holds
//!                 every commodity of the batch: the stock UPDATE checks it instead)
//!                          │ decide again against the locked stock (plan.rs)
//!                          ▼
//!  round trip 3   UPDATE the results whose decision changed; UPDATE commodity (only
//!                 rows that still hold what was read); add the totals delta; log the
//!                 previous batch's commit; store the next offset, NULL (an error)
//!                 unless every row count matched; COMMIT
//! ```
//!
//! The locks are held from round trip 2 to the end of round trip 3. Every statement is
//! built as text by `sql.rs`; the round trips and the retry policy are `txn.rs`; two
//! transactions of a partition in flight at once (the next one writing its results while
//! the one before commits) are `pipeline.rs`. A retry after an ambiguous commit finds
//! the new offset and applies nothing twice.

mod pipeline;
mod plan;
mod sql;
mod txn;
mod view;

use std::sync::Arc;

use anyhow::{Context, Result};
use model::{now_ms, Currency, Decimal, Order, RateTable, Reason};
use mysql_async::prelude::*;
use mysql_async::Pool;

pub use pipeline::{Batch, Settlement};
pub use sql::{items_text, parse_items_text};
pub use view::SettleState;

/// An order ready to settle: where it was read, its epoch and the rates of that epoch.
#[derive(Clone, Debug)]
pub struct Settling {
    pub offset: i64,
    pub epoch: u64,
    pub order: Order,
    pub rates: Arc<RateTable>,
}

/// What was committed for one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub order_id: model::Uuid,
    pub initiator: Currency,
    pub epoch: u64,
    pub reason: Option<Reason>,
    pub paid: Decimal,
    pub accepted_at: i64,
    pub settled_at: i64,
}

/// Create the partition's `offsets` row and its `totals` rows (one per currency) if
/// missing, so the settlement transaction only ever updates rows that exist.
pub async fn prepare_partition(
    pool: &Pool,
    topic: &str,
    partition: i32,
    currencies: &[Currency],
) -> Result<()> {
    let mut conn = pool.get_conn().await?;
    conn.exec_drop(
        "INSERT IGNORE INTO offsets (topic, `partition`, next_offset, updated_at) VALUES (?, ?, 0, ?)",
        (topic, partition, now_ms()),
    )
    .await
    .context("creating the offsets row")?;
    for c in currencies {
        conn.exec_drop(
            "INSERT IGNORE INTO totals (`partition`, currency, total, orders) VALUES (?, ?, 0, 0)",
            (partition, c.as_str()),
        )
        .await
        .context("creating a totals row")?;
    }
    Ok(())
}

/// Settle `batch` (offset order, one partition) and store `next_offset` for the
/// partition, atomically. Orders below the offset already stored were committed
/// before (an ambiguous commit, or a replay) and are skipped. Retries until it
/// commits: while MySQL is down the caller waits here, and so stops reading Kafka.
pub async fn settle_batch(
    pool: &Pool,
    topic: &str,
    partition: i32,
    batch: &[Settling],
    next_offset: i64,
    state: &mut SettleState,
) -> Result<Vec<Outcome>> {
    let target = txn::Target::new(topic, partition, batch, next_offset);
    txn::settle_with_retries(pool, target, state, now_ms(), false).await
}
