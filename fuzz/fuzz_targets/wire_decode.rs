//! A message read from the topic: decoded with limits, its id read on its own, checked
//! as ingest checks an order; an order that decodes encodes back to the same order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::{wire, Currency};

fuzz_target!(|data: &[u8]| {
    let _ = wire::order_id(data);
    if let Ok(order) = wire::decode(data) {
        let again = wire::decode(&wire::encode(&order)).expect("an encoded order decodes");
        assert_eq!(again, order);
        let currencies: Vec<Currency> = ["RMB", "USD"].iter().map(|c| c.parse().unwrap()).collect();
        let _ = order.check(&currencies);
    }
});
