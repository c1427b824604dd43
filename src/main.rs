//! `dtss`: the command-line program that wires the crates together. It parses the
//! command line and the config once, and hands each subcommand to its module.

mod bench;
mod broker;
mod campaign;
mod check;
mod dead_letters;
mod init;
mod load;
mod metrics;
mod metrics_ports;
mod proc;
mod rates;
mod secrets;
mod services;
mod signals;
mod supervise;
mod up;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use model::{exit, Config};

/// mimalloc rather than glibc's malloc: every process of the pipeline allocates per
/// order (HTTP bodies, JSON, Kafka records, rows), and glibc's malloc/free took ~11 %
/// of ingest's CPU at full load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "dtss", version, about = "Distributed transaction settlement system", after_help = exit::HELP)]
struct Cli {
    /// The cluster description.
    #[arg(
        long,
        global = true,
        default_value = "cluster.toml",
        env = "DTSS_CONFIG"
    )]
    config: PathBuf,
    /// Override one key of the config for this command (repeatable), e.g.
    /// --set kafka.max_backlog_per_partition=5000. Applied after the file, before the
    /// environment and the secrets files.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring the whole system up locally and keep it serving until Ctrl-C.
    #[command(after_help = exit::HELP)]
    Up(up::UpArgs),
    /// Start, stop or inspect the servers DTSS stands on, on this machine: MariaDB (one,
    /// N independent, or a Galera cluster), ZooKeeper, Tansu.
    #[command(after_help = exit::HELP)]
    Services {
        #[command(flatten)]
        args: services::ServiceArgs,
        #[command(subcommand)]
        command: services::ServicesCommand,
    },
    /// Create the schema, load the catalogue and seed the rates (idempotent).
    #[command(after_help = exit::HELP)]
    Init {
        /// Also make the admin token file ({data_dir}/admin-token, mode 0600) when no
        /// token is configured and there is none yet (`dtss up` always does).
        #[arg(long)]
        admin_token: bool,
    },
    /// Run the embedded Kafka-protocol broker: for a config without kafka.brokers, or
    /// with --listen as one of them (the broker of a cluster of several hosts).
    #[command(after_help = exit::HELP)]
    Broker {
        /// Listen on this address, one of kafka.brokers; default: a loopback port,
        /// published in {data_dir}/broker.addr.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Serve the broker's metrics (Prometheus format) at http://ADDR/metrics.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Where MySQL settled further than the log goes (the log was lost), record the
        /// loss in lost_log and go on from MySQL's offsets instead of refusing to start.
        #[arg(long)]
        accept_loss: bool,
    },
    /// Run one HTTP ingest replica.
    #[command(after_help = exit::HELP)]
    Ingest {
        /// Listen address; default: ingest.listen from the config.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run timely process N of the cluster (its workers read partitions N*w .. N*w+w-1).
    /// Exits 0 after SIGTERM (once what it read is settled).
    #[command(after_help = exit::HELP)]
    Worker {
        /// Which entry of cluster.processes this is; default: the one entry whose
        /// address this host can bind.
        #[arg(long)]
        process: Option<usize>,
        /// Serve this process's metrics (Prometheus format) at http://ADDR/metrics.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Post generated orders over HTTP, wait until they settle, print a summary.
    #[command(after_help = exit::HELP)]
    Load(load::LoadArgs),
    /// Verify the invariants (docs/DESIGN.md) against MySQL and ZooKeeper; non-zero exit
    /// on failure.
    #[command(after_help = exit::HELP)]
    Check {
        /// File of the order ids that got 202, one per line (as `dtss load --ids` writes).
        #[arg(long)]
        accepted: Option<PathBuf>,
        /// Seconds to let published totals catch up.
        #[arg(long, default_value_t = 10)]
        wait: u64,
        /// Also decide every result again in the order of its place (epoch, partition,
        /// offset) from the initial stock, and compare (outcomes from the log alone).
        #[arg(long)]
        in_order: bool,
    },
    /// The messages of the topic that could not be settled (undecodable, invalid,
    /// unsettleable, or another order under a used idempotency key), as kept in MySQL: a
    /// table, or one in full with --show.
    #[command(after_help = exit::HELP)]
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Load the running system and report throughput and latency (docs/PERFORMANCE.md);
    /// `dtss bench rate-delay` measures how fast rate changes apply.
    #[command(after_help = exit::HELP)]
    Bench(bench::BenchArgs),
    /// The rates in ZooKeeper: run the (leader-elected) modifier, or set rates by hand.
    #[command(subcommand, after_help = exit::HELP)]
    Rates(rates::RatesCommand),
    /// Print the config file with the `--set` overrides applied, checked (TOML): a config
    /// derived for another system (`dtss --set … config > other.toml`).
    #[command(after_help = exit::HELP)]
    Config,
    /// Run a command and start it again when it fails (the role systemd plays in
    /// production), with `dtss up`'s restart policy; no config needed.
    #[command(after_help = exit::HELP)]
    Supervise(supervise::SuperviseArgs),
    /// The fault campaign on the three hosts of scripts/hosts.sh (made fresh): each fault
    /// under steady load through nginx, each round ending with a strict check; one table.
    /// Exits 1 if any round lost or duplicated an order or did not recover.
    #[command(after_help = exit::HELP)]
    Campaign(campaign::CampaignArgs),
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
        std::process::exit(exit::FAILED);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Config = cli.command {
        let text = std::fs::read_to_string(&cli.config)
            .with_context(|| format!("cannot read config file {}", cli.config.display()))?;
        Config::parse_with(&text, &cli.config, &cli.sets)?;
        print!("{}", model::overrides::apply(&text, &cli.sets)?);
        return Ok(());
    }
    if let Command::Supervise(args) = cli.command {
        let code = supervise::run(args)?;
        std::process::exit(code);
    }
    if let Command::Campaign(args) = cli.command {
        let passed = campaign::run(args)?;
        std::process::exit(if passed { 0 } else { exit::FAILED });
    }
    if let Command::Services { args, command } = cli.command {
        // The services need no config: one is read when it is there.
        // No secrets: the services make the MySQL password.
        let cfg = match cli.config.exists() {
            true => {
                let text = std::fs::read_to_string(&cli.config)
                    .with_context(|| format!("cannot read config file {}", cli.config.display()))?;
                Some(Config::parse_with(&text, &cli.config, &cli.sets)?)
            }
            false => None,
        };
        return services::run(&args, cfg.as_ref(), command);
    }
    let cfg = read_config(&cli.config, &cli.sets)
        .context("loading the cluster config (pass --config PATH, or run from the folder holding cluster.toml)")?;
    match cli.command {
        Command::Up(args) => multi_thread()?.block_on(up::up(cfg, args)),
        Command::Services { .. }
        | Command::Supervise(_)
        | Command::Config
        | Command::Campaign(_) => {
            unreachable!("run before the config is read")
        }
        Command::Init { admin_token } => {
            let mut cfg = cfg;
            if admin_token {
                init::admin_token(&mut cfg)?;
            }
            multi_thread()?.block_on(init::init(&cfg))
        }
        Command::Broker {
            listen,
            metrics_listen,
            accept_loss,
        } => broker::run(&cfg, listen, metrics_listen, accept_loss),
        // One thread: requests, Kafka delivery reports and responses all meet on it.
        // With a worker per core they hand off between threads (futex wake-ups, context
        // switches), and over HTTP the whole machine took ~45 % more CPU per order.
        Command::Ingest { listen } => {
            let listen = listen.unwrap_or(cfg.ingest.listen);
            one_thread()?.block_on(ingest::serve(cfg, listen, signals::shutdown_signal()))
        }
        Command::Worker {
            process,
            metrics_listen,
        } => worker::run(cfg, process, metrics_listen),
        Command::Load(args) => multi_thread()?.block_on(load::load(&cfg, &args)),
        Command::Rates(cmd) => multi_thread()?.block_on(rates::run(&cfg, cmd)),
        Command::Check {
            accepted,
            wait,
            in_order,
        } => multi_thread()?.block_on(check::run(
            &cfg,
            accepted.as_deref(),
            Duration::from_secs(wait),
            in_order,
        )),
        Command::DeadLetters(args) => multi_thread()?.block_on(dead_letters::run(&cfg, args)),
        // One thread, like ingest: the load generator's requests and their answers meet
        // on it instead of handing off between threads.
        Command::Bench(args) => one_thread()?.block_on(bench::run(&cfg, args)),
    }
}

/// The config at `path`, with the secrets it leaves to files and the environment.
pub(crate) fn read_config(path: &std::path::Path, sets: &[String]) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut cfg = Config::parse_with(&text, path, sets)?;
    secrets::apply(&mut cfg)?;
    Ok(cfg)
}

fn multi_thread() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

fn one_thread() -> Result<tokio::runtime::Runtime> {
    ore::current_thread_runtime().context("starting tokio")
}
