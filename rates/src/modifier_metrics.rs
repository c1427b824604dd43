//! What the rate modifier counts, in the Prometheus text format (`render_metrics`;
//! `dtss rates run --metrics-listen` serves it):
//!
//! - `dtss_modifier_leader`: 1 while this modifier holds the lock and writes, else 0;
//! - `dtss_modifier_elections_total`: times it became the leader;
//! - `dtss_modifier_steps_total`: periods in which it stepped every rate;
//! - `dtss_modifier_failed_steps_total`: steps that failed (leadership given up);
//! - `dtss_modifier_rate{currency}`: the rate it last wrote.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use model::{Currency, Decimal};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rust_decimal::prelude::ToPrimitive;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rate {
    currency: String,
}

pub(crate) struct Metrics {
    pub leader: Gauge,
    pub elections: Counter,
    pub steps: Counter,
    pub failed_steps: Counter,
    rate: Family<Rate, Gauge<f64, AtomicU64>>,
    registry: Registry,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            leader: Gauge::default(),
            elections: Counter::default(),
            steps: Counter::default(),
            failed_steps: Counter::default(),
            rate: Family::default(),
            registry: Registry::with_prefix("dtss_modifier"),
        };
        macro_rules! register {
            ($($field:ident: $help:literal),* $(,)?) => {
                $(m.registry.register(stringify!($field), $help, m.$field.clone());)*
            };
        }
        register! {
            leader: "1 while this modifier holds the lock and writes",
            elections: "Times it became the leader",
            steps: "Periods in which it stepped every rate",
            failed_steps: "Steps that failed (leadership given up)",
            rate: "The rate it last wrote",
        }
        m
    }

    pub fn wrote(&self, c: Currency, rate: Decimal) {
        let value = rate.to_f64().unwrap_or(f64::NAN);
        self.rate
            .get_or_create(&Rate {
                currency: c.to_string(),
            })
            .set(value);
    }
}

/// The modifier's metrics.
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The modifier's metrics, in the Prometheus text format.
pub fn render_metrics() -> String {
    let mut out = String::new();
    encode(&mut out, &METRICS.registry).expect("writing to a String");
    out
}
