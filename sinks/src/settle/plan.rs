//! The pure step between round trips 2 and 3: decide a batch's orders against the stock
//! its transaction holds, and say what round trip 3 must write. No I/O.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use model::idempotency::Digest;
use model::{decide, Commodity, Currency, Decimal, Decision, Reason, SettleError, Uuid};

use super::{DeadLetter, Line, Outcome, ReadyOrder, Skipped};

/// The decision for one order against `stock` (applied to it), and the error that made
/// it `invalid_order` when the rule could not settle it (no rate for a currency, an amount
/// the result table cannot hold): such an order changes no stock.
pub(super) fn decision(
    s: &ReadyOrder,
    stock: &mut HashMap<u32, Commodity>,
) -> (Decision, Option<SettleError>) {
    match decide(&s.order, stock, &s.rates) {
        Ok(d) => (d, None),
        Err(e) => {
            let d = Decision {
                reason: Some(Reason::InvalidOrder),
                paid: Decimal::ZERO,
            };
            (d, Some(e))
        }
    }
}

/// A transaction whose results are written and whose rows are held, as round trip 2
/// leaves it: left to do are the decisions and the commit.
#[derive(Debug)]
pub(super) struct Open {
    /// The index in the batch of the first order not committed before.
    pub todo_from: usize,
    /// Orders from there on whose id already had a result, with the digest it was
    /// settled with: skipped as copies (or kept as conflicts, `copies_in`).
    pub copies: HashMap<Uuid, Option<Digest>>,
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

impl Open {
    /// The orders it settles: the batch's from `todo_from` on, but for the copies.
    pub(super) fn todo<'b>(&self, batch: &'b [ReadyOrder]) -> Vec<&'b ReadyOrder> {
        batch[self.todo_from..]
            .iter()
            .filter(|s| !self.copies.contains_key(&s.order.order_id))
            .collect()
    }

    /// Every copy it skips: those of `in_batch` (ids twice in the batch) and those whose
    /// id already had a result; but a copy of another order under the same idempotency
    /// key is a dead letter (`ReadyOrder::copy_of`).
    pub(super) fn copies_in(
        &self,
        batch: &[ReadyOrder],
        in_batch: &[Skipped],
    ) -> (Vec<Skipped>, Vec<DeadLetter>) {
        let (mut skipped, mut conflicts) = (in_batch.to_vec(), vec![]);
        for s in &batch[self.todo_from..] {
            if let Some(settled) = self.copies.get(&s.order.order_id) {
                match s.copy_of(*settled) {
                    Ok(skip) => skipped.push(skip),
                    Err(dead) => conflicts.push(dead),
                }
            }
        }
        (skipped, conflicts)
    }
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
    /// The messages kept as dead letters: the batch's, and its orders the rule could not
    /// settle.
    pub dead: Vec<DeadLetter>,
    pub skipped: Vec<Skipped>,
}

/// Decide `todo` (`open.todo` of the batch) against `open`'s stock; `dead` and `skipped`
/// are the batch's other messages.
pub(super) fn plan(
    todo: &[&ReadyOrder],
    open: Open,
    dead: &[DeadLetter],
    skipped: Vec<Skipped>,
) -> Result<Plan> {
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
    let mut dead = dead.to_vec();
    for (s, g) in todo.iter().zip(&guessed) {
        // Verified: the guesses were made against this very stock.
        let (d, error) = if verified {
            let error = (g.reason == Some(Reason::InvalidOrder)).then(|| why_invalid(s, &stock));
            (*g, error.flatten())
        } else {
            decision(s, &mut stock)
        };
        if let Some(e) = error {
            let bytes = model::wire::encode(&s.order);
            let detail = format!("cannot be settled: {e}");
            dead.push(DeadLetter::new(
                s.offset,
                s.epoch,
                Some(s.order.order_id),
                "unsettleable",
                detail,
                &bytes,
            ));
        }
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
            lines: Vec::new(),
        });
    }
    if let Some(left) = left {
        stock = left;
    }
    for (o, s) in outcomes.iter_mut().zip(todo) {
        o.lines = s
            .order
            .items
            .iter()
            .map(|it| Line {
                commodity: it.id,
                units: it.number,
                left: stock.get(&it.id).map(|c| c.inventory),
            })
            .collect();
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
        dead,
        skipped,
    })
}

/// Why the rule cannot settle `s`: decided again against `stock`'s prices with all the
/// units it could ask for (what makes an order unsettleable does not depend on stock).
fn why_invalid(s: &ReadyOrder, stock: &HashMap<u32, Commodity>) -> Option<SettleError> {
    let mut plenty: HashMap<u32, Commodity> = s
        .order
        .items
        .iter()
        .filter_map(|it| {
            stock.get(&it.id).map(|c| {
                (
                    it.id,
                    Commodity {
                        inventory: u32::MAX,
                        ..*c
                    },
                )
            })
        })
        .collect();
    decide(&s.order, &mut plenty, &s.rates).err()
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

    fn settling(offset: i64, initiator: &str, items: &[(u32, u32)]) -> ReadyOrder {
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
        ReadyOrder {
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
        let open = open_at(9, vec![ok(6), SHORT, SHORT], None);
        let p = plan(&refs(&todo), open, &[], vec![]).unwrap();
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
        let open = open_at(9, vec![SHORT, ok(1)], Some(stock(5, 0)));
        let p = plan(&refs(&todo), open, &[], vec![]).unwrap();
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
        let open = open_at(1, vec![unknown], None);
        let p = plan(&refs(&todo), open, &[], vec![]).unwrap();
        assert!(p.stock_changes.is_empty() && p.totals_delta.is_empty());
        assert!(p.corrections.is_empty());
    }

    #[test]
    fn an_order_the_rule_cannot_settle_is_refused_and_kept_as_a_dead_letter() {
        // No rate for EUR: the guess said paid, the plan says invalid_order and keeps
        // the message; the stock is untouched.
        let todo = [settling(4, "EUR", &[(1, 1)]), settling(5, "RMB", &[(1, 1)])];
        let open = open_at(1, vec![ok(2), ok(2)], None);
        let copy = Skipped {
            offset: 6,
            order_id: todo[1].order.order_id,
        };
        let p = plan(&refs(&todo), open, &[], vec![copy]).unwrap();
        assert_eq!(p.outcomes[0].reason, Some(Reason::InvalidOrder));
        assert_eq!(p.corrections.len(), 1);
        assert_eq!(p.corrections[0].0, todo[0].order.order_id);
        assert_eq!(p.stock_changes, vec![(1, 5, 4)]);
        assert_eq!(p.dead.len(), 1);
        let d = &p.dead[0];
        assert_eq!((d.offset, d.reason), (4, "unsettleable"));
        assert_eq!(d.order_id, Some(todo[0].order.order_id));
        assert!(d.detail.contains("EUR"), "{}", d.detail);
        assert_eq!(model::wire::decode(&d.bytes).unwrap(), todo[0].order);
        assert_eq!(p.skipped, vec![copy]);
    }

    #[test]
    fn a_verified_batch_says_why_an_order_was_invalid() {
        let todo = [settling(4, "EUR", &[(1, 1)])];
        let invalid = Decision {
            reason: Some(Reason::InvalidOrder),
            paid: Decimal::ZERO,
        };
        let open = open_at(1, vec![invalid], Some(stock(5, 1)));
        let p = plan(&refs(&todo), open, &[], vec![]).unwrap();
        assert!(p.corrections.is_empty());
        assert_eq!(p.dead.len(), 1);
        assert!(p.dead[0].detail.contains("EUR"), "{}", p.dead[0].detail);
    }

    #[test]
    fn open_skips_the_copies_it_found() {
        let batch = [
            settling(0, "RMB", &[(1, 1)]),
            settling(1, "RMB", &[(1, 1)]),
            settling(2, "RMB", &[(1, 1)]),
        ];
        let mut batch = batch.to_vec();
        // Two retries under one idempotency key: one of the order settled, one of another.
        for (offset, number) in [(3, 1), (4, 2)] {
            let mut s = settling(offset, "RMB", &[(1, number)]);
            s.order = keyed(s.order, "key-1");
            batch.push(s);
        }
        let settled = batch[3].order.digest();
        let open = Open {
            todo_from: 1,
            copies: [
                (batch[2].order.order_id, None),
                (batch[3].order.order_id, settled),
            ]
            .into(),
            guessed: vec![],
            settled_at: 1,
            stock: HashMap::new(),
            left: None,
        };
        let todo = open.todo(&batch);
        assert_eq!(todo.len(), 1);
        assert_eq!(todo[0].offset, 1);
        let (copies, conflicts) = open.copies_in(&batch, &[]);
        let skipped = |s: &ReadyOrder| Skipped {
            offset: s.offset,
            order_id: s.order.order_id,
        };
        assert_eq!(copies, vec![skipped(&batch[2]), skipped(&batch[3])]);
        assert_eq!(conflicts.len(), 1);
        let d = &conflicts[0];
        assert_eq!((d.offset, d.reason), (4, "idempotency_conflict"));
        assert_eq!(d.order_id, Some(batch[4].order.order_id));
        assert!(d.detail.contains("\"key-1\""), "{}", d.detail);
    }

    /// `order` as if sent with `key`.
    fn keyed(order: model::Order, key: &str) -> model::Order {
        model::OrderRequest {
            user_id: order.user_id,
            initiator: order.initiator,
            items: order.items,
            time: order.time,
        }
        .accept_keyed(key, model::IdScheme::UserTagged, order.accepted_at)
    }

    /// A batch open from its first order, none of them copies, over `stock(5, 1)`.
    fn open_at(
        settled_at: i64,
        guessed: Vec<Decision>,
        left: Option<HashMap<u32, Commodity>>,
    ) -> Open {
        Open {
            todo_from: 0,
            copies: HashMap::new(),
            guessed,
            settled_at,
            stock: stock(5, 1),
            left,
        }
    }

    fn refs(batch: &[ReadyOrder]) -> Vec<&ReadyOrder> {
        batch.iter().collect()
    }
}
