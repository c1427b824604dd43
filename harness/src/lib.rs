//! Load generation and reports: orders like the original sender, posted over HTTP on
//! keep-alive connections, with ack latencies in an HDR histogram.

mod bench;
mod check;
mod generate;
mod in_order;
mod load;
mod plot;
mod rate_delay;
pub mod records;
mod send;

pub use bench::{bench, cpu_ticks, BenchOptions, BenchReport, Progress};
pub use check::{check, report, Verdict};
pub use generate::OrderGen;
pub use in_order::decisions_in_place_order;
pub use load::{post_orders, wait_settled, LoadReport, SettleSummary};
pub use plot::{html, medians, table};
pub use rate_delay::{rate_delay, RateDelayReport};
