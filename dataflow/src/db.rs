//! A worker's handles to MySQL, which its operators block on.

use sinks::Pool;

/// Per-worker handles to MySQL: a single-threaded runtime that the operators block on.
pub(crate) struct Db {
    rt: tokio::runtime::Runtime,
    pub pool: Pool,
}

impl Db {
    /// A runtime of its own and a pool of two connections.
    pub(crate) fn connect(cfg: &model::Config) -> anyhow::Result<Db> {
        Ok(Db {
            rt: ore::current_thread_runtime()?,
            pool: sinks::connect(&cfg.mysql.urls, 2)?,
        })
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}
