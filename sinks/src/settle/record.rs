//! A batch's commit record: the row of `settle_batches` that says which offsets one
//! transaction settled and when (written with the next batch, or on its own when none
//! follows soon).

/// One settlement transaction, as kept in `settle_batches`: its partition's offsets
/// `first_offset..next_offset`, its number of orders, when it began (the `settled_at`
/// of its results, stamped before their rows are written) and when its COMMIT
/// returned. An order's end-to-end latency is `committed_at − accepted_at` of the batch
/// holding its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Committed {
    pub partition: i32,
    pub first_offset: i64,
    pub next_offset: i64,
    pub orders: u32,
    pub started_at: i64,
    pub committed_at: i64,
}

impl Committed {
    /// The statement that records it (numbers only; INSERT IGNORE: a retry after an
    /// ambiguous commit may write it twice).
    pub(super) fn statement(&self) -> String {
        format!(
            "INSERT IGNORE INTO settle_batches \
             (`partition`, next_offset, first_offset, orders, started_at, committed_at) \
             VALUES ({},{},{},{},{},{})",
            self.partition,
            self.next_offset,
            self.first_offset,
            self.orders,
            self.started_at,
            self.committed_at
        )
    }
}
