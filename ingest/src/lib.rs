//! The HTTP service (docs/DESIGN.md, "API"): order intake to Kafka, result queries,
//! rates, totals, health and metrics. Stateless: any number of replicas may run behind a
//! load balancer. A request goes `http.rs` (connections) → `endpoint.rs` (which endpoint)
//! → `routes.rs` (its handler, counted in `metrics.rs`, answering through `respond.rs`,
//! sharing `state.rs`) → `produce.rs` (to Kafka, for an order). `console.rs` serves the
//! operator's page at `/` and the reads it makes.

mod console;
mod endpoint;
mod http;
mod metrics;
mod produce;
mod respond;
mod routes;
mod state;

pub use http::serve;
pub use produce::{NotTaken, OrderProducer, Taken};
