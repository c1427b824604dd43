//! `dtss broker`: the embedded Kafka-protocol broker (the `broker` crate) in a process of
//! its own, so worker crashes lose nothing. Its log lives in `{data_dir}/broker` and
//! survives restarts; segments are deleted once MySQL records every order in them as
//! settled. Production may use a real Kafka cluster instead (`kafka.brokers`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use model::Config;

/// How often settled log segments are looked for and deleted.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// `metrics_listen`: serve the broker's metrics (Prometheus format) there;
/// `accept_loss`: where MySQL settled further than the log goes (the log was lost), record
/// the loss and go on from MySQL's offsets instead of refusing to start.
pub fn run(
    cfg: &Config,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    accept_loss: bool,
) -> Result<()> {
    match listen {
        None => anyhow::ensure!(
            cfg.kafka.brokers.is_empty(),
            "kafka.brokers is set in {}: run the embedded broker as one of them (--listen)",
            cfg.path.display()
        ),
        Some(addr) => anyhow::ensure!(
            cfg.kafka.brokers.iter().any(|b| b == &addr.to_string()),
            "--listen {addr}: not one of kafka.brokers in {} ({:?})",
            cfg.path.display(),
            cfg.kafka.brokers
        ),
    }
    let rt = ore::current_thread_runtime()?;
    rt.block_on(serve(cfg, listen, metrics_listen, accept_loss))
}

async fn serve(
    cfg: &Config,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    accept_loss: bool,
) -> Result<()> {
    let topic = &cfg.kafka.topic;
    let dir = cfg.data_dir().join("broker");
    let _lock = lock_log(&dir)?;
    let broker = open_log(cfg, &dir)?;
    sinks::ensure_schema(&cfg.mysql.urls).await?;
    let pool = sinks::connect(&cfg.mysql.urls, 1)?;
    let settled = sinks::load_offsets(&pool, topic).await?;
    refuse_unsettled_extra_partitions(&dir, topic, cfg.partitions(), &settled)?;
    let broker = match behind_mysql(&broker.offsets(), &settled) {
        ahead if ahead.is_empty() => broker,
        ahead if !accept_loss => anyhow::bail!(refusal(&dir, topic, &ahead)),
        ahead => {
            drop(broker);
            restart_after_loss(&pool, &dir, topic, &ahead).await?;
            open_log(cfg, &dir)?
        }
    };
    let offsets = broker.offsets();
    let listener = match listen {
        Some(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the embedded broker to {addr}"))?,
        None => loopback_listener(&dir).await?,
    };
    let addr = listener.local_addr()?;
    let file = cfg.broker_addr_file();
    if listen.is_none() {
        broker::publish(&file, &addr.to_string())?;
    }
    tracing::info!(
        "embedded Kafka broker at {addr}, topic {topic} with {} partitions, offsets {offsets:?}, \
         log in {} (address in {})",
        cfg.partitions(),
        dir.display(),
        file.display()
    );
    if let Some(at) = metrics_listen {
        let b = broker.clone();
        crate::metrics::serve(at, std::sync::Arc::new(move || b.render_metrics()))?;
    }
    let server = tokio::spawn(broker.clone().serve(listener, addr));
    let trim = {
        let (broker, topic, partitions) = (broker.clone(), topic.clone(), cfg.partitions());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TRIM_EVERY).await;
                match sinks::load_offsets(&pool, &topic).await {
                    Ok(settled) => {
                        if let Err(e) = broker.trim(&first_unsettled(&settled, partitions)) {
                            tracing::warn!("deleting settled log segments: {e:#}");
                        }
                    }
                    Err(e) => tracing::debug!("reading settled offsets from MySQL: {e:#}"),
                }
            }
        })
    };
    crate::signals::shutdown_signal().await;
    server.abort();
    trim.abort();
    if std::fs::read_to_string(&file).is_ok_and(|a| a == addr.to_string()) {
        let _ = std::fs::remove_file(&file);
    }
    tracing::info!("embedded broker stopped");
    Ok(())
}

fn open_log(cfg: &Config, dir: &std::path::Path) -> Result<std::sync::Arc<broker::Broker>> {
    let durability = match cfg.kafka.embedded_fsync {
        true => broker::Durability::Disk,
        false => broker::Durability::PageCache,
    };
    broker::Broker::open_with(dir, &cfg.kafka.topic, cfg.partitions(), durability)
        .with_context(|| format!("opening the broker log in {}", dir.display()))
}

/// A partition whose log ends before the offset MySQL settled up to: its log was lost
/// (deleted, or a disk that lied about a sync), or is not the one its orders went through.
#[derive(Debug)]
struct Ahead {
    partition: usize,
    log_end: i64,
    settled: i64,
}

fn behind_mysql(offsets: &[(i64, i64)], settled: &HashMap<i32, i64>) -> Vec<Ahead> {
    offsets
        .iter()
        .enumerate()
        .filter_map(|(p, &(_, end))| {
            let s = settled.get(&(p as i32)).copied().filter(|&s| s > end)?;
            Some(Ahead {
                partition: p,
                log_end: end,
                settled: s,
            })
        })
        .collect()
}

fn refusal(dir: &std::path::Path, topic: &str, ahead: &[Ahead]) -> String {
    let each: Vec<String> = ahead
        .iter()
        .map(|a| {
            format!(
                "partition {}: MySQL settled up to offset {}, the log ends at {}",
                a.partition, a.settled, a.log_end
            )
        })
        .collect();
    format!(
        "the broker log in {} ends before what MySQL settled of topic {topic} ({}). The log was \
         lost or is not this database's: put the right log back, or accept the loss with \
         `dtss broker --accept-loss` (it is recorded in lost_log, the log goes on from MySQL's \
         offsets, and orders acknowledged but not settled before the loss are gone)",
        dir.display(),
        each.join("; ")
    )
}

/// Record each partition's loss and start its log again at the offset MySQL settled, so
/// that no offset is ever given to a second order.
async fn restart_after_loss(
    pool: &sinks::Pool,
    dir: &std::path::Path,
    topic: &str,
    ahead: &[Ahead],
) -> Result<()> {
    for a in ahead {
        sinks::record_lost_log(pool, topic, a.partition as i32, a.log_end, a.settled).await?;
        broker::Broker::restart_partition_at(dir, topic, a.partition, a.settled)?;
        tracing::warn!(
            "partition {}: the log's offsets {}..{} are lost (settled in MySQL), recorded in \
             lost_log; the log goes on at {}",
            a.partition,
            a.log_end,
            a.settled,
            a.settled
        );
    }
    Ok(())
}

/// The log's lock, held while the broker runs: a second broker on the same log (started
/// twice by mistake) would read it while the first writes, and take its end for a lost
/// log. Refused before anything is read.
fn lock_log(dir: &std::path::Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("lock");
    let file =
        std::fs::File::create(&path).with_context(|| format!("opening {}", path.display()))?;
    file.try_lock().map_err(|e| {
        anyhow::anyhow!(
            "another broker runs on the log in {} ({e}): stop it first",
            dir.display()
        )
    })?;
    Ok(file)
}

/// A loopback port: the one of the last run if it is free, so clients of a crashed
/// broker (ingest's producer, the workers' consumers) reconnect to the address they know.
async fn loopback_listener(dir: &std::path::Path) -> Result<tokio::net::TcpListener> {
    let port_file = dir.join("port");
    let last_port: u16 = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", last_port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::info!("port {last_port} of the last run is taken ({e}): taking another");
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding the embedded broker to 127.0.0.1")?
        }
    };
    let port = listener.local_addr()?.port();
    std::fs::write(&port_file, port.to_string())
        .with_context(|| format!("writing {}", port_file.display()))?;
    Ok(listener)
}

/// A log left by a cluster with more partitions (say `workers_per_process` lowered) has
/// partitions no worker reads any more: fine if MySQL settled them to their end, else
/// their orders would be stranded, so refuse to start.
fn refuse_unsettled_extra_partitions(
    dir: &std::path::Path,
    topic: &str,
    partitions: usize,
    settled: &HashMap<i32, i64>,
) -> Result<()> {
    let extra = broker::Broker::logs_beyond(dir, topic, partitions)?;
    let stranded: Vec<String> = extra
        .iter()
        .filter_map(|&(p, end)| {
            let done = settled.get(&(p as i32)).copied().unwrap_or(0);
            (end > done).then(|| format!("partition {p}: {} unsettled", end - done))
        })
        .collect();
    anyhow::ensure!(
        stranded.is_empty(),
        "the broker log in {} holds orders of partitions the cluster no longer has ({}; it has \
         {partitions}: cluster.processes × cluster.workers_per_process). Start once with the \
         old workers_per_process so that they settle, then change it",
        dir.display(),
        stranded.join(", ")
    );
    if !extra.is_empty() {
        tracing::info!(
            "ignoring the broker log's partitions {:?}: settled to their end",
            extra.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn first_unsettled(settled: &HashMap<i32, i64>, partitions: usize) -> Vec<i64> {
    (0..partitions as i32)
        .map(|p| settled.get(&p).copied().unwrap_or(0))
        .collect()
}
