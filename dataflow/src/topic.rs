//! The topic's partitions: one per worker (docs/DESIGN.md, "Cluster").

use std::time::Duration;

use anyhow::{Context, Result};
use model::Config;

/// Create the topic with one partition per worker when it is missing (configured
/// brokers only: the embedded broker creates its own, and takes no CreateTopics even
/// when it is one of the configured), then check its partition count.
pub async fn ensure_topic(cfg: &Config) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let bootstrap = broker::bootstrap(
        &cfg.kafka.brokers,
        &cfg.broker_addr_file(),
        Duration::from_secs(30),
    )?;
    let check = |cfg: &Config, bootstrap: &str| {
        let (cfg, bootstrap) = (cfg.clone(), bootstrap.to_string());
        tokio::task::spawn_blocking(move || check_topic(&cfg, &bootstrap))
    };
    if !cfg.kafka.brokers.is_empty() && check(cfg, &bootstrap).await?.is_err() {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .context("creating a Kafka admin client")?;
        let topic = NewTopic::new(
            &cfg.kafka.topic,
            cfg.partitions() as i32,
            TopicReplication::Fixed(1),
        );
        let results = admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .context("creating the topic")?;
        for r in results {
            match r {
                Ok(t) => tracing::info!("created topic {t} with {} partitions", cfg.partitions()),
                Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!("topic {t} exists")
                }
                Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
            }
        }
    }
    check(cfg, &bootstrap).await?
}

/// The check that the topic has exactly one partition per worker.
pub fn check_topic(cfg: &Config, bootstrap: &str) -> Result<()> {
    use rdkafka::consumer::Consumer;
    let consumer = crate::kafka::consumer(bootstrap)?;
    let md = consumer
        .fetch_metadata(Some(&cfg.kafka.topic), Duration::from_secs(10))
        .with_context(|| {
            format!(
                "reading metadata of topic {} from {bootstrap}",
                cfg.kafka.topic
            )
        })?;
    let parts = md
        .topics()
        .iter()
        .find(|t| t.name() == cfg.kafka.topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    anyhow::ensure!(
        parts == cfg.partitions(),
        "topic {} has {parts} partitions but the cluster has {} workers (cluster.processes × \
         cluster.workers_per_process): one partition per worker is required. Change workers_per_process, \
         or use a topic (kafka.topic) with that many partitions",
        cfg.kafka.topic,
        cfg.partitions()
    );
    Ok(())
}
