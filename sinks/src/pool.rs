//! The MySQL of record as every process reaches it: one server, or the SQL nodes of one
//! cluster (MariaDB Galera), written through one node at a time (docs/DESIGN.md,
//! "A MySQL cluster").
//!
//! Each node has a connection pool of its own; one node is the active one. A connection
//! is taken from the active node; when the node cannot give one (it is down), the next
//! nodes are tried in turn, and the first that answers becomes the active node for every
//! later connection of the process. A transaction that fails and cannot even be rolled
//! back (`Conn::fail_over`) moves the process off its node too. On a cluster every
//! session waits, before each read, until its node has applied every transaction the
//! cluster committed before it (`wsrep_sync_wait = 1`): after a failover the stored
//! offsets and the committed outcomes read are those committed through the old node.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context, Result};
use mysql_async::{Opts, OptsBuilder, PoolConstraints, PoolOpts};

/// How long a node may take to give a connection (connect, authenticate, set up) before
/// the next node is tried: a silent node (no answer, no reset) would hold a caller for
/// as long as TCP retries, about two minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive on every connection, so that an idle pooled connection to a node that
/// went away is found dead by the kernel rather than by the next transaction.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Connections to the MySQL of record; cheap to clone (the clones share the nodes).
#[derive(Clone)]
pub struct Pool(Arc<Nodes>);

struct Nodes {
    pools: Vec<mysql_async::Pool>,
    /// Each node's `host:port`, for messages.
    names: Vec<String>,
    active: AtomicUsize,
}

/// A connection, and the node it came from.
pub struct Conn {
    conn: mysql_async::Conn,
    node: usize,
    pool: Pool,
}

impl Deref for Conn {
    type Target = mysql_async::Conn;
    fn deref(&self) -> &mysql_async::Conn {
        &self.conn
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut mysql_async::Conn {
        &mut self.conn
    }
}

impl Conn {
    /// The node this connection came from cannot serve (a transaction on it failed and
    /// could not be rolled back): later connections come from the next node.
    pub fn fail_over(&self) {
        self.pool.leave(self.node);
    }

    pub fn into_inner(self) -> mysql_async::Conn {
        self.conn
    }
}

/// A pool for the nodes `urls` (one URL: a single server), holding at most `max`
/// connections per node, which it keeps open while in use (idle ones close after a
/// minute). Every session reads committed data (no gap locks; see settle/) in strict
/// mode. Connections go back to the pool without a COM_RESET_CONNECTION: that costs a
/// round trip and throws away the session (prepared statements, settlement's temporary
/// table). Settlement ends each transaction with a commit or a rollback, and turns the
/// reset on while one is open, for a connection dropped half way. The row count of an
/// UPDATE is of the rows it found, changed or not (CLIENT_FOUND_ROWS): settlement counts
/// the commodities its stock UPDATE checked.
pub fn connect<S: AsRef<str>>(urls: &[S], max: usize) -> Result<Pool> {
    anyhow::ensure!(!urls.is_empty(), "no MySQL URL given");
    let cluster = urls.len() > 1;
    let mut pools = Vec::with_capacity(urls.len());
    let mut names = Vec::with_capacity(urls.len());
    for url in urls {
        let url = url.as_ref();
        let opts = Opts::from_url(url)
            .with_context(|| format!("mysql.url {:?} does not parse", model::redact_url(url)))?;
        names.push(format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port()));
        pools.push(node_pool(opts, max, cluster));
    }
    Ok(Pool(Arc::new(Nodes {
        pools,
        names,
        active: AtomicUsize::new(0),
    })))
}

fn node_pool(opts: Opts, max: usize, cluster: bool) -> mysql_async::Pool {
    // With min 0 and no idle TTL, mysql_async closes every connection handed back: a new
    // connection (TCP, authentication, setup) per transaction.
    let pool_opts = PoolOpts::default()
        .with_constraints(PoolConstraints::new(0, max.max(1)).expect("0 <= max"))
        .with_inactive_connection_ttl(std::time::Duration::from_secs(60))
        .with_reset_connection(false);
    let mut setup = vec![
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        // Strict: settlement relies on NULL in a NOT NULL column being an error.
        "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
    ];
    if cluster {
        setup.push("SET SESSION wsrep_sync_wait = 1");
    }
    mysql_async::Pool::new(
        OptsBuilder::from_opts(opts)
            .pool_opts(pool_opts)
            .tcp_keepalive(Some(KEEPALIVE))
            .client_found_rows(true)
            .setup(setup),
    )
}

/// A connection not given within `CONNECT_TIMEOUT`, as the error a lost one is.
fn timed_out(node: &str) -> mysql_async::Error {
    mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("MySQL node {node} gave no connection within {CONNECT_TIMEOUT:?}"),
    )))
}

impl Pool {
    /// A connection from the active node, or from the next that gives one (each within
    /// `CONNECT_TIMEOUT`).
    pub async fn get_conn(&self) -> Result<Conn, mysql_async::Error> {
        let nodes = &self.0;
        let first = nodes.active.load(Ordering::Relaxed);
        let mut failed = None;
        for k in 0..nodes.pools.len() {
            let node = (first + k) % nodes.pools.len();
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, nodes.pools[node].get_conn()).await;
            let conn = conn.unwrap_or_else(|_| Err(timed_out(&nodes.names[node])));
            match conn {
                Ok(conn) => {
                    if k > 0 {
                        self.moved(first, node, failed.as_ref());
                    }
                    let pool = self.clone();
                    return Ok(Conn { conn, node, pool });
                }
                Err(e) => failed = Some(e),
            }
        }
        Err(failed.expect("at least one node"))
    }

    /// Start on node `node` (an index of the URLs given to `connect`) rather than the first.
    pub fn prefer(self, node: usize) -> Pool {
        self.0
            .active
            .store(node % self.0.pools.len(), Ordering::Relaxed);
        self
    }

    /// The node connections come from now, as `host:port`.
    pub fn active_node(&self) -> &str {
        &self.0.names[self.0.active.load(Ordering::Relaxed)]
    }

    /// Close every node's connections once they are handed back.
    pub async fn disconnect(self) -> Result<(), mysql_async::Error> {
        for p in &self.0.pools {
            p.clone().disconnect().await?;
        }
        Ok(())
    }

    /// Node `from` failed: the next node is the active one, unless another caller moved
    /// already.
    fn leave(&self, from: usize) {
        let next = (from + 1) % self.0.pools.len();
        if next != from {
            self.moved(from, next, None);
        }
    }

    fn moved(&self, from: usize, to: usize, why: Option<&mysql_async::Error>) {
        let nodes = &self.0;
        let swapped = nodes
            .active
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed);
        if swapped.is_ok() {
            let why = why.map_or("a transaction on it failed".into(), |e| e.to_string());
            tracing::warn!(
                "MySQL node {} cannot serve ({why}): failing over to {}",
                nodes.names[from],
                nodes.names[to]
            );
        }
    }
}
