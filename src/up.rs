//! `dtss up`: services, schema, broker, workers, ingest and the rate modifier on one
//! machine, supervised until Ctrl-C, SIGTERM or SIGHUP. A worker process that dies takes
//! the cluster's workers down and up again (timely cannot lose a process and go on);
//! every worker resumes from the offsets committed in MySQL. The broker (on its port,
//! from its log), ingest and the rate modifier are restarted alone. Workers that fail
//! `GIVE_UP_AFTER` times in a row without any committed offset moving (the same batch
//! each time) are not started again: the supervisor says which partitions wait at which
//! offsets, and why.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use model::Config;

use crate::load::{LoadArgs, LoadOpts};
use crate::metrics_ports::MetricsPorts;
use crate::proc::Proc;

/// Worker failures in a row, with no committed offset moving, after which they are
/// not restarted.
const GIVE_UP_AFTER: u32 = 3;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Also post N generated orders over HTTP and print a summary.
    #[arg(long)]
    load: Option<u64>,
    /// With --load: stop everything after the summary instead of serving on.
    #[arg(long)]
    exit_after_load: bool,
    /// Do not start the local MariaDB and ZooKeeper (they are already running).
    #[arg(long)]
    no_services: bool,
    #[command(flatten)]
    load_opts: LoadOpts,
}

pub async fn up(cfg: Config, args: UpArgs) -> Result<()> {
    let started = Instant::now();
    if !args.no_services {
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || crate::services::up_for(&c)).await??;
    }
    let mut cfg = cfg;
    // A first start of the local services has only now generated the MySQL password.
    crate::secrets::apply(&mut cfg)?;
    crate::init::init(&cfg).await?;
    crate::init::admin_token(&mut cfg)?;
    let mut sup = Supervisor::start(&cfg).await?;
    banner(&cfg, &sup, started.elapsed());
    let mut load_task = args
        .load
        .map(|n| spawn_load(&cfg, n, args.load_opts.clone()));
    let shutdown = crate::signals::shutdown_signal();
    tokio::pin!(shutdown);
    let outcome: Result<()> = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if let Some(t) = load_task.as_mut().filter(|t| t.is_finished()) {
            let r = t.await.context("load task")?;
            load_task = None;
            if let Err(e) = &r {
                eprintln!("load failed: {e:#}");
            }
            if args.exit_after_load {
                break r;
            }
        }
        if let Err(e) = sup.tick().await {
            break Err(e);
        }
    };
    sup.shutdown().await;
    outcome
}

fn spawn_load(cfg: &Config, orders: u64, opts: LoadOpts) -> tokio::task::JoinHandle<Result<()>> {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let args = LoadArgs {
            orders,
            url: None,
            ids: None,
            opts,
        };
        crate::load::load(&cfg, &args).await
    })
}

fn banner(cfg: &Config, sup: &Supervisor, took: Duration) {
    let kafka = if cfg.kafka.brokers.is_empty() {
        "embedded Kafka broker".to_string()
    } else {
        cfg.kafka.brokers.join(",")
    };
    println!(
        "DTSS is up in {took:.1?}: http://{}  ({} worker process(es) × {} workers, {kafka})",
        cfg.ingest.listen,
        cfg.cluster.processes.len(),
        cfg.cluster.workers_per_process,
    );
    println!(
        "  console: http://{}/ (orders, live throughput, lag, latency, rates, totals, live views)",
        cfg.ingest.listen
    );
    println!("  data and service files: {}", sup.data.display());
    println!(
        "  metrics: {} (Prometheus targets in {})",
        sup.metrics.describe(cfg),
        sup.metrics.targets.display()
    );
    println!(
        "  logs: {}/{{broker,worker-N,ingest,rate-modifier}}.log",
        sup.logs.display()
    );
    println!(
        "  rates change every {} ms (rate modifier); admin token: ingest.admin_token, DTSS_ADMIN_TOKEN or {}",
        cfg.currencies.modifier_period.as_millis(),
        cfg.admin_token_file().display()
    );
    println!(
        "  try: curl -s -XPOST http://{}/api/orders -d '{{\"user_id\":\"u-1\",\"initiator\":\"USD\",\"items\":[{{\"id\":1,\"number\":1}}]}}'",
        cfg.ingest.listen
    );
    println!("  Ctrl-C stops it.");
}

/// The processes `up` runs, and how it restarts them.
struct Supervisor {
    data: PathBuf,
    logs: PathBuf,
    /// The absolute path of the config every service is started with.
    config: Vec<String>,
    metrics: MetricsPorts,
    broker: Option<Proc>,
    workers: Vec<Proc>,
    ingest: Proc,
    modifier: Proc,
    /// The wait before the workers are started again, doubling while they keep dying.
    backoff: Duration,
    crashes: CrashLoop,
}

/// The workers' failures in a row on the same committed offsets.
struct CrashLoop {
    pool: sinks::Pool,
    topic: String,
    per_process: usize,
    /// The committed offsets at the last failure, and how many failures in a row
    /// found them so.
    last: Option<std::collections::HashMap<i32, i64>>,
    failures: u32,
    /// Set once the workers are given up on.
    gave_up: bool,
    /// When `moved` last read the offsets: at most every 5 s.
    checked: Instant,
}

impl CrashLoop {
    /// Whether a committed offset moved since the last failure (the failures in a row
    /// end then).
    async fn moved(&mut self) -> bool {
        if self.checked.elapsed() < Duration::from_secs(5) {
            return false;
        }
        self.checked = Instant::now();
        let read = sinks::load_offsets(&self.pool, &self.topic);
        let Ok(Ok(now)) = tokio::time::timeout(Duration::from_secs(5), read).await else {
            return false;
        };
        if self.last.as_ref() == Some(&now) {
            return false;
        }
        self.last = None;
        self.failures = 0;
        true
    }

    /// Workers `dead` (process indexes) failed: whether to start them again.
    async fn restart(&mut self, dead: &[usize], why: &str) -> bool {
        let read = sinks::load_offsets(&self.pool, &self.topic);
        let now = match tokio::time::timeout(Duration::from_secs(5), read).await {
            Ok(Ok(offsets)) => Some(offsets),
            // MySQL does not answer: no telling whether they moved; keep trying.
            _ => None,
        };
        self.failures = match (&self.last, &now) {
            (Some(a), Some(b)) if a == b => self.failures + 1,
            _ => 1,
        };
        self.last = now;
        if self.failures < GIVE_UP_AFTER {
            return true;
        }
        let offsets = self.last.as_ref().expect("counted only when read");
        let waiting: Vec<String> = dead
            .iter()
            .flat_map(|p| p * self.per_process..(p + 1) * self.per_process)
            .map(|partition| {
                let at = offsets.get(&(partition as i32)).copied().unwrap_or(0);
                format!("partition {partition} at offset {at}")
            })
            .collect();
        tracing::error!(
            "the workers failed {} times in a row without settling anything ({}): not \
             restarting them. Fix the cause and start dtss up again. The last failure:\n{why}",
            self.failures,
            waiting.join(", ")
        );
        self.gave_up = true;
        false
    }
}

impl Supervisor {
    /// Start the broker (when none is configured) and wait for its address, then the
    /// workers, ingest and the rate modifier; return once ingest answers /healthz.
    async fn start(cfg: &Config) -> Result<Supervisor> {
        std::fs::create_dir_all(cfg.data_dir())?;
        let data = std::fs::canonicalize(cfg.data_dir())?;
        let logs = data.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let config = config_args(cfg)?;
        let processes = cfg.cluster.processes.len();
        let metrics = MetricsPorts::pick(cfg, processes, &data)?;
        let args = |extra: &[&str], metrics: u16| {
            let mut v = service_args(&config, extra);
            v.extend(["--metrics-listen".into(), format!("127.0.0.1:{metrics}")]);
            v
        };
        let broker = match cfg.kafka.brokers.is_empty() {
            true => Some(start_broker(cfg, &args(&["broker"], metrics.broker), &logs).await?),
            false => None,
        };
        let workers = spawn_workers(&config, &metrics.workers, &logs)?;
        let mut ingest = Proc::spawn("ingest", &service_args(&config, &["ingest"]), &logs)?;
        let modifier = Proc::spawn(
            "rate-modifier",
            &args(&["rates", "run"], metrics.modifier),
            &logs,
        )?;
        wait_healthy(cfg, &mut ingest).await?;
        let crashes = CrashLoop {
            pool: sinks::connect(&cfg.mysql.urls, 1)?,
            topic: cfg.kafka.topic.clone(),
            per_process: cfg.cluster.workers_per_process,
            last: None,
            failures: 0,
            gave_up: false,
            checked: Instant::now(),
        };
        Ok(Supervisor {
            data,
            logs,
            config,
            metrics,
            broker,
            workers,
            ingest,
            modifier,
            backoff: Duration::from_secs(1),
            crashes,
        })
    }

    /// Restart what exited. The broker comes back on its port with its log (ingest's
    /// producer and the workers' consumers reconnect to it); meanwhile ingest answers 503
    /// or 504 and the workers wait.
    async fn tick(&mut self) -> Result<()> {
        let broker = self.broker.iter_mut();
        for p in broker.chain([&mut self.modifier, &mut self.ingest]) {
            if let Some(status) = p.exited() {
                let tail = p.tail();
                if p.respawn()? {
                    tracing::warn!("{} exited ({status}); restarted it\n{tail}", p.name);
                } else if p.restart_delay() > Duration::ZERO {
                    tracing::debug!(
                        "{} exited ({status}); restarting in {:?}",
                        p.name,
                        p.restart_delay()
                    );
                }
            }
        }
        if self.crashes.gave_up {
            return Ok(());
        }
        let dead: Vec<(usize, String)> = self
            .workers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, w)| w.exited().map(|s| (i, format!("{} ({s})", w.name))))
            .collect();
        if dead.is_empty() {
            if self.backoff > Duration::from_secs(1) && self.crashes.moved().await {
                self.backoff = Duration::from_secs(1);
            }
            return Ok(());
        }
        let indexes: Vec<usize> = dead.iter().map(|(i, _)| *i).collect();
        let why = self.workers[indexes[0]].tail();
        let dead: Vec<String> = dead.into_iter().map(|(_, d)| d).collect();
        if !self.crashes.restart(&indexes, &why).await {
            for w in self.workers.iter_mut() {
                w.stop(Duration::from_secs(5)).await;
            }
            return Ok(());
        }
        tracing::warn!(
            "{} exited; restarting all worker processes from the committed offsets in {:?}",
            dead.join(", "),
            self.backoff
        );
        for w in self.workers.iter_mut() {
            w.stop(Duration::from_secs(5)).await;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        self.workers = spawn_workers(&self.config, &self.metrics.workers, &self.logs)?;
        Ok(())
    }

    /// Stop in order: the modifier and ingest (no new orders), the workers (they settle
    /// what they read), then the broker.
    async fn shutdown(mut self) {
        println!("stopping: ingest, then workers (they settle what they read), then the broker");
        self.modifier.stop(Duration::from_secs(5)).await;
        self.ingest.stop(Duration::from_secs(15)).await;
        for w in self.workers.iter_mut() {
            w.signal(libc::SIGTERM);
        }
        for w in self.workers.iter_mut() {
            w.stop(Duration::from_secs(30)).await;
        }
        if let Some(b) = self.broker.as_mut() {
            b.stop(Duration::from_secs(5)).await;
        }
        println!("stopped; MariaDB and ZooKeeper keep running (dtss services down stops them)");
    }
}

/// A service's command line: `extra`, then `--config PATH` and the overrides.
fn service_args(config: &[String], extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    v.extend(config.iter().cloned());
    v
}

/// `--config PATH` (absolute) and every `--set` override `up` was given: what each
/// service it starts reads the same config with.
fn config_args(cfg: &Config) -> Result<Vec<String>> {
    let path = std::fs::canonicalize(&cfg.path)
        .with_context(|| format!("finding {}", cfg.path.display()))?;
    let mut v = vec!["--config".to_string(), path.display().to_string()];
    for set in &cfg.overrides {
        v.extend(["--set".to_string(), set.clone()]);
    }
    Ok(v)
}

/// Start the embedded broker and wait until it has published its address.
async fn start_broker(cfg: &Config, args: &[String], logs: &Path) -> Result<Proc> {
    let _ = std::fs::remove_file(cfg.broker_addr_file());
    let broker = Proc::spawn("broker", args, logs)?;
    let file = cfg.broker_addr_file();
    let waited =
        tokio::task::spawn_blocking(move || broker::bootstrap(&[], &file, Duration::from_secs(30)))
            .await?;
    if let Err(e) = waited {
        bail!("{e:#}\nbroker log:\n{}", broker.tail());
    }
    Ok(broker)
}

fn spawn_workers(config: &[String], metrics: &[u16], logs: &Path) -> Result<Vec<Proc>> {
    metrics
        .iter()
        .enumerate()
        .map(|(p, port)| {
            let p = p.to_string();
            let mut args = service_args(config, &["worker", "--process", &p]);
            args.extend(["--metrics-listen".into(), format!("127.0.0.1:{port}")]);
            Proc::spawn(&format!("worker-{p}"), &args, logs)
        })
        .collect()
}

async fn wait_healthy(cfg: &Config, ingest: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = cfg.ingest.listen;
    loop {
        if healthz(addr).await {
            return Ok(());
        }
        if let Some(status) = ingest.exited() {
            bail!(
                "ingest exited ({status}) while starting:\n{}",
                ingest.tail()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "ingest did not answer on {addr} within 60 s:\n{}",
                ingest.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `GET /healthz` at `addr` answers 200.
async fn healthz(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
        return false;
    };
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 64];
    matches!(s.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
}
