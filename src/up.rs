//! `dtss up`: services, schema, broker, workers and ingest on one machine, supervised:
//! a worker process that dies takes the cluster down and up again (timely cannot lose
//! a process and go on); every worker resumes from the offsets committed in MySQL.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use model::Config;

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

#[derive(clap::Args, Clone)]
pub struct LoadOpts {
    /// Keep-alive connections the load generator uses.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seed of the order generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// How many orders to post.
    #[arg(long, default_value_t = 10_000)]
    orders: u64,
    /// Base URL of an ingest replica; default: http://{ingest.listen}.
    #[arg(long)]
    url: Option<String>,
    /// Write the ids of the accepted orders to this file (for `dtss check --accepted`).
    #[arg(long)]
    ids: Option<PathBuf>,
    #[command(flatten)]
    opts: LoadOpts,
}

struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Child,
}

/// The nice value of the services on the way to an order's 202 (ingest, the broker).
const ACK_PATH_NICE: i32 = -5;

/// In a service's process, before it runs `dtss`:
/// - a session of its own, as under a service manager. With Linux's autogroup scheduling
///   (on by default) the kernel then shares the CPUs between the services rather than
///   between the sessions that started them, so ingest no longer shares one share with
///   the workers' settlement bursts;
/// - ingest and the broker at nice -5 (their session too, set by `Proc::spawn`): a 202
///   waits on both, while the workers and MariaDB settle in batches every
///   `settle_interval_ms`. Best effort: without root (CAP_SYS_NICE) they keep the default;
/// - SIGTERM when `up` dies, so no service outlives it (Ctrl-C and SIGTERM reach only `up`,
///   which stops the services in order). The kernel ties this to the thread that forked:
///   `Proc::spawn` runs on `up`'s main thread (`block_on`), which lives as long as `up`.
fn service_setup(parent: i32, ack_path: bool) -> std::io::Result<()> {
    // SAFETY: plain system calls on this process.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != parent {
            // `up` died before the line above took effect.
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        if ack_path {
            // Threads inherit it; the session's own value is set by `Proc::spawn`.
            libc::setpriority(libc::PRIO_PROCESS, 0, ACK_PATH_NICE);
        }
    }
    Ok(())
}

impl Proc {
    fn spawn(name: &str, args: &[String], logs: &std::path::Path) -> Result<Proc> {
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let (parent, ack_path) = (
            std::process::id() as i32,
            matches!(name, "ingest" | "broker"),
        );
        // SAFETY: the closure runs between fork and exec and makes only
        // async-signal-safe calls (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || service_setup(parent, ack_path));
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        if ack_path {
            // Autogroup scheduling weighs a session by the session's nice value.
            let autogroup = format!("/proc/{}/autogroup", child.id());
            if let Err(e) = std::fs::write(&autogroup, ACK_PATH_NICE.to_string()) {
                tracing::info!("{name} keeps the default CPU share ({autogroup}: {e})");
            }
        }
        Ok(Proc {
            name: name.into(),
            args: args.to_vec(),
            log,
            child,
        })
    }

    fn respawn(&mut self, logs: &std::path::Path) -> Result<()> {
        *self = Proc::spawn(&self.name.clone(), &self.args.clone(), logs)?;
        Ok(())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    async fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("{} did not stop within {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

pub async fn up(cfg: Config, args: UpArgs) -> Result<()> {
    let started = Instant::now();
    if !args.no_services {
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || crate::services::run(&c, "up")).await??;
    }
    crate::init(&cfg).await?;
    std::fs::create_dir_all(cfg.data_dir())?;
    let data = std::fs::canonicalize(cfg.data_dir())?;
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let config = std::fs::canonicalize(&cfg.path)?.display().to_string();
    let with_config = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(["--config".to_string(), config.clone()]);
        v
    };

    let mut broker = None;
    if cfg.kafka.brokers.is_empty() {
        let _ = std::fs::remove_file(cfg.broker_addr_file());
        let b = Proc::spawn("broker", &with_config(&["broker"]), &logs)?;
        broker = Some(b);
        let c = cfg.clone();
        let waited = tokio::task::spawn_blocking(move || {
            broker::bootstrap(
                &c.kafka.brokers,
                &c.broker_addr_file(),
                Duration::from_secs(30),
            )
        })
        .await?;
        if let Err(e) = waited {
            bail!(
                "{e:#}\nbroker log:\n{}",
                broker.as_ref().map(|b| b.tail()).unwrap_or_default()
            );
        }
    }
    let spawn_workers = || -> Result<Vec<Proc>> {
        (0..cfg.cluster.processes.len())
            .map(|p| {
                Proc::spawn(
                    &format!("worker-{p}"),
                    &with_config(&["worker", "--process", &p.to_string()]),
                    &logs,
                )
            })
            .collect()
    };
    let mut workers = spawn_workers()?;
    let mut ingest = Proc::spawn("ingest", &with_config(&["ingest"]), &logs)?;
    let mut modifier = Proc::spawn("rate-modifier", &with_config(&["rates", "run"]), &logs)?;
    wait_healthy(&cfg, &mut ingest).await?;

    println!(
        "DTSS is up in {:.1?}: http://{}  ({} worker process(es) × {} workers, {})",
        started.elapsed(),
        cfg.ingest.listen,
        cfg.cluster.processes.len(),
        cfg.cluster.workers_per_process,
        if cfg.kafka.brokers.is_empty() {
            "embedded Kafka broker".to_string()
        } else {
            cfg.kafka.brokers.join(",")
        }
    );
    println!("  data and service files: {}", data.display());
    println!(
        "  logs: {}/{{broker,worker-N,ingest,rate-modifier}}.log",
        logs.display()
    );
    println!(
        "  rates change every {} ms (rate modifier); admin token: ingest.admin_token or DTSS_ADMIN_TOKEN",
        cfg.currencies.modifier_period.as_millis()
    );
    println!("  try: curl -s -XPOST http://{}/api/orders -d '{{\"user_id\":\"u-1\",\"initiator\":\"USD\",\"items\":[{{\"id\":1,\"number\":1}}]}}'", cfg.ingest.listen);
    println!("  Ctrl-C stops it.");

    let mut load_task = args.load.map(|n| {
        let (c, opts) = (cfg.clone(), args.load_opts.clone());
        tokio::spawn(async move {
            load(
                &c,
                &LoadArgs {
                    orders: n,
                    url: None,
                    ids: None,
                    opts,
                },
            )
            .await
        })
    });

    let shutdown = crate::signals::shutdown_signal();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_secs(1);
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
        if let Some(b) = broker.as_mut() {
            if let Some(status) = b.exited() {
                break Err(anyhow::anyhow!(
                    "the embedded broker exited ({status}); orders not yet settled in it are gone.\n{}",
                    b.tail()
                ));
            }
        }
        if let Some(status) = modifier.exited() {
            tracing::warn!(
                "the rate modifier exited ({status}); restarting it\n{}",
                modifier.tail()
            );
            modifier.respawn(&logs)?;
        }
        if let Some(status) = ingest.exited() {
            tracing::warn!("ingest exited ({status}); restarting it\n{}", ingest.tail());
            ingest.respawn(&logs)?;
        }
        let dead: Vec<String> = workers
            .iter_mut()
            .filter_map(|w| w.exited().map(|s| format!("{} ({s})", w.name)))
            .collect();
        if !dead.is_empty() {
            tracing::warn!(
                "{} exited; restarting all worker processes from the committed offsets in {backoff:?}",
                dead.join(", ")
            );
            for w in workers.iter_mut() {
                w.stop(Duration::from_secs(5)).await;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            workers = spawn_workers()?;
        } else {
            backoff = Duration::from_secs(1);
        }
    };

    println!("stopping: ingest, then workers (they settle what they read), then the broker");
    modifier.stop(Duration::from_secs(5)).await;
    ingest.stop(Duration::from_secs(15)).await;
    for w in workers.iter_mut() {
        w.signal(libc::SIGTERM);
    }
    for w in workers.iter_mut() {
        w.stop(Duration::from_secs(30)).await;
    }
    if let Some(b) = broker.as_mut() {
        b.stop(Duration::from_secs(5)).await;
    }
    println!("stopped; MariaDB and ZooKeeper keep running (dtss services down stops them)");
    outcome
}

async fn wait_healthy(cfg: &Config, ingest: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = cfg.ingest.listen;
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_ok() {
                let mut buf = vec![0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    if buf[..n].starts_with(b"HTTP/1.1 200") {
                        return Ok(());
                    }
                }
            }
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

/// Post generated orders, wait for them to settle, print a summary.
pub async fn load(cfg: &Config, args: &LoadArgs) -> Result<()> {
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", cfg.ingest.listen));
    let currencies = cfg.currencies.all.iter().map(|c| c.to_string()).collect();
    let gen = harness::OrderGen::new(args.opts.seed, cfg.catalogue.items, currencies);
    let bar = indicatif::ProgressBar::new(args.orders);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "posting {bar:40} {pos}/{len} orders ({per_sec}, eta {eta})",
        )
        .expect("template"),
    );
    let b2 = bar.clone();
    let report = harness::post_orders(&url, args.orders, args.opts.connections, gen, move |_| {
        b2.inc(1)
    })
    .await?;
    bar.finish_and_clear();
    let secs = report.elapsed.as_secs_f64();
    println!(
        "posted {} orders in {secs:.2} s ({:.0} orders/s over HTTP): accepted {}, rejected 400: {}, 503 answers retried: {}, other errors: {}",
        args.orders,
        args.orders as f64 / secs,
        report.accepted.len(),
        report.rejected_400,
        report.unavailable_503,
        report.other
    );
    let pool = sinks::connect(&cfg.mysql.url, 2)?;
    let s = harness::wait_settled(&pool, &report.accepted, Duration::from_secs(300)).await?;
    let reasons = if s.by_reason.is_empty() {
        "none".to_string()
    } else {
        s.by_reason
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "settled {}/{} in {:.2} s from first acceptance ({:.0} orders/s end to end): succeeded {}, rejected: {reasons}",
        s.settled,
        report.accepted.len(),
        s.span_ms as f64 / 1000.0,
        s.settled as f64 * 1000.0 / s.span_ms.max(1) as f64,
        s.succeeded
    );
    println!(
        "latency: HTTP ack p50 {:.2} ms, p99 {:.2} ms; accepted→decided (settled_at) p50 {} ms, p99 {} ms, max {} ms",
        report.ack_us.value_at_quantile(0.5) as f64 / 1000.0,
        report.ack_us.value_at_quantile(0.99) as f64 / 1000.0,
        s.e2e_ms.0,
        s.e2e_ms.1,
        s.e2e_ms.2
    );
    pool.disconnect().await.ok();
    if let Some(path) = &args.ids {
        std::fs::write(path, report.accepted.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("accepted order ids written to {}", path.display());
    }
    if s.settled < report.accepted.len() as u64 {
        bail!(
            "{} accepted orders did not settle within 300 s",
            report.accepted.len() as u64 - s.settled
        );
    }
    harness::report(
        &harness::check(cfg, None, Duration::from_secs(10)).await?,
        "check: ",
    )
}
