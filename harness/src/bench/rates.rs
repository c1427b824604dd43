//! Rate changes while a bench's load runs: a random in-bounds rate of one non-base
//! currency, in turn, written to ZooKeeper at a steady pace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use model::{Config, Currency, Decimal};
use rand::{Rng, SeedableRng};

use super::Live;

/// Write a random in-bounds rate of one non-base currency (in turn) every `period`
/// until the load ends.
pub(super) async fn change_rates(
    cfg: Config,
    period: Duration,
    seed: u64,
    until_s: f64,
    live: Arc<Live>,
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
    while !live.done.load(Ordering::Relaxed) && start.elapsed().as_secs_f64() < until_s {
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
