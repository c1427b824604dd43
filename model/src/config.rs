//! `cluster.toml`: where every part of DTSS runs and how it behaves (docs/DESIGN.md,
//! "Cluster"). Read in two steps: the TOML (with any `--set` overrides applied to it,
//! `overrides.rs`) deserialises into the file's form (`raw::File` and its
//! `raw::*Section`s, which only hold what was written), which `Config::parse` checks
//! once into the resolved `Config` below (currencies, decimal rates and percentages,
//! durations, addresses); the secrets are filled in from the environment and their files
//! after that (`dtss`'s `secrets.rs`), and nothing parses it again later. Errors name the
//! key and say what is expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rust_decimal::Decimal;

use crate::Currency;

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub cluster: Cluster,
    pub kafka: Kafka,
    pub zookeeper: ZooKeeper,
    pub mysql: Mysql,
    pub ingest: Ingest,
    pub catalogue: Catalogue,
    pub currencies: Currencies,
    pub retention: Retention,
    /// Where this file was read from; relative paths in it are taken from its folder.
    pub path: PathBuf,
    /// The `--set key=value` overrides applied to the file (`dtss up` passes them on to
    /// the processes it starts).
    pub overrides: Vec<String>,
}

/// How long the side tables keep their rows (`sinks::prune`). `result` is the record and
/// keeps every row.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Skipped copies and dead letters older than this are pruned...
    pub side_rows_age: Duration,
    /// ...and beyond this many per partition, the oldest first.
    pub side_rows_per_partition: u64,
    /// `settle_batches` rows (one per transaction, read by the bench) older than this.
    pub batches_age: Duration,
}

#[derive(Clone, Debug)]
pub struct Cluster {
    /// host:port of every timely process, in process-index order.
    pub processes: Vec<String>,
    pub workers_per_process: usize,
    /// The length of an epoch, in ms (`epoch_of`).
    pub epoch_ms: u64,
    /// How long a worker waits for late orders before closing an epoch.
    pub watermark_delay: Duration,
    /// A worker starts a settlement transaction at most this often; what closes
    /// meanwhile goes into the next one. Fewer, larger transactions cost MySQL less per
    /// order; each order may wait up to this long more. Zero: one as soon as an epoch
    /// closes.
    pub settle_interval: Duration,
    /// Where logs, the embedded broker's address and local service data go.
    pub data_dir: PathBuf,
    /// A worker holds at most this many orders read and not yet committed (in memory:
    /// read ahead, waiting for their epoch, in a transaction); past it, it stops reading
    /// its partition until commits catch up. Bounds a worker's memory while MySQL is slow
    /// or down, whatever the broker holds.
    pub max_unsettled_per_worker: u64,
}

#[derive(Clone, Debug)]
pub struct Kafka {
    /// Empty: use the embedded broker (`dtss broker`).
    pub brokers: Vec<String>,
    pub topic: String,
    /// Refuse orders (503) when this many are unsettled in a partition (backpressure
    /// while the workers or MySQL are behind or down), with any broker.
    pub max_backlog_per_partition: u64,
    /// The embedded broker answers a produce once `fdatasync` put it on disk (true, the
    /// default: a machine crash loses nothing answered), or once written to the page
    /// cache (false: a machine crash loses up to ~30 s of answered orders).
    pub embedded_fsync: bool,
    /// Configured brokers: the replicas of each partition of a topic `dtss init`
    /// creates, and the fewest an existing topic may have. 0: as many as there are
    /// brokers, up to 3.
    pub replication_factor: u16,
    /// Configured brokers: the topic's `min.insync.replicas`. 0: 2 with three replicas or
    /// more (one broker may be lost), else 1.
    pub min_insync_replicas: u16,
    /// Configured brokers: the topic's `retention.ms`: -1 (the default) keeps every
    /// message for ever; else at least a year, for a broker that mishandles -1.
    pub retention_ms: i64,
}

#[derive(Clone, Debug)]
pub struct ZooKeeper {
    pub connect: String,
    /// Root znode of this deployment; rates live at `{root}/rates/{C}`.
    pub root: String,
    pub session_timeout: Duration,
}

/// The MySQL of record: one server (`mysql.url`), or the SQL nodes of one cluster
/// (`mysql.urls`, e.g. MariaDB Galera), written through one at a time.
#[derive(Clone)]
pub struct Mysql {
    /// The first node's URL (the only one's, for a single server).
    pub url: String,
    /// Every node's URL, in the order they are tried.
    pub urls: Vec<String>,
    /// `mysql.password_file` as written (relative to the config file's folder); see
    /// [`Config::mysql_password_file`].
    pub password_file: Option<PathBuf>,
}

impl Mysql {
    /// The URL with its password replaced by `***`: for messages and logs.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }

    /// Whether the URLs name several nodes of a cluster.
    pub fn is_cluster(&self) -> bool {
        self.urls.len() > 1
    }

    /// Put `password` into every URL that names a user and no password of its own.
    pub fn set_password(&mut self, password: &str) {
        for url in &mut self.urls {
            *url = with_password(url, password);
        }
        self.url = self.urls[0].clone();
    }
}

/// `url` with `password` (percent-encoded) after its user, unless it has one already
/// or names no user.
fn with_password(url: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((user, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    if user.contains(':') || user.is_empty() {
        return url.to_string();
    }
    let password = percent_encoding::utf8_percent_encode(password, NOT_IN_USERINFO);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Every byte but the unreserved ones of RFC 3986 is escaped in a URL's password.
const NOT_IN_USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl std::fmt::Debug for Mysql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("Mysql").field("urls", &urls).finish()
    }
}

/// The most SQL nodes `mysql.urls` may name.
pub const MAX_MYSQL_NODES: usize = 9;

/// `url` with the password of its `user:password@` part replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[derive(Clone)]
pub struct Ingest {
    pub listen: SocketAddr,
    /// The admin token: `DTSS_ADMIN_TOKEN` from the environment when set, else
    /// `ingest.admin_token`; None when neither is (admin requests are then refused).
    pub admin_token: Option<String>,
    /// How long a client may take to send a request's headers, and how long a
    /// keep-alive connection may wait idle for its next request.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// Connections served at once; past it a new one gets a 503 and is closed.
    pub max_connections: usize,
    /// The index in `mysql.urls` of the node ingest reads from first (it fails over
    /// like every process).
    pub mysql_node: usize,
}

#[derive(Clone, Debug)]
pub struct Catalogue {
    /// Number of generated commodities (ids 1..=items) when no CSV is given.
    pub items: u32,
    pub seed: u64,
    /// CSV with `id,name,price,currency,inventory` rows (header optional).
    pub csv: Option<PathBuf>,
    /// A commodity with less stock than this is listed by the live "low stock" view.
    pub low_stock_below: u32,
}

#[derive(Clone, Debug)]
pub struct Currencies {
    /// The currency whose rate is 1 and never moves.
    pub base: Currency,
    /// Every configured currency, base first, then the others by code.
    pub all: Vec<Currency>,
    /// Initial rates in `all` order: value of one unit in the common unit.
    pub initial: Vec<(Currency, Decimal)>,
    /// How far from its initial value the modifier may move a rate, in percent.
    pub bound_pct: Decimal,
    /// The most the modifier moves a rate in one step, in percent.
    pub max_step_pct: Decimal,
    pub modifier_period: Duration,
    /// No rate may be set further than this factor from its initial value, either way
    /// (`rates::parse_injection`).
    pub hard_factor: Decimal,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The file as written: what serde reads, before any check.
mod raw {
    use std::path::PathBuf;

    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub cluster: ClusterSection,
        #[serde(default)]
        pub kafka: KafkaSection,
        #[serde(default)]
        pub zookeeper: ZooKeeperSection,
        #[serde(default)]
        pub mysql: MysqlSection,
        #[serde(default)]
        pub ingest: IngestSection,
        #[serde(default)]
        pub catalogue: CatalogueSection,
        pub currencies: CurrenciesSection,
        #[serde(default)]
        pub retention: RetentionSection,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RetentionSection {
        pub side_rows_days: u64,
        pub side_rows_per_partition: u64,
        pub batches_hours: u64,
    }

    impl Default for RetentionSection {
        fn default() -> Self {
            RetentionSection {
                side_rows_days: 30,
                side_rows_per_partition: 100_000,
                batches_hours: 24,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ClusterSection {
        pub processes: Vec<String>,
        pub workers_per_process: usize,
        #[serde(default = "default_epoch_ms")]
        pub epoch_ms: u64,
        #[serde(default = "default_watermark_delay_ms")]
        pub watermark_delay_ms: u64,
        /// Default 20 (docs/PERFORMANCE.md: at 10,000 orders/s, MariaDB's CPU fell by a
        /// fifth and the latency tails shrank).
        #[serde(default = "default_settle_interval_ms")]
        pub settle_interval_ms: u64,
        #[serde(default = "default_data_dir")]
        pub data_dir: PathBuf,
        #[serde(default = "default_max_unsettled_per_worker")]
        pub max_unsettled_per_worker: u64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct KafkaSection {
        pub brokers: Vec<String>,
        pub topic: String,
        pub max_backlog_per_partition: u64,
        pub embedded_fsync: bool,
        pub replication_factor: u16,
        pub min_insync_replicas: u16,
        pub retention_ms: i64,
    }

    impl Default for KafkaSection {
        fn default() -> Self {
            KafkaSection {
                brokers: vec![],
                topic: "orders".into(),
                max_backlog_per_partition: 100_000,
                embedded_fsync: true,
                replication_factor: 0,
                min_insync_replicas: 0,
                retention_ms: -1,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct ZooKeeperSection {
        pub connect: String,
        pub root: String,
        pub session_timeout_ms: u64,
    }

    impl Default for ZooKeeperSection {
        fn default() -> Self {
            ZooKeeperSection {
                connect: "127.0.0.1:2181".into(),
                root: "/dtss".into(),
                session_timeout_ms: 6000,
            }
        }
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    pub struct MysqlSection {
        pub url: Option<String>,
        pub urls: Vec<String>,
        pub password_file: Option<PathBuf>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct IngestSection {
        pub listen: String,
        pub admin_token: String,
        pub header_read_timeout_ms: u64,
        pub body_timeout_ms: u64,
        pub max_connections: usize,
        pub mysql_node: usize,
    }

    impl Default for IngestSection {
        fn default() -> Self {
            IngestSection {
                listen: "127.0.0.1:8080".into(),
                admin_token: String::new(),
                header_read_timeout_ms: 10_000,
                body_timeout_ms: 10_000,
                max_connections: 10_000,
                mysql_node: 0,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct CatalogueSection {
        pub items: u32,
        pub seed: u64,
        pub csv: Option<PathBuf>,
        pub low_stock_below: u32,
    }

    impl Default for CatalogueSection {
        fn default() -> Self {
            CatalogueSection {
                items: 10_000,
                seed: 42,
                csv: None,
                low_stock_below: 10,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CurrenciesSection {
        pub base: String,
        /// Decimal strings.
        pub initial: toml::Table,
        #[serde(default = "default_bound_pct")]
        pub bound_pct: String,
        #[serde(default = "default_step_pct")]
        pub max_step_pct: String,
        #[serde(default = "default_period_ms")]
        pub modifier_period_ms: u64,
        #[serde(default = "default_hard_factor")]
        pub hard_factor: u32,
    }

    fn default_epoch_ms() -> u64 {
        10
    }
    fn default_watermark_delay_ms() -> u64 {
        5
    }
    fn default_settle_interval_ms() -> u64 {
        20
    }
    fn default_data_dir() -> PathBuf {
        ".dtss".into()
    }
    /// Room for the largest transactions a worker behind takes (40,000 orders each, a
    /// few in flight) and what waits for its epoch meanwhile.
    fn default_max_unsettled_per_worker() -> u64 {
        250_000
    }
    fn default_bound_pct() -> String {
        "20".into()
    }
    fn default_step_pct() -> String {
        "2".into()
    }
    fn default_period_ms() -> u64 {
        60_000
    }
    fn default_hard_factor() -> u32 {
        10
    }
}

impl Config {
    /// Check the text of the file at `path` (read by the caller: this crate does no I/O);
    /// relative paths in it are then taken from the file's folder.
    pub fn parse_at(text: &str, path: &Path) -> Result<Config> {
        Self::parse_with(text, path, &[])
    }

    /// `parse_at` with `--set key=value` overrides applied to the file's text first.
    pub fn parse_with(text: &str, path: &Path, sets: &[String]) -> Result<Config> {
        let text = crate::overrides::apply(text, sets)
            .with_context(|| format!("overriding {}", path.display()))?;
        let mut cfg = Config::parse(&text).with_context(|| format!("in {}", path.display()))?;
        cfg.path = path.to_path_buf();
        cfg.overrides = sets.to_vec();
        Ok(cfg)
    }

    /// Read and check a file's text (relative paths are then taken from the working
    /// directory).
    pub fn parse(text: &str) -> Result<Config> {
        let raw: raw::File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let cfg = Config {
            cluster: cluster(raw.cluster)?,
            kafka: kafka(raw.kafka)?,
            zookeeper: zookeeper(raw.zookeeper)?,
            mysql: mysql(raw.mysql)?,
            ingest: ingest(raw.ingest)?,
            catalogue: Catalogue {
                items: raw.catalogue.items,
                seed: raw.catalogue.seed,
                csv: raw.catalogue.csv,
                low_stock_below: raw.catalogue.low_stock_below,
            },
            currencies: currencies(raw.currencies)?,
            retention: retention(raw.retention)?,
            path: PathBuf::new(),
            overrides: vec![],
        };
        ensure!(
            cfg.ingest.mysql_node < cfg.mysql.urls.len(),
            "ingest.mysql_node: {} is not the index of a node of mysql.urls (0 to {})",
            cfg.ingest.mysql_node,
            cfg.mysql.urls.len() - 1
        );
        Ok(cfg)
    }

    pub fn partitions(&self) -> usize {
        self.cluster.processes.len() * self.cluster.workers_per_process
    }

    /// A path from the file, taken relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.cluster.data_dir)
    }

    /// The admin token `dtss up` generates when none is configured (mode 0600), read by
    /// every command then.
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir().join("admin-token")
    }

    /// The file the MySQL password is read from when no URL carries one and
    /// `DTSS_MYSQL_PASSWORD` is unset: `mysql.password_file`, else the one
    /// dtss services generates into the data directory (mode 0600).
    pub fn mysql_password_file(&self) -> PathBuf {
        match &self.mysql.password_file {
            Some(p) => self.resolve(p),
            None => self.data_dir().join("mysql-password"),
        }
    }

    /// The file in which `dtss broker` publishes the embedded broker's address.
    pub fn broker_addr_file(&self) -> PathBuf {
        self.data_dir().join("broker.addr")
    }

    /// The ZooKeeper folder in which each timely process publishes what it is doing, one
    /// ephemeral node per process index (the console reads it).
    pub fn workers_path(&self) -> String {
        format!("{}/workers", self.zookeeper.root)
    }

    /// Where the job publishes its live views (sales, top commodities, low stock).
    pub fn views_path(&self) -> String {
        format!("{}/views", self.zookeeper.root)
    }

    pub fn epoch_of(&self, ms: i64) -> u64 {
        ms.max(0) as u64 / self.cluster.epoch_ms
    }
}

fn cluster(c: raw::ClusterSection) -> Result<Cluster> {
    if c.processes.is_empty() {
        bail!("cluster.processes: list at least one host:port");
    }
    for (i, p) in c.processes.iter().enumerate() {
        if p.parse::<SocketAddr>().is_err() && !p.contains(':') {
            bail!("cluster.processes[{i}]: {p:?} is not host:port");
        }
    }
    if c.workers_per_process == 0 {
        bail!("cluster.workers_per_process: must be at least 1");
    }
    if c.epoch_ms == 0 {
        bail!("cluster.epoch_ms: must be at least 1");
    }
    if c.max_unsettled_per_worker < 1_000 {
        bail!(
            "cluster.max_unsettled_per_worker: {} is below 1000",
            c.max_unsettled_per_worker
        );
    }
    Ok(Cluster {
        processes: c.processes,
        workers_per_process: c.workers_per_process,
        epoch_ms: c.epoch_ms,
        watermark_delay: Duration::from_millis(c.watermark_delay_ms),
        settle_interval: Duration::from_millis(c.settle_interval_ms),
        data_dir: c.data_dir,
        max_unsettled_per_worker: c.max_unsettled_per_worker,
    })
}

fn retention(r: raw::RetentionSection) -> Result<Retention> {
    ensure!(
        r.side_rows_days >= 1,
        "retention.side_rows_days: keep them at least a day"
    );
    ensure!(
        r.side_rows_per_partition >= 1_000,
        "retention.side_rows_per_partition: {} is below 1000",
        r.side_rows_per_partition
    );
    ensure!(
        r.batches_hours >= 1,
        "retention.batches_hours: keep them at least an hour"
    );
    Ok(Retention {
        side_rows_age: Duration::from_secs(r.side_rows_days * 86_400),
        side_rows_per_partition: r.side_rows_per_partition,
        batches_age: Duration::from_secs(r.batches_hours * 3_600),
    })
}

fn kafka(k: raw::KafkaSection) -> Result<Kafka> {
    if k.topic.is_empty() {
        bail!("kafka.topic: must not be empty");
    }
    const YEAR_MS: i64 = 365 * 86_400_000;
    if k.retention_ms != -1 && k.retention_ms < YEAR_MS {
        bail!(
            "kafka.retention_ms: {} could delete orders not yet settled: -1 (for ever) or at \
             least {YEAR_MS} (a year)",
            k.retention_ms
        );
    }
    if k.replication_factor > 0 && k.min_insync_replicas > k.replication_factor {
        bail!(
            "kafka.min_insync_replicas: {} is more than kafka.replication_factor {}: no write \
             could ever be acknowledged",
            k.min_insync_replicas,
            k.replication_factor
        );
    }
    Ok(Kafka {
        brokers: k.brokers,
        topic: k.topic,
        max_backlog_per_partition: k.max_backlog_per_partition,
        embedded_fsync: k.embedded_fsync,
        replication_factor: k.replication_factor,
        min_insync_replicas: k.min_insync_replicas,
        retention_ms: k.retention_ms,
    })
}

fn zookeeper(z: raw::ZooKeeperSection) -> Result<ZooKeeper> {
    if !z.root.starts_with('/') || z.root.ends_with('/') {
        bail!(
            "zookeeper.root: {:?} must start with / and not end with one",
            z.root
        );
    }
    Ok(ZooKeeper {
        connect: z.connect,
        root: z.root,
        session_timeout: Duration::from_millis(z.session_timeout_ms),
    })
}

fn mysql(m: raw::MysqlSection) -> Result<Mysql> {
    let urls = match (m.url, m.urls) {
        (Some(_), urls) if !urls.is_empty() => {
            bail!("mysql: set url (one server) or urls (the nodes of a cluster), not both")
        }
        (Some(url), _) => vec![url],
        (None, urls) if urls.is_empty() => vec!["mysql://dtss@127.0.0.1:3306/dtss".into()],
        (None, urls) => urls,
    };
    ensure!(
        urls.len() <= MAX_MYSQL_NODES,
        "mysql.urls: {} nodes, at most {MAX_MYSQL_NODES}",
        urls.len()
    );
    for (i, u) in urls.iter().enumerate() {
        ensure!(
            u.starts_with("mysql://") && u.len() <= 1024,
            "mysql.urls[{i}]: {:?} is not a URL like mysql://user@host:3306/dtss",
            redact_url(u)
        );
    }
    Ok(Mysql {
        url: urls[0].clone(),
        urls,
        password_file: m.password_file,
    })
}

fn ingest(i: raw::IngestSection) -> Result<Ingest> {
    let Ok(listen) = i.listen.parse::<SocketAddr>() else {
        bail!(
            "ingest.listen: {:?} is not an address like 127.0.0.1:8080",
            i.listen
        );
    };
    let admin_token = std::env::var("DTSS_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| Some(i.admin_token).filter(|t| !t.is_empty()));
    for (key, ms) in [
        ("header_read_timeout_ms", i.header_read_timeout_ms),
        ("body_timeout_ms", i.body_timeout_ms),
    ] {
        ensure!(
            (100..=600_000).contains(&ms),
            "ingest.{key}: {ms} is not between 100 and 600000 (ms)"
        );
    }
    ensure!(
        (1..=1_000_000).contains(&i.max_connections),
        "ingest.max_connections: {} is not between 1 and 1000000",
        i.max_connections
    );
    Ok(Ingest {
        listen,
        admin_token,
        header_read_timeout: Duration::from_millis(i.header_read_timeout_ms),
        body_timeout: Duration::from_millis(i.body_timeout_ms),
        max_connections: i.max_connections,
        mysql_node: i.mysql_node,
    })
}

fn currencies(c: raw::CurrenciesSection) -> Result<Currencies> {
    let base: Currency = c
        .base
        .parse()
        .map_err(|e| anyhow::anyhow!("currencies.base: {e}"))?;
    let mut all = vec![base];
    for k in c.initial.keys() {
        let cur: Currency = k
            .parse()
            .map_err(|e| anyhow::anyhow!("currencies.initial.{k}: {e}"))?;
        if cur != base {
            all.push(cur);
        }
    }
    if !c.initial.contains_key(&c.base) {
        bail!(
            "currencies.initial: give the base currency {} a rate (1)",
            c.base
        );
    }
    let initial = all
        .iter()
        .map(|cur| Ok((*cur, initial_rate(&c.initial, *cur)?)))
        .collect::<Result<_>>()?;
    Ok(Currencies {
        base,
        all,
        initial,
        bound_pct: percent("currencies.bound_pct", &c.bound_pct)?,
        max_step_pct: percent("currencies.max_step_pct", &c.max_step_pct)?,
        modifier_period: Duration::from_millis(c.modifier_period_ms),
        hard_factor: {
            ensure!(
                (2..=1000).contains(&c.hard_factor),
                "currencies.hard_factor: {} is not between 2 and 1000",
                c.hard_factor
            );
            Decimal::from(c.hard_factor)
        },
    })
}

fn initial_rate(table: &toml::Table, c: Currency) -> Result<Decimal> {
    let key = format!("currencies.initial.{c}");
    let s = table[c.as_str()]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{key}: write the rate as a string, e.g. \"7.12\""))?;
    let d = Decimal::from_str(s).map_err(|_| anyhow::anyhow!("{key}: {s:?} is not a decimal"))?;
    if d <= Decimal::ZERO {
        bail!("{key}: {s} must be positive");
    }
    Ok(d)
}

fn percent(key: &str, v: &str) -> Result<Decimal> {
    let d = Decimal::from_str(v).map_err(|_| anyhow::anyhow!("{key}: {v:?} is not a decimal"))?;
    if d < Decimal::ZERO || d >= Decimal::from(100) {
        bail!("{key}: {v} must be from 0 to below 100");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
processes = ["127.0.0.1:2101"]
workers_per_process = 2

[currencies]
base = "RMB"
initial = { RMB = "1", USD = "7.12", JPY = "0.048", EUR = "7.80" }
"#;

    #[test]
    fn mysql_names_one_server_or_the_nodes_of_a_cluster() {
        let one = Config::parse(GOOD).unwrap();
        assert_eq!(one.mysql.urls, vec![one.mysql.url.clone()]);
        assert!(!one.mysql.is_cluster());
        let nodes = r#"urls = ["mysql://u:p@127.0.0.1:3311/d", "mysql://u:p@127.0.0.1:3312/d"]"#;
        let c = Config::parse(&format!(
            "{GOOD}\n[mysql]\n{nodes}\n[ingest]\nmysql_node = 1"
        ))
        .unwrap();
        assert!(c.mysql.is_cluster());
        assert_eq!(c.mysql.url, "mysql://u:p@127.0.0.1:3311/d");
        assert_eq!(c.ingest.mysql_node, 1);
        assert!(
            !format!("{:?}", c.mysql).contains(":p@"),
            "passwords redacted"
        );
        let both = format!("{GOOD}\n[mysql]\nurl = \"mysql://h/d\"\n{nodes}");
        assert!(err(&both).contains("not both"));
        assert!(err(&format!(
            "{GOOD}\n[mysql]\n{nodes}\n[ingest]\nmysql_node = 2"
        ))
        .contains("ingest.mysql_node"));
        assert!(err(&format!("{GOOD}\n[mysql]\nurls = [\"http://x\"]")).contains("mysql.urls[0]"));
    }

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.partitions(), 2);
        assert_eq!(c.cluster.epoch_ms, 10);
        assert_eq!(c.kafka.topic, "orders");
        assert!(c.kafka.brokers.is_empty());
        let cur: Vec<String> = c.currencies.all.iter().map(|c| c.to_string()).collect();
        assert_eq!(cur[0], "RMB");
        assert_eq!(cur.len(), 4);
        assert_eq!(c.epoch_of(1_000_019), 100_001);
        assert_eq!(c.cluster.watermark_delay, Duration::from_millis(5));
        assert_eq!(c.currencies.bound_pct, Decimal::from(20));
        let usd = c
            .currencies
            .all
            .iter()
            .position(|c| c.as_str() == "USD")
            .unwrap();
        assert_eq!(
            c.currencies.initial[usd].1,
            Decimal::from_str("7.12").unwrap()
        );
    }

    #[test]
    fn shipped_configs_parse() {
        let local = Config::parse(include_str!("../../cluster.toml")).unwrap();
        assert_eq!((local.partitions(), local.kafka.brokers.len()), (1, 0));
        let three = Config::parse(include_str!("../../deploy/cluster.3hosts.toml")).unwrap();
        assert_eq!((three.partitions(), three.kafka.brokers.len()), (6, 3));
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err(&GOOD.replace("workers_per_process = 2", "workers_per_process = 0"))
                .contains("cluster.workers_per_process")
        );
        assert!(
            err(&GOOD.replace("workers_per_process = 2", "workers_per_process = \"two\""))
                .contains("workers_per_process")
        );
        assert!(err(&GOOD.replace("USD = \"7.12\"", "USD = \"abc\""))
            .contains("currencies.initial.USD"));
        assert!(
            err(&GOOD.replace("USD = \"7.12\"", "USD = \"-1\"")).contains("currencies.initial.USD")
        );
        assert!(
            err(&GOOD.replace("USD = \"7.12\"", "USD = 7.12")).contains("currencies.initial.USD")
        );
        assert!(
            err(&GOOD.replace("base = \"RMB\"", "base = \"GBP\"")).contains("currencies.initial")
        );
        assert!(err(&GOOD.replace("[cluster]", "[cluster]\nepoch = 5")).contains("epoch"));
        assert!(err(&format!("{GOOD}\n[ingest]\nlisten = \"nowhere\"")).contains("ingest.listen"));
        assert!(
            err(&GOOD.replace("base = \"RMB\"", "base = \"RMB\"\nbound_pct = \"100\""))
                .contains("currencies.bound_pct")
        );
        assert!(
            err(&GOOD.replace("base = \"RMB\"", "base = \"RMB\"\nmax_step_pct = \"x\""))
                .contains("currencies.max_step_pct")
        );
    }

    #[test]
    fn secrets_do_not_show_in_messages() {
        assert_eq!(
            redact_url("mysql://dtss:s3cret@127.0.0.1:3306/dtss"),
            "mysql://dtss:***@127.0.0.1:3306/dtss"
        );
        assert_eq!(redact_url("mysql://a:b:c@d@h/x"), "mysql://a:***@h/x");
        assert_eq!(redact_url("mysql://dtss@h/x"), "mysql://dtss@h/x");
        let text = format!(
            "{GOOD}\n[ingest]\nadmin_token = \"t0ken\"\n[mysql]\nurl = \"mysql://u:pw9@h/d\"\n"
        );
        let shown = format!("{:?}", Config::parse(&text).unwrap());
        assert!(
            !shown.contains("t0ken") && !shown.contains("pw9"),
            "{shown}"
        );
        assert!(shown.contains("mysql://u:***@h/d"), "{shown}");
    }

    #[test]
    fn a_password_goes_into_urls_that_have_none() {
        let text = format!(
            "{GOOD}\n[mysql]\nurls = [\"mysql://u@h:1/d\", \"mysql://v:own@h:2/d\", \"mysql://h:3/d\"]\npassword_file = \"pw\"\n"
        );
        let mut c = Config::parse_at(&text, Path::new("/etc/dtss/cluster.toml")).unwrap();
        assert_eq!(c.mysql_password_file(), Path::new("/etc/dtss/pw"));
        c.mysql.set_password("a b/c@d");
        assert_eq!(c.mysql.url, "mysql://u:a%20b%2Fc%40d@h:1/d");
        assert_eq!(
            c.mysql.urls[1], "mysql://v:own@h:2/d",
            "its own password stays"
        );
        assert_eq!(c.mysql.urls[2], "mysql://h:3/d", "no user, no password");
        let default = Config::parse_at(GOOD, Path::new("/srv/cluster.toml")).unwrap();
        assert!(default.mysql_password_file().ends_with("mysql-password"));
        assert!(
            default.mysql.url.starts_with("mysql://dtss@"),
            "no default password"
        );
    }
}
