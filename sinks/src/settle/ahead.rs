//! A batch started ahead: its results load on a connection of its own while the batch
//! before it is still only loading or waiting, so that two batches' results load at
//! once (MariaDB loads one statement on one core) while a third commits.
//!
//! ```text
//!  batch N    … round trip 3: COMMIT
//!  batch N+1  LOAD results ───────────► wait for the offsets row ─► (next call) decide, commit
//!  batch N+2       LOAD results ─────────────► wait for the offsets row ───────────► …
//! ```
//!
//! Only a batch the view can settle alone (it holds every commodity, no miss asks for
//! locks) starts ahead. It is guessed against the stock the batch before it leaves by
//! that batch's own guesses, and settled by its guesses, which the stock UPDATE checks
//! as for any batch settled from the view. Its transaction waits for the offsets row and
//! goes on only if the stored offset is then exactly the batch before's next offset;
//! anything else (that batch failed) rolls it back, and it is settled again the plain way.

use std::collections::{BTreeSet, HashMap};

use crate::{Conn, Pool};
use model::{now_ms, Commodity, Decision};
use mysql_async::prelude::*;
use tokio::task::JoinHandle;

use super::pipeline::Batch;
use super::plan::Open;
use super::txn::{
    abandon, check_stored, load_results, lock_rows, transaction_conn, Expect, Failure, Loaded,
};
use super::view::{guess_on, SettleState};
use super::{sql, Settling};

/// A batch whose transaction was started ahead, on a task of its own.
pub(super) struct Ahead {
    pub batch: Batch,
    settled_at: i64,
    guessed: Vec<Decision>,
    /// The stock its guesses were made against, and the stock they leave.
    base: HashMap<u32, Commodity>,
    pub left: HashMap<u32, Commodity>,
    /// Round trips 1 and 2: its connection once it holds the offsets row.
    task: JoinHandle<Result<Conn, Failure>>,
}

/// Where a batch started ahead goes: its partition, and the next offset of the batch
/// before it, which the stored offset must be when it gets the offsets row.
pub(super) struct After<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub next_offset: i64,
}

impl Ahead {
    /// Start `batch` ahead, guessed against the view with `before` (the stock the
    /// batches in flight before it leave) in front; or give it back when the view
    /// cannot settle it alone, or results go in as INSERTs.
    pub(super) fn launch(
        pool: &Pool,
        after: After<'_>,
        batch: Batch,
        state: &SettleState,
        before: &HashMap<u32, Commodity>,
    ) -> Result<Ahead, Batch> {
        let ids: BTreeSet<u32> = batch
            .orders
            .iter()
            .flat_map(|s| s.order.items.iter().map(|it| it.id))
            .collect();
        if state.insert_results || !state.trusts(&ids) {
            return Err(batch);
        }
        let base = state.base(&ids, before);
        let todo: Vec<&Settling> = batch.orders.iter().collect();
        let (guessed, left) = guess_on(&todo, base.clone());
        let settled_at = now_ms();
        let rows = (!todo.is_empty())
            .then(|| sql::results_tsv(&todo, &guessed, after.partition, settled_at));
        let start = start(
            pool.clone(),
            after.topic.to_string(),
            after.partition,
            rows.map(|r| (r, todo.len() as u64)),
            after.next_offset,
        );
        Ok(Ahead {
            batch,
            settled_at,
            guessed,
            base,
            left,
            task: tokio::spawn(start),
        })
    }

    /// Wait until its transaction holds the offsets row (the batch before committed):
    /// the batch, and its connection with the transaction open.
    pub(super) async fn opened(self) -> (Batch, Result<(Conn, Open), Failure>) {
        let conn = match self.task.await {
            Ok(started) => started,
            Err(e) => Err(Failure::Fatal(anyhow::anyhow!(
                "a batch started ahead: its task ended: {e}"
            ))),
        };
        let open = conn.map(|conn| {
            let open = Open {
                todo_from: 0,
                copies: HashMap::new(),
                guessed: self.guessed,
                settled_at: self.settled_at,
                stock: self.base,
                left: Some(self.left),
            };
            (conn, open)
        });
        (self.batch, open)
    }

    /// Its batch, once its transaction ended: it rolls back by itself once the batch
    /// before failed (and released the offsets row), or when it is cancelled.
    pub(super) async fn stopped(self, cancel: bool) -> Batch {
        if cancel {
            self.task.abort();
        }
        if let Ok(Ok(mut conn)) = self.task.await {
            abandon(&mut conn).await;
        }
        self.batch
    }
}

/// Round trips 1 and 2 of a batch started ahead: begin, load its `rows` (the TSV, and
/// how many), lock the offsets row and check it holds `expect`. Rolled back on failure.
async fn start(
    pool: Pool,
    topic: String,
    partition: i32,
    rows: Option<(Vec<u8>, u64)>,
    expect: i64,
) -> Result<Conn, Failure> {
    let mut conn = transaction_conn(&pool).await?;
    let started = async {
        match rows {
            Some((rows, n)) => {
                let begin = format!("{}; ", sql::BEGIN);
                match load_results(&mut conn, &begin, rows, n).await? {
                    Loaded::All => {}
                    Loaded::SomeExisted => {
                        return Err(Failure::Retry(anyhow::anyhow!(
                            "partition {partition}: results of the batch exist already"
                        )))
                    }
                    Loaded::Refused(e) => return Err(Failure::Retry(e.into())),
                }
            }
            None => conn.query_drop(sql::BEGIN).await?,
        }
        let (stored, _) = lock_rows(&mut conn, &topic, partition, &BTreeSet::new()).await?;
        check_stored(partition, stored, stored, Expect::Exactly(expect))
    }
    .await;
    if let Err(e) = started {
        abandon(&mut conn).await;
        return Err(e);
    }
    Ok(conn)
}
