//! `dtss rates`: the rates in ZooKeeper, by hand or by the leader-elected modifier.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use model::Config;

#[derive(Subcommand)]
pub enum RatesCommand {
    /// Step every non-base rate each period while leader; several may run.
    Run {
        /// Period in milliseconds; default: currencies.modifier_period_ms.
        #[arg(long)]
        period_ms: Option<u64>,
        /// Seed for reproducible steps.
        #[arg(long)]
        seed: Option<u64>,
        /// Serve the modifier's metrics (Prometheus format) at http://ADDR/metrics.
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Set rates, e.g. `dtss rates set USD=7.12 EUR=7.80`.
    Set {
        #[arg(required = true, value_name = "CUR=RATE")]
        rates: Vec<String>,
    },
    /// Print the current rates.
    Show,
}

pub async fn run(cfg: &Config, cmd: RatesCommand) -> Result<()> {
    match cmd {
        RatesCommand::Run {
            period_ms,
            seed,
            metrics_listen,
        } => {
            if let Some(at) = metrics_listen {
                let render = std::sync::Arc::new(rates::render_modifier_metrics);
                crate::metrics::serve(at, render)?;
            }
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
            rates::run_modifier(cfg, opts, crate::signals::shutdown_signal()).await
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
            let pool = sinks::connect(&cfg.mysql.urls, 1)?;
            let prices = sinks::max_prices(&pool).await;
            pool.disconnect().await.ok();
            let prices = prices?;
            let mut current = rates::read_rates(&zk, cfg).await?;
            for &(c, r) in &parsed {
                rates::check_payable(&prices, &current, c, r)
                    .map_err(|e| anyhow::anyhow!("{c}={r}: {e}"))?;
                current.retain(|(k, ..)| *k != c);
                current.push((c, r, 0));
            }
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
