//! `dtss load`: post generated orders over HTTP, wait until they settle, print a
//! summary and check the invariants.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use model::Config;

#[derive(clap::Args, Clone)]
pub struct LoadOpts {
    /// Keep-alive connections the load generator uses.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Seed of the order generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// How many orders to post.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) orders: u64,
    /// Base URL of an ingest replica; default: http://{ingest.listen}.
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Write the ids of the accepted orders to this file (for `dtss check --accepted`).
    #[arg(long)]
    pub(crate) ids: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) opts: LoadOpts,
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
    let pool = sinks::connect(&cfg.mysql.urls, 2)?;
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
