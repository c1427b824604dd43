//! The decider's state machine: every order's decision against stock held in memory, in
//! the order of its place (epoch, partition, offset), and nothing else. The stock half of
//! the settlement rule (`rule::refusal`) is the only rule it applies; prices, rates and
//! `paid` stay with the partitions. Deterministic: the same claims in the same places
//! from the same stock give the same decisions and the same stock, whoever runs it.

use std::collections::HashMap;

use crate::{Item, Reason};

/// Where an order stands in the one order every decision is taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub epoch: u64,
    pub partition: i32,
    pub offset: i64,
}

/// What deciding an order needs: its place, its lines (one per id) and whether its
/// amount could be computed (`payable`; an order that is not and that the stock does not
/// refuse is an error, its message a dead letter, and takes nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub place: Place,
    pub demand: Vec<Item>,
    pub payable: bool,
}

/// How a claim was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Taken from stock.
    Taken,
    Refused(Reason),
    /// Not refused by stock, but not payable: a dead letter.
    Unpayable,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("claim at {next:?} is not after the last decided, {last:?}")]
    OutOfOrder { last: Place, next: Place },
}

/// Stock in memory and the place of the last decision.
#[derive(Clone, Debug, Default)]
pub struct Decider {
    stock: HashMap<u32, u32>,
    last: Option<Place>,
}

impl Decider {
    /// From the stock as recorded after every order before `after` was decided.
    pub fn new(stock: impl IntoIterator<Item = (u32, u32)>, after: Option<Place>) -> Decider {
        Decider {
            stock: stock.into_iter().collect(),
            last: after,
        }
    }

    /// Decide `claims`, sorted by place first; every place must be after the last one
    /// decided (a claim decided twice would take its stock twice).
    pub fn decide(&mut self, claims: &mut [Claim]) -> Result<Vec<Verdict>, DecideError> {
        claims.sort_unstable_by_key(|c| c.place);
        if let (Some(last), Some(first)) = (self.last, claims.first()) {
            if first.place <= last {
                return Err(DecideError::OutOfOrder {
                    last,
                    next: first.place,
                });
            }
        }
        let verdicts = claims.iter().map(|c| self.one(c)).collect();
        self.last = claims.last().map(|c| c.place).or(self.last);
        Ok(verdicts)
    }

    fn one(&mut self, c: &Claim) -> Verdict {
        if let Some(reason) = crate::rule::refusal(&c.demand, |id| self.stock.get(&id).copied()) {
            return Verdict::Refused(reason);
        }
        if !c.payable {
            return Verdict::Unpayable;
        }
        for it in &c.demand {
            let n = self.stock.get_mut(&it.id).expect("refusal checked the id");
            *n = n.checked_sub(it.number).expect("refusal checked the level");
        }
        Verdict::Taken
    }

    /// A commodity's inventory now.
    pub fn inventory(&self, id: u32) -> Option<u32> {
        self.stock.get(&id).copied()
    }

    /// The place of the last decision.
    pub fn last(&self) -> Option<Place> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(epoch: u64, partition: i32, offset: i64, lines: &[(u32, u32)]) -> Claim {
        Claim {
            place: Place {
                epoch,
                partition,
                offset,
            },
            demand: lines
                .iter()
                .map(|&(id, number)| Item { id, number })
                .collect(),
            payable: true,
        }
    }

    #[test]
    fn claims_are_decided_in_place_order_whatever_order_they_come_in() {
        let mut d = Decider::new([(1, 5)], None);
        // Partition 1's order of epoch 3 comes first here, but partition 0's of epoch 3
        // and anything of epoch 2 go before it.
        let mut claims = vec![
            claim(3, 1, 0, &[(1, 3)]),
            claim(3, 0, 9, &[(1, 3)]),
            claim(2, 1, 7, &[(1, 2)]),
        ];
        let v = d.decide(&mut claims).unwrap();
        assert_eq!(claims[0].place.epoch, 2);
        assert_eq!(
            v,
            [
                Verdict::Taken,
                Verdict::Taken,
                Verdict::Refused(Reason::InsufficientInventory)
            ]
        );
        assert_eq!(d.inventory(1), Some(0));
    }

    #[test]
    fn a_place_already_decided_is_refused_and_changes_nothing() {
        let mut d = Decider::new([(1, 5)], None);
        d.decide(&mut [claim(4, 0, 10, &[(1, 1)])]).unwrap();
        let again = d.decide(&mut [claim(4, 0, 10, &[(1, 1)])]);
        assert!(matches!(again, Err(DecideError::OutOfOrder { .. })));
        assert_eq!(d.inventory(1), Some(4));
    }

    #[test]
    fn unknown_before_short_and_unpayable_takes_nothing() {
        let mut d = Decider::new([(1, 5), (2, 1)], None);
        let mut claims = vec![
            claim(1, 0, 0, &[(2, 2), (9, 1)]),
            claim(1, 0, 1, &[(2, 2)]),
            Claim {
                payable: false,
                ..claim(1, 0, 2, &[(1, 5)])
            },
            claim(1, 0, 3, &[(1, 5), (2, 1)]),
        ];
        let v = d.decide(&mut claims).unwrap();
        assert_eq!(
            v,
            [
                Verdict::Refused(Reason::UnknownItem),
                Verdict::Refused(Reason::InsufficientInventory),
                Verdict::Unpayable,
                Verdict::Taken
            ]
        );
        assert_eq!((d.inventory(1), d.inventory(2)), (Some(0), Some(0)));
    }

    #[test]
    fn the_same_claims_from_the_same_stock_give_the_same_decisions() {
        // A small pseudo-random contended load, decided in one go and in epoch-sized
        // pieces arriving shuffled: identical verdicts and stock.
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let claims: Vec<Claim> = (0..2_000)
            .map(|i| {
                claim(
                    i / 100,
                    (next() % 4) as i32,
                    i as i64,
                    &[(next() % 10, 1 + next() % 3)],
                )
            })
            .collect();
        let stock = (0..10).map(|id| (id, 300));
        let mut whole = Decider::new(stock.clone(), None);
        let expected = whole.decide(&mut claims.clone()).unwrap();
        let mut pieces = Decider::new(stock, None);
        let mut got = vec![];
        for epoch in claims.chunks(100) {
            let mut piece: Vec<Claim> = epoch.iter().rev().cloned().collect();
            got.extend(pieces.decide(&mut piece).unwrap());
        }
        assert_eq!(got, expected);
        assert!(expected.contains(&Verdict::Refused(Reason::InsufficientInventory)));
        assert!((0..10).all(|id| whole.inventory(id) == pieces.inventory(id)));
    }
}
