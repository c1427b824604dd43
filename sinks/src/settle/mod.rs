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
//!  round trip 3   UPDATE the results whose decision changed; LOAD DATA LOCAL the
//!                 stock changes into a scratch table, UPDATE commodity from it (only
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

mod batch;
mod pipeline;
mod plan;
mod record;
mod sql;
mod txn;
mod view;

use std::sync::Arc;

use crate::Pool;
use anyhow::{Context, Result};
use model::idempotency::Digest;
use model::{now_ms, Currency, Decimal, Order, RateTable, Reason};
use mysql_async::prelude::*;

pub use batch::{Batch, HandOver};
pub use pipeline::TransactionPipeline;
pub use sql::{items_text, parse_items_text, results_tsv};
pub use view::SettleState;

/// An order ready to settle: where it was read, its epoch and the rates of that epoch.
#[derive(Clone, Debug)]
pub struct ReadyOrder {
    pub offset: i64,
    pub epoch: u64,
    pub order: Order,
    pub rates: Arc<RateTable>,
}

impl ReadyOrder {
    /// This message as a copy of an order whose id was settled (or met earlier in its
    /// batch) with digest `settled`: skipped, unless both are keyed orders that differ
    /// (another order sent under the same idempotency key). That is a dead letter
    /// `idempotency_conflict` naming the key; the first order stands.
    pub fn copy_of(&self, settled: Option<Digest>) -> Result<Skipped, DeadLetter> {
        let order = &self.order;
        match (&order.keyed, settled) {
            (Some(k), Some(settled)) if k.digest != settled => {
                let detail = format!(
                    "idempotency key {:?} of user {:?} names another order, settled before: \
                     its items or currency differ; the first order stands",
                    k.key, order.user_id
                );
                Err(DeadLetter::new(
                    self.offset,
                    self.epoch,
                    Some(order.order_id),
                    "idempotency_conflict",
                    detail,
                    &model::wire::encode(order),
                ))
            }
            _ => Ok(Skipped {
                offset: self.offset,
                order_id: order.order_id,
            }),
        }
    }
}

/// The most bytes of a message a dead letter keeps.
pub const MAX_DEAD_BYTES: usize = 4096;

/// A message of the partition that cannot be settled, kept with its bytes in the
/// `dead_letter` table by the transaction that moves the offset past it. When its order
/// id can be read, the order also gets a result (`invalid_order`) unless it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub offset: i64,
    pub epoch: u64,
    pub order_id: Option<model::Uuid>,
    /// `undecodable`, `invalid_order` (failed validation), `unsettleable` (its amount
    /// cannot be computed or stored) or `idempotency_conflict` (another order under an
    /// idempotency key already used).
    pub reason: &'static str,
    pub detail: String,
    /// The message's first `MAX_DEAD_BYTES` bytes.
    pub bytes: Vec<u8>,
    /// The message's length.
    pub size: usize,
}

impl DeadLetter {
    pub fn new(
        offset: i64,
        epoch: u64,
        order_id: Option<model::Uuid>,
        reason: &'static str,
        detail: impl Into<String>,
        message: &[u8],
    ) -> DeadLetter {
        let mut detail: String = detail.into();
        if detail.len() > 1000 {
            let cut = (0..=1000)
                .rev()
                .find(|i| detail.is_char_boundary(*i))
                .unwrap_or(0);
            detail.truncate(cut);
        }
        DeadLetter {
            offset,
            epoch,
            order_id,
            reason,
            detail,
            bytes: message[..message.len().min(MAX_DEAD_BYTES)].to_vec(),
            size: message.len(),
        }
    }
}

/// A message whose order id already has a result, or comes twice in one batch, with the
/// same order (or without a key): skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub offset: i64,
    pub order_id: model::Uuid,
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
    /// The order's lines, each with the commodity's stock as the transaction left it
    /// (None when the outcome was read back from MySQL), for the live views.
    pub lines: Vec<Line>,
}

/// One line of a settled order: `units` of `commodity`, and its stock `left` after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    pub commodity: u32,
    pub units: u32,
    pub left: Option<u32>,
}

/// Create the partition's `offsets` row and its `totals` rows (one per currency) if
/// missing, so the settlement transaction only ever updates rows that exist; and clear
/// a hold on it (`record_hold`): a worker starting reads it again. Every statement is
/// idempotent, so a deadlock, a cluster's certification conflict (two workers preparing
/// at once) or a lost connection is simply tried again.
pub async fn prepare_partition(
    pool: &Pool,
    topic: &str,
    partition: i32,
    currencies: &[Currency],
) -> Result<()> {
    crate::retry::idempotent("preparing the partition", || {
        prepare_once(pool, topic, partition, currencies)
    })
    .await
}

async fn prepare_once(
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
    conn.exec_drop(
        "DELETE FROM held_partition WHERE topic = ? AND `partition` = ?",
        (topic, partition),
    )
    .await
    .context("clearing the partition's hold")?;
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

/// Say that `partition` holds at `offset`, whose message is of wire format `version`,
/// newer than this build reads.
pub async fn record_hold(
    pool: &Pool,
    topic: &str,
    partition: i32,
    offset: i64,
    version: u8,
) -> Result<()> {
    pool.get_conn()
        .await?
        .exec_drop(
            "REPLACE INTO held_partition (topic, `partition`, `offset`, format_version, since) \
             VALUES (?, ?, ?, ?, ?)",
            (topic, partition, offset, version, now_ms()),
        )
        .await
        .context("recording a held partition")
}

/// A partition waiting for an upgrade: where, and for which wire format.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Hold {
    pub partition: i32,
    pub offset: i64,
    pub format_version: u8,
    pub since: i64,
}

/// The partitions of `topic` that hold.
pub async fn holds(pool: &Pool, topic: &str) -> Result<Vec<Hold>> {
    let rows: Vec<(i32, i64, u8, i64)> = pool
        .get_conn()
        .await?
        .exec(
            "SELECT `partition`, `offset`, format_version, since FROM held_partition \
             WHERE topic = ? ORDER BY `partition`",
            (topic,),
        )
        .await
        .context("reading held partitions")?;
    Ok(rows
        .into_iter()
        .map(|(partition, offset, format_version, since)| Hold {
            partition,
            offset,
            format_version,
            since,
        })
        .collect())
}

/// Settle `batch` (offset order, one partition) and store `next_offset` for the
/// partition, atomically. Orders below the offset already stored were committed
/// before (an ambiguous commit, or a replay) and are skipped. Retries until it
/// commits: while MySQL is down the caller waits here, and so stops reading Kafka.
pub async fn settle_batch(
    pool: &Pool,
    topic: &str,
    partition: i32,
    batch: &[ReadyOrder],
    next_offset: i64,
    state: &mut SettleState,
) -> Result<Vec<Outcome>> {
    let batch = Batch {
        orders: batch.to_vec(),
        next_offset,
        ..Batch::default()
    }
    .deduped();
    let target = txn::Target::of(topic, partition, &batch);
    txn::settle_with_retries(pool, target, state, now_ms(), false).await
}
