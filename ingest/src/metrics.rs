//! Ingest's request metrics, beside the order counters `routes.rs` keeps:
//! `dtss_ingest_requests_total{route, status}` and `dtss_ingest_ack_seconds` (from an
//! order handed to the producer until Kafka acknowledged it, or did not).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    route: &'static str,
    status: u16,
}

pub struct Requests {
    requests: Family<Request, Counter>,
    ack_seconds: Histogram,
    registry: Registry,
}

impl Default for Requests {
    fn default() -> Self {
        let requests = Family::<Request, Counter>::default();
        // 0.1 ms to ~3 s.
        let ack_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        let mut registry = Registry::with_prefix("dtss_ingest");
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "ack_seconds",
            "From an order handed to Kafka to its acknowledgement",
            ack_seconds.clone(),
        );
        Requests {
            requests,
            ack_seconds,
            registry,
        }
    }
}

impl Requests {
    pub fn answered(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&Request { route, status })
            .inc();
    }

    pub fn acknowledged(&self, seconds: f64) {
        self.ack_seconds.observe(seconds);
    }

    /// These metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
