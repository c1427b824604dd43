//! MySQL, the system of record: schema, catalogue, the settlement transaction that
//! commits results + stock + totals delta + offset together (SPEC §4–§5), and queries.

mod catalogue;
mod query;
mod schema;
mod settle;

pub use catalogue::{generate_catalogue, load_catalogue, CatalogueRow};
pub use query::{
    latest_rates, load_offsets, record_rates, reset_offsets, result_by_id, results_by_user, totals,
    ResultRow, TotalRow,
};
pub use schema::{connect, ensure_schema};
pub use settle::items_text;
pub use settle::{prepare_partition, settle_batch, Outcome, Settling};

pub use mysql_async::Pool;
