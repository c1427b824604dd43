//! What the campaign measures after a fault: when the cluster settles everywhere again
//! (recovery), and when the supervisors had started everything again (restarted).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a round waits for the cluster to come back.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The time from the fault (`since`) until every partition's stored offset has moved
/// twice (the cluster back and settling everywhere); None after `PATIENCE`.
pub async fn recovery(pool: &sinks::Pool, topic: &str, since: Instant) -> Option<Duration> {
    let mut last: Option<HashMap<i32, i64>> = None;
    let mut moved: HashMap<i32, u32> = HashMap::new();
    while since.elapsed() < PATIENCE {
        let read = sinks::load_offsets(pool, topic);
        if let Ok(Ok(now)) = tokio::time::timeout(Duration::from_secs(2), read).await {
            if let Some(before) = &last {
                count_moves(before, &now, &mut moved);
                if !now.is_empty() && now.keys().all(|p| moved.get(p).copied() >= Some(2)) {
                    return Some(since.elapsed());
                }
            }
            last = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn count_moves(before: &HashMap<i32, i64>, now: &HashMap<i32, i64>, moved: &mut HashMap<i32, u32>) {
    for (p, offset) in now {
        if before.get(p) != Some(offset) {
            *moved.entry(*p).or_default() += 1;
        }
    }
}

/// The time from the fault (unix ms `fault_ms`) to the last start a supervisor logged
/// within `PATIENCE` after it (`[supervise] <unix ms> NAME started pid P` in the hosts'
/// logs); zero when nothing was restarted.
pub fn restarted(hosts_dir: &Path, fault_ms: i64) -> Duration {
    let mut latest = 0;
    for log in host_logs(hosts_dir) {
        let Ok(text) = std::fs::read_to_string(&log) else {
            continue;
        };
        latest = latest.max(last_start_after(&text, fault_ms));
    }
    Duration::from_millis(latest as u64)
}

fn host_logs(hosts_dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(hosts) = std::fs::read_dir(hosts_dir) else {
        return vec![];
    };
    let dirs = hosts.flatten().map(|e| e.path()).filter(|p| p.is_dir());
    dirs.flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect()
}

/// The largest (start − fault_ms) in ms among the supervisor's `started` lines of `log`
/// after the fault and within `PATIENCE`; 0 if none.
fn last_start_after(log: &str, fault_ms: i64) -> i64 {
    let window = PATIENCE.as_millis() as i64;
    log.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (tag, ms, _name, what) = (w.next()?, w.next()?, w.next()?, w.next()?);
            (tag == "[supervise]" && what == "started").then(|| ms.parse::<i64>().ok())?
        })
        .map(|ms| ms - fault_ms)
        .filter(|d| *d > 0 && *d < window)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_start_after_the_fault_counts() {
        let log = "[supervise] 1000 worker started pid 7\n\
                   noise from the worker\n\
                   [supervise] 5000 worker exited 137 after 4 s\n\
                   [supervise] 6500 worker started pid 9\n\
                   [supervise] 900000 worker started pid 11\n";
        assert_eq!(last_start_after(log, 5000), 1500);
        assert_eq!(last_start_after(log, 7000), 0);
    }

    #[test]
    fn a_partition_counts_a_move_when_its_offset_changes() {
        let before = HashMap::from([(0, 10), (1, 20)]);
        let now = HashMap::from([(0, 11), (1, 20), (2, 5)]);
        let mut moved = HashMap::new();
        count_moves(&before, &now, &mut moved);
        assert_eq!(moved.get(&0), Some(&1));
        assert_eq!(moved.get(&1), None);
        assert_eq!(moved.get(&2), Some(&1));
    }
}
