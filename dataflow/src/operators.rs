use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use model::{now_ms, Config, Currency, Decimal, RateTable};
use sinks::{Outcome, Pool};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::{source, Operator};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};
use timely::worker::Worker;

use crate::kafka::{spawn_reader, Read};

/// Most orders settled in one MySQL transaction. A worker behind takes every job waiting
/// as one batch: the larger it is, the fewer times each commodity is locked and written
/// per order (direct from Kafka, with the backlog at 40,000, one run after the other:
/// 53,000 orders/s with 20,000 against 44,000 with 5,000; README, Performance).
const MAX_BATCH: usize = 20_000;
/// Jobs handed to the settlement thread and not yet committed, at most. While a batch
/// commits the next one starts (see `sinks::Settlement`), made of every job handed over
/// by then.
const IN_FLIGHT: usize = 16;

pub struct WorkerContext {
    pub cfg: Config,
    pub bootstrap: String,
    pub stop: Arc<AtomicBool>,
}

/// Per-worker handles to MySQL: a single-threaded runtime that the operators block on.
struct Db {
    rt: tokio::runtime::Runtime,
    pool: Pool,
}

impl Db {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// A failure inside an operator: nothing of the current batch was committed, so the
/// process exits and its supervisor restarts it from the offsets in MySQL.
fn die(what: &str, e: anyhow::Error) -> ! {
    tracing::error!("{what}: {e:#}; exiting so the cluster restarts from committed offsets");
    std::process::exit(3)
}

pub fn run_worker(worker: &mut Worker, ctx: WorkerContext) -> Result<()> {
    let cfg = ctx.cfg.clone();
    let index = worker.index();
    let partition = index as i32;
    let epoch_ms = cfg.cluster.epoch_ms;
    let db = Rc::new(Db {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        pool: sinks::connect(&cfg.mysql.url, 2)?,
    });
    db.block_on(sinks::prepare_partition(
        &db.pool,
        &cfg.kafka.topic,
        partition,
        &cfg.currencies()?,
    ))?;
    let start = db
        .block_on(sinks::load_offsets(&db.pool, &cfg.kafka.topic))
        .context("loading stored offsets")?
        .get(&partition)
        .copied()
        .unwrap_or(0);

    let (order_tx, order_rx) = crossbeam_channel::bounded::<Vec<Read>>(8);
    let (rate_tx, rate_rx) = crossbeam_channel::unbounded::<Vec<(Currency, Decimal)>>();
    let stats = Rc::new(RefCell::new(Stats::default()));

    // Committed totals at start (before any epoch of this run can close).
    let initial_totals = db
        .block_on(sinks::totals(&db.pool))?
        .into_iter()
        .filter_map(|t| Some((t.currency.parse().ok()?, t.total, t.orders)))
        .collect();
    let peers = worker.peers();

    let (order_wake, rate_wake) = worker.dataflow::<u64, _, _>(|scope| {
        let (orders, order_wake) = order_source(scope, &cfg, order_rx, ctx.stop.clone());
        let (rates, rate_wake) =
            rate_source(scope, &cfg, index, rate_rx, db.clone(), ctx.stop.clone());
        let outcomes = settle(orders, rates.broadcast(), &cfg, partition, stats.clone())?;
        crate::totals::totals(outcomes, &cfg, index, peers, initial_totals);
        anyhow::Ok((order_wake, rate_wake))
    })?;

    let reader = spawn_reader(
        ctx.bootstrap.clone(),
        cfg.kafka.topic.clone(),
        partition,
        start,
        order_tx,
        move || {
            let _ = order_wake.activate();
        },
        ctx.stop.clone(),
    )?;
    if index == 0 {
        rates::spawn_rate_feed(cfg.clone(), move |table| {
            rate_tx.send(table).is_ok() && rate_wake.activate().is_ok()
        });
    }

    let mut last_report = Instant::now();
    while worker.step_or_park(Some(Duration::from_millis(epoch_ms))) {
        if last_report.elapsed() >= Duration::from_secs(10) {
            let mut s = stats.borrow_mut();
            if s.orders > 0 {
                tracing::info!(
                    partition,
                    settled = s.orders,
                    batches = s.batches,
                    from_view = s.from_view,
                    stale = s.stale,
                    "settled {} orders in {} transactions in the last {:.0?} ({} from the \
                     worker's view of the stock; the view found stale {} times)",
                    s.orders,
                    s.batches,
                    last_report.elapsed(),
                    s.from_view,
                    s.stale
                );
            }
            *s = Stats::default();
            last_report = Instant::now();
        }
    }
    let _ = reader.join();
    Ok(())
}

#[derive(Default)]
struct Stats {
    orders: u64,
    batches: u64,
    /// Of the batches, those settled from the worker's view of the stock, and the
    /// times that view was found stale (`sinks::Settlement::view_counts`).
    from_view: u64,
    stale: u64,
}

/// The worker's partition as a stream of `(offset, order)` at event-time epochs.
fn order_source<'s>(
    scope: Scope<'s, u64>,
    cfg: &Config,
    rx: crossbeam_channel::Receiver<Vec<Read>>,
    stop: Arc<AtomicBool>,
) -> (StreamVec<'s, u64, Read>, timely::scheduling::SyncActivator) {
    let cfg = cfg.clone();
    let mut wake = None;
    let stream = source::<_, CapacityContainerBuilder<Vec<Read>>, _, _>(
        scope,
        "KafkaSource",
        |cap, info| {
            wake = Some(scope.worker().sync_activator_for(info.address.to_vec()));
            let mut tick = Tick::new(scope.activator_for(info.address.clone()));
            let delay = cfg.cluster.watermark_delay_ms as i64;
            let mut cap = Some(cap);
            let mut floor = 0u64;
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                let now = now_ms();
                let wall = cfg.epoch_of(now);
                let mut disconnected = false;
                loop {
                    match rx.try_recv() {
                        Ok(chunk) => {
                            let mut i = 0;
                            while i < chunk.len() {
                                // An order never goes below the frontier nor below its
                                // predecessor's epoch, and never ahead of this clock.
                                let lo = floor.max(*c.time());
                                let epoch_for = |r: &Read| match &r.1 {
                                    Some(o) => cfg.epoch_of(o.accepted_at).clamp(lo, lo.max(wall)),
                                    None => lo,
                                };
                                let epoch = epoch_for(&chunk[i]);
                                let mut j = i + 1;
                                while j < chunk.len() && epoch_for(&chunk[j]) == epoch {
                                    j += 1;
                                }
                                floor = epoch;
                                let at = c.delayed(&epoch);
                                output
                                    .session(&at)
                                    .give_iterator(chunk[i..j].iter().cloned());
                                i = j;
                            }
                        }
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
                if disconnected {
                    // The reader stopped (shutdown) and everything it read is emitted.
                    cap = None;
                    return;
                }
                let watermark = cfg.epoch_of(now - delay).max(*c.time());
                c.downgrade(&watermark);
                if !stop.load(Ordering::Relaxed) {
                    // Run again when the next epoch closes, not an epoch from now: that
                    // was up to one epoch late.
                    tick.arm(Duration::from_millis(until_next_close(&cfg, now)));
                } else {
                    tick.arm(Duration::from_millis(1));
                }
            }
        },
    );
    (stream, wake.expect("source constructor ran"))
}

/// Milliseconds from `now` until the watermark `epoch_of(now − watermark_delay)` next
/// moves on (at least 1).
fn until_next_close(cfg: &Config, now: i64) -> u64 {
    let delay = cfg.cluster.watermark_delay_ms as i64;
    let next = (cfg.epoch_of(now - delay) + 1) as i64 * cfg.cluster.epoch_ms as i64 + delay;
    (next - now).max(1) as u64
}

/// Rate tables from ZooKeeper, on worker 0 only, at the epoch they were observed in.
/// Each distinct table gets the next version and is recorded in `rate_history` before
/// any order can use it.
fn rate_source<'s>(
    scope: Scope<'s, u64>,
    cfg: &Config,
    index: usize,
    rx: crossbeam_channel::Receiver<Vec<(Currency, Decimal)>>,
    db: Rc<Db>,
    stop: Arc<AtomicBool>,
) -> (
    StreamVec<'s, u64, RateTable>,
    timely::scheduling::SyncActivator,
) {
    let cfg = cfg.clone();
    let mut wake = None;
    let stream = source::<_, CapacityContainerBuilder<Vec<RateTable>>, _, _>(
        scope,
        "RateSource",
        |cap, info| {
            wake = Some(scope.worker().sync_activator_for(info.address.to_vec()));
            let mut tick = Tick::new(scope.activator_for(info.address.clone()));
            let mut cap = (index == 0).then_some(cap);
            let mut current: Option<RateTable> = None;
            let mut loaded = false;
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                if !loaded {
                    current = db
                        .block_on(sinks::latest_rates(&db.pool))
                        .unwrap_or_else(|e| die("reading rate history", e))
                        .map(|(version, rows)| RateTable {
                            version,
                            rates: rows
                                .into_iter()
                                .filter_map(|(c, r)| Some((c.parse().ok()?, r)))
                                .collect(),
                        });
                    loaded = true;
                }
                let mut emitted_first = false;
                while let Ok(rates) = rx.try_recv() {
                    let from = cfg.epoch_of(now_ms()).max(*c.time());
                    let same = current
                        .as_ref()
                        .is_some_and(|t| same_rates(&t.rates, &rates));
                    let table = if same && *c.time() == 0 {
                        // First table after a restart equals the last recorded one: same version.
                        current.clone().expect("checked")
                    } else if same {
                        continue;
                    } else {
                        let version = current.as_ref().map_or(1, |t| t.version + 1);
                        db.block_on(sinks::record_rates(&db.pool, version, from, &rates))
                            .unwrap_or_else(|e| die("recording a rate version", e));
                        tracing::info!(version, from_epoch = from, "rates now {}", show(&rates));
                        RateTable { version, rates }
                    };
                    output.session(&c.delayed(&from)).give(table.clone());
                    c.downgrade(&from);
                    current = Some(table);
                    emitted_first = true;
                }
                if stop.load(Ordering::Relaxed) {
                    cap = None;
                    return;
                }
                // Until the first table is out, hold the frontier so no epoch closes rate-less.
                if emitted_first || *c.time() > 0 {
                    let now = cfg.epoch_of(now_ms()).max(*c.time());
                    c.downgrade(&now);
                }
                tick.arm(Duration::from_millis(cfg.cluster.epoch_ms));
            }
        },
    );
    (stream, wake.expect("source constructor ran"))
}

/// An operator's own wake-up after a delay, with at most one pending. Timely keeps every
/// `activate_after` as a separate timer: a source that also runs when its reader wakes
/// it, and re-armed its timer on every run, gained a timer per wake-up that then fired
/// every epoch for ever (at ~15k orders/s the workers were stepping for nothing).
struct Tick {
    activator: timely::scheduling::Activator,
    due: Option<Instant>,
}

impl Tick {
    fn new(activator: timely::scheduling::Activator) -> Tick {
        Tick {
            activator,
            due: None,
        }
    }

    /// Run again within `delay`: a no-op if a wake-up no later than that is pending.
    fn arm(&mut self, delay: Duration) {
        let now = Instant::now();
        let at = now + delay;
        if self.due.is_some_and(|due| due > now && due <= at) {
            return;
        }
        self.activator.activate_after(delay);
        self.due = Some(at);
    }
}

fn same_rates(a: &[(Currency, Decimal)], b: &[(Currency, Decimal)]) -> bool {
    a.len() == b.len()
        && b.iter()
            .all(|(c, r)| a.iter().any(|(c2, r2)| c2 == c && r2 == r))
}

fn show(rates: &[(Currency, Decimal)]) -> String {
    rates
        .iter()
        .map(|(c, r)| format!("{c}={r}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Settle every epoch that both the orders and the rates have passed, in offset order,
/// on the worker's settlement thread: the epochs closed since the last hand-over go to
/// it as a job (at most IN_FLIGHT jobs are out), and it settles every job waiting as one,
/// in transactions of at most MAX_BATCH orders, taking jobs at most once per
/// `settle_interval_ms`. The timely worker never waits for MySQL:
/// it keeps reading and closing epochs (other workers' frontiers depend on it). Outcomes
/// leave at their jobs' least epoch when committed; until then the jobs' capabilities
/// hold the totals back.
fn settle<'s>(
    orders: StreamVec<'s, u64, Read>,
    rates: StreamVec<'s, u64, RateTable>,
    cfg: &Config,
    partition: i32,
    stats: Rc<RefCell<Stats>>,
) -> Result<StreamVec<'s, u64, Outcome>> {
    let topic = cfg.kafka.topic.clone();
    let settle_interval_ms = cfg.cluster.settle_interval_ms;
    // Two: a transaction commits while the next one starts (`sinks::Settlement`).
    let pool = sinks::connect(&cfg.mysql.url, 2)?;
    let scope = orders.scope();
    Ok(orders
        .binary_frontier(rates, Pipeline, Pipeline, "Settle", move |_cap, info| {
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            let interval = Duration::from_millis(settle_interval_ms);
            let settler = Settler::spawn(pool, topic, partition, interval, wake)
                .unwrap_or_else(|e| die("starting the settlement thread", e));
            // The least epoch of each job in MySQL, oldest first: they hold the outcomes'
            // frontier.
            let mut out: VecDeque<Capability<u64>> = VecDeque::new();
            let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Read>)> = BTreeMap::new();
            let mut tables: BTreeMap<u64, Arc<RateTable>> = BTreeMap::new();
            move |(in_orders, f_orders), (in_rates, f_rates), output| {
                in_orders.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    let t = *cap.time();
                    pending
                        .entry(t)
                        .or_insert_with(|| (cap, Vec::new()))
                        .1
                        .append(data);
                });
                in_rates.for_each(|cap, data| {
                    if let Some(&t) = cap.least() {
                        for table in data.drain(..) {
                            tables.insert(t, Arc::new(table));
                        }
                    }
                });
                // Jobs are settled in order, several at once: their outcomes leave at the
                // least epoch of them.
                while let Some(done) = settler.done() {
                    {
                        let mut s = stats.borrow_mut();
                        s.orders += done.outcomes.len() as u64;
                        s.batches += done.batches;
                        s.from_view += done.from_view;
                        s.stale += done.stale;
                    }
                    let cap = out.front().expect("a job in flight for each one done");
                    output.session(cap).give_iterator(done.outcomes.into_iter());
                    out.drain(..done.jobs);
                }
                if out.len() >= IN_FLIGHT {
                    return;
                }
                let closed = |e: &u64| {
                    !f_orders.frontier().less_equal(e) && !f_rates.frontier().less_equal(e)
                };
                let ready: Vec<u64> = pending.keys().copied().take_while(|e| closed(e)).collect();
                if ready.is_empty() {
                    return;
                }
                if tables.is_empty() {
                    // Only when the rate source stopped before delivering any rate
                    // (shutdown): settle nothing; these orders are read again next start.
                    tracing::warn!(
                        partition,
                        "no rates yet; leaving {} epochs unsettled",
                        ready.len()
                    );
                    return;
                }
                // The newest table at or before the epoch; orders older than the first
                // table observed (a backlog read after a restart) use that first table:
                // it is the rate that was in force when this run started.
                let table_for = |e: u64| {
                    tables
                        .range(..=e)
                        .next_back()
                        .or_else(|| tables.iter().next())
                        .map(|(_, t)| t.clone())
                        .expect("tables is not empty")
                };
                let first_epoch = *tables.keys().next().expect("tables is not empty");
                let mut job: Vec<Owned> = Vec::new();
                let mut least = None;
                for e in &ready {
                    let (cap, reads) = pending.remove(e).expect("key from map");
                    let rates = table_for(*e);
                    job.extend(reads.into_iter().map(|(offset, order)| Owned {
                        offset,
                        // Read after its epoch closed in an earlier run: it belongs to
                        // the current epoch (SPEC §5), the first of this run's rates.
                        epoch: (*e).max(first_epoch),
                        order,
                        rates: rates.clone(),
                    }));
                    // Epochs are in order: the first capability is the least.
                    least.get_or_insert(cap);
                }
                out.push_back(least.expect("ready is not empty"));
                settler.send(job);
                // Keep only the newest table at or below what is still open.
                if let Some(&open) = f_orders.frontier().first() {
                    let keep = tables.range(..=open).next_back().map(|(k, _)| *k);
                    if let Some(keep) = keep {
                        tables.retain(|k, _| *k >= keep);
                    }
                }
            }
        })
        .container::<Vec<Outcome>>())
}

/// An order read from Kafka, with what settles it, owned so it can cross threads.
struct Owned {
    offset: i64,
    epoch: u64,
    /// `None`: the message did not decode; its offset still counts as settled.
    order: Option<model::Order>,
    rates: Arc<RateTable>,
}

/// `jobs` jobs, one after the other, as batches of at most MAX_BATCH messages, each with
/// the number of those jobs it completes (all of them on the last).
fn batches_of(job: Vec<Owned>, jobs: usize) -> Vec<(sinks::Batch, usize)> {
    let chunks = job.len().div_ceil(MAX_BATCH);
    let mut job = job.into_iter();
    (0..chunks)
        .map(|i| {
            let chunk: Vec<Owned> = job.by_ref().take(MAX_BATCH).collect();
            let next_offset = chunk.last().expect("non-empty").offset + 1;
            let orders = chunk
                .into_iter()
                .filter_map(|o| {
                    Some(sinks::BatchOrder {
                        offset: o.offset,
                        epoch: o.epoch,
                        order: o.order?,
                        rates: o.rates,
                    })
                })
                .collect();
            (
                sinks::Batch {
                    orders,
                    next_offset,
                },
                if i + 1 == chunks { jobs } else { 0 },
            )
        })
        .collect()
}

/// How long the settlement thread waits for a next batch before writing the last
/// batch's commit record on its own.
const RECORD_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// The worker's settlement thread: each job as transactions of at most MAX_BATCH orders
/// in offset order (`sinks::Settlement`: while one commits, the next one, of this job or
/// of the next, starts). A failure that retrying does not cure ends the process (see
/// `die`).
struct Settler {
    jobs: crossbeam_channel::Sender<Vec<Owned>>,
    done: crossbeam_channel::Receiver<Done>,
}

/// The outcomes of jobs settled, with the transactions they took (of them, those
/// settled from the worker's view, and the views found stale meanwhile) and the number
/// of jobs they complete.
struct Done {
    outcomes: Vec<Outcome>,
    batches: u64,
    from_view: u64,
    stale: u64,
    jobs: usize,
}

impl Settler {
    fn spawn(
        pool: Pool,
        topic: String,
        partition: i32,
        interval: Duration,
        wake: timely::scheduling::SyncActivator,
    ) -> Result<Settler> {
        let (jobs, job_rx) = crossbeam_channel::bounded::<Vec<Owned>>(IN_FLIGHT);
        let (done_tx, done) = crossbeam_channel::bounded(IN_FLIGHT);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("settle-p{partition}"))
            .spawn(move || {
                let mut settlement = sinks::Settlement::new(pool, &topic, partition);
                // Batches not yet handed to `settlement`, each with the number of jobs
                // it completes; and those numbers for the batches handed over, in order,
                // until their outcomes come back.
                let mut queued: VecDeque<(sinks::Batch, usize)> = VecDeque::new();
                let mut handed: VecDeque<usize> = VecDeque::new();
                let mut outcomes = Vec::new();
                let mut batches = 0;
                // `settlement.view_counts()` as last reported.
                let mut counted = (0, 0);
                let mut open = true;
                // No job is taken before this (`interval` after the last was taken).
                let mut next_take = Instant::now();
                loop {
                    let mut pull = || {
                        if queued.is_empty() {
                            let now = Instant::now();
                            if now < next_take {
                                return None;
                            }
                            // Every job waiting, as one: under load, fewer and larger
                            // transactions.
                            let (mut merged, mut jobs) = (Vec::new(), 0);
                            while let Ok(job) = job_rx.try_recv() {
                                merged.extend(job);
                                jobs += 1;
                            }
                            if jobs > 0 {
                                queued.extend(batches_of(merged, jobs));
                                next_take = now + interval;
                            }
                        }
                        let (batch, ends) = queued.pop_front()?;
                        handed.push_back(ends);
                        Some(batch)
                    };
                    let next = rt
                        .block_on(settlement.next(&mut pull))
                        .unwrap_or_else(|e| die("settling a batch", e));
                    match next {
                        Some(out) => {
                            outcomes.extend(out);
                            batches += 1;
                            let ends = handed.pop_front().expect("a batch was handed over");
                            if ends > 0 {
                                let now = settlement.view_counts();
                                let job = Done {
                                    outcomes: std::mem::take(&mut outcomes),
                                    batches,
                                    from_view: now.0 - counted.0,
                                    stale: now.1 - counted.1,
                                    jobs: ends,
                                };
                                counted = now;
                                batches = 0;
                                if done_tx.send(job).is_err() || wake.activate().is_err() {
                                    open = false;
                                }
                            }
                            continue;
                        }
                        None if !open => break,
                        None => {}
                    }
                    // Jobs wait until `next_take`: then all those waiting go as one.
                    let now = Instant::now();
                    if now < next_take {
                        std::thread::sleep(next_take - now);
                        continue;
                    }
                    // Nothing to settle. A batch's commit record is written with the
                    // next batch; when none follows soon, on its own.
                    match job_rx.recv_timeout(RECORD_IDLE) {
                        Ok(job) => {
                            queued.extend(batches_of(job, 1));
                            next_take = Instant::now() + interval;
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                            if let Err(e) = rt.block_on(settlement.flush()) {
                                tracing::warn!(partition, "{e:#}");
                            }
                        }
                        // Stopping: settle what is open, then end.
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => open = false,
                    }
                }
                if let Err(e) = rt.block_on(settlement.flush()) {
                    tracing::warn!(partition, "{e:#}");
                }
                rt.block_on(settlement.disconnect()).ok();
            })?;
        Ok(Settler { jobs, done })
    }

    fn send(&self, job: Vec<Owned>) {
        if self.jobs.send(job).is_err() {
            die(
                "handing a batch to the settlement thread",
                anyhow::anyhow!("the thread is gone"),
            );
        }
    }

    /// The oldest jobs handed over, once committed.
    fn done(&self) -> Option<Done> {
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn the_source_runs_again_when_the_next_epoch_closes() {
        let cfg = Config::parse(
            "[cluster]\nprocesses = [\"127.0.0.1:2101\"]\nworkers_per_process = 1\n\
             epoch_ms = 10\nwatermark_delay_ms = 20\n\
             [currencies]\nbase = \"RMB\"\ninitial = { RMB = \"1\" }\n",
        )
        .unwrap();
        // At 1,000,023 the watermark is epoch 100,000 (1,000,003 / 10); it becomes
        // 100,001 at 1,000,030.
        assert_eq!(until_next_close(&cfg, 1_000_023), 7);
        assert_eq!(until_next_close(&cfg, 1_000_029), 1);
        assert_eq!(until_next_close(&cfg, 1_000_030), 10);
        for now in 1_000_000..1_000_100 {
            let wait = until_next_close(&cfg, now) as i64;
            assert!((1..=10).contains(&wait), "{now}: {wait}");
            assert_eq!(
                cfg.epoch_of(now + wait - 20),
                cfg.epoch_of(now - 20) + 1,
                "at {now}, waiting {wait} ms reaches the next watermark"
            );
            assert_eq!(cfg.epoch_of(now + wait - 1 - 20), cfg.epoch_of(now - 20));
        }
    }

    /// A source woken from outside many times within an epoch still runs about once per
    /// epoch afterwards: one pending timer, not one per wake-up.
    #[test]
    fn a_source_woken_often_keeps_one_timer() {
        timely::execute_directly(|worker| {
            let runs = Rc::new(Cell::new(0u32));
            let counted = runs.clone();
            let finished = Rc::new(Cell::new(false));
            let done = finished.clone();
            let wake = worker.dataflow::<u64, _, _>(|scope| {
                let mut wake = None;
                source::<_, CapacityContainerBuilder<Vec<()>>, _, _>(
                    scope,
                    "Ticked",
                    |cap, info| {
                        wake = Some(scope.activator_for(info.address.clone()));
                        let mut tick = Tick::new(scope.activator_for(info.address.clone()));
                        let mut cap = Some(cap);
                        move |_output| {
                            if done.get() {
                                cap = None;
                                return;
                            }
                            let _held = &cap; // the dataflow lives until the test is done
                            counted.set(counted.get() + 1);
                            tick.arm(Duration::from_millis(10));
                        }
                    },
                );
                wake.expect("constructor ran")
            });
            // 50 wake-ups spread over one epoch, as a Kafka reader makes them.
            for _ in 0..50 {
                wake.activate();
                worker.step();
                std::thread::sleep(Duration::from_micros(200));
            }
            let before = runs.get();
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(200) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            let ran = runs.get() - before;
            finished.set(true);
            wake.activate();
            // One timer: ~20 runs in 200 ms. A timer per wake-up: several hundred.
            assert!(ran <= 40, "the source ran {ran} times in 200 ms");
            assert!(
                ran >= 5,
                "the source stopped running ({ran} times in 200 ms)"
            );
        });
    }
}
