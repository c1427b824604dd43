//! Publishing the dataflow's cumulative totals (docs/DESIGN.md, "Totals"): to ZooKeeper
//! `{root}/totals/{C}` as JSON and to MySQL `totals_published`, with the epoch they are
//! complete up to. A thread of its own writes only the newest snapshot it has, at most
//! every `min_interval`, so the dataflow never waits on it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use model::{Config, Currency, Decimal};
use mysql_async::prelude::*;
use zookeeper_client as zk;

/// Cumulative totals of some currencies, complete up to `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotalsSnapshot {
    pub epoch: u64,
    pub totals: Vec<(Currency, Decimal, u64)>,
}

pub fn totals_path(cfg: &Config, c: Currency) -> String {
    format!("{}/totals/{c}", cfg.zookeeper.root)
}

/// Start the publisher thread; send snapshots into the returned channel.
pub fn spawn_publisher(cfg: Config, min_interval: Duration) -> Sender<TotalsSnapshot> {
    let (tx, rx) = crossbeam_channel::unbounded();
    ore::spawn_on_runtime("totals-publisher", move || {
        publish_loop(cfg, rx, min_interval)
    });
    tx
}

async fn publish_loop(cfg: Config, rx: Receiver<TotalsSnapshot>, min_interval: Duration) {
    let pool = match crate::connect(&cfg.mysql.urls, 1) {
        Ok(p) => p,
        Err(e) => return tracing::error!("totals publisher: {e:#}"),
    };
    let mut client: Option<zk::Client> = None;
    let mut pending: Option<TotalsSnapshot> = None;
    loop {
        // Block for the next snapshot, then keep only the newest one queued.
        if pending.is_none() {
            let rx2 = rx.clone();
            match tokio::task::spawn_blocking(move || rx2.recv()).await {
                Ok(Ok(s)) => pending = Some(s),
                _ => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            pending = Some(s);
        }
        let snap = pending.clone().expect("set above");
        let started = Instant::now();
        if client.is_none() {
            client = crate::publish_connect(&cfg).await.ok();
        }
        let result = match &client {
            Some(c) => publish(&cfg, c, &pool, &snap).await,
            None => Err(anyhow::anyhow!("no ZooKeeper connection")),
        };
        match result {
            Ok(()) => pending = None,
            Err(e) => {
                tracing::warn!("publishing totals failed, will retry: {e:#}");
                client = None;
            }
        }
        let rest = min_interval.saturating_sub(started.elapsed());
        tokio::time::sleep(rest.max(Duration::from_millis(1))).await;
    }
}

async fn publish(
    cfg: &Config,
    client: &zk::Client,
    pool: &crate::Pool,
    snap: &TotalsSnapshot,
) -> Result<()> {
    let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let now = model::now_ms();
    for (c, total, orders) in &snap.totals {
        let path = totals_path(cfg, *c);
        let body = serde_json::json!({
            "currency": c.to_string(),
            "total": total.to_string(),
            "orders": orders,
            "complete_up_to_epoch": snap.epoch,
            "published_at": now,
        })
        .to_string();
        match client.set_data(&path, body.as_bytes(), None).await {
            Ok(_) => {}
            Err(zk::Error::NoNode) => {
                client
                    .mkdir(&format!("{}/totals", cfg.zookeeper.root), &opts)
                    .await?;
                match client.create(&path, body.as_bytes(), &opts).await {
                    Ok(_) | Err(zk::Error::NodeExists) => {}
                    Err(e) => return Err(e).with_context(|| format!("creating {path}")),
                }
            }
            Err(e) => return Err(e).with_context(|| format!("writing {path}")),
        }
    }
    let mut conn = pool.get_conn().await?;
    conn.exec_batch(
        "INSERT INTO totals_published (currency, total, orders, complete_epoch, published_at) VALUES (?,?,?,?,?) \
         ON DUPLICATE KEY UPDATE total = VALUES(total), orders = VALUES(orders), \
         complete_epoch = VALUES(complete_epoch), published_at = VALUES(published_at)",
        snap.totals
            .iter()
            .map(|(c, t, n)| (c.to_string(), *t, *n, snap.epoch, now))
            .collect::<Vec<_>>(),
    )
    .await
    .context("writing totals_published")?;
    Ok(())
}

/// Read the published totals back from ZooKeeper: `(currency, total, orders, epoch)`.
pub async fn read_published(
    cfg: &Config,
    client: &zk::Client,
) -> Result<Vec<(Currency, Decimal, u64, u64)>> {
    let mut out = vec![];
    for c in cfg.currencies.all.clone() {
        match client.get_data(&totals_path(cfg, c)).await {
            Ok((data, _)) => {
                let v: serde_json::Value = serde_json::from_slice(&data)?;
                let total: Decimal = v["total"].as_str().unwrap_or("0").parse()?;
                out.push((
                    c,
                    total,
                    v["orders"].as_u64().unwrap_or(0),
                    v["complete_up_to_epoch"].as_u64().unwrap_or(0),
                ));
            }
            Err(zk::Error::NoNode) => out.push((c, Decimal::ZERO, 0, 0)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}
