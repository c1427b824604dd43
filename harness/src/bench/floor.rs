//! The physical floor a run's latencies read against, measured in the same run through
//! its steady phase: one fsynced MySQL commit (a one-row upsert in autocommit, so the
//! redo log is flushed as a settlement's COMMIT is) and one Kafka round trip (a
//! ListOffsets request for partition 0's high watermark). A p99 of accepted → committed
//! can be read as a multiple of what the disk and the broker allow.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use model::Config;
use mysql_async::prelude::Queryable;
use rdkafka::consumer::Consumer;
use serde::Serialize;

use super::figures::{latency_us, Percentiles};
use super::Clock;

/// Pause between two probes: about 50 of each per second, a load the run does not feel.
const EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub commit_ms: Percentiles,
    pub kafka_round_trip_ms: Percentiles,
}

/// Probe from the start of the steady phase to its end.
pub(super) fn spawn(
    cfg: &Config,
    pool: &sinks::Pool,
    clock: Clock,
) -> tokio::task::JoinHandle<Result<Floor>> {
    let (cfg, pool) = (cfg.clone(), pool.clone());
    tokio::spawn(async move { probe(&cfg, &pool, clock).await })
}

async fn probe(cfg: &Config, pool: &sinks::Pool, clock: Clock) -> Result<Floor> {
    let mut conn = pool
        .get_conn()
        .await
        .context("a connection for the floor")?;
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS bench_floor (id TINYINT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB",
    )
    .await?;
    let kafka = std::sync::Arc::new(super::watch::watermarks(cfg).await?);
    let topic = cfg.kafka.topic.clone();
    let (mut commits, mut trips) = (latency_us(), latency_us());
    tokio::time::sleep_until(clock.at(clock.ramp_s).into()).await;
    let end = clock.at(clock.end_of_load_s());
    while Instant::now() < end {
        let t = Instant::now();
        conn.query_drop("INSERT INTO bench_floor VALUES (1, 1) ON DUPLICATE KEY UPDATE n = n + 1")
            .await?;
        commits.record(t.elapsed().as_micros().max(1) as u64).ok();
        let (k, topic) = (kafka.clone(), topic.clone());
        let took = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            k.fetch_watermarks(&topic, 0, Duration::from_secs(5))
                .map(|_| t.elapsed())
        })
        .await?
        .context("a Kafka round trip")?;
        trips.record(took.as_micros().max(1) as u64).ok();
        tokio::time::sleep(EVERY).await;
    }
    Ok(Floor {
        commit_ms: Percentiles::of_us(&commits),
        kafka_round_trip_ms: Percentiles::of_us(&trips),
    })
}
