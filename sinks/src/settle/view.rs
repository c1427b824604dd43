//! The worker's view of the stock, and what a partition's settlement carries from one
//! batch to the next: the commit record of its last batch and its counters.
//!
//! The view is the stock as this partition last committed it, or as read without locks:
//! only a guess, checked under the lock (docs/DESIGN.md, "Exactly once"). Once it holds
//! every commodity of a batch, the batch may be settled from it alone; a view found
//! stale makes the next batches lock, for longer after each miss.

use std::collections::{BTreeSet, HashMap};

use crate::Pool;
use anyhow::{Context, Result};
use model::{Commodity, Decision};
use mysql_async::prelude::*;

use super::plan::{decision, Plan};
use super::record::Committed;
use super::{Outcome, ReadyOrder};

/// What a partition's settlement carries from one batch to the next.
#[derive(Default)]
pub struct SettleState {
    pub(super) stock: HashMap<u32, Commodity>,
    /// The last batch's commit record, written with the next batch (or by `flush`).
    pub(super) unrecorded: Option<Committed>,
    /// Results go in as INSERTs: the server refused LOAD DATA LOCAL.
    pub(super) insert_results: bool,
    /// Batches still to settle under locks before the view is trusted again, and what
    /// that count becomes when the view next turns out stale: it doubles each time (a
    /// cluster whose partitions share commodities ends up locking), and a batch settled
    /// from the view resets it.
    locked_batches: u32,
    stale_penalty: u32,
    /// Batches committed from the view alone, checked by the stock UPDATE.
    verified: u64,
    /// Times the view was found stale by that check.
    stale: u64,
    /// Messages kept as dead letters, and copies of settled orders skipped.
    dead_letters: u64,
    skipped_copies: u64,
}

impl SettleState {
    /// How many batches were committed from the view alone: their commodities were not
    /// read under locks, the stock UPDATE checked that each still held what the view
    /// said.
    pub fn verified_batches(&self) -> u64 {
        self.verified
    }

    /// How many times a batch decided against the view found it stale (and was settled
    /// again under locks).
    pub fn stale_views(&self) -> u64 {
        self.stale
    }

    /// Whether a batch of commodities `ids` may be decided from the view alone: it
    /// holds every one of them and no miss asks for locking.
    pub(super) fn trusts(&self, ids: &BTreeSet<u32>) -> bool {
        self.locked_batches == 0 && ids.iter().all(|id| self.stock.contains_key(id))
    }

    /// The commodities of `ids` the view lacks.
    pub(super) fn unseen(&self, ids: &BTreeSet<u32>) -> Vec<u32> {
        ids.iter()
            .copied()
            .filter(|id| !self.stock.contains_key(id))
            .collect()
    }

    /// A transaction failed after its decisions went into the view, or the view turned
    /// out stale (`stale`): forget it, it is read again (and the next batches lock).
    pub(super) fn distrust(&mut self, stale: bool) {
        self.stock.clear();
        if stale {
            self.stale += 1;
            self.stale_penalty = (self.stale_penalty * 2).clamp(4, 1024);
            self.locked_batches = self.stale_penalty;
        }
    }

    /// How many messages were kept as dead letters, and how many copies of settled
    /// orders were skipped.
    pub fn poison_counts(&self) -> (u64, u64) {
        (self.dead_letters, self.skipped_copies)
    }

    /// A batch committed as `plan` says, from the view alone or under locks: the stock
    /// it leaves is the view now. Its outcomes.
    pub(super) fn committed(&mut self, plan: Plan) -> Vec<Outcome> {
        self.dead_letters += plan.dead.len() as u64;
        self.skipped_copies += plan.skipped.len() as u64;
        self.keep_view(plan.verified, plan.stock);
        plan.outcomes
    }

    /// The stock a batch committed with left (decided from the view alone, `verified`,
    /// or under locks): the view now.
    fn keep_view(&mut self, verified: bool, stock: HashMap<u32, Commodity>) {
        self.unrecorded = None;
        if verified {
            self.verified += 1;
            self.stale_penalty = 0;
        } else {
            self.locked_batches = self.locked_batches.saturating_sub(1);
        }
        self.stock.extend(stock);
    }

    /// Decide `todo` in order against the view of the stock `ids` (not changing the
    /// view): the decisions, and the stock of `ids` they leave.
    pub(super) fn guess(
        &self,
        todo: &[&ReadyOrder],
        ids: &BTreeSet<u32>,
    ) -> (Vec<Decision>, HashMap<u32, Commodity>) {
        let mut view: HashMap<u32, Commodity> = ids
            .iter()
            .filter_map(|id| self.stock.get(id).map(|c| (*id, *c)))
            .collect();
        let decisions = todo.iter().map(|s| decision(s, &mut view).0).collect();
        (decisions, view)
    }

    /// Write the last batch's commit record now: the settlement thread calls this when
    /// no batch has followed for a while, and before it stops.
    pub async fn flush(&mut self, pool: &Pool) -> Result<()> {
        if let Some(c) = self.unrecorded {
            let mut conn = pool.get_conn().await?;
            conn.query_drop(c.statement())
                .await
                .context("recording a batch's commit time")?;
            self.unrecorded = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stocked(ids: &[u32]) -> SettleState {
        let mut s = SettleState::default();
        for &id in ids {
            s.stock.insert(
                id,
                Commodity {
                    price: 1.into(),
                    currency: "RMB".parse().unwrap(),
                    inventory: 10,
                },
            );
        }
        s
    }

    #[test]
    fn a_stale_view_locks_the_next_batches_for_longer_each_time() {
        let ids: BTreeSet<u32> = [1, 2].into();
        let mut s = stocked(&[1, 2]);
        assert!(s.trusts(&ids));
        assert!(!s.trusts(&[1, 3].into()), "3 is not in the view");
        assert_eq!(s.unseen(&[1, 3].into()), vec![3]);
        s.distrust(true);
        assert_eq!((s.stale_views(), s.stock.len()), (1, 0));
        // Read again and locked: four batches under locks, then trusted.
        for _ in 0..4 {
            s.stock = stocked(&[1, 2]).stock;
            assert!(!s.trusts(&ids));
            s.keep_view(false, HashMap::new());
        }
        assert!(s.trusts(&ids));
        // A second miss without a verified batch between: eight.
        s.distrust(true);
        s.stock = stocked(&[1, 2]).stock;
        for _ in 0..8 {
            assert!(!s.trusts(&ids));
            s.keep_view(false, HashMap::new());
        }
        assert!(s.trusts(&ids));
        // A batch settled from the view resets the penalty: the next miss costs four.
        s.keep_view(true, HashMap::new());
        assert_eq!(s.verified_batches(), 1);
        s.distrust(true);
        s.stock = stocked(&[1, 2]).stock;
        for _ in 0..4 {
            s.keep_view(false, HashMap::new());
        }
        assert!(s.trusts(&ids));
    }

    #[test]
    fn a_failed_transaction_forgets_the_view_without_locking_longer() {
        let mut s = stocked(&[1]);
        s.distrust(false);
        assert_eq!((s.stale_views(), s.stock.len()), (0, 0));
        s.stock = stocked(&[1]).stock;
        assert!(s.trusts(&[1].into()));
    }
}
