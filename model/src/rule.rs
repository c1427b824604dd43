//! The settlement rule (docs/DESIGN.md, "Settlement"), pure and in memory: the sink applies it inside
//! the database transaction, the checker recomputes it afterwards.

use std::collections::HashMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::{Currency, Order};

/// Exchange rates at one version: `rate(c)` is the value of one unit of `c` in the
/// common unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateTable {
    pub version: u64,
    pub rates: Vec<(Currency, Decimal)>,
}

impl RateTable {
    pub fn get(&self, c: Currency) -> Option<Decimal> {
        self.rates.iter().find(|(k, _)| *k == c).map(|(_, r)| *r)
    }
}

/// A catalogue row as the settlement needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commodity {
    pub price: Decimal,
    pub currency: Currency,
    pub inventory: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    UnknownItem,
    InsufficientInventory,
    /// The order could not be settled at all: it failed validation when read from Kafka,
    /// or its amount cannot be computed or stored. Its message is kept as a dead letter.
    InvalidOrder,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownItem => "unknown_item",
            Reason::InsufficientInventory => "insufficient_inventory",
            Reason::InvalidOrder => "invalid_order",
        }
    }
}

impl std::str::FromStr for Reason {
    type Err = String;

    /// The form `as_str` gives, as the result table keeps it.
    fn from_str(s: &str) -> Result<Reason, String> {
        [
            Reason::UnknownItem,
            Reason::InsufficientInventory,
            Reason::InvalidOrder,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| format!("unknown reason {s:?}"))
    }
}

/// The outcome of one order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reason: Option<Reason>,
    pub paid: Decimal,
}

impl Decision {
    pub fn success(&self) -> bool {
        self.reason.is_none()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettleError {
    #[error("no rate for currency {0}")]
    MissingRate(Currency),
    #[error("rate for {0} is not positive")]
    NonPositiveRate(Currency),
    #[error("amount overflows exact decimal arithmetic")]
    Overflow,
    #[error("paid {0} does not fit the result table (below 10^22)")]
    TooLarge(Decimal),
    #[error("commodity {0} is asked for more than 2^32 units in all")]
    TooMany(u32),
}

/// Paid amounts are stored as DECIMAL(24,2): below 10^22.
fn max_paid() -> Decimal {
    Decimal::from_i128_with_scale(10i128.pow(22), 0)
}

/// Whether every order within ingest's limits (100 items of at most 1,000,000 units)
/// can be paid and stored at `rates`, given the dearest price per currency in the
/// catalogue (`max_prices`): the largest paid is all units of the dearest line in the
/// currency worth most, paid in the currency worth least. Err with that amount (None when
/// it overflows) when it cannot.
pub fn payable(
    max_prices: &[(Currency, Decimal)],
    rates: &[(Currency, Decimal)],
) -> Result<(), Option<Decimal>> {
    let units = Decimal::from(crate::order::MAX_ITEMS as u64 * crate::order::MAX_NUMBER);
    let rate = |c: &Currency| rates.iter().find(|(k, _)| k == c).map(|(_, r)| *r);
    let mut dearest = Decimal::ZERO;
    for (c, price) in max_prices {
        let worth = price.checked_mul(rate(c).ok_or(None)?).ok_or(None)?;
        dearest = dearest.max(worth);
    }
    let cheapest = rates.iter().map(|(_, r)| *r).min().ok_or(None)?;
    let worst = units
        .checked_mul(dearest)
        .and_then(|w| w.checked_div(cheapest))
        .ok_or(None)?;
    match worst < max_paid() {
        true => Ok(()),
        false => Err(Some(worst)),
    }
}

/// `round_half_even(Σ price_i × number_i × rate(currency_i) / rate(initiator), 2)`.
pub fn paid(
    lines: impl IntoIterator<Item = (Decimal, u32, Currency)>,
    initiator: Currency,
    rates: &RateTable,
) -> Result<Decimal, SettleError> {
    let rate = |c: Currency| -> Result<Decimal, SettleError> {
        let r = rates.get(c).ok_or(SettleError::MissingRate(c))?;
        if r <= Decimal::ZERO {
            return Err(SettleError::NonPositiveRate(c));
        }
        Ok(r)
    };
    let mut sum = Decimal::ZERO;
    for (price, number, currency) in lines {
        let r = rate(currency)?;
        let line = price
            .checked_mul(Decimal::from(number))
            .and_then(|v| v.checked_mul(r))
            .ok_or(SettleError::Overflow)?;
        sum = sum.checked_add(line).ok_or(SettleError::Overflow)?;
    }
    let amount = sum
        .checked_div(rate(initiator)?)
        .ok_or(SettleError::Overflow)?
        .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
    if amount >= max_paid() {
        return Err(SettleError::TooLarge(amount));
    }
    Ok(amount)
}

/// Decide one order against the (locked) stock and apply it: unknown item first, then
/// insufficient inventory (no stock changes), else take the stock and compute `paid`.
/// The same commodity twice in one order counts once with the numbers added (ingest
/// merges them; a message read from Kafka may not have). An error leaves the stock as it
/// was: the order cannot be settled.
pub fn decide(
    order: &Order,
    stock: &mut HashMap<u32, Commodity>,
    rates: &RateTable,
) -> Result<Decision, SettleError> {
    let rejected = |reason| Decision {
        reason: Some(reason),
        paid: Decimal::ZERO,
    };
    // Unknown items before the lines are merged: an unknown id is rejected, not an error.
    if order.items.iter().any(|it| !stock.contains_key(&it.id)) {
        return Ok(rejected(Reason::UnknownItem));
    }
    let demand =
        crate::order::merge_items(order.items.iter().copied()).map_err(SettleError::TooMany)?;
    if let Some(reason) = refusal(&demand, |id| stock.get(&id).map(|c| c.inventory)) {
        return Ok(rejected(reason));
    }
    let paid = paid(
        order.items.iter().map(|it| {
            let c = &stock[&it.id];
            (c.price, it.number, c.currency)
        }),
        order.initiator,
        rates,
    )?;
    for it in demand {
        let c = stock.get_mut(&it.id).expect("checked above");
        c.inventory = c.inventory.checked_sub(it.number).expect("checked above");
    }
    Ok(Decision { reason: None, paid })
}

/// The stock half of the rule, for `demand` (an order's lines, one per id): why it cannot
/// be taken from the inventories `have` gives (None for an unknown id), if it cannot.
/// Unknown items first, then insufficient inventory.
pub fn refusal(demand: &[crate::Item], have: impl Fn(u32) -> Option<u32>) -> Option<Reason> {
    let mut levels = Vec::with_capacity(demand.len());
    for it in demand {
        match have(it.id) {
            Some(n) => levels.push(n),
            None => return Some(Reason::UnknownItem),
        }
    }
    let short = demand.iter().zip(levels).any(|(it, n)| n < it.number);
    short.then_some(Reason::InsufficientInventory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payable_bounds_the_dearest_order_paid_in_the_cheapest_currency() {
        let (rmb, usd, jpy) = (c("RMB"), c("USD"), c("JPY"));
        let d = |s: &str| Decimal::from_str(s).unwrap();
        let prices = [(usd, d("100000000000"))]; // 10^11 USD
        let rates = |j: &str| vec![(rmb, d("1")), (usd, d("7.12")), (jpy, d(j))];
        // 10^8 units × 10^11 × 7.12 / 0.048 ≈ 1.48 × 10^21: fits.
        assert_eq!(payable(&prices, &rates("0.048")), Ok(()));
        // At a tenth of that rate the yen makes it ≈ 1.48 × 10^22: it does not.
        let worst = payable(&prices, &rates("0.0048")).unwrap_err().unwrap();
        assert!(worst > max_paid(), "{worst}");
        assert_eq!(
            payable(&prices, &[(rmb, d("1"))]),
            Err(None),
            "a price in a currency without a rate"
        );
    }
    use crate::Item;
    use std::str::FromStr;

    fn c(s: &str) -> Currency {
        s.parse().unwrap()
    }
    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }
    fn table() -> RateTable {
        RateTable {
            version: 1,
            rates: vec![
                (c("RMB"), d("1")),
                (c("USD"), d("7.12")),
                (c("JPY"), d("0.048")),
                (c("EUR"), d("7.80")),
            ],
        }
    }

    #[test]
    fn paid_in_the_same_currency_is_price_times_number() {
        let p = paid([(d("19.99"), 3, c("USD"))], c("USD"), &table()).unwrap();
        assert_eq!(p, d("59.97"));
    }

    #[test]
    fn paid_converts_through_the_common_unit() {
        // 10 EUR × 7.80 + 1000 JPY × 0.048 = 78 + 48 = 126 RMB; in USD: 126 / 7.12 = 17.6966… → 17.70
        let p = paid(
            [(d("10"), 1, c("EUR")), (d("500"), 2, c("JPY"))],
            c("USD"),
            &table(),
        )
        .unwrap();
        assert_eq!(p, d("17.70"));
        // same in RMB: exactly 126.00
        let p = paid(
            [(d("10"), 1, c("EUR")), (d("500"), 2, c("JPY"))],
            c("RMB"),
            &table(),
        )
        .unwrap();
        assert_eq!(p, d("126.00"));
    }

    #[test]
    fn rounding_is_half_even_at_the_half_cent() {
        // 0.005 exactly → 0.00 (even), 0.015 → 0.02, 0.025 → 0.02, 1.125 → 1.12, 1.135 → 1.14
        for (price, want) in [
            ("0.005", "0.00"),
            ("0.015", "0.02"),
            ("0.025", "0.02"),
            ("1.125", "1.12"),
            ("1.135", "1.14"),
        ] {
            let p = paid([(d(price), 1, c("RMB"))], c("RMB"), &table()).unwrap();
            assert_eq!(p, d(want), "price {price}");
        }
        // A half cent reached through conversion: 0.0356 RMB / 7.12 = 0.005 USD → 0.00,
        // and 3 × 0.0356 = 0.1068 RMB / 7.12 = 0.015 USD → 0.02.
        let p = paid([(d("0.0356"), 1, c("RMB"))], c("USD"), &table()).unwrap();
        assert_eq!(p, d("0.00"));
        let p = paid([(d("0.0356"), 3, c("RMB"))], c("USD"), &table()).unwrap();
        assert_eq!(p, d("0.02"));
    }

    #[test]
    fn missing_rate_is_an_error_not_a_zero() {
        let t = RateTable {
            version: 1,
            rates: vec![(c("RMB"), d("1"))],
        };
        assert_eq!(
            paid([(d("1"), 1, c("USD"))], c("RMB"), &t),
            Err(SettleError::MissingRate(c("USD")))
        );
    }

    fn order(items: &[(u32, u32)]) -> Order {
        Order {
            order_id: uuid::Uuid::nil(),
            user_id: "u".into(),
            initiator: c("RMB"),
            items: items
                .iter()
                .map(|&(id, number)| Item { id, number })
                .collect(),
            time: None,
            accepted_at: 0,
            keyed: None,
        }
    }

    fn stock() -> HashMap<u32, Commodity> {
        HashMap::from([
            (
                1,
                Commodity {
                    price: d("2.50"),
                    currency: c("RMB"),
                    inventory: 5,
                },
            ),
            (
                2,
                Commodity {
                    price: d("1"),
                    currency: c("USD"),
                    inventory: 1,
                },
            ),
        ])
    }

    #[test]
    fn decision_rule_order_and_stock() {
        let mut s = stock();
        // unknown item wins over insufficient inventory; nothing changes
        let r = decide(&order(&[(2, 9), (99, 1)]), &mut s, &table()).unwrap();
        assert_eq!(r.reason, Some(Reason::UnknownItem));
        assert_eq!(r.paid, Decimal::ZERO);
        // insufficient on one line: no stock taken from any line
        let r = decide(&order(&[(1, 2), (2, 2)]), &mut s, &table()).unwrap();
        assert_eq!(r.reason, Some(Reason::InsufficientInventory));
        assert_eq!((s[&1].inventory, s[&2].inventory), (5, 1));
        // success takes the stock and pays 2 × 2.50 + 1 × 7.12 = 12.12 RMB
        let r = decide(&order(&[(1, 2), (2, 1)]), &mut s, &table()).unwrap();
        assert!(r.success());
        assert_eq!(r.paid, d("12.12"));
        assert_eq!((s[&1].inventory, s[&2].inventory), (3, 0));
        // last units: exactly enough succeeds, then nothing is left
        assert!(decide(&order(&[(1, 3)]), &mut s, &table())
            .unwrap()
            .success());
        let r = decide(&order(&[(1, 1)]), &mut s, &table()).unwrap();
        assert_eq!(r.reason, Some(Reason::InsufficientInventory));
        assert_eq!(s[&1].inventory, 0);
    }

    #[test]
    fn the_same_commodity_twice_is_asked_for_once_in_all() {
        let mut s = stock();
        // Item 1 has 5 units: 3 + 3 is more than that, though each line alone fits.
        let r = decide(&order(&[(1, 3), (1, 3)]), &mut s, &table()).unwrap();
        assert_eq!(r.reason, Some(Reason::InsufficientInventory));
        assert_eq!(s[&1].inventory, 5);
        let r = decide(&order(&[(1, 2), (1, 3)]), &mut s, &table()).unwrap();
        assert!(r.success());
        assert_eq!(s[&1].inventory, 0);
        assert_eq!(
            decide(&order(&[(2, u32::MAX), (2, 1)]), &mut s, &table()),
            Err(SettleError::TooMany(2))
        );
    }

    #[test]
    fn a_paid_amount_the_result_table_cannot_hold_is_an_error() {
        let huge = Decimal::from_i128_with_scale(10i128.pow(20), 0);
        let lines = [(huge, 1_000u32, c("RMB"))];
        assert!(matches!(
            paid(lines, c("RMB"), &table()),
            Err(SettleError::TooLarge(_))
        ));
        let fits = [(huge, 99u32, c("RMB"))];
        assert!(paid(fits, c("RMB"), &table()).is_ok());
    }

    #[test]
    fn reasons_parse_from_their_stored_form() {
        for r in [
            Reason::UnknownItem,
            Reason::InsufficientInventory,
            Reason::InvalidOrder,
        ] {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        assert!("out_of_stock".parse::<Reason>().is_err());
    }
}
