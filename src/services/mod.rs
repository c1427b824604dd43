//! `dtss services`: the servers DTSS stands on, started by hand on this machine (no
//! systemd), idempotently, installed with `apt-get` when missing: MariaDB (one server,
//! N independent servers, or a Galera cluster), ZooKeeper (alone or a member of an
//! ensemble), and Tansu on SQLite or PostgreSQL. Everything lives under
//! `{home}/services/`; a server another program started on one of their ports is
//! refused, never taken over.
//!
//! | file | owns |
//! |---|---|
//! | `server.rs` | one started server: pid file checked against its command line, wait until it answers, TERM then KILL |
//! | `install.rs` | the Debian packages each service needs |
//! | `mariadb.rs` | MariaDB servers and Galera nodes, and their users |
//! | `zookeeper.rs` | ZooKeeper |
//! | `postgres.rs`, `tansu.rs` | Tansu, built from its sources, and the PostgreSQL it can share |

mod install;
mod mariadb;
mod postgres;
mod server;
mod tansu;
mod zookeeper;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use model::Config;

use mariadb::MariaDb;
use server::log;
use zookeeper::ZooKeeper;

/// Where and on which ports the services run. Each comes from its flag or environment
/// variable, else from the config file (when there is one), else its default.
#[derive(clap::Args, Clone, Debug)]
pub struct ServiceArgs {
    /// The data folder the services live under. Given, the services take their places
    /// from the flags, the environment and the defaults only; else from the config's
    /// data_dir, MySQL URLs and ZooKeeper address (or .dtss without a config).
    #[arg(long, env = "DTSS_HOME")]
    home: Option<PathBuf>,
    /// The address MariaDB and ZooKeeper listen on.
    #[arg(long, env = "DTSS_BIND", default_value = "127.0.0.1")]
    bind: String,
    /// MariaDB's port (independent servers: this + 1, + 2, …).
    #[arg(long, env = "DTSS_MYSQL_PORT")]
    mysql_port: Option<u16>,
    /// ZooKeeper's client port.
    #[arg(long, env = "DTSS_ZK_PORT")]
    zk_port: Option<u16>,
    /// Galera node I listens on this + I.
    #[arg(long, env = "DTSS_GALERA_PORT")]
    galera_port: Option<u16>,
    /// A host pattern the dtss MySQL user may also connect from (e.g. 10.77.0.%).
    #[arg(long, env = "DTSS_MYSQL_CLIENTS")]
    mysql_clients: Option<String>,
    /// The ZooKeeper ensemble's member addresses ("A B C"), with --zk-id.
    #[arg(long, env = "DTSS_ZK_ENSEMBLE")]
    zk_ensemble: Option<String>,
    /// This member's place (1, 2, …) in --zk-ensemble.
    #[arg(long, env = "DTSS_ZK_ID")]
    zk_id: Option<usize>,
    /// The first Tansu broker's port (PostgreSQL's brokers: this + 1, + 2, …).
    #[arg(long, env = "DTSS_TANSU_PORT", default_value_t = 9092)]
    tansu_port: u16,
    /// The PostgreSQL port of Tansu's brokers.
    #[arg(long, env = "DTSS_TANSU_PG_PORT", default_value_t = 5433)]
    tansu_pg_port: u16,
    /// Where Tansu is built (outside any clone, so that it is built once).
    #[arg(long, env = "DTSS_TANSU_HOME")]
    tansu_home: Option<PathBuf>,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum ServicesCommand {
    /// Install what is missing, start what is not running, wait until all answer.
    Up {
        /// A Galera cluster of N nodes instead of the single MariaDB.
        #[arg(long, value_name = "N", conflicts_with_all = ["mariadb_servers", "zookeeper_only"])]
        galera: Option<usize>,
        /// N independent MariaDB servers (on --mysql-port + 1 … + N) beside ZooKeeper.
        #[arg(long, value_name = "N", conflicts_with = "zookeeper_only")]
        mariadb_servers: Option<usize>,
        /// ZooKeeper alone (a member of an ensemble).
        #[arg(long)]
        zookeeper_only: bool,
    },
    /// Up, then wait; exits 1 when one of them dies (for a supervisor to call it
    /// again), and stops them on SIGTERM.
    Watch {
        #[arg(long)]
        zookeeper_only: bool,
    },
    /// Stop every server started from this data folder (and nothing else).
    Down,
    /// Say what runs where.
    Status,
    /// Start Galera node I again (it rejoins the cluster).
    NodeStart { node: usize },
    /// Stop Galera node I (SIGTERM).
    NodeStop { node: usize },
    /// Tansu brokers: `up [--postgres N]`, `down`, `status`.
    Tansu {
        #[arg(value_parser = ["up", "down", "status"])]
        action: String,
        /// N brokers on one PostgreSQL instead of one on SQLite.
        #[arg(long, value_name = "N")]
        postgres: Option<usize>,
    },
}

/// The resolved places and ports.
pub(crate) struct Settings {
    pub home: PathBuf,
    pub bind: String,
    pub mysql_port: u16,
    pub zk_port: u16,
    pub galera_port: u16,
    pub mysql_clients: Option<String>,
    pub zk_ensemble: Option<String>,
    pub zk_id: Option<usize>,
    pub tansu_port: u16,
    pub tansu_pg_port: u16,
    pub tansu_home: PathBuf,
    /// A Galera cluster of this many nodes is what the config names (`mysql.urls`).
    pub galera_nodes: Option<usize>,
}

impl Settings {
    pub fn services(&self) -> PathBuf {
        self.home.join("services")
    }

    fn password_file(&self) -> PathBuf {
        self.home.join("mysql-password")
    }

    /// The flags and environment first, then what `cfg` names, then the defaults.
    fn resolve(args: &ServiceArgs, cfg: Option<&Config>) -> Result<Settings> {
        let cfg = cfg.filter(|_| args.home.is_none());
        let from_config = match cfg {
            Some(c) => Some(config_places(c)?),
            None => None,
        };
        let home = match (&args.home, cfg) {
            (Some(h), _) => h.clone(),
            (None, Some(c)) => c.data_dir(),
            (None, None) => PathBuf::from(".dtss"),
        };
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        // Absolute: mariadb-install-db would take a relative datadir from its basedir.
        let home = std::fs::canonicalize(&home)?;
        let places = from_config.unwrap_or_default();
        let tansu_home = args.tansu_home.clone().unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/dtss/tansu")
        });
        Ok(Settings {
            home,
            bind: args.bind.clone(),
            mysql_port: args.mysql_port.or(places.mysql_port).unwrap_or(3306),
            zk_port: args.zk_port.or(places.zk_port).unwrap_or(2181),
            galera_port: args.galera_port.or(places.galera_port).unwrap_or(3310),
            mysql_clients: args.mysql_clients.clone().filter(|c| !c.is_empty()),
            zk_ensemble: args.zk_ensemble.clone().filter(|e| !e.trim().is_empty()),
            zk_id: args.zk_id,
            tansu_port: args.tansu_port,
            tansu_pg_port: args.tansu_pg_port,
            tansu_home,
            galera_nodes: places.galera_nodes,
        })
    }
}

/// What a config says of the local services.
#[derive(Default)]
struct Places {
    mysql_port: Option<u16>,
    zk_port: Option<u16>,
    galera_port: Option<u16>,
    galera_nodes: Option<usize>,
}

fn loopback(host: &str) -> bool {
    matches!(host, "localhost" | "::1" | "[::1]") || host.starts_with("127.")
}

/// Where a config's MySQL and ZooKeeper are.
struct Hosts {
    /// Each MySQL node: host, port.
    mysql: Vec<(String, u16)>,
    /// ZooKeeper's first member, and its port when one is given.
    zk: String,
    zk_port: Option<u16>,
}

fn config_hosts(cfg: &Config) -> Result<Hosts> {
    let mut mysql = vec![];
    for url in &cfg.mysql.urls {
        let opts = mysql_async::Opts::from_url(url).context("mysql.url does not parse")?;
        mysql.push((opts.ip_or_hostname().to_string(), opts.tcp_port()));
    }
    let first_zk = cfg
        .zookeeper
        .connect
        .split(['/', ','])
        .next()
        .unwrap_or_default();
    let (zk, zk_port) = first_zk.rsplit_once(':').unwrap_or((first_zk, "2181"));
    Ok(Hosts {
        mysql,
        zk: zk.to_string(),
        zk_port: zk_port.parse().ok(),
    })
}

/// Whether the config's MySQL and ZooKeeper are on this machine (else `dtss up` leaves
/// them to whoever runs them).
fn local(cfg: &Config) -> bool {
    config_hosts(cfg)
        .is_ok_and(|h| h.mysql.iter().all(|(host, _)| loopback(host)) && loopback(&h.zk))
}

/// The ports a config's MySQL and ZooKeeper are on, when both are on this machine.
fn config_places(cfg: &Config) -> Result<Places> {
    if !local(cfg) {
        return Ok(Places::default());
    }
    let Hosts {
        mysql: nodes,
        zk_port,
        ..
    } = config_hosts(cfg)?;
    if !cfg.mysql.is_cluster() {
        return Ok(Places {
            mysql_port: Some(nodes[0].1),
            zk_port,
            ..Places::default()
        });
    }
    // A local Galera cluster's nodes listen on consecutive ports: base+1, base+2, …
    let base = nodes[0].1 - 1;
    let consecutive = nodes
        .iter()
        .enumerate()
        .all(|(i, (_, port))| *port as usize == base as usize + i + 1);
    if !consecutive {
        bail!(
            "mysql.urls: a local Galera cluster listens on consecutive ports (e.g. 3311, 3312, \
             3313); start the nodes yourself, or use dtss up --no-services"
        );
    }
    Ok(Places {
        zk_port,
        galera_port: Some(base),
        galera_nodes: Some(nodes.len()),
        ..Places::default()
    })
}

/// `dtss up`'s services: what the config names, when it is on this machine.
pub fn up_for(cfg: &Config) -> Result<()> {
    if !local(cfg) {
        tracing::info!("MySQL or ZooKeeper is not on this machine (see the config): not starting local services");
        return Ok(());
    }
    let s = Settings::resolve(&args_from_env()?, Some(cfg))?;
    let _lock = lock(&s)?;
    match s.galera_nodes {
        Some(n) => galera_up(&s, n)?,
        None => mysql_up(&s)?,
    }
    ZooKeeper::new(&s)?.up()
}

/// The service flags as the environment gives them (for `dtss up`).
fn args_from_env() -> Result<ServiceArgs> {
    #[derive(clap::Parser)]
    struct Only {
        #[command(flatten)]
        args: ServiceArgs,
    }
    use clap::Parser as _;
    Ok(Only::try_parse_from(["dtss"])?.args)
}

pub fn run(args: &ServiceArgs, cfg: Option<&Config>, command: ServicesCommand) -> Result<()> {
    if let Some(c) = cfg {
        if !local(c) && args.home.is_none() {
            tracing::info!(
                "MySQL or ZooKeeper is not on this machine (see the config): no local services"
            );
            return Ok(());
        }
    }
    let s = Settings::resolve(args, cfg)?;
    if let ServicesCommand::Watch { zookeeper_only } = command {
        return watch(&s, zookeeper_only);
    }
    let _lock = lock(&s)?;
    match command {
        ServicesCommand::Up {
            galera,
            mariadb_servers,
            zookeeper_only,
        } => up(
            &s,
            galera.or(s.galera_nodes),
            mariadb_servers,
            zookeeper_only,
        ),
        ServicesCommand::Watch { .. } => unreachable!("handled above"),
        ServicesCommand::Down => {
            down(&s);
            Ok(())
        }
        ServicesCommand::Status => {
            println!("{}", status(&s).join("\n"));
            Ok(())
        }
        ServicesCommand::NodeStart { node } => {
            let n = galera_nodes(&s).len();
            if !(1..=n).contains(&node) {
                bail!(
                    "node-start {node}: not a node of the Galera cluster under {} (1 to {n})",
                    s.services().join("galera").display()
                );
            }
            MariaDb::galera_node(&s, node, n).up(&s, false)
        }
        ServicesCommand::NodeStop { node } => {
            let n = galera_nodes(&s).len();
            if !(1..=n).contains(&node) {
                bail!("node-stop {node}: not a node of the Galera cluster (1 to {n})");
            }
            MariaDb::galera_node(&s, node, n)
                .server()
                .stop(Duration::from_secs(10));
            Ok(())
        }
        ServicesCommand::Tansu { action, postgres } => {
            let t = tansu::Tansu::new(&s);
            match action.as_str() {
                "up" => t.up(postgres),
                "down" => {
                    t.down();
                    Ok(())
                }
                _ => {
                    println!("{}", t.status().join("\n"));
                    Ok(())
                }
            }
        }
    }
}

fn up(s: &Settings, galera: Option<usize>, servers: Option<usize>, zk_only: bool) -> Result<()> {
    let apt_log = s.services().join("apt.log");
    let mut needs: Vec<&install::Need> = install::ZOOKEEPER.iter().collect();
    if !zk_only {
        needs.push(&install::MARIADB);
    }
    if galera.is_some() {
        needs.extend(install::GALERA.iter());
    }
    install::install_missing(&needs, &apt_log)?;
    let what = if zk_only {
        "zookeeper only".to_string()
    } else if let Some(n) = galera {
        galera_up(s, n)?;
        format!(
            "Galera {n} nodes on 127.0.0.1 ports {}–{}",
            s.galera_port + 1,
            s.galera_port + n as u16
        )
    } else if let Some(n) = servers {
        if !(1..=9).contains(&n) {
            bail!("--mariadb-servers takes 1 to 9 servers, got {n}");
        }
        let password = crate::secrets::ensure_secret(&s.password_file(), 24)?;
        for i in 1..=n {
            let m = MariaDb::independent(s, i);
            m.up(s, false)?;
            m.users(&password, s.mysql_clients.as_deref())?;
        }
        format!(
            "{n} MariaDB servers on {} ports {}–{}",
            s.bind,
            s.mysql_port + 1,
            s.mysql_port + n as u16
        )
    } else {
        mysql_up(s)?;
        format!("mysql://dtss@{}:{}", s.bind, s.mysql_port)
    };
    ZooKeeper::new(s)?.up()?;
    log(&format!(
        "ready: {what} (password in {})  zookeeper {}:{}  data {}",
        s.password_file().display(),
        s.bind,
        s.zk_port,
        s.services().display()
    ));
    Ok(())
}

fn mysql_up(s: &Settings) -> Result<()> {
    install::install_missing(&[&install::MARIADB], &s.services().join("apt.log"))?;
    let m = MariaDb::single(s);
    m.up(s, false)?;
    let password = crate::secrets::ensure_secret(&s.password_file(), 24)?;
    m.users(&password, s.mysql_clients.as_deref())
}

/// A Galera cluster of `n` nodes: node 1 starts a new cluster when none of them runs.
fn galera_up(s: &Settings, n: usize) -> Result<()> {
    if !(2..=9).contains(&n) {
        bail!("--galera takes a number of nodes from 2 to 9, got {n}");
    }
    let needs: Vec<&install::Need> = std::iter::once(&install::MARIADB)
        .chain(install::GALERA.iter())
        .collect();
    install::install_missing(&needs, &s.services().join("apt.log"))?;
    let nodes: Vec<MariaDb> = (1..=n).map(|i| MariaDb::galera_node(s, i, n)).collect();
    if nodes.iter().all(|m| m.server().pid().is_none()) {
        nodes[0].up(s, true)?;
    }
    for m in &nodes {
        m.up(s, false)?;
    }
    let password = crate::secrets::ensure_secret(&s.password_file(), 24)?;
    nodes[0].users(&password, s.mysql_clients.as_deref())
}

/// The Galera nodes whose folders exist, in order.
fn galera_nodes(s: &Settings) -> Vec<usize> {
    let mut nodes: Vec<usize> = std::fs::read_dir(s.services().join("galera"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// The independent MariaDB servers whose folders exist.
fn independent_servers(s: &Settings) -> Vec<usize> {
    (1..=9)
        .filter(|i| s.services().join(format!("mariadb-{i}")).is_dir())
        .collect()
}

fn down(s: &Settings) {
    let grace = Duration::from_secs(10);
    if let Ok(zk) = ZooKeeper::new(s) {
        zk.server().stop(grace);
    }
    MariaDb::single(s).server().stop(grace);
    for i in independent_servers(s) {
        MariaDb::independent(s, i).server().stop(grace);
    }
    let nodes = galera_nodes(s);
    for &i in &nodes {
        let m = MariaDb::galera_node(s, i, nodes.len());
        if m.server().pid().is_some() {
            m.server().stop(grace);
        }
    }
}

fn status(s: &Settings) -> Vec<String> {
    let mut out = vec![];
    let m = MariaDb::single(s);
    out.push(match m.server().pid().is_some() && m.ping() {
        true => format!("mariadb: up {}:{}", s.bind, s.mysql_port),
        false => "mariadb: down".into(),
    });
    for i in independent_servers(s) {
        let m = MariaDb::independent(s, i);
        let up = m.server().pid().is_some() && m.ping();
        out.push(format!(
            "mariadb server {i}: {} {}:{}",
            if up { "up" } else { "down" },
            s.bind,
            m.port
        ));
    }
    let nodes = galera_nodes(s);
    for &i in &nodes {
        let m = MariaDb::galera_node(s, i, nodes.len());
        out.push(match m.server().pid().is_some() && m.ready() {
            true => format!("galera node {i}: synced 127.0.0.1:{}", m.port),
            false => format!("galera node {i}: down or not synced"),
        });
    }
    let zk_up = ZooKeeper::new(s).is_ok_and(|zk| zk.server().pid().is_some() && zk.ruok());
    out.push(match zk_up {
        true => format!("zookeeper: up {}:{}", s.bind, s.zk_port),
        false => "zookeeper: down".into(),
    });
    out
}

/// Up, then return an error when a service it started dies (for a supervisor to call
/// it again); SIGTERM or SIGINT stops them and returns Ok.
fn watch(s: &Settings, zk_only: bool) -> Result<()> {
    {
        let _lock = lock(s)?;
        up(s, None, None, zk_only)?;
    }
    let stop = crate::signals::stop_flag();
    let zk = ZooKeeper::new(s)?;
    let mysql = MariaDb::single(s);
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            let _lock = lock(s)?;
            down(s);
            return Ok(());
        }
        if zk.server().pid().is_none() {
            bail!("ZooKeeper is gone");
        }
        if !zk_only && mysql.server().pid().is_none() {
            bail!("MariaDB is gone");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One `dtss services` at a time per data folder (concurrent test binaries call it).
fn lock(s: &Settings) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    std::fs::create_dir_all(s.services())?;
    let path: &Path = &s.services().join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a plain system call on an open file.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the services folder");
    }
    Ok(f)
}
