//! The check that every decision is the one the recorded order gives: from each
//! commodity's initial inventory, every result decided again by `model::decider` in the
//! order of its place (epoch, partition, offset), as recorded in `result`. It holds when
//! the outcomes depend on the log alone; with several partitions deciding against shared
//! stock each in its own transaction, a contended run breaks it (`dtss check --in-order`).

use std::collections::HashMap;

use model::decider::{Claim, Decider, Place, Verdict as Decided};
use model::{Item, Reason};
use sinks::audit::{AuditResult, StockRow};

use crate::check::{verdict, Verdict};

/// Results whose recorded decision differs from the one their place gives.
pub fn decisions_in_place_order(results: &[AuditResult], stock: &[StockRow]) -> Verdict {
    let initial = stock
        .iter()
        .map(|s| (s.id, s.initial.clamp(0, u32::MAX as i64) as u32));
    let mut decider = Decider::new(initial, None);
    let (mut claims, mut problems) = claims(results);
    let decided = decider
        .decide(&mut claims)
        .expect("one claim per place, sorted");
    let by_place: HashMap<Place, &AuditResult> = results.iter().map(|r| (place(r), r)).collect();
    let mut wrong = 0usize;
    for (c, d) in claims.iter().zip(decided) {
        let r = by_place[&c.place];
        let recorded = r.reason.as_deref();
        let expected = match d {
            Decided::Taken => None,
            Decided::Refused(reason) => Some(reason.as_str()),
            Decided::Unpayable => Some(Reason::InvalidOrder.as_str()),
        };
        if recorded != expected {
            wrong += 1;
            if problems.len() < 5 {
                problems.push(format!(
                    "order {} at {:?}: recorded {}, its place gives {}",
                    r.order_id,
                    c.place,
                    recorded.unwrap_or("success"),
                    expected.unwrap_or("success")
                ));
            }
        }
    }
    if wrong > 5 {
        problems.push(format!("{wrong} decisions differ in all"));
    }
    let name = "decisions: each the one its place (epoch, partition, offset) gives";
    verdict(
        name,
        problems,
        format!("{} decisions recomputed", claims.len()),
    )
}

/// The claims of the results that stock decided (not those kept as invalid orders).
fn claims(results: &[AuditResult]) -> (Vec<Claim>, Vec<String>) {
    let mut problems = vec![];
    let mut claims = vec![];
    for r in results {
        if r.reason.as_deref() == Some(Reason::InvalidOrder.as_str()) {
            continue;
        }
        let lines = sinks::parse_items_text(&r.items).unwrap_or_default();
        let items = lines.into_iter().map(|(id, number)| Item { id, number });
        match model::merge_items(items) {
            Ok(demand) if !demand.is_empty() => claims.push(Claim {
                place: place(r),
                demand,
                payable: true,
            }),
            _ => problems.push(format!(
                "order {}: unreadable items {:?}",
                r.order_id, r.items
            )),
        }
    }
    (claims, problems)
}

fn place(r: &AuditResult) -> Place {
    Place {
        epoch: r.epoch,
        partition: r.partition,
        offset: r.offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Decimal;

    fn result(
        id: &str,
        partition: i32,
        offset: i64,
        epoch: u64,
        items: &str,
        reason: Option<&str>,
    ) -> AuditResult {
        AuditResult {
            order_id: id.into(),
            initiator: "EUR".into(),
            success: reason.is_none(),
            paid: Decimal::ONE,
            rate_version: 1,
            epoch,
            accepted_at: 0,
            items: items.into(),
            reason: reason.map(String::from),
            partition,
            offset,
        }
    }

    fn stock(id: u32, initial: i64) -> StockRow {
        StockRow {
            id,
            initial,
            inventory: 0,
            price: Decimal::ONE,
            currency: "EUR".into(),
        }
    }

    #[test]
    fn decisions_taken_in_place_order_pass() {
        // Epoch 1: partition 0 takes 2 of 3, partition 1 then finds 1 left.
        let results = [
            result("b", 1, 0, 1, "7:2", Some("insufficient_inventory")),
            result("a", 0, 5, 1, "7:2", None),
            result("c", 1, 1, 2, "7:1", None),
            result("d", 0, 6, 2, "7:1,9:1", Some("unknown_item")),
        ];
        let v = decisions_in_place_order(&results, &[stock(7, 3)]);
        assert!(v.ok, "{}", v.detail);
    }

    #[test]
    fn a_later_place_served_first_is_named() {
        // Partition 1's order was served before partition 0's of the same epoch.
        let results = [
            result("b", 1, 0, 1, "7:2", None),
            result("a", 0, 5, 1, "7:2", Some("insufficient_inventory")),
        ];
        let v = decisions_in_place_order(&results, &[stock(7, 3)]);
        assert!(!v.ok);
        assert!(v.detail.contains("order a at"), "{}", v.detail);
        assert!(
            v.detail
                .contains("recorded insufficient_inventory, its place gives success"),
            "{}",
            v.detail
        );
    }
}
