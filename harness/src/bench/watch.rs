//! What a bench watches while it runs: Kafka lag per partition and the settled count
//! (sampled every 250 ms, shown by the progress callback), and how busy the machine's
//! CPUs were in the steady phase.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use model::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::figures::{CpuUse, LagSample};
use super::{Clock, Live, Progress};

/// The sampler and the CPU watch, running.
pub(super) struct Watch {
    sampler: tokio::task::JoinHandle<()>,
    cpu: tokio::task::JoinHandle<Option<CpuUse>>,
    samples: Arc<Mutex<Vec<LagSample>>>,
}

impl Watch {
    /// Start watching the system `cfg` describes.
    pub(super) async fn start(
        cfg: &Config,
        pool: &sinks::Pool,
        clock: Clock,
        live: Arc<Live>,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Watch> {
        let consumer = Arc::new(watermarks(cfg).await?);
        let base_settled: i64 = sinks::load_offsets(pool, &cfg.kafka.topic)
            .await?
            .values()
            .sum();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sampler = Sampler {
            pool: pool.clone(),
            topic: cfg.kafka.topic.clone(),
            partitions: cfg.partitions(),
            consumer,
            base_settled,
            clock,
            live,
            samples: samples.clone(),
        };
        Ok(Watch {
            sampler: tokio::spawn(sampler.run(progress)),
            cpu: tokio::spawn(cpu_use(clock)),
            samples,
        })
    }

    /// Stop (the caller has set `live.done`): the lag samples and the CPU use.
    pub(super) async fn finish(self) -> (Vec<LagSample>, Option<CpuUse>) {
        let _ = self.sampler.await;
        let cpu = self.cpu.await.ok().flatten();
        let lag = std::mem::take(&mut *self.samples.lock().expect("samples"));
        (lag, cpu)
    }
}

/// A Kafka client that reads the topic's high watermarks.
pub(super) async fn watermarks(cfg: &Config) -> Result<BaseConsumer> {
    let c = cfg.clone();
    let bootstrap = tokio::task::spawn_blocking(move || {
        broker::bootstrap(
            &c.kafka.brokers,
            &c.broker_addr_file(),
            Duration::from_secs(10),
        )
    })
    .await??;
    rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "dtss-bench")
        .create()
        .context("creating a Kafka client to read watermarks")
}

struct Sampler {
    pool: sinks::Pool,
    topic: String,
    partitions: usize,
    consumer: Arc<BaseConsumer>,
    /// Σ stored offsets when the bench started.
    base_settled: i64,
    clock: Clock,
    live: Arc<Live>,
    samples: Arc<Mutex<Vec<LagSample>>>,
}

impl Sampler {
    async fn run(self, progress: impl Fn(&Progress)) {
        while !self.live.done.load(Ordering::Relaxed) {
            let t = self.clock.elapsed_ms();
            let committed = sinks::load_offsets(&self.pool, &self.topic)
                .await
                .unwrap_or_default();
            let highs = self.highs().await;
            if highs.len() == self.partitions && highs.iter().all(|h| *h >= 0) {
                let at = |p: usize| committed.get(&(p as i32)).copied().unwrap_or(0);
                let lags: Vec<i64> = highs
                    .iter()
                    .enumerate()
                    .map(|(p, h)| (h - at(p)).max(0))
                    .collect();
                self.record_lag(t, lags);
            }
            let settled: i64 = committed.values().sum::<i64>() - self.base_settled;
            self.live
                .settled
                .store(settled.max(0) as u64, Ordering::Relaxed);
            progress(&self.live.progress(self.clock, t));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Each partition's high watermark (-1 where it could not be read).
    async fn highs(&self) -> Vec<i64> {
        let (consumer, topic, n) = (self.consumer.clone(), self.topic.clone(), self.partitions);
        tokio::task::spawn_blocking(move || {
            (0..n as i32)
                .map(|p| {
                    let w = consumer.fetch_watermarks(&topic, p, Duration::from_secs(2));
                    w.map(|(_, h)| h).unwrap_or(-1)
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// A lag sample at `t` ms; one that sees no lag after the drain began ends it.
    fn record_lag(&self, t: u64, lags: Vec<i64>) {
        let total: i64 = lags.iter().sum();
        self.live.lag.store(total, Ordering::Relaxed);
        if total == 0 && t >= self.live.drain_from_ms.load(Ordering::Relaxed) {
            self.live.drained.store(true, Ordering::Relaxed);
        }
        let sample = LagSample {
            t_s: t as f64 / 1000.0,
            partitions: lags,
        };
        self.samples.lock().expect("samples").push(sample);
    }
}

/// How busy the CPUs were (and how much the hypervisor stole) over the steady phase.
async fn cpu_use(clock: Clock) -> Option<CpuUse> {
    tokio::time::sleep_until(clock.at(clock.ramp_s).into()).await;
    let a = cpu_ticks()?;
    tokio::time::sleep_until(clock.at(clock.end_of_load_s()).into()).await;
    let b = cpu_ticks()?;
    let total = (b.2 - a.2).max(1) as f64;
    Some(CpuUse {
        busy_pct: 100.0 * (b.0 - a.0) as f64 / total,
        steal_pct: 100.0 * (b.1 - a.1) as f64 / total,
    })
}

/// The aggregate `cpu` line of /proc/stat: (busy, steal, total) in ticks.
pub fn cpu_ticks() -> Option<(u64, u64, u64)> {
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
