//! What the broker counts, in the Prometheus text format (`Broker::render_metrics`;
//! `dtss broker --metrics-listen` serves it):
//!
//! - `dtss_broker_requests_total{api}`: requests answered, by Kafka API;
//! - `dtss_broker_refused_connections_total`: connections closed at once (over the limit);
//! - `dtss_broker_connections`: connections open now;
//! - `dtss_broker_log_start_offset{partition}` and `dtss_broker_log_end_offset{partition}`:
//!   the first offset a partition's log still holds, and its high watermark (every
//!   message before it is on disk and served);
//! - `dtss_broker_syncs_total`: `fdatasync` calls of the group commit (each covers every
//!   produce waiting at that moment);
//! - `dtss_broker_appends_refused{partition}`: 1 while the partition refuses appends (a
//!   write or sync failed: a full or failing disk), else 0.

use kafka_protocol::messages::ApiKey;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{Broker, APIS};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Api {
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Partition {
    partition: usize,
}

pub(crate) struct Counters {
    /// Each API's counter of `requests`, indexed like `APIS` (no label built per request).
    by_api: Vec<Counter>,
    pub refused: Counter,
    pub connections: Gauge,
    log_start: Family<Partition, Gauge>,
    log_end: Family<Partition, Gauge>,
    pub syncs: Counter,
    refused_appends: Family<Partition, Gauge>,
    registry: Registry,
}

impl Default for Counters {
    fn default() -> Self {
        let requests = Family::<Api, Counter>::default();
        let by_api = APIS
            .iter()
            .map(|(api, ..)| {
                requests
                    .get_or_create(&Api {
                        api: format!("{api:?}"),
                    })
                    .clone()
            })
            .collect();
        let c = Counters {
            by_api,
            refused: Counter::default(),
            connections: Gauge::default(),
            log_start: Family::default(),
            log_end: Family::default(),
            syncs: Counter::default(),
            refused_appends: Family::default(),
            registry: Registry::with_prefix("dtss_broker"),
        };
        let mut registry = c.registry;
        registry.register("requests", "Requests answered, by Kafka API", requests);
        registry.register(
            "refused_connections",
            "Connections closed at once, over the limit",
            c.refused.clone(),
        );
        registry.register("connections", "Connections open now", c.connections.clone());
        registry.register(
            "log_start_offset",
            "The first offset the partition's log still holds",
            c.log_start.clone(),
        );
        registry.register(
            "log_end_offset",
            "The partition's high watermark: every message before it is on disk",
            c.log_end.clone(),
        );
        registry.register(
            "syncs",
            "fdatasync calls of the group commit",
            c.syncs.clone(),
        );
        registry.register(
            "appends_refused",
            "1 while the partition refuses appends (a write or sync failed)",
            c.refused_appends.clone(),
        );
        Counters { registry, ..c }
    }
}

impl Counters {
    pub fn answered(&self, api: ApiKey) {
        if let Some(i) = APIS.iter().position(|(k, ..)| *k == api) {
            self.by_api[i].inc();
        }
    }
}

impl Broker {
    /// The broker's metrics, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let c = &self.counters;
        for (p, (start, end)) in self.offsets().into_iter().enumerate() {
            c.log_start
                .get_or_create(&Partition { partition: p })
                .set(start);
            c.log_end
                .get_or_create(&Partition { partition: p })
                .set(end);
            c.refused_appends
                .get_or_create(&Partition { partition: p })
                .set(0);
        }
        for (p, _) in self.refusing() {
            c.refused_appends
                .get_or_create(&Partition { partition: p })
                .set(1);
        }
        let mut out = String::new();
        encode(&mut out, &c.registry).expect("writing to a String");
        out
    }
}
