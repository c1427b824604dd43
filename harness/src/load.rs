use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::send::{Tally, Target};
use crate::OrderGen;

/// What a load run saw from the HTTP side.
pub struct LoadReport {
    /// The ids of orders that got 202.
    pub accepted: Vec<String>,
    pub rejected_400: u64,
    pub unavailable_503: u64,
    pub other: u64,
    pub elapsed: Duration,
    /// HTTP ack latency, microseconds.
    pub ack_us: Histogram<u64>,
    pub started_ms: i64,
}

/// Post `n` generated orders to `base_url` (e.g. http://127.0.0.1:8080) over
/// `connections` keep-alive connections as fast as they are answered. A 503 or a
/// connection error is retried, as a well-behaved client would, so every order gets placed.
/// The ack latency of an order includes its retries.
pub async fn post_orders(
    base_url: &str,
    n: u64,
    connections: usize,
    gen: OrderGen,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<LoadReport> {
    let target = Arc::new(Target::http(base_url)?);
    let gen = Arc::new(Mutex::new(gen));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = Arc::new(progress);
    let started = Instant::now();
    let started_ms = model::now_ms();
    let mut tasks = vec![];
    for _ in 0..connections.max(1) {
        let (mut sender, gen, next, progress) =
            (target.sender(), gen.clone(), next.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut accepted = vec![];
            let mut tally = Tally::default();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let body = gen.lock().expect("generator").next_body();
                let t0 = Instant::now();
                if let Some(id) = sender.place(&body, &mut tally).await {
                    accepted.push(id.to_string());
                }
                if tally.abandoned > 0 {
                    break;
                }
                hist.saturating_record(t0.elapsed().as_micros() as u64);
                progress(i + 1);
            }
            (accepted, tally, hist)
        }));
    }
    let mut report = LoadReport {
        accepted: vec![],
        rejected_400: 0,
        unavailable_503: 0,
        other: 0,
        elapsed: Duration::ZERO,
        ack_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        started_ms,
    };
    let mut abandoned = 0;
    for t in tasks {
        let (acc, tally, hist) = t.await.context("load task panicked")?;
        report.accepted.extend(acc);
        report.rejected_400 += tally.invalid;
        report.unavailable_503 += tally.busy;
        report.other += tally.errors + tally.failed;
        report.ack_us.add(hist).expect("same bounds");
        abandoned += tally.abandoned;
    }
    anyhow::ensure!(
        abandoned == 0,
        "{base_url} did not take an order within {:?} (503s or no answer), so the load stopped \
         ({} orders accepted): is the system up?",
        crate::send::PATIENCE,
        report.accepted.len()
    );
    report.elapsed = started.elapsed();
    Ok(report)
}

/// How the accepted orders settled.
pub struct SettleSummary {
    pub settled: u64,
    pub succeeded: u64,
    pub by_reason: Vec<(String, u64)>,
    /// From the first acceptance to the last settlement, milliseconds.
    pub span_ms: i64,
    /// End-to-end (accepted_at → settled_at) percentiles, milliseconds: p50, p99, max.
    pub e2e_ms: (u64, u64, u64),
}

/// Wait until every id in `ids` has a result row (or `timeout` passes), then summarise.
pub async fn wait_settled(
    pool: &sinks::Pool,
    ids: &[String],
    timeout: Duration,
) -> Result<SettleSummary> {
    let deadline = Instant::now() + timeout;
    loop {
        let settled = sinks::audit::count_results(pool, ids).await?;
        if settled >= ids.len() as u64 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut summary = SettleSummary {
        settled: 0,
        succeeded: 0,
        by_reason: vec![],
        span_ms: 0,
        e2e_ms: (0, 0, 0),
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("bounds");
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    for r in sinks::audit::result_timings_of(pool, ids).await? {
        summary.settled += 1;
        match r.reason {
            None => summary.succeeded += 1,
            Some(reason) => *reasons.entry(reason.as_str().to_string()).or_default() += 1,
        }
        first = first.min(r.accepted_at);
        last = last.max(r.settled_at);
        hist.saturating_record((r.settled_at - r.accepted_at).max(1) as u64);
    }
    summary.by_reason = reasons.into_iter().collect();
    summary.span_ms = if summary.settled > 0 { last - first } else { 0 };
    summary.e2e_ms = (
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
    );
    Ok(summary)
}
