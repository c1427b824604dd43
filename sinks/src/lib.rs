//! MySQL, the system of record: connections to one server or a cluster's nodes
//! (`pool.rs`), schema (`schema.rs`), catalogue (`catalogue.rs`), the
//! settlement transaction that commits results + stock + totals delta + offset together
//! (`settle/`, docs/DESIGN.md "Exactly once"), the API's queries (`query.rs`), the
//! harness's and checker's reads (`audit.rs`), and totals publishing (`publish.rs`).
//! Nothing outside this crate writes SQL against these tables.

pub mod audit;
mod catalogue;
mod pool;
pub mod prune;
mod publish;
mod query;
mod retry;
mod schema;
mod settle;

pub use catalogue::{generate_catalogue, load_catalogue, CatalogueRow};
pub use pool::{connect, Conn, Pool};
pub use query::{
    latest_rates, load_offsets, load_position, lost_logs, low_stock, max_prices, oldest_commit,
    poison_counts, rate_tables_since, recent_rates, record_lost_log, record_rates, result_by_id,
    results_by_user, search_catalogue, totals, CommodityRow, RateVersion, RecordedTable, ResultRow,
    TotalRow,
};
pub use schema::{ensure_schema, id_scheme};
pub use settle::{
    holds, prepare_partition, record_hold, settle_batch, Batch, DeadLetter, HandOver, Hold, Line,
    Outcome, ReadyOrder, SettleState, Skipped, TransactionPipeline, MAX_DEAD_BYTES,
};
pub use settle::{items_text, parse_items_text, results_tsv};

pub use publish::{read_published, spawn_publisher, totals_path, TotalsSnapshot};

async fn publish_connect(cfg: &model::Config) -> anyhow::Result<zookeeper_client::Client> {
    rates::connect(cfg, std::time::Duration::from_secs(5)).await
}
