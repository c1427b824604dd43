use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Orders like the original lab sender: 1–5 distinct items of 1–5 units each, many
/// users, initiators spread over the currencies. Seeded, so runs repeat.
pub struct OrderGen {
    rng: StdRng,
    items: u32,
    users: u32,
    currencies: Vec<String>,
}

impl OrderGen {
    pub fn new(seed: u64, items: u32, currencies: Vec<String>) -> OrderGen {
        OrderGen {
            rng: StdRng::seed_from_u64(seed),
            items: items.max(1),
            users: 10_000,
            currencies,
        }
    }

    /// The JSON body of the next order.
    pub fn next_body(&mut self) -> String {
        let n = self.rng.random_range(1..=5usize.min(self.items as usize));
        let mut ids: Vec<u32> = Vec::with_capacity(n);
        while ids.len() < n {
            let id = self.rng.random_range(1..=self.items);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let items: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"id":{id},"number":{}}}"#, self.rng.random_range(1..=5)))
            .collect();
        let user = self.rng.random_range(1..=self.users);
        let cur = &self.currencies[self.rng.random_range(0..self.currencies.len())];
        format!(
            r#"{{"user_id":"u-{user}","initiator":"{cur}","items":[{}],"time":{}}}"#,
            items.join(","),
            model::now_ms()
        )
    }
}
