//! A partition's batches settled one after another, each in its own transaction, with
//! two transactions in flight: while a batch commits (round trip 3, on one connection),
//! the next one writes its results (round trip 1, on another, guessed against the stock
//! as the first leaves it) and then waits in MySQL for the offsets row the first holds.
//! It gets that row when the first commits, and goes on only if the stored offset is
//! then exactly the first's next offset. If the first fails instead, the second rolls
//! back and both are settled again one at a time (`settle_batch`'s way).

use crate::{Conn, Pool};
use anyhow::Result;
use model::now_ms;

use super::batch::Batch;
use super::plan::Open;
use super::txn::{
    abandon, decide_open, finish_on, open_on, settle_with_retries, transaction_conn, within,
    Backoff, Expect, Failure, Opening, Target,
};
use super::view::SettleState;
use super::Outcome;

impl Batch {
    fn target<'a>(&'a self, topic: &'a str, partition: i32) -> Target<'a> {
        Target::of(topic, partition, self)
    }
}

/// How long the next batch's start waits for round trip 3 to be asked for its stock
/// lines, at most (the server asks at once unless a statement before fails).
const STOCK_LINES_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// A batch whose transaction is open on its connection (results written, rows locked).
type Opened = (Batch, Conn, Open);

pub struct TransactionPipeline {
    pool: Pool,
    topic: String,
    partition: i32,
    state: SettleState,
    /// The next batch, its transaction open.
    open: Option<Opened>,
    /// A batch taken whose overlapped start failed: settled next, the plain way.
    waiting: Option<Batch>,
}

impl TransactionPipeline {
    /// Settle `partition` of `topic` through `pool`, which must allow two connections:
    /// the second transaction in flight takes its own (with one, it would wait for ever).
    pub fn new(pool: Pool, topic: &str, partition: i32) -> TransactionPipeline {
        TransactionPipeline {
            pool,
            topic: topic.to_string(),
            partition,
            state: SettleState::default(),
            open: None,
            waiting: None,
        }
    }

    /// Batches committed from the worker's view, and views found stale, so far (see
    /// `SettleState::verified_batches`, `SettleState::stale_views`).
    pub fn view_counts(&self) -> (u64, u64) {
        (self.state.verified_batches(), self.state.stale_views())
    }

    /// Messages kept as dead letters and copies skipped so far (see
    /// `SettleState::poison_counts`).
    pub fn poison_counts(&self) -> (u64, u64) {
        self.state.poison_counts()
    }

    /// Write the last batch's commit record now (see `SettleState::flush`).
    pub async fn flush(&mut self) -> Result<()> {
        self.state.flush(&self.pool).await
    }

    /// Close the pool's connections (rolling back a batch left open).
    pub async fn disconnect(self) -> Result<()> {
        drop(self.open);
        self.pool.disconnect().await?;
        Ok(())
    }

    /// Settle the partition's next batch (the one already open, else one from `pull`) and
    /// return its outcomes once committed; None when `pull` has none. `pull` is asked
    /// again while this batch commits: a batch it gives then is started at once and held
    /// open for the next call.
    pub async fn next(
        &mut self,
        mut pull: impl FnMut() -> Option<Batch>,
    ) -> Result<Option<Vec<Outcome>>> {
        let mut pull = || pull().map(Batch::deduped);
        let (batch, mut conn, open) = match self.open.take() {
            Some(open) => open,
            None => {
                let Some(batch) = self.waiting.take().or_else(&mut pull) else {
                    return Ok(None);
                };
                match self.begin(batch).await? {
                    Ok(open) => open,
                    Err(outcomes) => return Ok(Some(outcomes)),
                }
            }
        };
        let target = batch.target(&self.topic, self.partition);
        let started_at = open.settled_at;
        let decided = match decide_open(target, open, &self.state) {
            Ok(d) => d,
            Err(e) => {
                abandon(&mut conn).await;
                return Err(e.into_error());
            }
        };
        let then = pull();
        if then.is_some() {
            // The view the next batch guesses from: the stock as this batch leaves it.
            let left = decided.plan.stock.iter().map(|(id, c)| (*id, *c));
            self.state.stock.extend(left);
        }
        let mut commit_sent = false;
        let partition = self.partition;
        let (read, asked) = tokio::sync::oneshot::channel();
        let finishing = async {
            let done = within(finish_on(
                &mut conn,
                partition,
                &decided,
                &mut commit_sent,
                Some(read),
            ))
            .await;
            if done.is_err() {
                // Release the rows now: the next batch waits for them.
                abandon(&mut conn).await;
            }
            (done, now_ms())
        };
        let expect = Expect::Exactly(batch.next_offset);
        let (pool, topic, state) = (&self.pool, &self.topic, &mut self.state);
        let starting = async {
            if then.is_some() {
                // This thread writes the next batch's rows before it reads the answers
                // of round trip 3: let that send its stock lines first, or the server
                // waits for them while the rows are written.
                let _ = tokio::time::timeout(STOCK_LINES_WAIT, asked).await;
            }
            start_next(pool, topic, partition, then.as_ref(), state, expect).await
        };
        let ((done, committed_at), started) = tokio::join!(finishing, starting);
        if let Err(e) = done {
            if let Ok(Some((mut then_conn, _))) = started {
                abandon(&mut then_conn).await;
            }
            self.waiting = then;
            forget_failed(&mut self.state, partition, e, batch.orders.len())?;
            return settle_with_retries(
                &self.pool,
                target,
                &mut self.state,
                started_at,
                commit_sent,
            )
            .await
            .map(Some);
        }
        conn.reset_connection(false);
        let record = target.record(started_at, committed_at);
        let outcomes = self.state.committed(decided.plan);
        self.state.unrecorded = Some(record);
        self.keep_next(then, started)?;
        Ok(Some(outcomes))
    }

    /// After a commit: the next batch, open (held for the next call) or not (settled
    /// next, the plain way), unless opening it failed fatally.
    fn keep_next(
        &mut self,
        then: Option<Batch>,
        started: Result<Option<(Conn, Open)>, Failure>,
    ) -> Result<()> {
        match (then, started) {
            (Some(then), Ok(Some((then_conn, then_open)))) => {
                self.open = Some((then, then_conn, then_open));
            }
            (_, Err(Failure::Fatal(e))) => return Err(e),
            (then, _) => self.waiting = then,
        }
        Ok(())
    }

    /// Round trips 1 and 2 of a batch not started while the one before committed, with
    /// retries: Ok(Err(outcomes)) when it turned out committed already.
    async fn begin(&mut self, batch: Batch) -> Result<Result<Opened, Vec<Outcome>>> {
        let mut backoff = Backoff::default();
        for attempt in 1.. {
            let target = batch.target(&self.topic, self.partition);
            let mut conn = match transaction_conn(&self.pool).await {
                Ok(c) => c,
                Err(e) => {
                    backoff.wait(target, attempt, &e.into()).await;
                    continue;
                }
            };
            match within(open_on(
                &mut conn,
                target,
                &mut self.state,
                Expect::NotBeyondFirst,
                false,
            ))
            .await
            {
                Ok(Opening::Open(open)) => return Ok(Ok((batch, conn, open))),
                Ok(Opening::Committed(outcomes)) => {
                    conn.reset_connection(false);
                    return Ok(Err(outcomes));
                }
                Err(Failure::Fatal(e)) => {
                    abandon(&mut conn).await;
                    return Err(e);
                }
                Err(Failure::Retry(e) | Failure::Stale(e)) => {
                    abandon(&mut conn).await;
                    backoff.wait(target, attempt, &e).await;
                }
            }
        }
        unreachable!()
    }
}

/// Round trips 1 and 2 of `then` (if any), overlapped with the commit of the batch
/// before, whose next offset the stored one must equal (`expect`).
async fn start_next(
    pool: &Pool,
    topic: &str,
    partition: i32,
    then: Option<&Batch>,
    state: &mut SettleState,
    expect: Expect,
) -> Result<Option<(Conn, Open)>, Failure> {
    let Some(then) = then else {
        return Ok(None);
    };
    let mut conn = transaction_conn(pool).await?;
    match within(open_on(
        &mut conn,
        then.target(topic, partition),
        state,
        expect,
        false,
    ))
    .await
    {
        Ok(Opening::Open(open)) => Ok(Some((conn, open))),
        Ok(Opening::Committed(_)) => {
            // Not while the batch before commits (its offset is below this one's).
            abandon(&mut conn).await;
            Err(Failure::Retry(anyhow::anyhow!(
                "the batch was committed already"
            )))
        }
        Err(e) => {
            abandon(&mut conn).await;
            Err(e)
        }
    }
}

/// A batch's round trip 3 failed (`e`), after its decisions went into the view:
/// forget the view (a stale one also makes the next batches lock), or stop.
fn forget_failed(state: &mut SettleState, partition: i32, e: Failure, orders: usize) -> Result<()> {
    match e {
        Failure::Fatal(e) => return Err(e),
        Failure::Stale(e) => {
            tracing::debug!(partition, "settling again under locks: {e:#}");
            state.distrust(true);
        }
        Failure::Retry(e) => {
            tracing::warn!(
                partition,
                orders,
                "settlement transaction failed, settling it again: {e:#}"
            );
            state.distrust(false);
        }
    }
    Ok(())
}
