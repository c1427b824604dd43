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
    let zk = rates::connect(cfg, Duration::from_secs(30)).await?;
    rates::seed_rates(&zk, cfg).await?;
    first_rates(&pool, &zk, cfg).await?;
    pool.disconnect().await.ok();
    if !cfg.kafka.brokers.is_empty() {
        dataflow::ensure_topic(cfg).await?;
    }
    Ok(())
}

/// A database without rate history records ZooKeeper's rates as version 1, in force from
/// epoch 0: every order in the log has rates of its own epoch, so a log settled into a
/// fresh database gives the same outcomes whenever it is read.
async fn first_rates(pool: &sinks::Pool, zk: &rates::Client, cfg: &Config) -> Result<()> {
    if sinks::latest_rates(pool).await?.is_some() {
        return Ok(());
    }
    let mut table = vec![];
    for stored in rates::read_stored(zk, cfg).await? {
        let rate = stored.rate.map_err(|why| {
            anyhow::anyhow!(
                "the rate of {} in ZooKeeper, {:?}: {why}",
                stored.currency,
                stored.text
            )
        })?;
        table.push((stored.currency, rate));
    }
    sinks::record_rates(pool, 1, 0, &table).await?;
    tracing::info!("recorded the first rates (version 1, from epoch 0)");
    Ok(())
}
