//! Load generation and reports: orders like the original sender, posted over HTTP on
//! keep-alive connections, with ack latencies in an HDR histogram.

mod check;
mod generate;
mod load;
mod rate_delay;

pub use check::{check, report, Verdict};
pub use generate::OrderGen;
pub use load::{post_orders, wait_settled, LoadReport, SettleSummary};
pub use rate_delay::{rate_delay, RateDelayReport};
