//! A body posted to `POST /api/orders`: parsed and validated, an error naming a field or
//! an order within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::Currency;

fuzz_target!(|data: &[u8]| {
    let currencies: Vec<Currency> = ["RMB", "USD", "EUR"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    if let Ok(order) = model::validate_order(data, &currencies) {
        assert!(!order.items.is_empty() && order.items.len() <= model::MAX_ITEMS);
        assert!(currencies.contains(&order.initiator));
    }
});
