//! `cluster.toml`: where every part of DTSS runs and how it behaves (SPEC §6).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::Currency;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterSection,
    #[serde(default)]
    pub kafka: KafkaSection,
    #[serde(default)]
    pub zookeeper: ZkSection,
    #[serde(default)]
    pub mysql: MysqlSection,
    #[serde(default)]
    pub ingest: IngestSection,
    #[serde(default)]
    pub catalogue: CatalogueSection,
    pub currencies: CurrencySection,
    /// Where this file was read from; relative paths in it are taken from its folder.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// host:port of every timely process, in process-index order.
    pub processes: Vec<String>,
    pub workers_per_process: usize,
    #[serde(default = "default_epoch_ms")]
    pub epoch_ms: u64,
    /// How long a worker waits for late orders before closing an epoch.
    #[serde(default = "default_watermark_delay_ms")]
    pub watermark_delay_ms: u64,
    /// A worker starts a settlement transaction at most once per this many ms; what
    /// closes meanwhile waits and goes into the next one. Fewer, larger transactions
    /// cost MySQL less per order; each order may wait up to this long more. 0: start
    /// one as soon as an epoch closes. Default 20 (README, Performance: at 10,000
    /// orders/s, MariaDB's CPU fell by a fifth and the latency tails shrank).
    #[serde(default = "default_settle_interval_ms")]
    pub settle_interval_ms: u64,
    /// Where logs, the embedded broker's address and local service data go.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Empty: use the embedded broker (`dtss broker`).
    pub brokers: Vec<String>,
    pub topic: String,
    /// With the embedded broker: refuse orders (503) when this many are unsettled in a
    /// partition (backpressure while the workers or MySQL are behind or down).
    pub max_backlog_per_partition: u64,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: vec![],
            topic: "orders".into(),
            max_backlog_per_partition: 40_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZkSection {
    pub connect: String,
    /// Root znode of this deployment; rates live at `{root}/rates/{C}`.
    pub root: String,
    pub session_timeout_ms: u64,
}

impl Default for ZkSection {
    fn default() -> Self {
        ZkSection {
            connect: "127.0.0.1:2181".into(),
            root: "/dtss".into(),
            session_timeout_ms: 6000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlSection {
    pub url: String,
}

impl Default for MysqlSection {
    fn default() -> Self {
        MysqlSection {
            url: "mysql://dtss:dtss@127.0.0.1:3306/dtss".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    pub listen: String,
    /// Admin token; `DTSS_ADMIN_TOKEN` in the environment overrides it.
    pub admin_token: String,
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            listen: "127.0.0.1:8080".into(),
            admin_token: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogueSection {
    /// Number of generated commodities (ids 1..=items) when no CSV is given.
    pub items: u32,
    pub seed: u64,
    /// CSV with `id,name,price,currency,inventory` rows (header optional).
    pub csv: Option<PathBuf>,
}

impl Default for CatalogueSection {
    fn default() -> Self {
        CatalogueSection {
            items: 10_000,
            seed: 42,
            csv: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencySection {
    /// The currency whose rate is 1 and never moves.
    pub base: String,
    /// Initial rates, as decimal strings: value of one unit in the common unit.
    pub initial: toml::Table,
    #[serde(default = "default_bound_pct")]
    pub bound_pct: String,
    #[serde(default = "default_step_pct")]
    pub max_step_pct: String,
    #[serde(default = "default_period_ms")]
    pub modifier_period_ms: u64,
}

fn default_epoch_ms() -> u64 {
    10
}
fn default_watermark_delay_ms() -> u64 {
    20
}
fn default_settle_interval_ms() -> u64 {
    20
}
fn default_data_dir() -> PathBuf {
    ".dtss".into()
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

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut cfg = Config::parse(&text).with_context(|| format!("in {}", path.display()))?;
        cfg.path = path.to_path_buf();
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        let c = &self.cluster;
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
        if self.kafka.topic.is_empty() {
            bail!("kafka.topic: must not be empty");
        }
        if self.ingest.listen.parse::<SocketAddr>().is_err() {
            bail!(
                "ingest.listen: {:?} is not an address like 127.0.0.1:8080",
                self.ingest.listen
            );
        }
        if !self.zookeeper.root.starts_with('/') || self.zookeeper.root.ends_with('/') {
            bail!(
                "zookeeper.root: {:?} must start with / and not end with one",
                self.zookeeper.root
            );
        }
        self.currencies()?;
        self.initial_rates()?;
        for (key, v) in [
            ("currencies.bound_pct", &self.currencies.bound_pct),
            ("currencies.max_step_pct", &self.currencies.max_step_pct),
        ] {
            let d = Decimal::from_str(v)
                .map_err(|_| anyhow::anyhow!("{key}: {v:?} is not a decimal"))?;
            if d < Decimal::ZERO || d >= Decimal::from(100) {
                bail!("{key}: {v} must be from 0 to below 100");
            }
        }
        Ok(())
    }

    /// The configured currencies, base first, then the others in file order.
    pub fn currencies(&self) -> Result<Vec<Currency>> {
        let base: Currency = self
            .currencies
            .base
            .parse()
            .map_err(|e| anyhow::anyhow!("currencies.base: {e}"))?;
        let mut out = vec![base];
        for k in self.currencies.initial.keys() {
            let c: Currency = k
                .parse()
                .map_err(|e| anyhow::anyhow!("currencies.initial.{k}: {e}"))?;
            if c != base {
                out.push(c);
            }
        }
        if !self.currencies.initial.contains_key(&self.currencies.base) {
            bail!(
                "currencies.initial: give the base currency {} a rate (1)",
                self.currencies.base
            );
        }
        Ok(out)
    }

    pub fn base_currency(&self) -> Currency {
        self.currencies().expect("checked at load")[0]
    }

    /// Initial rates in `currencies()` order.
    pub fn initial_rates(&self) -> Result<Vec<(Currency, Decimal)>> {
        let mut out = vec![];
        for c in self.currencies()? {
            let key = format!("currencies.initial.{c}");
            let v = &self.currencies.initial[c.as_str()];
            let s = v.as_str().ok_or_else(|| {
                anyhow::anyhow!("{key}: write the rate as a string, e.g. \"7.12\"")
            })?;
            let d = Decimal::from_str(s)
                .map_err(|_| anyhow::anyhow!("{key}: {s:?} is not a decimal"))?;
            if d <= Decimal::ZERO {
                bail!("{key}: {s} must be positive");
            }
            out.push((c, d));
        }
        Ok(out)
    }

    pub fn bound_pct(&self) -> Decimal {
        Decimal::from_str(&self.currencies.bound_pct).expect("checked at load")
    }

    pub fn max_step_pct(&self) -> Decimal {
        Decimal::from_str(&self.currencies.max_step_pct).expect("checked at load")
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

    pub fn admin_token(&self) -> Option<String> {
        std::env::var("DTSS_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| Some(self.ingest.admin_token.clone()).filter(|t| !t.is_empty()))
    }

    /// The file in which `dtss broker` publishes the embedded broker's address.
    pub fn broker_addr_file(&self) -> PathBuf {
        self.data_dir().join("broker.addr")
    }

    /// The Kafka bootstrap servers: the configured brokers, or else the embedded
    /// broker's address (waiting up to `patience` for `dtss broker` to publish it).
    pub fn kafka_bootstrap(&self, patience: std::time::Duration) -> Result<String> {
        if !self.kafka.brokers.is_empty() {
            return Ok(self.kafka.brokers.join(","));
        }
        let file = self.broker_addr_file();
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Ok(s) = std::fs::read_to_string(&file) {
                let s = s.trim();
                if !s.is_empty() {
                    return Ok(s.to_string());
                }
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "kafka.brokers is empty and the embedded broker has not published {}: start it with `dtss broker` (or `dtss up`), or configure kafka.brokers",
                    file.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn epoch_of(&self, ms: i64) -> u64 {
        ms.max(0) as u64 / self.cluster.epoch_ms
    }
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
    fn parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.partitions(), 2);
        assert_eq!(c.cluster.epoch_ms, 10);
        assert_eq!(c.kafka.topic, "orders");
        assert!(c.kafka.brokers.is_empty());
        let cur: Vec<String> = c
            .currencies()
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(cur[0], "RMB");
        assert_eq!(cur.len(), 4);
        assert_eq!(c.epoch_of(1_000_019), 100_001);
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
    }
}
