//! `dtss bench`: load against the running system (open loop at `--rate`, or max
//! throughput), reports in the terminal, as JSON and as HTML with plots, then the
//! invariant checks (docs/DESIGN.md, "Invariants"). `dtss bench rate-delay`: rate write → first order settled with it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use model::Config;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    load: LoadBench,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Delay from a rate written to ZooKeeper to the first order settled with it.
    RateDelay {
        #[arg(long, default_value_t = 1000)]
        injections: u32,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        /// Base URL of an ingest replica; default: http://{ingest.listen}.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print the runs recorded with `--record FILE`, oldest first.
    Records {
        /// The file of records.
        file: PathBuf,
        /// Only the runs with this label.
        #[arg(long)]
        label: Option<String>,
    },
}

#[derive(clap::Args)]
struct LoadBench {
    /// Orders per second on a fixed timetable (open loop); leave out for max throughput.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of steady load (after the ramp).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seconds over which the rate rises from 0 (open loop) or connections join (max).
    #[arg(long, default_value_t = 5.0)]
    ramp: f64,
    /// Seconds to wait after the load for every accepted order to settle.
    #[arg(long, default_value_t = 120.0)]
    drain_timeout: f64,
    /// Concurrent keep-alive connections, or in-flight Kafka sends with --direct-kafka.
    /// Each order waits for its acknowledgement (~1.5 ms direct, 2–3 ms over HTTP), so at
    /// full speed 64 would hold the load under ~25,000–40,000/s: the load generator
    /// measured, not the system.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Produce straight to the Kafka topic (no HTTP): measures the dataflow alone.
    #[arg(long)]
    direct_kafka: bool,
    /// Inject this many random in-bounds rate changes per second while the load runs.
    #[arg(long, default_value_t = 0.0)]
    rate_changes_per_s: f64,
    /// Seed of the order generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Zipf exponent of item popularity, e.g. 1.0 (hot commodities contend); default uniform.
    #[arg(long)]
    zipf: Option<f64>,
    /// The contended workload: a tenth of the orders take one of ten commodities (ids
    /// 1–10), whose stock runs out in a long enough run.
    #[arg(long)]
    contended: bool,
    /// Base URL of an ingest replica; default: http://{ingest.listen}.
    #[arg(long)]
    url: Option<String>,
    /// Repeat the bench this many times and report the medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Folder for run-N.json and run-N.html; default: {data_dir}/bench/{start time}.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Send orders without idempotency keys: a retry after no answer is then a second
    /// order (for comparison only; `dtss check --accepted` may then find extra results).
    #[arg(long)]
    no_idempotency_keys: bool,
    /// Append one JSON record of each run (commit, time, machine, steal, settings,
    /// figures) to this file (`dtss bench records FILE` prints them).
    #[arg(long)]
    record: Option<PathBuf>,
    /// The name the records give what this run measures (e.g. d1k, direct).
    #[arg(long, default_value = "bench")]
    label: String,
}

pub async fn run(cfg: &Config, args: BenchArgs) -> Result<()> {
    match args.command {
        Some(BenchCommand::RateDelay {
            injections,
            interval_ms,
            url,
        }) => rate_delay(cfg, injections, interval_ms, url).await,
        Some(BenchCommand::Records { file, label }) => {
            let records = harness::records::read(&file)?;
            print!("{}", harness::records::table(&records, label.as_deref()));
            Ok(())
        }
        None => load_bench(cfg, args.load).await,
    }
}

async fn load_bench(cfg: &Config, a: LoadBench) -> Result<()> {
    let opts = options(cfg, &a)?;
    let out = match &a.out {
        Some(o) => o.clone(),
        None => cfg
            .data_dir()
            .join("bench")
            .join(model::now_ms().to_string()),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut reports = vec![];
    for run in 1..=a.runs {
        let mut opts = opts.clone();
        opts.seed = opts.seed.wrapping_add(run as u64 - 1);
        let report = one_run(cfg, &opts, run, a.runs).await?;
        write_reports(&report, &out, run)?;
        if let Some(file) = &a.record {
            let record = harness::records::Record::of(&report, &a.label, &commit());
            harness::records::append(file, &record)?;
            println!("  recorded in {}", file.display());
        }
        reports.push(report);
    }
    if reports.len() > 1 {
        let m = harness::medians(&reports);
        println!("{m}");
        std::fs::write(out.join("medians.txt"), &m)?;
    }
    write_accepted(&reports, &out)?;
    let unsettled: u64 = reports.iter().map(|r| r.counts.unsettled).sum();
    let verdicts = harness::check(cfg, None, Duration::from_secs(10)).await?;
    let checked = harness::report(&verdicts, "check: ");
    anyhow::ensure!(
        unsettled == 0,
        "{unsettled} accepted orders had no result after the drain (raise --drain-timeout, or look at the worker logs)"
    );
    checked
}

/// The commit of the working folder (`+dirty` with uncommitted changes), or `unknown`.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head)
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()) =>
        {
            format!("{head}+dirty")
        }
        Some(head) => head,
        None => "unknown".into(),
    }
}

/// The bench's options from the command line, checked.
fn options(cfg: &Config, a: &LoadBench) -> Result<harness::BenchOptions> {
    anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(a.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(
        a.ramp >= 0.0 && a.drain_timeout >= 0.0,
        "--ramp and --drain-timeout must not be negative"
    );
    anyhow::ensure!(
        a.rate_changes_per_s >= 0.0,
        "--rate-changes-per-s must not be negative"
    );
    Ok(harness::BenchOptions {
        url: a
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{}", cfg.ingest.listen)),
        rate: a.rate,
        ramp_s: a.ramp,
        steady_s: a.duration,
        drain_timeout_s: a.drain_timeout,
        connections: a.connections,
        direct_kafka: a.direct_kafka,
        rate_changes_per_s: a.rate_changes_per_s,
        seed: a.seed,
        zipf: a.zipf,
        contended: a.contended,
        keys: !a.no_idempotency_keys,
    })
}

/// Run `run` of `runs`, with a progress bar.
async fn one_run(
    cfg: &Config,
    opts: &harness::BenchOptions,
    run: usize,
    runs: usize,
) -> Result<harness::BenchReport> {
    let load_s = opts.ramp_s + opts.steady_s;
    let bar = indicatif::ProgressBar::new((load_s * 10.0) as u64);
    let style =
        indicatif::ProgressStyle::with_template(&format!("run {run}/{runs} {{bar:30}} {{msg}}"));
    bar.set_style(style.expect("template"));
    let b2 = bar.clone();
    let report = harness::bench(cfg, opts, move |p| {
        b2.set_position((p.elapsed_s * 10.0) as u64);
        b2.set_message(format!(
            "{} {:.0} s: sent {}, accepted {}, settled {}, Kafka lag {}",
            p.phase, p.elapsed_s, p.sent, p.accepted, p.settled, p.lag
        ));
    })
    .await?;
    bar.finish_and_clear();
    Ok(report)
}

/// The run's JSON and HTML reports in `out`, and its table on the terminal.
fn write_reports(report: &harness::BenchReport, out: &std::path::Path, run: usize) -> Result<()> {
    let json = out.join(format!("run-{run}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let html = out.join(format!("run-{run}.html"));
    std::fs::write(&html, harness::html(report)?)
        .with_context(|| format!("writing {}", html.display()))?;
    println!("{}", harness::table(report));
    println!("  report: {} (plots), {}", html.display(), json.display());
    Ok(())
}

/// Every run's accepted order ids, one per line, for `dtss check --accepted`.
fn write_accepted(reports: &[harness::BenchReport], out: &std::path::Path) -> Result<()> {
    let ids: String = reports
        .iter()
        .flat_map(|r| {
            r.accepted_ids
                .iter()
                .map(|id| format!("{}\n", id.hyphenated()))
        })
        .collect();
    let file = out.join("accepted.txt");
    std::fs::write(&file, ids).with_context(|| format!("writing {}", file.display()))?;
    println!(
        "  accepted order ids: {} (for dtss check --accepted)",
        file.display()
    );
    Ok(())
}

async fn rate_delay(
    cfg: &Config,
    injections: u32,
    interval_ms: u64,
    url: Option<String>,
) -> Result<()> {
    let url = url.unwrap_or_else(|| format!("http://{}", cfg.ingest.listen));
    let bar = indicatif::ProgressBar::new(injections as u64);
    let r = harness::rate_delay(
        cfg,
        &url,
        injections,
        Duration::from_millis(interval_ms),
        |i| bar.set_position(i),
    )
    .await?;
    bar.finish_and_clear();
    let h = &r.delay_ms;
    println!(
        "rate write → first order settled with it, over {} of {} injections: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        r.measured,
        r.injections,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max()
    );
    Ok(())
}
