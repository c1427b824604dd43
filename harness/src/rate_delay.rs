//! How long from a rate written to ZooKeeper until the first order settled with it:
//! inject distinct USD rates at a fixed interval while orders flow, then look each one
//! up in rate_history (its version) and result (the first settled_at at that version
//! or a newer one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use model::{Config, Currency, Decimal};

use crate::send::Target;
use crate::OrderGen;

pub struct RateDelayReport {
    pub injections: usize,
    pub measured: usize,
    /// Milliseconds from just before the ZooKeeper write to the first settled order.
    pub delay_ms: Histogram<u64>,
}

pub async fn rate_delay(
    cfg: &Config,
    base_url: &str,
    injections: u32,
    interval: Duration,
    progress: impl Fn(u64),
) -> Result<RateDelayReport> {
    let usd: Currency = cfg
        .currencies
        .all
        .clone()
        .into_iter()
        .find(|c| *c != cfg.currencies.base)
        .context("needs a non-base currency")?;
    let zk = rates::connect(cfg, Duration::from_secs(10)).await?;
    let pool = sinks::connect(&cfg.mysql.urls, 2)?;

    // Background orders: 4 connections, one order every 2 ms each.
    let stop = Arc::new(AtomicBool::new(false));
    let target = Arc::new(Target::http(base_url)?);
    let currencies: Vec<String> = cfg.currencies.all.iter().map(|c| c.to_string()).collect();
    let mut loaders = vec![];
    for t in 0..4u64 {
        let (mut sender, stop) = (target.sender(), stop.clone());
        let mut gen = OrderGen::new(1000 + t, cfg.catalogue.items, currencies.clone());
        loaders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = sender.send(&gen.next_body(), None).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut written = vec![];
    for i in 0..injections {
        // distinct values that no modifier step produces: 4 decimals, 5.0001…
        let rate = Decimal::new(50_000 + i as i64 + 1, 4);
        let t = model::now_ms();
        rates::inject(&zk, cfg, usd, rate).await?;
        written.push((rate, t));
        progress(i as u64 + 1);
        tokio::time::sleep(interval).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        let _ = l.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000, 3).expect("bounds");
    for (rate, t) in &written {
        let Some(version) =
            sinks::audit::first_version_with(&pool, usd.as_str(), *rate, t - 1000).await?
        else {
            continue;
        };
        if let Some(first) = sinks::audit::first_settled_at_version(&pool, version).await? {
            hist.saturating_record((first - t).max(1) as u64);
        }
    }
    pool.disconnect().await.ok();
    Ok(RateDelayReport {
        injections: written.len(),
        measured: hist.len() as usize,
        delay_ms: hist,
    })
}
