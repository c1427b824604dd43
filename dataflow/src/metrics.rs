//! The worker process's metrics, one series per partition its workers own, in the
//! Prometheus text format (`render`; `dtss worker --metrics-listen` serves it):
//!
//! - `dtss_worker_settled_orders_total{partition, outcome}`: `succeeded` or a reason;
//! - `dtss_worker_batch_orders{partition}`: orders per settlement transaction;
//! - `dtss_worker_commit_seconds{partition}`: from a batch given to MySQL to its commit;
//! - `dtss_worker_committed_offset{partition}` and `dtss_worker_lag{partition}` (the
//!   partition's end minus what was read, every second);
//! - `dtss_worker_stale_views_total`, `dtss_worker_dead_letters_total`,
//!   `dtss_worker_skipped_copies_total` per partition;
//! - `dtss_worker_rate_version{partition}`: the version of the rates last applied;
//! - `dtss_worker_refused_rate_tables_total`: rate tables read from ZooKeeper and refused
//!   (a rate outside the rule of `PUT /api/rates`); the table in force stayed.

use std::sync::LazyLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Partition {
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Settled {
    pub partition: i32,
    pub outcome: &'static str,
}

type Histograms = Family<Partition, Histogram, fn() -> Histogram>;

pub(crate) struct Metrics {
    pub settled_orders: Family<Settled, Counter>,
    pub batch_orders: Histograms,
    pub commit_seconds: Histograms,
    pub committed_offset: Family<Partition, Gauge>,
    pub lag: Family<Partition, Gauge>,
    pub stale_views: Family<Partition, Counter>,
    pub dead_letters: Family<Partition, Counter>,
    pub skipped_copies: Family<Partition, Counter>,
    pub rate_version: Family<Partition, Gauge>,
    pub refused_rate_tables: Counter,
    registry: Registry,
}

fn batch_buckets() -> Histogram {
    // 1 to ~262,000 orders.
    Histogram::new(exponential_buckets(1.0, 4.0, 10))
}

fn seconds_buckets() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            settled_orders: Family::default(),
            batch_orders: Family::new_with_constructor(batch_buckets),
            commit_seconds: Family::new_with_constructor(seconds_buckets),
            committed_offset: Family::default(),
            lag: Family::default(),
            stale_views: Family::default(),
            dead_letters: Family::default(),
            skipped_copies: Family::default(),
            rate_version: Family::default(),
            refused_rate_tables: Counter::default(),
            registry: Registry::with_prefix("dtss_worker"),
        };
        macro_rules! register {
            ($($field:ident: $help:literal),* $(,)?) => {
                $(m.registry.register(stringify!($field), $help, m.$field.clone());)*
            };
        }
        register! {
            settled_orders: "Orders settled, by outcome",
            batch_orders: "Orders per settlement transaction",
            commit_seconds: "From a batch given to MySQL to its commit",
            committed_offset: "The partition's next offset as committed in MySQL",
            lag: "Orders in the partition not yet read",
            stale_views: "Stock views found stale and read again",
            dead_letters: "Messages kept as dead letters",
            skipped_copies: "Copies of an order already settled, skipped",
            rate_version: "Version of the rates last applied",
            refused_rate_tables: "Rate tables read from ZooKeeper and refused",
        }
        m
    }
}

/// The process's metrics.
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Every metric of the process, in the Prometheus text format.
pub fn render() -> String {
    let refused = rates::refused_tables().0;
    let seen = METRICS.refused_rate_tables.get();
    METRICS
        .refused_rate_tables
        .inc_by(refused.saturating_sub(seen));
    let mut out = String::new();
    encode(&mut out, &METRICS.registry).expect("writing to a String");
    out
}

pub(crate) fn label(partition: i32) -> Partition {
    Partition { partition }
}
