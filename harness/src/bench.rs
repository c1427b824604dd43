//! `dtss bench`: load at a target rate on a fixed timetable (open loop) or as fast as
//! answered (closed loop), over HTTP or straight into Kafka, with ramp, steady and
//! drain phases; then every accepted order's result is read back for end-to-end
//! latency. Open loop measures each ack from the moment the order was *scheduled*, so a
//! stalled server cannot hide its latency behind a client that waits for it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use model::{Config, Currency, Decimal, Uuid};
use mysql_async::prelude::*;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::send::{Tally, Target};
use crate::OrderGen;

#[derive(Clone, Debug, Serialize)]
pub struct BenchOptions {
    /// Base URL of an ingest replica (unused with `direct_kafka`).
    pub url: String,
    /// Orders per second on a fixed timetable; None: as fast as answered.
    pub rate: Option<f64>,
    pub ramp_s: f64,
    pub steady_s: f64,
    /// How long to wait, after the last order, for everything to settle.
    pub drain_timeout_s: f64,
    pub connections: usize,
    pub direct_kafka: bool,
    pub rate_changes_per_s: f64,
    pub seed: u64,
    /// Zipf exponent of item popularity (hot commodities contend); None: uniform.
    pub zipf: Option<f64>,
}

/// What the progress callback is shown, a few times a second.
pub struct Progress {
    pub phase: &'static str,
    pub elapsed_s: f64,
    pub sent: u64,
    pub accepted: u64,
    pub settled: u64,
    pub lag: i64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds, in milliseconds.
    fn of_us(h: &Histogram<u64>) -> Percentiles {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Orders the timetable (or the closed loop) sent.
    pub sent: u64,
    pub accepted: u64,
    /// 400/413 answers (the generator makes valid orders: expect 0).
    pub invalid: u64,
    /// 503 answers (backlog guard), each retried.
    pub busy_retried: u64,
    /// No answer (connection errors; Kafka did not acknowledge), each retried.
    pub errors_retried: u64,
    /// Other HTTP statuses (not retried; expect 0).
    pub failed: u64,
    /// Accepted orders with a result row after the drain.
    pub settled: u64,
    pub succeeded: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Accepted orders with no result after the drain (expect 0).
    pub unsettled: u64,
    /// Settled orders whose batch had no commit record in `settle_batches` (expect 0):
    /// their end-to-end latency is taken to `settled_at`, which is earlier.
    pub commit_time_unknown: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Throughput {
    /// Orders per second the timetable offered in the steady phase.
    pub offered_per_s: f64,
    /// 202s per second in the steady phase.
    pub accepted_per_s: f64,
    /// Results committed per second in the steady phase.
    pub settled_per_s: f64,
    /// All settled / (last settled − first accepted): end to end, whole run.
    pub end_to_end_per_s: f64,
}

/// One second of the run (t = seconds since the start).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Second {
    pub t: u32,
    pub offered: u64,
    pub accepted: u64,
    pub settled: u64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LagSample {
    pub t_s: f64,
    /// High watermark − committed offset, per partition.
    pub partitions: Vec<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub options: BenchOptions,
    pub target: String,
    pub started_at_ms: i64,
    pub partitions: usize,
    pub counts: Counts,
    pub throughput: Throughput,
    /// Steady phase: ack latency (from the scheduled time in open loop).
    pub ack_ms: Percentiles,
    /// Steady phase: accepted_at → result committed (settled_at).
    pub e2e_ms: Percentiles,
    /// Steady phase: settlement transactions, from their start to COMMIT's answer. A
    /// slow one holds up every order behind it: a tail here is the database's.
    pub transactions_ms: Percentiles,
    /// The run's slowest settlement transactions, slowest first.
    pub slowest_transactions: Vec<SlowTransaction>,
    pub rate_changes: u64,
    /// How busy this machine's CPUs were in the steady phase (everything on it, the
    /// bench included), and how much time the hypervisor took (steal); Linux only.
    pub cpu: Option<CpuUse>,
    pub timeline: Vec<Second>,
    pub lag: Vec<LagSample>,
    /// (quantile, ms) points of the steady-phase distributions, for plotting.
    pub ack_distribution: Vec<(f64, f64)>,
    pub e2e_distribution: Vec<(f64, f64)>,
    /// The ids that got a 202 (for `dtss check --accepted`).
    #[serde(skip)]
    pub accepted_ids: Vec<Uuid>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct CpuUse {
    pub busy_pct: f64,
    pub steal_pct: f64,
}

/// The aggregate `cpu` line of /proc/stat: (busy, steal, total) in ticks.
fn cpu_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?; // idle + iowait
    let steal = *v.get(7)?;
    Some((total - idle - steal, steal, total))
}

/// When order `i` is due, in seconds from the start: the rate rises linearly from 0 to
/// `rate` over `ramp` seconds, then stays.
pub fn scheduled_at(i: u64, rate: f64, ramp: f64) -> f64 {
    let ramp_orders = rate * ramp / 2.0;
    let x = i as f64;
    if ramp > 0.0 && x < ramp_orders {
        (2.0 * ramp * x / rate).sqrt()
    } else {
        ramp + (x - ramp_orders) / rate
    }
}

/// How many orders the timetable holds.
pub fn timetable_len(rate: f64, ramp: f64, steady: f64) -> u64 {
    (rate * ramp / 2.0 + rate * steady).floor() as u64
}

/// One order as the sender saw it.
struct Sent {
    /// Milliseconds from the start to when it was due (open loop) or sent (closed).
    due_ms: u32,
    /// Milliseconds from the start to its answer.
    done_ms: u32,
    /// Microseconds from due to answer.
    ack_us: u32,
    id: Option<Uuid>,
}

#[derive(Default)]
struct Live {
    sent: AtomicU64,
    accepted: AtomicU64,
    settled: AtomicU64,
    lag: std::sync::atomic::AtomicI64,
    /// Set by the sampler when a sample taken after `drain_from` saw no lag.
    drained: AtomicBool,
    drain_from_ms: AtomicU64,
}

/// Run one bench against the running system described by `cfg`.
pub async fn bench(
    cfg: &Config,
    opts: &BenchOptions,
    progress: impl Fn(&Progress) + Send + Sync + 'static,
) -> Result<BenchReport> {
    anyhow::ensure!(
        opts.rate.is_none_or(|r| r > 0.0 && r.is_finite()),
        "--rate must be a positive number of orders per second"
    );
    anyhow::ensure!(
        opts.steady_s > 0.0,
        "--duration must be more than 0 seconds"
    );
    let currencies = cfg.currencies.all.clone();
    let names: Vec<String> = currencies.iter().map(|c| c.to_string()).collect();
    let pool = sinks::connect(&cfg.mysql.url, 4)?;
    let target = Arc::new(if opts.direct_kafka {
        Target::kafka(cfg, pool.clone()).await?
    } else {
        Target::http(&opts.url).context("--url")?
    });
    let bootstrap = {
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || {
            broker::bootstrap(
                &c.kafka.brokers,
                &c.broker_addr_file(),
                Duration::from_secs(10),
            )
        })
        .await??
    };
    let watermarks: Arc<BaseConsumer> = Arc::new(
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "dtss-bench")
            .create()
            .context("creating a Kafka client to read watermarks")?,
    );
    let partitions = cfg.partitions();

    let live = Arc::new(Live::default());
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let started_at_ms = model::now_ms();
    let elapsed_ms = move || start.elapsed().as_millis() as u64;
    let (ramp, steady) = (opts.ramp_s.max(0.0), opts.steady_s);
    let end_of_load = ramp + steady;

    // Sampler: Kafka lag per partition, settled count, progress.
    let base_settled: i64 = sinks::load_offsets(&pool, &cfg.kafka.topic)
        .await?
        .values()
        .sum();
    let lag_samples = Arc::new(Mutex::new(Vec::<LagSample>::new()));
    let cpu_watch = tokio::spawn(async move {
        tokio::time::sleep_until((start + Duration::from_secs_f64(ramp)).into()).await;
        let a = cpu_ticks()?;
        tokio::time::sleep_until((start + Duration::from_secs_f64(end_of_load)).into()).await;
        let b = cpu_ticks()?;
        let total = (b.2 - a.2).max(1) as f64;
        Some(CpuUse {
            busy_pct: 100.0 * (b.0 - a.0) as f64 / total,
            steal_pct: 100.0 * (b.1 - a.1) as f64 / total,
        })
    });
    let sampler = {
        let (pool, topic, live, done, samples, wm) = (
            pool.clone(),
            cfg.kafka.topic.clone(),
            live.clone(),
            done.clone(),
            lag_samples.clone(),
            watermarks.clone(),
        );
        let progress = Arc::new(progress);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let t = elapsed_ms();
                let committed = sinks::load_offsets(&pool, &topic).await.unwrap_or_default();
                let (wm, topic2) = (wm.clone(), topic.clone());
                let highs = tokio::task::spawn_blocking(move || {
                    (0..partitions as i32)
                        .map(|p| {
                            wm.fetch_watermarks(&topic2, p, Duration::from_secs(2))
                                .map(|(_, h)| h)
                                .unwrap_or(-1)
                        })
                        .collect::<Vec<i64>>()
                })
                .await
                .unwrap_or_default();
                if highs.len() == partitions && highs.iter().all(|h| *h >= 0) {
                    let lags: Vec<i64> = highs
                        .iter()
                        .enumerate()
                        .map(|(p, h)| (h - committed.get(&(p as i32)).copied().unwrap_or(0)).max(0))
                        .collect();
                    let total: i64 = lags.iter().sum();
                    live.lag.store(total, Ordering::Relaxed);
                    if total == 0 && t >= live.drain_from_ms.load(Ordering::Relaxed) {
                        live.drained.store(true, Ordering::Relaxed);
                    }
                    samples.lock().expect("samples").push(LagSample {
                        t_s: t as f64 / 1000.0,
                        partitions: lags,
                    });
                }
                let settled: i64 = committed.values().sum::<i64>() - base_settled;
                live.settled.store(settled.max(0) as u64, Ordering::Relaxed);
                let secs = t as f64 / 1000.0;
                progress(&Progress {
                    phase: if secs < ramp {
                        "ramp"
                    } else if secs < end_of_load {
                        "steady"
                    } else {
                        "drain"
                    },
                    elapsed_s: secs,
                    sent: live.sent.load(Ordering::Relaxed),
                    accepted: live.accepted.load(Ordering::Relaxed),
                    settled: live.settled.load(Ordering::Relaxed),
                    lag: live.lag.load(Ordering::Relaxed),
                });
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    live.drain_from_ms.store(u64::MAX, Ordering::Relaxed);

    // Rate changes while the load runs.
    let changes = Arc::new(AtomicU64::new(0));
    let changer = (opts.rate_changes_per_s > 0.0).then(|| {
        let (cfg, done, changes) = (cfg.clone(), done.clone(), changes.clone());
        let (period, seed) = (
            Duration::from_secs_f64(1.0 / opts.rate_changes_per_s),
            opts.seed,
        );
        tokio::spawn(
            async move { change_rates(cfg, period, seed, end_of_load, done, changes).await },
        )
    });

    // Senders.
    let next = Arc::new(AtomicU64::new(0));
    let total = opts.rate.map(|r| timetable_len(r, ramp, steady));
    let mut tasks = vec![];
    let conns = opts.connections.max(1);
    for k in 0..conns {
        let (mut sender, next, live) = (target.sender(), next.clone(), live.clone());
        let mut gen = OrderGen::new(
            opts.seed.wrapping_mul(1_000_003).wrapping_add(k as u64),
            cfg.catalogue.items,
            names.clone(),
        );
        if let Some(s) = opts.zipf {
            gen = gen.with_zipf(s)?;
        }
        let rate = opts.rate;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tally = Tally::default();
            // Closed loop: connection k joins at k/conns of the ramp.
            if rate.is_none() && ramp > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(ramp * k as f64 / conns as f64)).await;
            }
            loop {
                let due = match (rate, total) {
                    (Some(r), Some(n)) => {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let due = start + Duration::from_secs_f64(scheduled_at(i, r, ramp));
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    _ => {
                        let now = Instant::now();
                        if now.duration_since(start).as_secs_f64() >= end_of_load {
                            break;
                        }
                        now
                    }
                };
                let body = gen.next_body();
                live.sent.fetch_add(1, Ordering::Relaxed);
                let id = sender.place(&body, &mut tally).await;
                if tally.abandoned > 0 {
                    break;
                }
                let now = Instant::now();
                if id.is_some() {
                    live.accepted.fetch_add(1, Ordering::Relaxed);
                }
                out.push(Sent {
                    due_ms: due.duration_since(start).as_millis() as u32,
                    done_ms: now.duration_since(start).as_millis() as u32,
                    ack_us: now.duration_since(due).as_micros().min(u32::MAX as u128) as u32,
                    id,
                });
            }
            (out, tally)
        }));
    }
    let mut sent = Vec::new();
    let mut counts = Counts::default();
    let mut tally = Tally::default();
    for t in tasks {
        let (out, t) = t.await.context("a sender panicked")?;
        sent.extend(out);
        tally.add(t);
    }
    if tally.abandoned > 0 {
        anyhow::bail!(
            "an order was not taken within {:?} (503s or no answer), so the bench stopped \
             ({} orders accepted): is the system up (GET /healthz) and settling? See the logs \
             under {}/logs",
            crate::send::PATIENCE,
            sent.iter().filter(|s| s.id.is_some()).count(),
            cfg.data_dir().display()
        );
    }
    counts.invalid = tally.invalid;
    counts.busy_retried = tally.busy;
    counts.errors_retried = tally.errors;
    counts.failed = tally.failed;
    target.flush();

    // Drain: until a lag sample taken from now on sees every partition settled.
    live.drain_from_ms.store(elapsed_ms(), Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs_f64(opts.drain_timeout_s);
    while !live.drained.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let cpu = cpu_watch.await.ok().flatten();
    if let Some(c) = changer {
        c.await.context("the rate changer panicked")??;
    }

    // Read every accepted order's result back.
    sent.sort_by_key(|s| s.due_ms);
    let ids: Vec<Uuid> = sent.iter().filter_map(|s| s.id).collect();
    counts.sent = sent.len() as u64;
    counts.accepted = ids.len() as u64;
    let mut results = read_results(&pool, &ids).await?;
    let transactions;
    (counts.commit_time_unknown, transactions) =
        commit_times(&pool, &mut results, started_at_ms).await?;
    drop(target);
    pool.disconnect().await.ok();

    let steady_ms = (ramp * 1000.0) as u32..(end_of_load * 1000.0) as u32;
    let in_steady = |ms: u32| steady_ms.contains(&ms);
    let mut ack = latency_us();
    let mut e2e = latency_us();
    let seconds = ((end_of_load + opts.drain_timeout_s).ceil() as usize).max(1) + 1;
    let mut timeline: Vec<Second> = (0..seconds)
        .map(|t| Second {
            t: t as u32,
            ..Default::default()
        })
        .collect();
    let mut ack_by_s: Vec<Histogram<u64>> = (0..seconds).map(|_| latency_us()).collect();
    let mut e2e_by_s: Vec<Histogram<u64>> = (0..seconds).map(|_| latency_us()).collect();
    let sec = |ms: i64| ((ms.max(0) / 1000) as usize).min(seconds - 1);
    for s in &sent {
        timeline[sec(s.due_ms as i64)].offered += 1;
        ack_by_s[sec(s.due_ms as i64)].saturating_record(s.ack_us.max(1) as u64);
        if s.id.is_some() {
            timeline[sec(s.done_ms as i64)].accepted += 1;
        }
        if in_steady(s.due_ms) {
            ack.saturating_record(s.ack_us.max(1) as u64);
        }
    }
    let (mut first_acc, mut last_set) = (i64::MAX, i64::MIN);
    let mut settled_in_steady = 0u64;
    for r in &results {
        counts.settled += 1;
        match &r.reason {
            None => counts.succeeded += 1,
            Some(reason) => *counts.rejected.entry(reason.clone()).or_default() += 1,
        }
        let (acc, set) = (
            r.accepted_at - started_at_ms,
            r.committed_at - started_at_ms,
        );
        first_acc = first_acc.min(r.accepted_at);
        last_set = last_set.max(r.committed_at);
        let us = ((r.committed_at - r.accepted_at).max(0) as u64 * 1000).max(1);
        timeline[sec(set)].settled += 1;
        e2e_by_s[sec(acc)].saturating_record(us);
        if in_steady(acc.max(0) as u32) {
            e2e.saturating_record(us);
        }
        if in_steady(set.max(0) as u32) {
            settled_in_steady += 1;
        }
    }
    counts.unsettled = counts.accepted - counts.settled;
    for (t, s) in timeline.iter_mut().enumerate() {
        let (a, e) = (&ack_by_s[t], &e2e_by_s[t]);
        if !a.is_empty() {
            s.ack_p50_ms = a.value_at_quantile(0.5) as f64 / 1000.0;
            s.ack_p99_ms = a.value_at_quantile(0.99) as f64 / 1000.0;
        }
        if !e.is_empty() {
            s.e2e_p50_ms = e.value_at_quantile(0.5) as f64 / 1000.0;
            s.e2e_p99_ms = e.value_at_quantile(0.99) as f64 / 1000.0;
        }
    }
    // Trim trailing empty seconds of the drain.
    while timeline.len() > (end_of_load.ceil() as usize).max(1)
        && timeline
            .last()
            .is_some_and(|s| s.offered + s.accepted + s.settled == 0)
    {
        timeline.pop();
    }
    let accepted_in_steady = sent
        .iter()
        .filter(|s| s.id.is_some() && in_steady(s.done_ms))
        .count() as u64;
    let offered_in_steady = sent.iter().filter(|s| in_steady(s.due_ms)).count() as u64;
    let throughput = Throughput {
        offered_per_s: offered_in_steady as f64 / steady,
        accepted_per_s: accepted_in_steady as f64 / steady,
        settled_per_s: settled_in_steady as f64 / steady,
        end_to_end_per_s: if counts.settled > 0 {
            counts.settled as f64 * 1000.0 / (last_set - first_acc).max(1) as f64
        } else {
            0.0
        },
    };
    let lag = std::mem::take(&mut *lag_samples.lock().expect("samples"));
    let (transactions_ms, slowest_transactions) =
        transaction_figures(&transactions, started_at_ms, &steady_ms);
    Ok(BenchReport {
        options: opts.clone(),
        target: if opts.direct_kafka {
            format!("Kafka topic {} (direct)", cfg.kafka.topic)
        } else {
            opts.url.clone()
        },
        started_at_ms,
        partitions,
        counts,
        throughput,
        ack_ms: Percentiles::of_us(&ack),
        e2e_ms: Percentiles::of_us(&e2e),
        transactions_ms,
        slowest_transactions,
        rate_changes: changes.load(Ordering::Relaxed),
        cpu,
        timeline,
        lag,
        ack_distribution: distribution(&ack),
        e2e_distribution: distribution(&e2e),
        accepted_ids: ids,
    })
}

/// (quantile, ms) at 0, 0.5, 0.75, 0.875, … up to the maximum: the percentile spectrum.
fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return vec![];
    }
    let mut out = vec![];
    let mut tail = 1.0f64;
    while tail > 1e-6 {
        let q = 1.0 - tail;
        out.push((q, h.value_at_quantile(q) as f64 / 1000.0));
        if h.len() as f64 * tail < 1.0 {
            break;
        }
        tail /= 10f64.powf(0.1);
    }
    out.push((1.0, h.max() as f64 / 1000.0));
    out
}

/// A histogram of latencies in microseconds, up to an hour.
fn latency_us() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds")
}

/// A settlement transaction, from the sink's `settle_batches` log.
struct Transaction {
    started_at: i64,
    committed_at: i64,
    orders: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowTransaction {
    /// When it started, in seconds since the start of the run.
    pub t_s: f64,
    pub ms: f64,
    pub orders: u32,
}

/// How many of the slowest settlement transactions a report names.
const SLOWEST: usize = 5;

/// The durations of the transactions that committed in the steady phase (`steady_ms`,
/// since `started_at_ms`), and the run's slowest.
fn transaction_figures(
    transactions: &[Transaction],
    started_at_ms: i64,
    steady_ms: &std::ops::Range<u32>,
) -> (Percentiles, Vec<SlowTransaction>) {
    let mut h = latency_us();
    let ms = |t: &Transaction| (t.committed_at - t.started_at).max(0);
    for t in transactions {
        let at = (t.committed_at - started_at_ms).max(0);
        if steady_ms.contains(&(at as u32)) {
            h.saturating_record((ms(t) as u64 * 1000).max(1));
        }
    }
    let mut slowest: Vec<&Transaction> = transactions.iter().collect();
    slowest.sort_by_key(|t| std::cmp::Reverse(ms(t)));
    let slowest = slowest
        .into_iter()
        .take(SLOWEST)
        .map(|t| SlowTransaction {
            t_s: (t.started_at - started_at_ms) as f64 / 1000.0,
            ms: ms(t) as f64,
            orders: t.orders,
        })
        .collect();
    (Percentiles::of_us(&h), slowest)
}

struct ResultRow {
    reason: Option<String>,
    accepted_at: i64,
    /// When its batch committed (from `settle_batches`; `settled_at` until known).
    committed_at: i64,
    partition: i32,
    offset: i64,
}

/// Each result's commit time: that of the batch holding its offset, from the sink's
/// `settle_batches` log. A batch's record is written with the partition's next batch,
/// or on its own after ~100 ms without one, so wait a little for the last ones.
/// Returns how many results still have none (they keep their `settled_at`).
/// Also returns the settlement transactions that committed since `since_ms`.
async fn commit_times(
    pool: &sinks::Pool,
    results: &mut [ResultRow],
    since_ms: i64,
) -> Result<(u64, Vec<Transaction>)> {
    let mut conn = pool.get_conn().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Per partition: (next_offset, committed_at), ascending.
        let rows: Vec<(i32, i64, i64, i64, u32)> = conn
            .exec(
                "SELECT `partition`, next_offset, committed_at, started_at, orders \
                 FROM settle_batches WHERE committed_at >= ? ORDER BY `partition`, next_offset",
                (since_ms,),
            )
            .await
            .context("reading the settlement batches' commit times")?;
        let mut batches: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
        let mut transactions = Vec::with_capacity(rows.len());
        for (p, next, at, started_at, orders) in rows {
            batches.entry(p).or_default().push((next, at));
            transactions.push(Transaction {
                started_at,
                committed_at: at,
                orders,
            });
        }
        // Found again on each pass (a batch's commit time never changes), counted once.
        let mut unknown = 0;
        for r in results.iter_mut() {
            let b = batches.get(&r.partition);
            let i = b.map(|b| b.partition_point(|(next, _)| *next <= r.offset));
            match b.zip(i).and_then(|(b, i)| b.get(i)) {
                Some((_, at)) => r.committed_at = *at,
                None => unknown += 1,
            }
        }
        if unknown == 0 || Instant::now() >= deadline {
            return Ok((unknown, transactions));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn read_results(pool: &sinks::Pool, ids: &[Uuid]) -> Result<Vec<ResultRow>> {
    let mut conn = pool.get_conn().await?;
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(5000) {
        let list = chunk
            .iter()
            .map(|id| format!("'{}'", id.hyphenated()))
            .collect::<Vec<_>>()
            .join(",");
        let rows: Vec<(bool, Option<String>, i64, i64, i32, i64)> = conn
            .query(format!(
                "SELECT success, reason, accepted_at, settled_at, `partition`, `offset` FROM result WHERE order_id IN ({list})"
            ))
            .await
            .context("reading the results of the bench's orders")?;
        out.extend(
            rows.into_iter()
                .map(|(ok, reason, a, s, partition, offset)| ResultRow {
                    reason: if ok {
                        None
                    } else {
                        Some(reason.unwrap_or_default())
                    },
                    accepted_at: a,
                    committed_at: s,
                    partition,
                    offset,
                }),
        );
    }
    Ok(out)
}

/// Write a random in-bounds rate of one non-base currency (in turn) every `period`
/// until the load ends.
async fn change_rates(
    cfg: Config,
    period: Duration,
    seed: u64,
    until_s: f64,
    done: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
) -> Result<()> {
    let zk = rates::connect(&cfg, Duration::from_secs(10)).await?;
    let base = cfg.currencies.base;
    let table = cfg.currencies.initial.clone();
    let targets: Vec<(Currency, Decimal, Decimal)> = table
        .into_iter()
        .filter(|(c, _)| *c != base)
        .map(|(c, r)| {
            let (lo, hi) = rates::bounds(r, cfg.currencies.bound_pct);
            (c, lo, hi)
        })
        .collect();
    anyhow::ensure!(
        !targets.is_empty(),
        "--rate-changes-per-s needs a non-base currency"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let start = Instant::now();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0usize;
    while !done.load(Ordering::Relaxed) && start.elapsed().as_secs_f64() < until_s {
        tick.tick().await;
        let (c, lo, hi) = targets[i % targets.len()];
        i += 1;
        let u = Decimal::from(rng.random_range(0..=1_000_000u32)) / Decimal::from(1_000_000u32);
        let rate = (lo + (hi - lo) * u).round_dp(rates::RATE_DP).clamp(lo, hi);
        match rates::inject(&zk, &cfg, c, rate).await {
            Ok(_) => {
                changes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("rate change {c} = {rate} failed: {e:#}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timetable_ramps_linearly_then_holds_the_rate() {
        let (rate, ramp, steady) = (1000.0, 4.0, 6.0);
        let n = timetable_len(rate, ramp, steady);
        assert_eq!(n, 2000 + 6000);
        let mut per_second = [0u64; 10];
        for i in 0..n {
            let t = scheduled_at(i, rate, ramp);
            assert!(t >= 0.0 && t < ramp + steady, "order {i} due at {t}");
            per_second[t as usize] += 1;
        }
        // During the ramp second s holds about rate × (s + ½) / ramp orders.
        for (s, got) in per_second.iter().take(4).enumerate() {
            let want = rate * (s as f64 + 0.5) / ramp;
            assert!(
                (*got as f64 - want).abs() <= 2.0,
                "second {s}: {got} vs {want}"
            );
        }
        for got in &per_second[4..] {
            assert!((*got as f64 - rate).abs() <= 1.0, "steady second: {got}");
        }
        // Due times never go backwards.
        assert!((1..n).all(|i| scheduled_at(i, rate, ramp) >= scheduled_at(i - 1, rate, ramp)));
        // Without a ramp the timetable starts at full rate.
        assert_eq!(scheduled_at(0, 500.0, 0.0), 0.0);
        assert!((scheduled_at(500, 500.0, 0.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_distribution_runs_from_the_median_to_the_maximum() {
        let mut h = latency_us();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let d = distribution(&h);
        assert_eq!(d.first().unwrap().0, 0.0);
        assert_eq!(d.last().unwrap(), &(1.0, h.max() as f64 / 1000.0));
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let p99 = d.iter().find(|(q, _)| (*q - 0.99).abs() < 1e-9).unwrap().1;
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.01, "p99 {p99}");
    }

    #[test]
    fn transaction_figures_cover_the_steady_phase_and_name_the_slowest_of_the_run() {
        let start = 1_000_000;
        // One transaction of 20 ms every 10 ms for 10 s, three slow ones in the steady
        // phase (2..8 s) and a slower one in the ramp.
        let mut txns: Vec<Transaction> = (0..1000)
            .map(|i| Transaction {
                started_at: start + i * 10,
                committed_at: start + i * 10 + 20,
                orders: 100,
            })
            .collect();
        for (at, ms) in [(3_000, 300), (5_000, 450), (7_000, 120), (1_000, 900)] {
            txns.push(Transaction {
                started_at: start + at,
                committed_at: start + at + ms,
                orders: 7,
            });
        }
        let (p, slowest) = transaction_figures(&txns, start, &(2_000..8_000));
        // Committed at 2.0..8.0 s: 600 of the regular ones and the three slow ones.
        assert_eq!(p.count, 603);
        assert!((p.p50 - 20.0).abs() < 0.1, "p50 {}", p.p50);
        assert!((p.max - 450.0).abs() < 1.0, "max {}", p.max);
        let named: Vec<(f64, f64, u32)> = slowest.iter().map(|t| (t.t_s, t.ms, t.orders)).collect();
        assert_eq!(
            named,
            [
                (1.0, 900.0, 7),
                (5.0, 450.0, 7),
                (3.0, 300.0, 7),
                (7.0, 120.0, 7),
                (0.0, 20.0, 100)
            ]
        );
        // No transactions: empty figures, none named.
        let (p, slowest) = transaction_figures(&[], start, &(0..1000));
        assert_eq!((p.count, slowest.len()), (0, 0));
    }
}
