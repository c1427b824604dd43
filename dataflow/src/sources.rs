//! The dataflow's two sources and their timer (docs/DESIGN.md, "Time and rates").
//!
//! - `order_source`: the worker's Kafka partition, as `(offset, order)` at event-time
//!   epochs. An order's epoch never goes below the source's frontier nor below the
//!   previous order's, and never ahead of the wall clock (`order_epoch`): closed epochs
//!   are always a prefix of the partition. While the reader has more to read (a backlog,
//!   a replay), the frontier is the last order's epoch: epochs close by the log alone, so
//!   every order keeps the epoch its place in the log gives it. Once the reader is caught
//!   up, the frontier follows the wall clock less the watermark delay (an order read
//!   after that is late: it goes to the next open epoch, recorded with its result).
//! - `rate_source`: rate tables from ZooKeeper watches, on worker 0 only, each distinct
//!   table with the next version, recorded in `rate_history` before any order can use
//!   it, at the epoch it was observed in.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{now_ms, Config, Currency, Decimal, RateTable};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};
use timely::scheduling::SyncActivator;

use crate::db::Db;
use crate::fail::die;
use crate::kafka::Read;

/// The epoch an order read now goes to: its own (`accepted`, None for a message that did
/// not decode), but at least `lo` (the frontier and the previous order's epoch) and at
/// most `wall` (the current epoch) unless `lo` is beyond that already.
pub(crate) fn order_epoch(accepted: Option<u64>, lo: u64, wall: u64) -> u64 {
    match accepted {
        Some(e) => e.clamp(lo, lo.max(wall)),
        None => lo,
    }
}

/// The worker's partition as a stream of `(offset, order)` at event-time epochs.
pub(crate) fn order_source<'s>(
    scope: Scope<'s, u64>,
    cfg: &Config,
    rx: crossbeam_channel::Receiver<Vec<Read>>,
    stop: Arc<AtomicBool>,
    caught_up: Arc<AtomicBool>,
    next_epoch: u64,
) -> (StreamVec<'s, u64, Read>, SyncActivator) {
    let cfg = cfg.clone();
    let mut wake = None;
    let stream = source::<_, CapacityContainerBuilder<Vec<Read>>, _, _>(
        scope,
        "KafkaSource",
        |cap, info| {
            wake = Some(scope.worker().sync_activator_for(info.address.to_vec()));
            let mut tick = Tick::new(scope.activator_for(info.address.clone()));
            let delay = cfg.cluster.watermark_delay.as_millis() as i64;
            let mut cap = Some(cap);
            // No order goes to an epoch this partition closed before (`next_epoch`, as
            // stored with the partition's offset).
            let mut floor = next_epoch;
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                let now = now_ms();
                let wall = cfg.epoch_of(now);
                // Read before the channel: what the reader sent before it was caught up
                // is emitted before the clock may close anything.
                let reader_idle = caught_up.load(Ordering::Acquire);
                let mut disconnected = false;
                loop {
                    let chunk = match rx.try_recv() {
                        Ok(chunk) => chunk,
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    };
                    // Runs of orders of one epoch go out together, at that epoch.
                    let epochs = chunk.iter().map(|r| {
                        let lo = floor.max(*c.time());
                        let e = order_epoch(
                            r.1.as_ref().ok().map(|o| cfg.epoch_of(o.accepted_at)),
                            lo,
                            wall,
                        );
                        floor = e;
                        e
                    });
                    let epochs: Vec<u64> = epochs.collect();
                    for (epoch, run) in runs(&epochs, &chunk) {
                        output
                            .session(&c.delayed(&epoch))
                            .give_iterator(run.iter().cloned());
                    }
                }
                if disconnected {
                    // The reader stopped (shutdown) and everything it read is emitted.
                    cap = None;
                    return;
                }
                let watermark = match reader_idle {
                    true => cfg.epoch_of(now - delay).max(floor),
                    false => floor,
                };
                c.downgrade(&watermark.max(*c.time()));
                if !stop.load(Ordering::Relaxed) {
                    // Run again when the next epoch closes, not an epoch from now: that was
                    // up to one epoch late.
                    tick.arm(Duration::from_millis(until_next_close(&cfg, now)));
                } else {
                    tick.arm(Duration::from_millis(1));
                }
            }
        },
    );
    (stream, wake.expect("source constructor ran"))
}

/// `items` cut into runs of equal `epochs` (one epoch per item), each with its epoch.
fn runs<'a, T>(epochs: &[u64], items: &'a [T]) -> Vec<(u64, &'a [T])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let j = i + epochs[i..].iter().take_while(|e| **e == epochs[i]).count();
        out.push((epochs[i], &items[i..j]));
        i = j;
    }
    out
}

/// Milliseconds from `now` until the watermark `epoch_of(now − watermark_delay)` next
/// moves on (at least 1).
pub(crate) fn until_next_close(cfg: &Config, now: i64) -> u64 {
    let delay = cfg.cluster.watermark_delay.as_millis() as i64;
    let next = (cfg.epoch_of(now - delay) + 1) as i64 * cfg.cluster.epoch_ms as i64 + delay;
    (next - now).max(1) as u64
}

/// How long a stopping rate source waits for its first table, at most.
const FIRST_RATES_ON_STOP: Duration = Duration::from_secs(10);

/// Rate tables from ZooKeeper, on worker 0 only, at the epoch they were observed in.
/// Each distinct table gets the next version and is recorded in `rate_history` before
/// any order can use it.
pub(crate) fn rate_source<'s>(
    scope: Scope<'s, u64>,
    cfg: &Config,
    index: usize,
    rx: crossbeam_channel::Receiver<Vec<(Currency, Decimal)>>,
    db: Rc<Db>,
    stop: Arc<AtomicBool>,
) -> (StreamVec<'s, u64, RateTable>, SyncActivator) {
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
            // Whether this run has put out a table yet; when it was told to stop.
            let mut emitted = false;
            let mut stopping: Option<Instant> = None;
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                if !loaded {
                    // The record first: every table in force for what may be unsettled,
                    // each at the epoch it is in force from, so that an order settles at
                    // its own epoch's rates however late it is read, and settlement goes
                    // on while ZooKeeper is away.
                    for table in recorded_rates(&db, &cfg) {
                        output.session(&c.delayed(&table.0)).give(table.1.clone());
                        current = Some(table.1);
                        emitted = true;
                    }
                    loaded = true;
                }
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
                    emitted = true;
                }
                if stop.load(Ordering::Relaxed) {
                    // Orders read before the stop settle with the first table: wait for
                    // it (a while at most), then end.
                    let waited = stopping.get_or_insert_with(Instant::now).elapsed();
                    if !emitted && waited < FIRST_RATES_ON_STOP {
                        tick.arm(Duration::from_millis(cfg.cluster.epoch_ms));
                        return;
                    }
                    if !emitted {
                        tracing::warn!(
                            "stopping before any rates came from ZooKeeper; orders read are \
                             left for the next start"
                        );
                    }
                    cap = None;
                    return;
                }
                // Until the first table is out, hold the frontier so no epoch closes rate-less.
                if emitted {
                    let now = cfg.epoch_of(now_ms()).max(*c.time());
                    c.downgrade(&now);
                }
                tick.arm(Duration::from_millis(cfg.cluster.epoch_ms));
            }
        },
    );
    (stream, wake.expect("source constructor ran"))
}

/// How far back before the oldest partition's last commit the recorded tables are
/// loaded: orders read after a restart were accepted after about then (less the reader's
/// lag at the crash, up to as long as the settle operator keeps tables).
const HISTORY_MARGIN_MS: i64 = crate::handover::RATE_MEMORY_MS as i64;

/// The tables in `rate_history` in force for orders not settled yet, oldest first, each
/// with the epoch it is in force from.
fn recorded_rates(db: &Db, cfg: &Config) -> Vec<(u64, RateTable)> {
    let since = db
        .block_on(sinks::oldest_commit(&db.pool, &cfg.kafka.topic))
        .unwrap_or_else(|e| die("reading stored offsets", e))
        .map_or(0, |at| cfg.epoch_of(at - HISTORY_MARGIN_MS));
    db.block_on(sinks::rate_tables_since(&db.pool, since))
        .unwrap_or_else(|e| die("reading rate history", e))
        .into_iter()
        .map(|(version, from, rows)| {
            let rates = rows
                .into_iter()
                .filter_map(|(c, r)| Some((c.parse().ok()?, r)))
                .collect();
            (from, RateTable { version, rates })
        })
        .collect()
}

/// An operator's own wake-up after a delay, with at most one pending. Timely keeps every
/// `activate_after` as a separate timer: a source that also runs when its reader wakes
/// it, and re-armed its timer on every run, gained a timer per wake-up that then fired
/// every epoch for ever (the workers stepped for nothing).
pub(crate) struct Tick {
    activator: timely::scheduling::Activator,
    due: Option<Instant>,
}

impl Tick {
    pub(crate) fn new(activator: timely::scheduling::Activator) -> Tick {
        Tick {
            activator,
            due: None,
        }
    }

    /// Run again within `delay`: a no-op if a wake-up no later than that is pending.
    pub(crate) fn arm(&mut self, delay: Duration) {
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_late_order_moves_to_the_open_epoch_and_none_runs_ahead_of_the_clock() {
        // On time: its own epoch.
        assert_eq!(order_epoch(Some(105), 100, 110), 105);
        // Late (its epoch closed, or before the previous order's): the lowest open one.
        assert_eq!(order_epoch(Some(90), 100, 110), 100);
        // From a clock ahead of this one: no later than now.
        assert_eq!(order_epoch(Some(500), 100, 110), 110);
        // The frontier beyond the clock (a clock that went back): the frontier.
        assert_eq!(order_epoch(Some(500), 120, 110), 120);
        assert_eq!(order_epoch(Some(90), 120, 110), 120);
        // A message that did not decode goes with the open epoch.
        assert_eq!(order_epoch(None, 100, 110), 100);
    }

    #[test]
    fn runs_of_one_epoch_go_out_together_in_order() {
        let items = ["a", "b", "c", "d", "e"];
        let got = runs(&[3, 3, 4, 4, 6], &items);
        assert_eq!(
            got,
            vec![(3, &items[0..2]), (4, &items[2..4]), (6, &items[4..5])]
        );
        assert!(runs::<u8>(&[], &[]).is_empty());
    }

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
