//! The worker's settlement thread. It takes every hand-over waiting as one, cuts it into
//! batches of at most MAX_BATCH orders (the short last part taking in what arrives
//! before its turn), and settles them in offset order through
//! `sinks::TransactionPipeline` (while one commits, the next one starts). Batching adapts to the
//! load: while no transaction is in flight, what waits is taken at once (a closed epoch
//! settles without delay at low load); while one is, the next take waits until
//! `settle_interval_ms` after the last (under load: fewer, larger transactions). Outcomes go back to the
//! settle operator with the number of hand-overs they complete. A failure that retrying
//! does not cure ends the process (`fail::die`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Result;
use sinks::{Batch, HandOver, Outcome, Pool, TransactionPipeline};
use timely::scheduling::SyncActivator;

use crate::fail::die;
use crate::metrics::{label, Settled, METRICS};

/// Most orders settled in one MySQL transaction. The larger a batch, the fewer times each
/// commodity is locked and written per order (docs/decisions/full-batches.md).
const MAX_BATCH: usize = 40_000;
/// Hand-overs given to the settlement thread and not yet committed, at most. Enough that
/// the operator hands over every closed epoch while two transactions are in flight: a
/// batch taken then holds all that waits, not just the hand-overs a small limit let out.
pub(crate) const IN_FLIGHT: usize = 256;
/// How long the thread waits for a next batch before writing the last batch's commit
/// record on its own.
const RECORD_IDLE: Duration = Duration::from_millis(100);

/// The settle operator's end of the thread.
pub(crate) struct SettlementThread {
    handovers: crossbeam_channel::Sender<HandOver>,
    done: crossbeam_channel::Receiver<Done>,
}

/// The outcomes of hand-overs settled, with the transactions they took (of them, those
/// settled from the worker's view, and the views found stale meanwhile) and the number
/// of hand-overs they complete.
pub(crate) struct Done {
    pub outcomes: Vec<Outcome>,
    pub batches: u64,
    pub from_view: u64,
    pub stale: u64,
    /// Dead letters kept and copies skipped.
    pub dead: u64,
    pub skipped: u64,
    pub handovers: usize,
}

impl SettlementThread {
    pub(crate) fn spawn(
        pool: Pool,
        topic: String,
        partition: i32,
        interval: Duration,
        wake: SyncActivator,
    ) -> Result<SettlementThread> {
        let (handovers, rx) = crossbeam_channel::bounded::<HandOver>(IN_FLIGHT);
        let (done_tx, done) = crossbeam_channel::bounded(IN_FLIGHT);
        let rt = ore::current_thread_runtime()?;
        let settlement = TransactionPipeline::new(pool, &topic, partition);
        let thread = Thread {
            rt,
            settlement,
            partition,
            interval,
            rx,
            done: done_tx,
            wake,
        };
        std::thread::Builder::new()
            .name(format!("settle-p{partition}"))
            .spawn(move || thread.run())?;
        Ok(SettlementThread { handovers, done })
    }

    pub(crate) fn send(&self, handover: HandOver) {
        if self.handovers.send(handover).is_err() {
            die(
                "handing over to the settlement thread",
                anyhow::anyhow!("the thread is gone"),
            );
        }
    }

    /// The oldest hand-overs given, once committed.
    pub(crate) fn done(&self) -> Option<Done> {
        match self.done.try_recv() {
            Ok(d) => Some(d),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
            Err(crossbeam_channel::TryRecvError::Disconnected) => die(
                "waiting for the settlement thread",
                anyhow::anyhow!("the thread is gone"),
            ),
        }
    }
}

/// The thread's own side.
struct Thread {
    rt: tokio::runtime::Runtime,
    settlement: TransactionPipeline,
    partition: i32,
    interval: Duration,
    rx: crossbeam_channel::Receiver<HandOver>,
    done: crossbeam_channel::Sender<Done>,
    wake: SyncActivator,
}

/// What the thread keeps between batches.
#[derive(Default)]
struct Progress {
    /// Batches not yet given to `TransactionPipeline`, each with the number of hand-overs it
    /// completes; and those numbers for the batches given, in order, until their
    /// outcomes come back.
    queued: VecDeque<(Batch, usize)>,
    given: VecDeque<usize>,
    /// When each batch given was given, and the offset its commit moves to.
    given_at: VecDeque<(Instant, i64)>,
    outcomes: Vec<Outcome>,
    batches: u64,
    /// `TransactionPipeline::view_counts` and `TransactionPipeline::poison_counts` as last reported.
    counted: (u64, u64),
    poisons: (u64, u64),
}

impl Thread {
    fn run(mut self) {
        let mut p = Progress::default();
        let mut open = true;
        // While a transaction is in flight, no hand-over is taken before this
        // (`interval` after the last was taken).
        let mut next_take = Instant::now();
        loop {
            let (rx, interval) = (&self.rx, self.interval);
            let partition = self.partition;
            let pull = || {
                let batch = take(&mut p.queued, &mut p.given, rx, &mut next_take, interval);
                if let Some(b) = &batch {
                    p.given_at.push_back((Instant::now(), b.next_offset));
                    observe_given(partition, b);
                }
                batch
            };
            let next = self.rt.block_on(self.settlement.next(pull));
            match next.unwrap_or_else(|e| die("settling a batch", e)) {
                Some(out) => {
                    open &= self.report(&mut p, out);
                    continue;
                }
                None if !open => break,
                None => {}
            }
            // Nothing in flight and nothing waiting. A batch's commit record is written with the next batch;
            // when none follows soon, on its own.
            match self.rx.recv_timeout(RECORD_IDLE) {
                Ok(batch) => {
                    p.queued.extend(batches_of(batch, 1));
                    next_take = Instant::now() + self.interval;
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => self.flush(),
                // Stopping: settle what is open, then end.
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => open = false,
            }
        }
        self.flush();
        self.rt.block_on(self.settlement.disconnect()).ok();
    }

    /// A batch committed with `out`: when it completes hand-overs, send them back.
    /// False when the operator is gone.
    fn report(&self, p: &mut Progress, out: Vec<Outcome>) -> bool {
        observe_committed(self.partition, &out, p.given_at.pop_front());
        p.outcomes.extend(out);
        p.batches += 1;
        let ends = p.given.pop_front().expect("a batch was given");
        if ends == 0 {
            return true;
        }
        let now = self.settlement.view_counts();
        let poisons = self.settlement.poison_counts();
        let done = Done {
            outcomes: std::mem::take(&mut p.outcomes),
            batches: std::mem::take(&mut p.batches),
            from_view: now.0 - p.counted.0,
            stale: now.1 - p.counted.1,
            dead: poisons.0 - p.poisons.0,
            skipped: poisons.1 - p.poisons.1,
            handovers: ends,
        };
        let m = &METRICS;
        let l = label(self.partition);
        m.stale_views.get_or_create(&l).inc_by(done.stale);
        m.dead_letters.get_or_create(&l).inc_by(done.dead);
        m.skipped_copies.get_or_create(&l).inc_by(done.skipped);
        p.counted = now;
        p.poisons = poisons;
        self.done.send(done).is_ok() && self.wake.activate().is_ok()
    }

    fn flush(&mut self) {
        if let Err(e) = self.rt.block_on(self.settlement.flush()) {
            tracing::warn!(partition = self.partition, "{e:#}");
        }
    }
}

/// A batch given to MySQL: its size and the rates it applies.
fn observe_given(partition: i32, batch: &Batch) {
    let l = label(partition);
    METRICS
        .batch_orders
        .get_or_create(&l)
        .observe(batch.orders.len() as f64);
    if let Some(last) = batch.orders.last() {
        let version = i64::try_from(last.rates.version).unwrap_or(i64::MAX);
        METRICS.rate_version.get_or_create(&l).set(version);
    }
}

/// A batch committed with `out`, given at `given`.
fn observe_committed(partition: i32, out: &[Outcome], given: Option<(Instant, i64)>) {
    let m = &METRICS;
    let l = label(partition);
    if let Some((at, next_offset)) = given {
        m.commit_seconds
            .get_or_create(&l)
            .observe(at.elapsed().as_secs_f64());
        m.committed_offset.get_or_create(&l).set(next_offset);
        crate::window::committed_to(partition, next_offset);
    }
    crate::status::observe_commit(
        partition,
        given.map(|(_, next)| next),
        given.map(|(at, _)| at.elapsed().as_millis() as u64),
        out,
    );
    for o in out {
        let outcome = o.reason.map_or("succeeded", |r| r.as_str());
        m.settled_orders
            .get_or_create(&Settled { partition, outcome })
            .inc();
    }
}

/// The next batch for `TransactionPipeline`: the next one queued, or every hand-over waiting merged
/// into one and cut into batches: at once when nothing is in flight, else once
/// `next_take` has come. The last part of a cut, shorter than MAX_BATCH, takes in what
/// waits when its turn comes: a large backlog goes as full batches, each commodity
/// written once per MAX_BATCH orders, not once more for every remainder.
fn take(
    queued: &mut VecDeque<(Batch, usize)>,
    given: &mut VecDeque<usize>,
    rx: &crossbeam_channel::Receiver<HandOver>,
    next_take: &mut Instant,
    interval: Duration,
) -> Option<Batch> {
    let now = Instant::now();
    let due = now >= *next_take || given.is_empty();
    if queued.len() == 1 || (queued.is_empty() && due) {
        let arrived: Vec<_> = rx.try_iter().map(|b| (b, 1)).collect();
        if !arrived.is_empty() {
            *next_take = now + interval;
            let (merged, n) = merge(queued.pop_back().into_iter().chain(arrived));
            queued.extend(batches_of(merged, n));
        }
    }
    let (batch, ends) = queued.pop_front()?;
    given.push_back(ends);
    Some(batch)
}

/// Parts of hand-overs (each with the number of hand-overs it completes), one after the
/// other, as one batch; and how many hand-overs it completes.
fn merge(parts: impl Iterator<Item = (HandOver, usize)>) -> (Batch, usize) {
    let mut merged = Batch::default();
    let mut n = 0;
    for (b, ends) in parts {
        merged.orders.extend(b.orders);
        merged.dead.extend(b.dead);
        merged.skipped.extend(b.skipped);
        merged.next_offset = b.next_offset;
        merged.next_epoch = merged.next_epoch.max(b.next_epoch);
        n += ends;
    }
    (merged, n)
}

/// `handovers` hand-overs merged into `batch`, as batches of at most MAX_BATCH orders,
/// each with the number of those hand-overs it completes (all of them on the last). A
/// dead letter or skipped copy goes with the batch whose offsets it lies among.
fn batches_of(batch: HandOver, handovers: usize) -> Vec<(Batch, usize)> {
    if batch.orders.len() <= MAX_BATCH {
        return vec![(batch, handovers)];
    }
    let Batch {
        orders,
        dead,
        skipped,
        next_offset,
        next_epoch,
    } = batch;
    let chunks = orders.len().div_ceil(MAX_BATCH);
    let mut orders = orders.into_iter();
    let (mut dead, mut skipped) = (dead.into_iter().peekable(), skipped.into_iter().peekable());
    (0..chunks)
        .map(|i| {
            let chunk: Vec<_> = orders.by_ref().take(MAX_BATCH).collect();
            let last = i + 1 == chunks;
            // Orders after a chunk that is not the last may share its last epoch.
            let (end, next_epoch) = if last {
                (next_offset, next_epoch)
            } else {
                let l = chunk.last().expect("non-empty");
                (l.offset + 1, l.epoch)
            };
            let batch = Batch {
                orders: chunk,
                dead: take_below(&mut dead, end, |d| d.offset, last),
                skipped: take_below(&mut skipped, end, |s| s.offset, last),
                next_offset: end,
                next_epoch,
            };
            (batch, if last { handovers } else { 0 })
        })
        .collect()
}

/// The next items of `it` (in offset order) below offset `end`, or all that are left.
fn take_below<T>(
    it: &mut std::iter::Peekable<impl Iterator<Item = T>>,
    end: i64,
    offset: impl Fn(&T) -> i64,
    all: bool,
) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(x) = it.next_if(|x| all || offset(x) < end) {
        out.push(x);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;

    use model::{Currency, Item, OrderRequest, RateTable, Uuid};
    use sinks::ReadyOrder;

    use super::*;

    fn batch(offsets: std::ops::Range<i64>, next_offset: i64) -> Batch {
        let rates = Arc::new(RateTable {
            version: 1,
            rates: vec![],
        });
        let orders = offsets
            .map(|offset| ReadyOrder {
                offset,
                epoch: 0,
                order: OrderRequest {
                    user_id: "u".into(),
                    initiator: Currency::from_str("RMB").unwrap(),
                    items: vec![Item { id: 1, number: 1 }],
                    time: None,
                }
                .accept(Uuid::nil(), 0),
                rates: rates.clone(),
            })
            .collect();
        Batch {
            orders,
            next_offset,
            ..Batch::default()
        }
    }

    #[test]
    fn hand_overs_waiting_go_as_one_batch() {
        let parts = [batch(0..3, 3), batch(3..4, 6), batch(6..6, 9)].map(|b| (b, 1));
        let (merged, n) = merge(parts.into_iter());
        assert_eq!((n, merged.orders.len(), merged.next_offset), (3, 4, 9));
        let cut = batches_of(merged, n);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].1, 3);
    }

    #[test]
    fn a_large_hand_over_is_cut_and_only_the_last_part_completes_it() {
        let n = MAX_BATCH as i64;
        let cut = batches_of(batch(0..2 * n + 5, 2 * n + 9), 4);
        let shape: Vec<(usize, i64, usize)> = cut
            .iter()
            .map(|(b, ends)| (b.orders.len(), b.next_offset, *ends))
            .collect();
        assert_eq!(
            shape,
            [(MAX_BATCH, n, 0), (MAX_BATCH, 2 * n, 0), (5, 2 * n + 9, 4)]
        );
    }

    #[test]
    fn dead_letters_and_copies_go_with_the_part_whose_offsets_they_lie_among() {
        let n = MAX_BATCH as i64;
        let mut b = batch(0..n + 3, n + 10);
        let dead = |offset| sinks::DeadLetter::new(offset, 0, None, "undecodable", "x", b"");
        // One order's offset is taken by a dead letter in each part, and one after all.
        b.orders.remove(3);
        b.orders.remove(n as usize); // offset n + 1
        b.dead = vec![dead(3), dead(n + 1), dead(n + 5)];
        b.skipped = vec![sinks::Skipped {
            offset: n - 1,
            order_id: Uuid::nil(),
        }];
        let cut = batches_of(b, 1);
        let dead: Vec<Vec<i64>> = cut
            .iter()
            .map(|(b, _)| b.dead.iter().map(|d| d.offset).collect())
            .collect();
        assert_eq!(cut.len(), 2);
        assert_eq!(dead, [vec![3], vec![n + 1, n + 5]]);
        assert_eq!(cut[0].0.skipped.len(), 1);
        assert!(cut[1].0.skipped.is_empty());
    }

    #[test]
    fn a_hand_over_of_undecodable_messages_still_moves_the_offset() {
        let cut = batches_of(batch(0..0, 12), 1);
        assert_eq!((cut.len(), cut[0].0.next_offset, cut[0].1), (1, 12, 1));
    }

    #[test]
    fn while_a_transaction_is_in_flight_nothing_is_taken_before_the_interval() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(batch(0..1, 1)).unwrap();
        tx.send(batch(1..2, 2)).unwrap();
        let (mut queued, mut given) = (VecDeque::new(), VecDeque::from([1]));
        let mut next_take = Instant::now() + Duration::from_secs(60);
        let interval = Duration::from_secs(60);
        assert!(take(&mut queued, &mut given, &rx, &mut next_take, interval).is_none());
        next_take = Instant::now();
        let b = take(&mut queued, &mut given, &rx, &mut next_take, interval).unwrap();
        assert_eq!((b.orders.len(), b.next_offset), (2, 2));
        assert_eq!(given, [1, 2]);
        assert!(next_take > Instant::now() + Duration::from_secs(30));
    }

    #[test]
    fn with_nothing_in_flight_what_waits_is_taken_at_once() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (mut queued, mut given) = (VecDeque::new(), VecDeque::new());
        let interval = Duration::from_secs(60);
        let mut next_take = Instant::now() + interval;
        assert!(take(&mut queued, &mut given, &rx, &mut next_take, interval).is_none());
        tx.send(batch(0..3, 3)).unwrap();
        tx.send(batch(3..4, 4)).unwrap();
        let b = take(&mut queued, &mut given, &rx, &mut next_take, interval).unwrap();
        assert_eq!(
            (b.orders.len(), b.next_offset),
            (4, 4),
            "both hand-overs as one"
        );
        assert_eq!(given, [2]);
        // Now one is in flight: the next waits for the interval.
        tx.send(batch(4..5, 5)).unwrap();
        assert!(take(&mut queued, &mut given, &rx, &mut next_take, interval).is_none());
        given.pop_front();
        let b = take(&mut queued, &mut given, &rx, &mut next_take, interval).unwrap();
        assert_eq!(b.next_offset, 5, "committed: taken at once again");
    }

    #[test]
    fn the_short_last_part_of_a_cut_takes_in_what_arrived_before_its_turn() {
        let n = MAX_BATCH as i64;
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(batch(0..n + 5, n + 5)).unwrap();
        let (mut queued, mut given) = (VecDeque::new(), VecDeque::new());
        let interval = Duration::from_secs(60);
        let mut next_take = Instant::now();
        let first = take(&mut queued, &mut given, &rx, &mut next_take, interval).unwrap();
        assert_eq!((first.orders.len(), given.len()), (MAX_BATCH, 1));
        // In flight, and before the interval: the rest still goes, with what came since.
        tx.send(batch(n + 5..n + 8, n + 8)).unwrap();
        tx.send(batch(n + 8..2 * n + 2, 2 * n + 2)).unwrap();
        let rest = take(&mut queued, &mut given, &rx, &mut next_take, interval).unwrap();
        assert_eq!((rest.orders.len(), rest.next_offset), (MAX_BATCH, 2 * n));
        let last = take(&mut queued, &mut given, &rx, &mut next_take, interval).unwrap();
        assert_eq!((last.orders.len(), last.next_offset), (2, 2 * n + 2));
        assert_eq!(
            given,
            [0, 0, 3],
            "only the part that ends them completes hand-overs"
        );
    }
}
