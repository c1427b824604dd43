//! `dtss broker`: the embedded Kafka-protocol broker (librdkafka's mock cluster) in a
//! process of its own, so worker crashes lose nothing. It keeps ~5 MiB per partition in
//! memory and nothing across its own restart: production uses a real Kafka cluster.

use std::time::Duration;

use anyhow::{Context, Result};
use model::Config;
use rdkafka::mocking::MockCluster;

pub fn run(cfg: &Config) -> Result<()> {
    anyhow::ensure!(
        cfg.kafka.brokers.is_empty(),
        "kafka.brokers is set in {}: the embedded broker is only for configs without brokers",
        cfg.path.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        sinks::ensure_schema(&cfg.mysql.url).await?;
        let pool = sinks::connect(&cfg.mysql.url, 1)?;
        let n = sinks::reset_offsets(&pool, &cfg.kafka.topic).await?;
        if n > 0 {
            tracing::warn!(
                "the embedded broker starts with an empty log: forgot {n} stored offsets of topic {}",
                cfg.kafka.topic
            );
        }
        pool.disconnect().await.ok();
        anyhow::Ok(())
    })?;
    let cluster = MockCluster::new(1).context("starting the embedded Kafka broker")?;
    cluster
        .create_topic(&cfg.kafka.topic, cfg.partitions() as i32, 1)
        .with_context(|| format!("creating topic {}", cfg.kafka.topic))?;
    let addr = cluster.bootstrap_servers();
    let file = cfg.broker_addr_file();
    std::fs::create_dir_all(file.parent().expect("has a parent"))?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, &addr).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &file)?;
    tracing::info!(
        "embedded Kafka broker at {addr}, topic {} with {} partitions (address in {})",
        cfg.kafka.topic,
        cfg.partitions(),
        file.display()
    );
    let stop = crate::signals::stop_flag();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if std::fs::read_to_string(&file).is_ok_and(|a| a == addr) {
        let _ = std::fs::remove_file(&file);
    }
    tracing::info!("embedded broker stopped");
    Ok(())
}
