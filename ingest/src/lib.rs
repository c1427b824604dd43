//! The HTTP service (SPEC §3): order intake to Kafka, result queries, health, metrics.
//! Stateless: any number of replicas may run behind a load balancer.

mod http;
mod produce;
mod routes;

pub use http::serve;
pub use produce::{NotTaken, OrderProducer};
