//! `dtss`: the command-line program that wires the crates together. See README.md.

mod bench;
mod broker;
mod services;
mod signals;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use model::Config;

/// mimalloc rather than glibc's malloc: every process of the pipeline allocates per
/// order (HTTP bodies, JSON, Kafka records, rows), and glibc's malloc/free took ~11 %
/// of ingest's CPU at full load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "dtss",
    version,
    about = "Distributed transaction settlement system"
)]
struct Cli {
    /// The cluster description.
    #[arg(
        long,
        global = true,
        default_value = "cluster.toml",
        env = "DTSS_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring the whole system up locally and keep it serving until Ctrl-C.
    Up(up::UpArgs),
    /// Start, stop or inspect the local MariaDB and ZooKeeper (scripts/services.sh).
    Services {
        #[arg(value_parser = ["up", "down", "status"])]
        action: String,
    },
    /// Create the schema, load the catalogue and seed the rates (idempotent).
    Init,
    /// Run the embedded Kafka-protocol broker (when kafka.brokers is empty).
    Broker,
    /// Run one HTTP ingest replica.
    Ingest {
        /// Listen address; default: ingest.listen from the config.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run timely process N of the cluster (its workers read partitions N*w .. N*w+w-1).
    /// Exits 0 after SIGTERM (once what it read is settled), 5 when another process of
    /// the cluster is lost: then restart them all; they resume from MySQL's offsets.
    Worker {
        /// Which entry of cluster.processes this is; default: the one entry whose
        /// address this host can bind.
        #[arg(long)]
        process: Option<usize>,
    },
    /// Post generated orders over HTTP, wait until they settle, print a summary.
    Load(up::LoadArgs),
    /// Verify the invariants of SPEC §7 against MySQL and ZooKeeper; non-zero exit on failure.
    Check {
        /// File of the order ids that got 202, one per line (as `dtss load --ids` writes).
        #[arg(long)]
        accepted: Option<PathBuf>,
        /// Seconds to let published totals catch up.
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
    /// Load the running system and report throughput and latency (see README,
    /// Performance); `dtss bench rate-delay` measures how fast rate changes apply.
    Bench(bench::BenchArgs),
    /// The rates in ZooKeeper: run the (leader-elected) modifier, or set rates by hand.
    #[command(subcommand)]
    Rates(RatesCommand),
}

#[derive(Subcommand)]
enum RatesCommand {
    /// Step every non-base rate each period while leader; several may run.
    Run {
        /// Period in milliseconds; default: currencies.modifier_period_ms.
        #[arg(long)]
        period_ms: Option<u64>,
        /// Seed for reproducible steps.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Set rates, e.g. `dtss rates set USD=7.12 EUR=7.80`.
    Set {
        #[arg(required = true, value_name = "CUR=RATE")]
        rates: Vec<String>,
    },
    /// Print the current rates.
    Show,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,librdkafka=warn,rdkafka=warn,zookeeper_client=warn".into()
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let cfg = Config::load(&cli.config).context(
        "loading the cluster config (pass --config PATH, or run from the folder holding cluster.toml)",
    )?;
    let runtime = |mut builder: tokio::runtime::Builder| {
        builder.enable_all().build().context("starting tokio")
    };
    let rt = || runtime(tokio::runtime::Builder::new_multi_thread());
    match cli.command {
        Command::Up(args) => rt()?.block_on(up::up(cfg, args)),
        Command::Services { action } => services::run(&cfg, &action),
        Command::Init => rt()?.block_on(init(&cfg)),
        Command::Broker => broker::run(&cfg),
        Command::Ingest { listen } => {
            let listen = match listen {
                Some(l) => l,
                None => cfg.ingest.listen,
            };
            // One thread: requests, Kafka delivery reports and responses all meet on
            // it. With a worker per core they hand off between threads (futex wake-ups,
            // context switches), and over HTTP the whole machine took ~45 % more CPU
            // per order (on 2 cores; 10k → 15k orders/s).
            runtime(tokio::runtime::Builder::new_current_thread())?.block_on(ingest::serve(
                cfg,
                listen,
                signals::shutdown_signal(),
            ))
        }
        Command::Worker { process } => {
            let process = match process {
                Some(p) => p,
                None => own_process(&cfg)?,
            };
            let stop = signals::stop_flag();
            dataflow::run(cfg, process, stop)
        }
        Command::Load(args) => rt()?.block_on(up::load(&cfg, &args)),
        Command::Rates(cmd) => rt()?.block_on(rates_cmd(&cfg, cmd)),
        Command::Check { accepted, wait } => {
            let ids = match &accepted {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading --accepted {}", p.display()))?
                        .lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>(),
                ),
                None => None,
            };
            let verdicts = rt()?.block_on(harness::check(
                &cfg,
                ids.as_deref(),
                Duration::from_secs(wait),
            ))?;
            harness::report(&verdicts, "")
        }
        // One thread, like ingest: the load generator's requests and their answers meet
        // on it instead of handing off between threads.
        Command::Bench(args) => {
            runtime(tokio::runtime::Builder::new_current_thread())?.block_on(bench::run(&cfg, args))
        }
    }
}

async fn rates_cmd(cfg: &Config, cmd: RatesCommand) -> Result<()> {
    match cmd {
        RatesCommand::Run { period_ms, seed } => {
            let period = period_ms.map_or(cfg.currencies.modifier_period, Duration::from_millis);
            anyhow::ensure!(
                period >= Duration::from_millis(10),
                "--period-ms must be at least 10"
            );
            let opts = rates::ModifierOptions {
                period,
                seed,
                max_periods: None,
            };
            rates::run_modifier(cfg, opts, signals::shutdown_signal()).await
        }
        RatesCommand::Set { rates: pairs } => {
            let mut parsed = vec![];
            for p in &pairs {
                let (c, r) = p
                    .split_once('=')
                    .with_context(|| format!("{p:?}: write CUR=RATE, e.g. USD=7.12"))?;
                let (c, r) =
                    rates::parse_injection(cfg, c, r).map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
                parsed.push((c, r));
            }
            let zk = rates::connect(cfg, Duration::from_secs(10)).await?;
            rates::seed_rates(&zk, cfg).await?;
            for (c, r) in parsed {
                let v = rates::inject(&zk, cfg, c, r).await?;
                println!("{c} = {r} (znode version {v})");
            }
            Ok(())
        }
        RatesCommand::Show => {
            let zk = rates::connect(cfg, Duration::from_secs(10)).await?;
            for (c, r, v) in rates::read_rates(&zk, cfg).await? {
                println!("{c} = {r} (znode version {v})");
            }
            Ok(())
        }
    }
}

/// The index of the one `cluster.processes` entry this host owns: the one whose
/// address it can bind (the port must be free, as timely is about to take it).
fn own_process(cfg: &Config) -> Result<usize> {
    let mine: Vec<usize> = cfg
        .cluster
        .processes
        .iter()
        .enumerate()
        .filter(|(_, addr)| std::net::TcpListener::bind(addr.as_str()).is_ok())
        .map(|(i, _)| i)
        .collect();
    match mine.as_slice() {
        [one] => {
            tracing::info!("this host is process {one} ({})", cfg.cluster.processes[*one]);
            Ok(*one)
        }
        [] => anyhow::bail!(
            "none of cluster.processes is an address of this host with a free port: pass --process N"
        ),
        many => anyhow::bail!(
            "cluster.processes entries {many:?} are all addresses of this host: pass --process N"
        ),
    }
}

/// Schema, catalogue (first start only) and rates (when missing), idempotently.
pub async fn init(cfg: &Config) -> Result<()> {
    sinks::ensure_schema(&cfg.mysql.url).await?;
    let pool = sinks::connect(&cfg.mysql.url, 2)?;
    let csv = cfg.catalogue.csv.as_ref().map(|p| cfg.resolve(p));
    let n = sinks::load_catalogue(
        &pool,
        csv.as_deref(),
        cfg.catalogue.items,
        cfg.catalogue.seed,
        &cfg.currencies.all.clone(),
    )
    .await?;
    if n > 0 {
        tracing::info!("loaded a catalogue of {n} commodities");
    }
    pool.disconnect().await.ok();
    let zk = rates::connect(cfg, Duration::from_secs(30)).await?;
    rates::seed_rates(&zk, cfg).await?;
    if !cfg.kafka.brokers.is_empty() {
        dataflow::ensure_topic(cfg).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(processes: &str) -> Config {
        Config::parse(&format!(
            "[cluster]\nprocesses = [{processes}]\nworkers_per_process = 1\n\
             [currencies]\nbase = \"RMB\"\ninitial = {{ RMB = \"1\", USD = \"7.12\" }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_process_index_is_found_from_the_hosts_own_addresses() {
        // TEST-NET-1 is nobody's address; port 0 on loopback always binds.
        assert_eq!(
            own_process(&cfg(r#""192.0.2.1:2101", "127.0.0.1:0""#)).unwrap(),
            1
        );
        let none = own_process(&cfg(r#""192.0.2.1:2101""#))
            .unwrap_err()
            .to_string();
        assert!(none.contains("pass --process"), "{none}");
        let many = own_process(&cfg(r#""127.0.0.1:0", "127.0.0.1:0""#))
            .unwrap_err()
            .to_string();
        assert!(
            many.contains("[0, 1]") && many.contains("pass --process"),
            "{many}"
        );
    }
}
