//! After the drain: every accepted order's result, read back from MySQL, with the commit
//! time of the transaction that holds its offset (from the sink's commit log).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use model::{Reason, Uuid};
use sinks::audit::CommitRecord;

/// A bench order's result.
pub(super) struct Settled {
    pub reason: Option<Reason>,
    pub accepted_at: i64,
    /// When its transaction committed (`settled_at` until known).
    pub committed_at: i64,
    /// Settled in a later epoch than the one it was accepted in: read after that epoch
    /// had closed.
    pub late: bool,
    partition: i32,
    offset: i64,
}

impl Settled {
    fn of(cfg: &model::Config, r: sinks::audit::ResultTiming) -> Settled {
        Settled {
            reason: r.reason,
            accepted_at: r.accepted_at,
            committed_at: r.settled_at,
            late: r.epoch > cfg.epoch_of(r.accepted_at),
            partition: r.partition,
            offset: r.offset,
        }
    }
}

/// The results of `ids`, each with its commit time; how many have none yet; and the
/// settlement transactions that committed since `since_ms`.
pub(super) async fn read_back(
    cfg: &model::Config,
    pool: &sinks::Pool,
    ids: &[Uuid],
    since_ms: i64,
) -> Result<(Vec<Settled>, u64, Vec<CommitRecord>)> {
    let mut results: Vec<Settled> = sinks::audit::result_timings(pool, ids)
        .await?
        .into_iter()
        .map(|r| Settled::of(cfg, r))
        .collect();
    let (unknown, commits) = commit_times(pool, &mut results, since_ms).await?;
    Ok((results, unknown, commits))
}

/// Each result's commit time: that of the batch holding its offset. A batch's record is
/// written with the partition's next batch, or on its own after ~100 ms without one, so
/// wait a little for the last ones. Returns how many results still have none (they keep
/// their `settled_at`), and the transactions that committed since `since_ms`.
async fn commit_times(
    pool: &sinks::Pool,
    results: &mut [Settled],
    since_ms: i64,
) -> Result<(u64, Vec<CommitRecord>)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let commits = sinks::audit::commits_since(pool, since_ms).await?;
        let unknown = stamp(results, &commits);
        if unknown == 0 || Instant::now() >= deadline {
            return Ok((unknown, commits));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Give each result the commit time of the first batch of its partition whose next
/// offset lies beyond its offset (`commits` by partition, then offset); the number of
/// results with no such batch.
fn stamp(results: &mut [Settled], commits: &[CommitRecord]) -> u64 {
    let mut batches: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    for c in commits {
        batches
            .entry(c.partition)
            .or_default()
            .push((c.next_offset, c.committed_at));
    }
    let mut unknown = 0;
    for r in results.iter_mut() {
        let b = batches.get(&r.partition);
        let i = b.map(|b| b.partition_point(|(next, _)| *next <= r.offset));
        match b.zip(i).and_then(|(b, i)| b.get(i)) {
            Some((_, at)) => r.committed_at = *at,
            None => unknown += 1,
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_settled_after_its_epoch_is_late() {
        let cfg = model::Config::parse(include_str!("../../../cluster.toml")).unwrap();
        let ms = cfg.cluster.epoch_ms as i64;
        let timing = |accepted_at, epoch| sinks::audit::ResultTiming {
            reason: None,
            accepted_at,
            settled_at: accepted_at + 30,
            partition: 0,
            offset: 0,
            epoch,
        };
        let late = |accepted_at, epoch| Settled::of(&cfg, timing(accepted_at, epoch)).late;
        assert!(!late(5 * ms, 5), "settled in its own epoch");
        assert!(!late(6 * ms - 1, 5), "the epoch's last millisecond");
        assert!(late(5 * ms, 6), "moved to the next epoch");
    }

    fn settled(partition: i32, offset: i64) -> Settled {
        Settled {
            reason: None,
            accepted_at: 0,
            committed_at: -1,
            late: false,
            partition,
            offset,
        }
    }

    fn commit(partition: i32, next_offset: i64, committed_at: i64) -> CommitRecord {
        CommitRecord {
            partition,
            next_offset,
            started_at: 0,
            committed_at,
            orders: 1,
        }
    }

    #[test]
    fn a_result_takes_the_commit_time_of_the_batch_holding_its_offset() {
        let mut r = vec![
            settled(0, 0),
            settled(0, 4),
            settled(0, 5),
            settled(1, 2),
            settled(0, 9),
        ];
        let commits = [commit(0, 5, 100), commit(0, 9, 200), commit(1, 3, 150)];
        assert_eq!(
            stamp(&mut r, &commits),
            1,
            "offset 9 of partition 0 is in no batch yet"
        );
        let at: Vec<i64> = r.iter().map(|s| s.committed_at).collect();
        assert_eq!(at, [100, 100, 200, 150, -1]);
    }
}
