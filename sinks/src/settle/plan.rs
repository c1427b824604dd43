//! The pure step between round trips 2 and 3: decide a batch's orders against the stock
//! its transaction holds, and say what round trip 3 must write. No I/O.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use model::{decide, Commodity, Currency, Decimal, Decision};

use super::{Outcome, Settling};

/// A transaction whose results are written and whose rows are held, as round trip 2
/// leaves it: left to do are the decisions and the commit.
#[derive(Debug)]
pub(super) struct Open {
    /// The index in the batch of the first order not committed before.
    pub todo_from: usize,
    /// The decisions of `batch[todo_from..]` as the results were written.
    pub guessed: Vec<Decision>,
    pub settled_at: i64,
    /// The batch's commodities as locked, or as the view has them (`left`).
    pub stock: HashMap<u32, Commodity>,
    /// Some when the commodities were not locked and read: the batch is decided against
    /// the view, as `guessed` already did, leaving the stock this holds. The stock
    /// UPDATE then checks every one of the batch's commodities (changed or not) against
    /// the view, locking it as it does, and the commit happens only if all of them
    /// matched.
    pub left: Option<HashMap<u32, Commodity>>,
}

/// What round trip 3 writes for a batch.
#[derive(Debug, PartialEq)]
pub(super) struct Plan {
    pub outcomes: Vec<Outcome>,
    /// Results whose decision differs from the one written in round trip 1.
    pub corrections: Vec<(model::Uuid, Decision)>,
    /// (commodity id, inventory before, after), by id: the commodities that change, or
    /// every one of the batch's when they were not locked (`verified`).
    pub stock_changes: Vec<(u32, u32, u32)>,
    /// Per initiator currency, the successful orders' paid sum and count.
    pub totals_delta: BTreeMap<Currency, (Decimal, u64)>,
    /// The batch's commodities as it leaves them.
    pub stock: HashMap<u32, Commodity>,
    /// Decided against the view, which the stock UPDATE checks.
    pub verified: bool,
}

/// Decide `todo` (the batch from `open.todo_from` on) against `open`'s stock.
pub(super) fn plan(todo: &[Settling], open: Open) -> Result<Plan> {
    let Open {
        guessed,
        settled_at,
        mut stock,
        left,
        ..
    } = open;
    let before: HashMap<u32, u32> = stock.iter().map(|(id, c)| (*id, c.inventory)).collect();
    let verified = left.is_some();
    let mut outcomes = Vec::with_capacity(todo.len());
    let mut corrections = Vec::new();
    for (s, g) in todo.iter().zip(&guessed) {
        // Verified: the guesses were made against this very stock.
        let d = if verified {
            *g
        } else {
            decide(&s.order, &mut stock, &s.rates)
                .with_context(|| format!("order {} at offset {}", s.order.order_id, s.offset))?
        };
        if d != *g {
            corrections.push((s.order.order_id, d));
        }
        outcomes.push(Outcome {
            order_id: s.order.order_id,
            initiator: s.order.initiator,
            epoch: s.epoch,
            reason: d.reason,
            paid: d.paid,
            accepted_at: s.order.accepted_at,
            settled_at,
        });
    }
    if let Some(left) = left {
        stock = left;
    }
    let mut stock_changes: Vec<(u32, u32, u32)> = stock
        .iter()
        .filter(|(id, c)| verified || before[id] != c.inventory)
        .map(|(id, c)| (*id, before[id], c.inventory))
        .collect();
    stock_changes.sort_unstable();
    let totals_delta = totals_delta(&outcomes)?;
    Ok(Plan {
        outcomes,
        corrections,
        stock_changes,
        totals_delta,
        stock,
        verified,
    })
}

/// Per initiator currency, the paid sum and count of the successful `outcomes`.
fn totals_delta(outcomes: &[Outcome]) -> Result<BTreeMap<Currency, (Decimal, u64)>> {
    let mut delta: BTreeMap<Currency, (Decimal, u64)> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.reason.is_none()) {
        let e = delta.entry(o.initiator).or_default();
        e.0 =
            e.0.checked_add(o.paid)
                .with_context(|| format!("the totals delta of {} overflows", o.initiator))?;
        e.1 += 1;
    }
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;

    use model::{Item, OrderRequest, RateTable, Reason, Uuid};

    use super::*;

    fn cur(c: &str) -> Currency {
        Currency::from_str(c).unwrap()
    }

    fn rates() -> Arc<RateTable> {
        Arc::new(RateTable {
            version: 1,
            rates: vec![
                (cur("RMB"), 1.into()),
                (cur("USD"), Decimal::from_str("7").unwrap()),
            ],
        })
    }

    fn settling(offset: i64, initiator: &str, items: &[(u32, u32)]) -> Settling {
        let order = OrderRequest {
            user_id: "u".into(),
            initiator: cur(initiator),
            items: items
                .iter()
                .map(|&(id, number)| Item { id, number })
                .collect(),
            time: None,
        }
        .accept(Uuid::now_v7(), 1_000);
        Settling {
            offset,
            epoch: 7,
            order,
            rates: rates(),
        }
    }

    /// Item 1: 5 units at 2 RMB; item 2: 1 unit at 1 USD.
    fn stock(one: u32, two: u32) -> HashMap<u32, Commodity> {
        let c = |price: i64, currency: &str, inventory| Commodity {
            price: price.into(),
            currency: cur(currency),
            inventory,
        };
        [(1, c(2, "RMB", one)), (2, c(1, "USD", two))].into()
    }

    fn ok(paid: i64) -> Decision {
        Decision {
            reason: None,
            paid: paid.into(),
        }
    }

    const SHORT: Decision = Decision {
        reason: Some(Reason::InsufficientInventory),
        paid: Decimal::ZERO,
    };

    #[test]
    fn locked_stock_corrects_the_guesses_it_disagrees_with() {
        let todo = [
            settling(0, "RMB", &[(1, 3)]),
            settling(1, "RMB", &[(1, 3)]),
            settling(2, "RMB", &[(2, 1)]),
        ];
        // Guessed from a view in which item 1 had 3 units and item 2 none; the locked
        // stock has 5 and 1.
        let open = Open {
            todo_from: 0,
            guessed: vec![ok(6), SHORT, SHORT],
            settled_at: 9,
            stock: stock(5, 1),
            left: None,
        };
        let p = plan(&todo, open).unwrap();
        let reasons: Vec<_> = p.outcomes.iter().map(|o| o.reason).collect();
        assert_eq!(reasons, [None, Some(Reason::InsufficientInventory), None]);
        assert_eq!(p.corrections, vec![(todo[2].order.order_id, ok(7))]);
        assert_eq!(p.stock_changes, vec![(1, 5, 2), (2, 1, 0)]);
        assert_eq!(
            p.totals_delta,
            [(cur("RMB"), (Decimal::from(13), 2))].into()
        );
        assert_eq!((p.stock[&1].inventory, p.stock[&2].inventory), (2, 0));
        assert!(!p.verified);
        assert!(p.outcomes.iter().all(|o| o.settled_at == 9 && o.epoch == 7));
    }

    #[test]
    fn a_batch_from_the_view_keeps_its_guesses_and_checks_every_commodity() {
        let todo = [settling(0, "USD", &[(1, 7)]), settling(1, "USD", &[(2, 1)])];
        // Item 1 is refused and unchanged, item 2 taken: both are checked.
        let open = Open {
            todo_from: 0,
            guessed: vec![SHORT, ok(1)],
            settled_at: 9,
            stock: stock(5, 1),
            left: Some(stock(5, 0)),
        };
        let p = plan(&todo, open).unwrap();
        assert!(p.verified);
        assert!(p.corrections.is_empty());
        assert_eq!(p.stock_changes, vec![(1, 5, 5), (2, 1, 0)]);
        assert_eq!(p.totals_delta, [(cur("USD"), (Decimal::from(1), 1))].into());
    }

    #[test]
    fn nothing_changes_when_every_order_is_refused() {
        let todo = [settling(0, "RMB", &[(9, 1)])];
        let unknown = Decision {
            reason: Some(Reason::UnknownItem),
            paid: Decimal::ZERO,
        };
        let open = Open {
            todo_from: 0,
            guessed: vec![unknown],
            settled_at: 1,
            stock: stock(5, 1),
            left: None,
        };
        let p = plan(&todo, open).unwrap();
        assert!(p.stock_changes.is_empty() && p.totals_delta.is_empty());
        assert!(p.corrections.is_empty());
    }

    #[test]
    fn an_order_without_a_rate_is_an_error_naming_it() {
        let todo = [settling(4, "EUR", &[(1, 1)])];
        let open = Open {
            todo_from: 0,
            guessed: vec![ok(2)],
            settled_at: 1,
            stock: stock(5, 1),
            left: None,
        };
        let e = format!("{:#}", plan(&todo, open).unwrap_err());
        assert!(e.contains("at offset 4"), "{e}");
    }
}
