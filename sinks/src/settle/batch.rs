//! A partition's batch: the orders one transaction settles (docs/DESIGN.md, "Glossary").

use std::collections::hash_map::{Entry, HashMap};

use super::{DeadLetter, ReadyOrder, Skipped};

/// A hand-over (DESIGN, "Glossary"): the orders of a partition's closed epochs that the
/// settle operator gives the settlement thread at once. It has a batch's shape; the
/// settlement thread makes its batches of one or more hand-overs.
pub type HandOver = Batch;

/// A partition's batch: its orders, in offset order; the messages that cannot be
/// settled; the copies of orders seen before; the offset after its last message; and the
/// least epoch the partition had not closed when it was handed over (stored with the
/// offset: no later order goes to an epoch before it).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub orders: Vec<ReadyOrder>,
    pub dead: Vec<DeadLetter>,
    pub skipped: Vec<Skipped>,
    pub next_offset: i64,
    pub next_epoch: u64,
}

impl Batch {
    /// The batch with every later copy of an order id that comes twice moved to
    /// `skipped` (or to `dead`, if it is another order under the same idempotency key):
    /// an order settles once.
    pub fn deduped(mut self) -> Batch {
        let mut first = HashMap::with_capacity(self.orders.len());
        let mut keep = Vec::with_capacity(self.orders.len());
        for s in std::mem::take(&mut self.orders) {
            match first.entry(s.order.order_id) {
                Entry::Vacant(v) => {
                    v.insert(s.order.digest());
                    keep.push(s);
                }
                Entry::Occupied(o) => match s.copy_of(*o.get()) {
                    Ok(skip) => self.skipped.push(skip),
                    Err(dead) => self.dead.push(dead),
                },
            }
        }
        self.orders = keep;
        self
    }
}
