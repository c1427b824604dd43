//! How much of its partition a worker holds in memory: the orders read and not yet
//! committed in MySQL (read ahead, waiting for their epoch, in a transaction). The
//! reader stops fetching while that passes `cluster.max_unsettled_per_worker`, and goes
//! on as commits catch up, so a worker's memory is bounded whatever the broker holds
//! while MySQL is slow or down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// Each partition's next offset as committed in MySQL, as this process knows it.
static COMMITTED: LazyLock<Mutex<HashMap<i32, Arc<AtomicI64>>>> = LazyLock::new(Default::default);

fn committed(partition: i32) -> Arc<AtomicI64> {
    COMMITTED
        .lock()
        .expect("window lock")
        .entry(partition)
        .or_default()
        .clone()
}

/// A partition's window: the reader's side.
pub(crate) struct Window {
    committed: Arc<AtomicI64>,
    max: i64,
}

impl Window {
    /// The window of `partition`, whose stored offset is `start`.
    pub(crate) fn open(partition: i32, start: i64, max: u64) -> Window {
        let committed = committed(partition);
        committed.fetch_max(start, Ordering::Relaxed);
        Window {
            committed,
            max: i64::try_from(max).unwrap_or(i64::MAX),
        }
    }

    /// Whether the orders before `read` (the next offset to read) that are not yet
    /// committed fill the window.
    pub(crate) fn full(&self, read: i64) -> bool {
        read - self.committed.load(Ordering::Relaxed) >= self.max
    }
}

/// Partition `partition` committed everything before `next_offset`.
pub(crate) fn committed_to(partition: i32, next_offset: i64) {
    committed(partition).fetch_max(next_offset, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_fills_with_reads_and_empties_with_commits() {
        let w = Window::open(77, 1_000, 500);
        assert!(!w.full(1_499));
        assert!(w.full(1_500));
        committed_to(77, 1_200);
        assert!(!w.full(1_500));
        committed_to(77, 1_100); // an older commit does not move it back
        assert!(w.full(1_700));
    }
}
