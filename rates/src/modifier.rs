//! The rate modifier (docs/DESIGN.md, "Time and rates"): every period it moves each non-base rate by a random step
//! of at most ±max_step_pct, kept within ±bound_pct of its initial value. Several may run;
//! the one holding the ZooKeeper lock `{root}/modifier` (Curator-compatible, ephemeral
//! sequential) writes, and every write is a compare-and-set on the znode version.

use std::time::Duration;

use anyhow::{Context, Result};
use model::{Config, Currency, Decimal};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::RoundingStrategy;
use zookeeper_client as zk;

use crate::modifier_metrics::METRICS;
use crate::{connect, rate_path, seed_rates};

/// Rates are kept to 6 decimals.
pub const RATE_DP: u32 = 6;

/// The bounds `[initial × (1 − b), initial × (1 + b)]`, rounded inwards to 6 decimals.
pub fn bounds(initial: Decimal, bound_pct: Decimal) -> (Decimal, Decimal) {
    let b = bound_pct / Decimal::from(100);
    let lo = (initial * (Decimal::ONE - b))
        .round_dp_with_strategy(RATE_DP, RoundingStrategy::ToPositiveInfinity);
    let hi = (initial * (Decimal::ONE + b))
        .round_dp_with_strategy(RATE_DP, RoundingStrategy::ToNegativeInfinity);
    (lo, hi)
}

/// One random step: `rate × (1 + s)`, |s| ≤ max_step_pct %, rounded to 6 decimals and
/// clamped into `bounds(initial, bound_pct)`.
pub fn step(
    rate: Decimal,
    initial: Decimal,
    max_step_pct: Decimal,
    bound_pct: Decimal,
    rng: &mut impl Rng,
) -> Decimal {
    // s in hundredths of a basis point: an integer k with |k| ≤ max_step_pct × 10^4.
    let limit = (max_step_pct * Decimal::from(10_000)).trunc();
    let limit: i64 = limit.try_into().unwrap_or(0);
    let k = if limit > 0 {
        rng.random_range(-limit..=limit)
    } else {
        0
    };
    let factor = Decimal::ONE + Decimal::new(k, 6);
    let (lo, hi) = bounds(initial, bound_pct);
    // A rate set by hand far out of range cannot overflow the step: it stays.
    rate.checked_mul(factor)
        .unwrap_or(rate)
        .round_dp_with_strategy(RATE_DP, RoundingStrategy::MidpointNearestEven)
        .clamp(lo, hi)
}

/// Options of one modifier process.
pub struct ModifierOptions {
    pub period: Duration,
    pub seed: Option<u64>,
    /// Stop after this many periods as leader (tests); None: run until `stop`.
    pub max_periods: Option<u64>,
}

/// Contend for leadership and, while leader, step every non-base rate each period.
/// Returns when `stop` resolves (or after `max_periods`).
pub async fn run_modifier(
    cfg: &Config,
    opts: ModifierOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(stop);
    let mut rng = match opts.seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    };
    let initial = cfg.currencies.initial.clone();
    let base = cfg.currencies.base;
    let (max_step, bound) = (cfg.currencies.max_step_pct, cfg.currencies.bound_pct);
    let mut periods = 0u64;
    loop {
        let client = connect(cfg, Duration::from_secs(3600)).await?;
        seed_rates(&client, cfg).await?;
        let dir = format!("{}/modifier", cfg.zookeeper.root);
        let prefix = zk::LockPrefix::new_curator(&dir, "lock-").context("lock path")?;
        let options = zk::LockOptions::new(zk::Acls::anyone_all())
            .with_ancestor_options(zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()))
            .context("lock options")?;
        tracing::info!("rate modifier waiting for leadership ({dir})");
        let lock = tokio::select! {
            _ = &mut stop => return Ok(()),
            l = client.lock(prefix, b"", options) => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("lost the ZooKeeper session while contending: {e}; retrying");
                    continue;
                }
            },
        };
        tracing::info!(
            "rate modifier is the leader ({}); stepping rates every {:?}",
            lock.lock_path(),
            opts.period
        );
        METRICS.elections.inc();
        METRICS.leader.set(1);
        let mut tick = tokio::time::interval(opts.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tick.tick() => {}
            }
            if client.state() != zk::SessionState::SyncConnected {
                tracing::warn!(
                    "ZooKeeper connection is {:?}: giving up leadership",
                    client.state()
                );
                break;
            }
            if let Err(e) = step_all(&client, cfg, &initial, base, max_step, bound, &mut rng).await
            {
                METRICS.failed_steps.inc();
                tracing::warn!("rate step failed: {e:#}; giving up leadership");
                break;
            }
            METRICS.steps.inc();
            periods += 1;
            if opts.max_periods.is_some_and(|m| periods >= m) {
                return Ok(());
            }
        }
        METRICS.leader.set(0);
        drop(lock);
    }
}

async fn step_all(
    client: &zk::Client,
    cfg: &Config,
    initial: &[(Currency, Decimal)],
    base: Currency,
    max_step: Decimal,
    bound: Decimal,
    rng: &mut StdRng,
) -> Result<()> {
    for (c, init) in initial.iter().filter(|(c, _)| *c != base) {
        let (rate, _) = cas_update(client, cfg, *c, |current| {
            step(current, *init, max_step, bound, rng)
        })
        .await?;
        METRICS.wrote(*c, rate);
    }
    Ok(())
}

/// Read the rate of `c`, compute its new value, write it only if the znode is still at
/// the version read (else read again). Returns the new rate and znode version.
pub async fn cas_update(
    client: &zk::Client,
    cfg: &Config,
    c: Currency,
    mut new_rate: impl FnMut(Decimal) -> Decimal,
) -> Result<(Decimal, i32)> {
    let path = rate_path(cfg, c);
    anyhow::ensure!(
        cfg.currencies.all.contains(&c),
        "{c} is not a configured currency"
    );
    let initial = crate::initial_rate(cfg, c);
    loop {
        let (data, stat) = client
            .get_data(&path)
            .await
            .with_context(|| format!("reading {path}"))?;
        let text = String::from_utf8_lossy(&data[..data.len().min(64)]).into_owned();
        // What the node holds is not trusted: a rate outside the rule is replaced, taken
        // as the initial rate.
        let current = crate::parse_rate(cfg, c, text.trim()).unwrap_or_else(|e| {
            tracing::warn!(
                "{path} holds {text:?} ({}): taking {initial} for it",
                e.problem
            );
            initial
        });
        let next = new_rate(current);
        match client
            .set_data(&path, next.to_string().as_bytes(), Some(stat.version))
            .await
        {
            Ok(stat) => {
                tracing::debug!(currency = %c, rate = %next, version = stat.version, "rate written");
                return Ok((next, stat.version));
            }
            Err(zk::Error::BadVersion) => continue, // someone else wrote in between
            Err(e) => return Err(e).with_context(|| format!("writing {path}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn bounds_hold_over_100_000_steps_and_each_step_is_small() {
        let mut rng = StdRng::seed_from_u64(7);
        for init in [d("7.12"), d("0.048"), d("7.80")] {
            let (lo, hi) = bounds(init, d("20"));
            assert_eq!(lo, (init * d("0.8")).round_dp(6));
            let mut r = init;
            let (mut min, mut max) = (r, r);
            for _ in 0..100_000 {
                let n = step(r, init, d("2"), d("20"), &mut rng);
                assert!(n >= lo && n <= hi, "{n} outside [{lo}, {hi}]");
                // at most 2 % plus the rounding to 6 decimals
                assert!(
                    (n - r).abs() <= r * d("0.02") + d("0.0000005"),
                    "step {r} → {n}"
                );
                assert!(n.scale() <= 6);
                min = min.min(n);
                max = max.max(n);
                r = n;
            }
            // a random walk of 100,000 steps reaches both bounds
            assert_eq!((min, max), (lo, hi), "walk from {init}");
        }
    }

    #[test]
    fn a_rate_far_out_of_range_steps_back_into_it_without_overflow() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let r = step(Decimal::MAX, d("7.12"), d("2"), d("20"), &mut rng);
            assert_eq!(r, bounds(d("7.12"), d("20")).1);
        }
    }

    #[test]
    fn seeded_steps_repeat() {
        let walk = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut r = d("7.12");
            (0..100)
                .map(|_| {
                    r = step(r, d("7.12"), d("2"), d("20"), &mut rng);
                    r
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(walk(1), walk(1));
        assert_ne!(walk(1), walk(2));
    }
}
