//! What the broker counts, in the Prometheus text format (`Broker::render_metrics`;
//! `dtss broker --metrics-listen` serves it):
//!
//! - `dtss_broker_requests_total{api}`: requests answered, by Kafka API;
//! - `dtss_broker_refused_connections_total`: connections closed at once (over the limit);
//! - `dtss_broker_connections`: connections open now;
//! - `dtss_broker_log_start_offset{partition}` and `dtss_broker_log_end_offset{partition}`:
//!   the first offset a partition's log still holds, and the next one it will write.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use kafka_protocol::messages::ApiKey;

use crate::{Broker, APIS};

#[derive(Default)]
pub(crate) struct Counters {
    /// Indexed like `APIS`.
    requests: [AtomicU64; APIS.len()],
    pub refused: AtomicU64,
    pub connections: AtomicI64,
}

impl Counters {
    pub fn answered(&self, api: ApiKey) {
        if let Some(i) = APIS.iter().position(|(k, ..)| *k == api) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Broker {
    /// The broker's metrics, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let c = &self.counters;
        let mut s = String::from("# TYPE dtss_broker_requests_total counter\n");
        for (i, (api, ..)) in APIS.iter().enumerate() {
            let n = c.requests[i].load(Ordering::Relaxed);
            writeln!(s, "dtss_broker_requests_total{{api=\"{api:?}\"}} {n}").unwrap();
        }
        let refused = c.refused.load(Ordering::Relaxed);
        let open = c.connections.load(Ordering::Relaxed);
        write!(
            s,
            "# TYPE dtss_broker_refused_connections_total counter\n\
             dtss_broker_refused_connections_total {refused}\n\
             # TYPE dtss_broker_connections gauge\n\
             dtss_broker_connections {open}\n"
        )
        .unwrap();
        let offsets = self.offsets();
        for (name, pick) in [("start", 0), ("end", 1)] {
            writeln!(s, "# TYPE dtss_broker_log_{name}_offset gauge").unwrap();
            for (p, o) in offsets.iter().enumerate() {
                let v = if pick == 0 { o.0 } else { o.1 };
                writeln!(s, "dtss_broker_log_{name}_offset{{partition=\"{p}\"}} {v}").unwrap();
            }
        }
        s
    }
}
