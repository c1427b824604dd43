//! The settle operator: every epoch that both the orders and the rates have passed goes,
//! in offset order and joined with its rate table, to the worker's settlement thread
//! (`settlement_thread.rs`) as one hand-over (a `sinks::HandOver`). The timely worker never waits
//! for MySQL: it keeps reading and closing epochs (other workers' frontiers depend on
//! it). Outcomes leave at their hand-overs' least epoch once committed; until then the
//! hand-overs' capabilities hold the totals back.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Result;
use model::{Config, RateTable};
use sinks::{HandOver, Outcome, ReadyOrder};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::fail::die;
use crate::kafka::Read;
use crate::settlement_thread::{SettlementThread, IN_FLIGHT};
use crate::stats::Stats;

/// Settle every closed epoch (see the module doc), at most IN_FLIGHT hand-overs out.
pub(crate) fn settle<'s>(
    orders: StreamVec<'s, u64, Read>,
    rates: StreamVec<'s, u64, RateTable>,
    cfg: &Config,
    partition: i32,
    stats: Rc<RefCell<Stats>>,
) -> Result<StreamVec<'s, u64, Outcome>> {
    let topic = cfg.kafka.topic.clone();
    let interval = cfg.cluster.settle_interval;
    let epoch_ms = cfg.cluster.epoch_ms;
    let memory = RATE_MEMORY_MS / epoch_ms;
    // Two: a transaction commits while the next one starts (`sinks::TransactionPipeline`).
    let pool = sinks::connect(&cfg.mysql.urls, 2)?;
    let scope = orders.scope();
    Ok(orders
        .binary_frontier(rates, Pipeline, Pipeline, "Settle", move |_cap, info| {
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            let settler = SettlementThread::spawn(pool, topic, partition, interval, wake)
                .unwrap_or_else(|e| die("starting the settlement thread", e));
            // The least epoch of each hand-over in MySQL, oldest first: they hold the
            // outcomes' frontier.
            let mut out: VecDeque<Capability<u64>> = VecDeque::new();
            let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Read>)> = BTreeMap::new();
            let mut tables: BTreeMap<u64, Arc<RateTable>> = BTreeMap::new();
            move |(in_orders, f_orders), (in_rates, f_rates), output| {
                in_orders.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    let t = *cap.time();
                    pending
                        .entry(t)
                        .or_insert_with(|| (cap, Vec::new()))
                        .1
                        .append(data);
                });
                in_rates.for_each(|cap, data| {
                    if let Some(&t) = cap.least() {
                        for table in data.drain(..) {
                            tables.insert(t, Arc::new(table));
                        }
                    }
                });
                // Hand-overs are settled in order, several at once: their outcomes leave
                // at the least epoch of them.
                while let Some(done) = settler.done() {
                    stats.borrow_mut().add(&done);
                    let cap = out
                        .front()
                        .expect("a hand-over in flight for each one done");
                    output.session(cap).give_iterator(done.outcomes.into_iter());
                    out.drain(..done.handovers);
                }
                if out.len() >= IN_FLIGHT {
                    return;
                }
                let closed = |e: &u64| {
                    !f_orders.frontier().less_equal(e) && !f_rates.frontier().less_equal(e)
                };
                if tables.is_empty() {
                    // Only when the rate source stopped before delivering any rate
                    // (shutdown): settle nothing, and let the dataflow end; these
                    // orders are read again next start.
                    if f_rates.frontier().is_empty() && !pending.is_empty() {
                        tracing::warn!(partition, "no rates came; leaving what was read unsettled");
                        pending.clear();
                    }
                    return;
                }
                let Some((least, epochs)) = take_closed(&mut pending, closed) else {
                    return;
                };
                out.push_back(least);
                // Every epoch before the orders' frontier is closed; with none (the
                // source stopped), every epoch handed over.
                let last = epochs.last().map_or(0, |(e, _)| e + 1);
                let mut h = handover(epochs, &tables, epoch_ms);
                h.next_epoch = f_orders.frontier().first().copied().unwrap_or(last);
                settler.send(h);
                if let Some(&open) = f_orders.frontier().first() {
                    keep_from(&mut tables, open.saturating_sub(memory));
                }
            }
        })
        .container::<Vec<Outcome>>())
}

/// An epoch and its messages, in offset order.
type Epoch = (u64, Vec<Read>);

/// The closed epochs of `pending` (the first ones, while `closed`), taken out with the
/// capability of the least; None when none is closed.
fn take_closed(
    pending: &mut BTreeMap<u64, (Capability<u64>, Vec<Read>)>,
    closed: impl Fn(&u64) -> bool,
) -> Option<(Capability<u64>, Vec<Epoch>)> {
    let ready: Vec<u64> = pending.keys().copied().take_while(|e| closed(e)).collect();
    let mut least = None;
    let mut epochs = Vec::with_capacity(ready.len());
    for e in ready {
        let (cap, reads) = pending.remove(&e).expect("key from map");
        // Epochs are in order: the first capability is the least.
        least.get_or_insert(cap);
        epochs.push((e, reads));
    }
    least.map(|cap| (cap, epochs))
}

/// How long rate tables are kept after the next one took over: an order read this late
/// still takes the table in force at its own epoch (past it, the oldest kept).
pub(crate) const RATE_MEMORY_MS: u64 = 24 * 3_600_000;

/// Keep only the newest rate table at or below epoch `floor`, and those after.
fn keep_from(tables: &mut BTreeMap<u64, Arc<RateTable>>, floor: u64) {
    if let Some(keep) = tables.range(..=floor).next_back().map(|(k, _)| *k) {
        tables.retain(|k, _| *k >= keep);
    }
}

/// Closed epochs (in order, each with its messages in offset order) joined with their
/// rates, as one batch. Each order takes the newest table at or before its own epoch
/// (`accepted_at / epoch_ms`, in the log), whichever epoch it is settled in (a late
/// order, read after its epoch closed, is settled in a later one): its outcome depends on
/// the log and the recorded rates alone, not on when it was read. Epochs before the first
/// table held belong to that table's epoch. A message that cannot be settled goes in as
/// a dead letter, at its epoch.
pub(crate) fn handover(
    epochs: Vec<(u64, Vec<Read>)>,
    tables: &BTreeMap<u64, Arc<RateTable>>,
    epoch_ms: u64,
) -> HandOver {
    let first_epoch = *tables.keys().next().expect("a rate table is in");
    let table_for = |e: u64| {
        tables
            .range(..=e)
            .next_back()
            .or_else(|| tables.iter().next())
            .map(|(_, t)| t.clone())
            .expect("a rate table is in")
    };
    let mut batch = HandOver::default();
    for (e, reads) in epochs {
        let epoch = e.max(first_epoch);
        for (offset, read) in reads {
            batch.next_offset = offset + 1;
            match read {
                Ok(order) => batch.orders.push(ReadyOrder {
                    offset,
                    epoch,
                    rates: table_for(order.accepted_at.max(0) as u64 / epoch_ms.max(1)),
                    order,
                }),
                Err(mut dead) => {
                    dead.epoch = epoch;
                    batch.dead.push(dead);
                }
            }
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use model::{Currency, Item, Order, OrderRequest, Uuid};
    use sinks::DeadLetter;

    use super::*;

    /// An order accepted in epoch `at` (epochs of 1 ms in these tests).
    fn order_at(at: i64) -> Order {
        OrderRequest {
            user_id: "u".into(),
            initiator: Currency::from_str("RMB").unwrap(),
            items: vec![Item { id: 1, number: 1 }],
            time: None,
        }
        .accept(Uuid::now_v7(), at)
    }

    fn order() -> Order {
        order_at(0)
    }

    fn tables(at: &[u64]) -> BTreeMap<u64, Arc<RateTable>> {
        at.iter()
            .enumerate()
            .map(|(v, e)| {
                (
                    *e,
                    Arc::new(RateTable {
                        version: v as u64 + 1,
                        rates: vec![],
                    }),
                )
            })
            .collect()
    }

    #[test]
    fn each_order_takes_the_newest_rates_at_or_before_its_own_epoch() {
        let epochs = vec![
            (10, vec![(0, Ok(order_at(10)))]),
            (20, vec![(1, Ok(order_at(20)))]),
            (35, vec![(2, Ok(order_at(35)))]),
        ];
        let b = handover(epochs, &tables(&[5, 20, 30]), 1);
        let versions: Vec<u64> = b.orders.iter().map(|s| s.rates.version).collect();
        assert_eq!(versions, [1, 2, 3]);
        assert_eq!(
            b.orders.iter().map(|s| s.epoch).collect::<Vec<_>>(),
            [10, 20, 35]
        );
        assert_eq!(b.next_offset, 3);
    }

    #[test]
    fn a_late_order_settles_in_a_later_epoch_at_the_rates_of_its_own() {
        // Accepted in epoch 12 (version 1), read once epoch 35 was open (version 3).
        let b = handover(
            vec![(35, vec![(4, Ok(order_at(12)))])],
            &tables(&[5, 20, 30]),
            1,
        );
        assert_eq!((b.orders[0].epoch, b.orders[0].rates.version), (35, 1));
    }

    #[test]
    fn orders_from_before_the_first_rates_move_to_their_epoch() {
        let b = handover(vec![(3, vec![(7, Ok(order_at(3)))])], &tables(&[50]), 1);
        assert_eq!((b.orders[0].epoch, b.orders[0].rates.version), (50, 1));
    }

    #[test]
    fn only_the_newest_table_at_or_below_the_floor_is_kept() {
        let mut t = tables(&[5, 20, 30, 40]);
        keep_from(&mut t, 35);
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), [30, 40]);
        keep_from(&mut t, 10);
        assert_eq!(
            t.keys().copied().collect::<Vec<_>>(),
            [30, 40],
            "nothing at or below 10"
        );
    }

    #[test]
    fn messages_that_cannot_be_settled_go_in_as_dead_letters_at_their_epoch() {
        let dead = |offset| {
            Err(DeadLetter::new(
                offset,
                0,
                None,
                "undecodable",
                "x",
                b"\x07",
            ))
        };
        let epochs = vec![
            (10, vec![(4, Ok(order())), (5, dead(5))]),
            (11, vec![(6, dead(6))]),
        ];
        let b = handover(epochs, &tables(&[0]), 1);
        assert_eq!(b.orders.iter().map(|s| s.offset).collect::<Vec<_>>(), [4]);
        let dead: Vec<_> = b.dead.iter().map(|d| (d.offset, d.epoch)).collect();
        assert_eq!(dead, [(5, 10), (6, 11)]);
        assert_eq!(b.next_offset, 7);
    }
}
