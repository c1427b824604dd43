//! The embedded broker keeps only ~5 MiB per partition in memory and silently drops
//! older messages, so with it ingest refuses orders (503) while too many are unsettled.
//! Unsettled = last offset Kafka acknowledged − next offset committed in MySQL.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sinks::Pool;

pub struct Backlog {
    produced: Vec<AtomicI64>,
    settled: Vec<AtomicI64>,
    limit: Option<i64>,
}

impl Backlog {
    pub fn new(partitions: usize, limit: Option<u64>) -> Arc<Backlog> {
        Arc::new(Backlog {
            produced: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            settled: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            limit: limit.map(|l| l as i64),
        })
    }

    /// Kafka acknowledged `offset` in `partition`.
    pub fn produced(&self, partition: i32, offset: i64) {
        if let Some(p) = self.produced.get(partition as usize) {
            p.fetch_max(offset + 1, Ordering::Relaxed);
        }
    }

    /// The largest number of unsettled orders in any partition.
    pub fn worst(&self) -> i64 {
        self.produced
            .iter()
            .zip(&self.settled)
            .map(|(p, s)| p.load(Ordering::Relaxed) - s.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    pub fn full(&self) -> bool {
        self.limit.is_some_and(|l| self.worst() >= l)
    }

    /// Follow the committed offsets in MySQL (every 100 ms).
    pub fn spawn_follower(self: &Arc<Self>, pool: Pool, topic: String) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match sinks::load_offsets(&pool, &topic).await {
                    Ok(map) => {
                        for (p, next) in map {
                            if let Some(s) = me.settled.get(p as usize) {
                                s.fetch_max(next, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) => tracing::warn!("cannot read settled offsets: {e:#}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}
