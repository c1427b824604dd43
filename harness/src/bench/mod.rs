//! `dtss bench`: load at a target rate on a fixed timetable (open loop) or as fast as
//! answered (closed loop), over HTTP or straight into Kafka, with ramp, steady and
//! drain phases; then every accepted order's result is read back for end-to-end
//! latency. Open loop measures each ack from the moment the order was *scheduled*, so a
//! stalled server cannot hide its latency behind a client that waits for it.
//!
//! The steps of a run (`bench`): start the watch (`watch.rs`) and the rate changes
//! (`rates.rs`), run the senders (`senders.rs`, on the timetable of `timetable.rs`),
//! drain, read the results back (`readback.rs`), build the report (`report.rs`).

mod figures;
mod floor;
mod rates;
mod readback;
mod report;
mod senders;
mod timetable;
mod watch;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use model::{Config, Uuid};
use serde::Serialize;

pub use report::{BenchReport, Percentiles, Second};
pub use watch::cpu_ticks;

use crate::send::{Tally, Target};
use report::Counts;

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
    /// The contended workload: a tenth of the orders on ten commodities.
    pub contended: bool,
    /// Send every order with an idempotency key of its own (its retries carry it).
    pub keys: bool,
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

/// The run's phases in time: it starts at `start` (`started_at_ms` by the wall clock),
/// ramps for `ramp_s`, holds for `steady_s`, then drains.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub start: Instant,
    pub started_at_ms: i64,
    pub ramp_s: f64,
    pub steady_s: f64,
}

impl Clock {
    fn start(opts: &BenchOptions) -> Clock {
        Clock {
            start: Instant::now(),
            started_at_ms: model::now_ms(),
            ramp_s: opts.ramp_s.max(0.0),
            steady_s: opts.steady_s,
        }
    }

    fn end_of_load_s(&self) -> f64 {
        self.ramp_s + self.steady_s
    }

    /// `s` seconds after the start.
    fn at(&self, s: f64) -> Instant {
        self.start + Duration::from_secs_f64(s)
    }

    fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn ms_since_start(&self, t: Instant) -> u32 {
        t.duration_since(self.start).as_millis() as u32
    }

    /// The steady phase, in ms since the start.
    fn steady_ms(&self) -> std::ops::Range<u32> {
        (self.ramp_s * 1000.0) as u32..(self.end_of_load_s() * 1000.0) as u32
    }

    fn phase(&self, secs: f64) -> &'static str {
        if secs < self.ramp_s {
            "ramp"
        } else if secs < self.end_of_load_s() {
            "steady"
        } else {
            "drain"
        }
    }
}

/// One order as the sender saw it.
pub(crate) struct Sent {
    /// Milliseconds from the start to when it was due (open loop) or sent (closed).
    due_ms: u32,
    /// Milliseconds from the start to its answer.
    done_ms: u32,
    /// Microseconds from due to answer.
    ack_us: u32,
    id: Option<Uuid>,
}

/// What the senders and the watch share while the run goes on.
#[derive(Default)]
pub(crate) struct Live {
    sent: AtomicU64,
    accepted: AtomicU64,
    settled: AtomicU64,
    lag: AtomicI64,
    /// Set by the sampler when a sample taken after `drain_from_ms` saw no lag.
    drained: AtomicBool,
    drain_from_ms: AtomicU64,
    /// The run is over: the watch and the rate changes stop.
    done: AtomicBool,
}

impl Live {
    fn new() -> Live {
        let live = Live::default();
        live.drain_from_ms.store(u64::MAX, Ordering::Relaxed);
        live
    }

    fn progress(&self, clock: Clock, t_ms: u64) -> Progress {
        let secs = t_ms as f64 / 1000.0;
        Progress {
            phase: clock.phase(secs),
            elapsed_s: secs,
            sent: self.sent.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            settled: self.settled.load(Ordering::Relaxed),
            lag: self.lag.load(Ordering::Relaxed),
        }
    }
}

/// Run one bench against the running system described by `cfg`.
pub async fn bench(
    cfg: &Config,
    opts: &BenchOptions,
    progress: impl Fn(&Progress) + Send + Sync + 'static,
) -> Result<BenchReport> {
    check_options(opts)?;
    let pool = sinks::connect(&cfg.mysql.urls, 4)?;
    let target = if opts.direct_kafka {
        Target::kafka(cfg, pool.clone()).await?
    } else {
        Target::http(&opts.url).context("--url")?
    };
    let target = Arc::new(if opts.keys {
        target
    } else {
        target.without_keys()
    });
    let poison_before = sinks::poison_counts(&pool, &cfg.kafka.topic).await?;
    let clock = Clock::start(opts);
    let live = Arc::new(Live::new());
    let watch = watch::Watch::start(cfg, &pool, clock, live.clone(), progress).await?;
    let changes = Arc::new(AtomicU64::new(0));
    let changer = spawn_rate_changes(cfg, opts, clock, &live, &changes);
    let floor = floor::spawn(cfg, &pool, clock);

    let (mut sent, tally) = senders::send_all(cfg, opts, clock, &target, &live).await?;
    if tally.abandoned > 0 {
        return Err(abandoned(cfg, &sent));
    }
    target.flush();
    drain(&live, clock, opts.drain_timeout_s).await;
    live.done.store(true, Ordering::Relaxed);
    let (lag, cpu) = watch.finish().await;
    let floor = match floor.await {
        Ok(Ok(f)) => Some(f),
        Ok(Err(e)) => {
            tracing::warn!("measuring the floor (fsynced commit, Kafka round trip): {e:#}");
            None
        }
        Err(e) => {
            tracing::warn!("the floor probe panicked: {e}");
            None
        }
    };
    if let Some(c) = changer {
        c.await.context("the rate changer panicked")??;
    }

    sent.sort_by_key(|s| s.due_ms);
    let ids: Vec<Uuid> = sent.iter().filter_map(|s| s.id).collect();
    let (results, unknown, commits) =
        readback::read_back(cfg, &pool, &ids, clock.started_at_ms).await?;
    let poison_after = sinks::poison_counts(&pool, &cfg.kafka.topic).await?;
    drop(target);
    pool.disconnect().await.ok();
    let measured = report::Measured {
        target: if opts.direct_kafka {
            format!("Kafka topic {} (direct)", cfg.kafka.topic)
        } else {
            opts.url.clone()
        },
        partitions: cfg.partitions(),
        clock,
        sent,
        counts: Counts {
            dead_letters: poison_after.0.saturating_sub(poison_before.0),
            copies_skipped: poison_after.1.saturating_sub(poison_before.1),
            ..counts_of(tally, unknown)
        },
        results,
        commits,
        lag,
        cpu,
        floor,
        rate_changes: changes.load(Ordering::Relaxed),
    };
    Ok(report::build(opts, measured))
}

fn check_options(opts: &BenchOptions) -> Result<()> {
    anyhow::ensure!(
        opts.rate.is_none_or(|r| r > 0.0 && r.is_finite()),
        "--rate must be a positive number of orders per second"
    );
    anyhow::ensure!(
        opts.steady_s > 0.0,
        "--duration must be more than 0 seconds"
    );
    Ok(())
}

/// The error of a run whose senders gave up on the system.
fn abandoned(cfg: &Config, sent: &[Sent]) -> anyhow::Error {
    anyhow::anyhow!(
        "an order was not taken within {:?} (503s or no answer), so the bench stopped \
         ({} orders accepted): is the system up (GET /healthz) and settling? See the logs \
         under {}/logs",
        crate::send::PATIENCE,
        sent.iter().filter(|s| s.id.is_some()).count(),
        cfg.data_dir().display()
    )
}

/// Rate changes while the load runs, if asked for.
fn spawn_rate_changes(
    cfg: &Config,
    opts: &BenchOptions,
    clock: Clock,
    live: &Arc<Live>,
    changes: &Arc<AtomicU64>,
) -> Option<tokio::task::JoinHandle<Result<()>>> {
    (opts.rate_changes_per_s > 0.0).then(|| {
        let (cfg, live, changes) = (cfg.clone(), live.clone(), changes.clone());
        let period = Duration::from_secs_f64(1.0 / opts.rate_changes_per_s);
        let (seed, until_s) = (opts.seed, clock.end_of_load_s());
        tokio::spawn(
            async move { rates::change_rates(cfg, period, seed, until_s, live, changes).await },
        )
    })
}

/// Wait until a lag sample taken from now on sees every partition settled (or the
/// timeout passes).
async fn drain(live: &Live, clock: Clock, timeout_s: f64) {
    live.drain_from_ms
        .store(clock.elapsed_ms(), Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);
    while !live.drained.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The counts the senders and the read-back know; `report::build` adds the rest.
fn counts_of(tally: Tally, commit_time_unknown: u64) -> Counts {
    Counts {
        invalid: tally.invalid,
        busy_retried: tally.busy,
        unacknowledged_retried: tally.unknown,
        errors_retried: tally.errors,
        failed: tally.failed,
        commit_time_unknown,
        ..Counts::default()
    }
}
