//! Domain types shared by every DTSS crate: orders and their validation, currencies
//! and exact money, rates, the settlement rule and the decider's state machine, the Kafka wire format, the
//! `cluster.toml` configuration and the exit codes (docs/DESIGN.md names each).

mod body;
pub mod config;
mod currency;
pub mod decider;
pub mod exit;
pub mod exposition;
pub mod idempotency;
pub mod ids;
mod order;
pub mod overrides;
mod rule;
pub mod wire;

pub use config::{redact_url, Config, Retention};
pub use currency::Currency;
pub use ids::IdScheme;
pub use order::{merge_items, validate_order, FieldError, Item, Order, OrderRequest, MAX_ITEMS};
pub use rule::{
    decide, paid, payable, refusal, Commodity, Decision, RateTable, Reason, SettleError,
};
pub use rust_decimal::Decimal;
pub use uuid::Uuid;

/// Milliseconds since the Unix epoch, as stamped by ingest.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
