//! What every handler shares: the config, the producer, the pool, ZooKeeper, and this
//! replica's counters.

use std::sync::atomic::{AtomicU64, Ordering};

use model::{Config, Currency};
use serde_json::json;
use sinks::Pool;

use crate::metrics::Requests;
use crate::produce::OrderProducer;

pub struct State {
    pub cfg: Config,
    pub currencies: Vec<Currency>,
    pub producer: OrderProducer,
    pub pool: Pool,
    pub metrics: Metrics,
    pub zk: rates::Client,
    pub admin_token: Option<String>,
}

#[derive(Default)]
pub struct Metrics {
    pub(crate) accepted: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    /// 504s: sent to Kafka, not acknowledged.
    pub(crate) unacknowledged: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) requests: Requests,
}

impl Metrics {
    /// This replica's order counters, for the console.
    pub(crate) fn snapshot(&self, state: &State) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "accepted": n(&self.accepted), "invalid": n(&self.invalid),
            "too_large": n(&self.too_large), "unavailable": n(&self.unavailable),
            "unacknowledged": n(&self.unacknowledged), "queries": n(&self.queries),
            "unsettled_max": state.producer.unsettled_max(),
        })
    }
}
