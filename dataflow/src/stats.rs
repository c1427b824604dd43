//! A worker's settlement counts of the last report period, logged every 10 s.

use std::time::Duration;

use crate::settlement_thread::Done;

/// Settlement counts of the last report period, logged every 10 s.
#[derive(Default)]
pub(crate) struct Stats {
    orders: u64,
    batches: u64,
    /// Of the batches, those settled from the worker's view of the stock, and the
    /// times that view was found stale (`sinks::TransactionPipeline::view_counts`).
    from_view: u64,
    stale: u64,
    /// Messages kept as dead letters, and copies of settled orders skipped.
    dead: u64,
    skipped: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, done: &Done) {
        self.orders += done.outcomes.len() as u64;
        self.batches += done.batches;
        self.from_view += done.from_view;
        self.stale += done.stale;
        self.dead += done.dead;
        self.skipped += done.skipped;
    }

    pub(crate) fn log(&self, partition: i32, period: Duration) {
        if self.dead + self.skipped > 0 {
            tracing::warn!(
                partition,
                dead_letters = self.dead,
                skipped_copies = self.skipped,
                "in the last {period:.0?}: {} messages kept as dead letters (dtss dead-letters), \
                 {} copies of settled orders skipped",
                self.dead,
                self.skipped
            );
        }
        if self.orders == 0 {
            return;
        }
        tracing::info!(
            partition,
            settled = self.orders,
            batches = self.batches,
            from_view = self.from_view,
            stale = self.stale,
            "settled {} orders in {} transactions in the last {period:.0?} ({} from the worker's \
             view of the stock; the view found stale {} times)",
            self.orders,
            self.batches,
            self.from_view,
            self.stale
        );
    }
}
