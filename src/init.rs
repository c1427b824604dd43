//! `dtss init`: the schema, the catalogue (first start only), the rates (when missing)
//! and, with configured brokers, the topic. Idempotent.

use std::time::Duration;

use anyhow::Result;
use model::Config;

/// Schema, catalogue (first start only) and rates (when missing), idempotently.
/// The admin token, made into its file when none is configured and there is none yet.
pub fn admin_token(cfg: &mut Config) -> Result<()> {
    if cfg.ingest.admin_token.is_none() {
        let file = cfg.admin_token_file();
        cfg.ingest.admin_token = Some(crate::secrets::make_admin_token(&file)?);
        println!("admin token generated into {} (mode 0600)", file.display());
    }
    Ok(())
}

pub async fn init(cfg: &Config) -> Result<()> {
    sinks::ensure_schema(&cfg.mysql.urls).await?;
    let pool = sinks::connect(&cfg.mysql.urls, 2)?;
    let csv = cfg.catalogue.csv.as_ref().map(|p| cfg.resolve(p));
    let n = sinks::load_catalogue(
        &pool,
        csv.as_deref(),
        cfg.catalogue.items,
        cfg.catalogue.seed,
        &cfg.currencies.all,
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
