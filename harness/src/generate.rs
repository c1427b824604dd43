use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Orders like the original lab sender: 1–5 distinct items of 1–5 units each, many
/// users, initiators spread over the currencies. Seeded, so runs repeat. Items are
/// uniform, or Zipf-popular (item 1 the hottest) so that hot commodities contend.
pub struct OrderGen {
    rng: StdRng,
    items: u32,
    users: u32,
    currencies: Vec<String>,
    zipf: Option<Zipf<f64>>,
    contended: bool,
}

/// The contended workload: this share of the orders takes one of `HOT` commodities
/// (ids 1..=HOT), whose stock runs out in a long enough run.
pub const HOT_SHARE: f64 = 0.1;
pub const HOT: u32 = 10;

impl OrderGen {
    pub fn new(seed: u64, items: u32, currencies: Vec<String>) -> OrderGen {
        OrderGen {
            rng: StdRng::seed_from_u64(seed),
            items: items.max(1),
            users: 10_000,
            currencies,
            zipf: None,
            contended: false,
        }
    }

    /// A tenth of the orders on ten commodities (`HOT_SHARE`, `HOT`): their first line is
    /// one of ids 1..=10.
    pub fn contended(mut self) -> OrderGen {
        self.contended = true;
        self
    }

    /// Draw items with Zipf popularity of exponent `s` (e.g. 1.0) instead of uniformly.
    pub fn with_zipf(mut self, s: f64) -> anyhow::Result<OrderGen> {
        let z = Zipf::new(self.items as f64, s)
            .map_err(|e| anyhow::anyhow!("--zipf {s}: {e} (give an exponent ≥ 0)"))?;
        self.zipf = Some(z);
        Ok(self)
    }

    fn item(&mut self) -> u32 {
        match &self.zipf {
            Some(z) => (z.sample(&mut self.rng) as u32).clamp(1, self.items),
            None => self.rng.random_range(1..=self.items),
        }
    }

    /// The JSON body of the next order.
    pub fn next_body(&mut self) -> String {
        use std::fmt::Write as _;
        let n = self.rng.random_range(1..=5usize.min(self.items as usize));
        let mut ids = [0u32; 5];
        let mut len = 0;
        if self.contended && self.rng.random_bool(HOT_SHARE) {
            ids[0] = self.rng.random_range(1..=HOT.min(self.items));
            len = 1;
        }
        while len < n {
            let id = self.item();
            if !ids[..len].contains(&id) {
                ids[len] = id;
                len += 1;
            }
        }
        // Drawn in the order they always were: a seed gives the orders it gave before.
        let mut numbers = [0u32; 5];
        for number in &mut numbers[..n] {
            *number = self.rng.random_range(1..=5);
        }
        let user = self.rng.random_range(1..=self.users);
        let cur = &self.currencies[self.rng.random_range(0..self.currencies.len())];
        let mut body = String::with_capacity(160);
        // Writing to a String cannot fail.
        let _ = write!(
            body,
            r#"{{"user_id":"u-{user}","initiator":"{cur}","items":["#
        );
        for (k, (id, number)) in ids[..n].iter().zip(&numbers).enumerate() {
            let sep = if k == 0 { "" } else { "," };
            let _ = write!(body, r#"{sep}{{"id":{id},"number":{number}}}"#);
        }
        let _ = write!(body, r#"],"time":{}}}"#, model::now_ms());
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenth_of_contended_orders_start_with_a_hot_commodity() {
        let mut g = OrderGen::new(3, 1_000, vec!["EUR".into()]).contended();
        let hot = (0..10_000)
            .filter(|_| {
                let body = g.next_body();
                let first = body.split(r#"{"id":"#).nth(1).unwrap();
                let id: u32 = first.split(',').next().unwrap().parse().unwrap();
                id <= HOT
            })
            .count();
        // 10 % chosen hot, plus the uniform draws that land on ids 1..=10 (1 %).
        assert!((950..=1_250).contains(&hot), "{hot}");
    }

    fn item_counts(gen: &mut OrderGen, orders: usize) -> Vec<u64> {
        let mut counts = vec![0u64; gen.items as usize + 1];
        for _ in 0..orders {
            let v: serde_json::Value = serde_json::from_str(&gen.next_body()).unwrap();
            let items = v["items"].as_array().unwrap();
            assert!((1..=5).contains(&items.len()));
            let mut seen = std::collections::HashSet::new();
            for it in items {
                let id = it["id"].as_u64().unwrap();
                assert!(seen.insert(id), "items are distinct");
                assert!((1..=5).contains(&it["number"].as_u64().unwrap()));
                counts[id as usize] += 1;
            }
        }
        counts
    }

    #[test]
    fn zipf_makes_the_first_items_hot_and_uniform_does_not() {
        let cur = vec!["RMB".to_string(), "USD".to_string()];
        let uniform = item_counts(&mut OrderGen::new(7, 1000, cur.clone()), 20_000);
        let zipf = item_counts(
            &mut OrderGen::new(7, 1000, cur).with_zipf(1.1).unwrap(),
            20_000,
        );
        let top10 = |c: &[u64]| c[1..=10].iter().sum::<u64>() as f64 / c.iter().sum::<u64>() as f64;
        assert!(
            top10(&uniform) < 0.03,
            "uniform top-10 share {}",
            top10(&uniform)
        );
        assert!(top10(&zipf) > 0.25, "zipf top-10 share {}", top10(&zipf));
        assert!(OrderGen::new(1, 10, vec!["RMB".into()])
            .with_zipf(-1.0)
            .is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_orders() {
        let strip = |b: String| b[..b.find(",\"time\"").unwrap()].to_string();
        let mut a = OrderGen::new(3, 100, vec!["RMB".into(), "EUR".into()]);
        let mut b = OrderGen::new(3, 100, vec!["RMB".into(), "EUR".into()]);
        for _ in 0..100 {
            assert_eq!(strip(a.next_body()), strip(b.next_body()));
        }
    }
}
