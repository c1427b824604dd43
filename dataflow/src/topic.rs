//! The topic's partitions: one per worker (docs/DESIGN.md, "Cluster"); on configured
//! brokers, a topic that keeps unsettled orders: replicated where there are several
//! brokers, acknowledged by enough of them, and never shortened by retention.

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
        let keep = Keep::wanted(cfg, brokers(&bootstrap).await?);
        let min_insync = keep.min_insync.to_string();
        let retention = keep.retention_ms.to_string();
        let topic = NewTopic::new(
            &cfg.kafka.topic,
            cfg.partitions() as i32,
            TopicReplication::Fixed(keep.replicas),
        )
        .set("min.insync.replicas", &min_insync)
        .set("retention.ms", &retention)
        .set("retention.bytes", "-1")
        .set("cleanup.policy", "delete");
        let results = admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .context("creating the topic")?;
        for r in results {
            match r {
                Ok(t) => tracing::info!(
                    "created topic {t} with {} partitions of {} replicas ({} in sync to \
                     acknowledge), kept without limit",
                    cfg.partitions(),
                    keep.replicas,
                    keep.min_insync
                ),
                Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!("topic {t} exists")
                }
                Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
            }
        }
    }
    check(cfg, &bootstrap).await??;
    if !cfg.kafka.brokers.is_empty() {
        check_keeps(cfg, &bootstrap).await?;
    }
    Ok(())
}

/// How a topic on configured brokers must keep what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub replicas: i32,
    pub min_insync: i32,
    /// -1 (for ever), or the shortest retention accepted.
    pub retention_ms: i64,
}

impl Keep {
    /// As configured; what is not: as many replicas as there are `brokers`, up to 3, and
    /// all but one of three or more in sync (one broker may be lost).
    pub fn wanted(cfg: &Config, brokers: usize) -> Keep {
        let replicas = match cfg.kafka.replication_factor {
            0 => brokers.clamp(1, 3) as i32,
            n => n as i32,
        };
        let min_insync = match cfg.kafka.min_insync_replicas {
            0 if replicas >= 3 => replicas - 1,
            0 => 1,
            n => n as i32,
        };
        Keep {
            replicas,
            min_insync,
            retention_ms: cfg.kafka.retention_ms,
        }
    }
}

/// How many brokers the cluster at `bootstrap` has.
async fn brokers(bootstrap: &str) -> Result<usize> {
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        let consumer = crate::kafka::consumer(&bootstrap)?;
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .with_context(|| format!("reading the cluster's metadata from {bootstrap}"))?;
        anyhow::Ok(md.brokers().len())
    })
    .await?
}

/// Refuse a topic whose settings could lose unsettled orders: fewer replicas than
/// wanted, fewer in sync to acknowledge, or a retention or cleanup that deletes. A broker
/// that does not describe its topics' configs is only warned about.
async fn check_keeps(cfg: &Config, bootstrap: &str) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let keep = Keep::wanted(cfg, brokers(bootstrap).await?);
    let replicas = replica_counts(cfg, bootstrap).await?;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating a Kafka admin client")?;
    let topic = ResourceSpecifier::Topic(&cfg.kafka.topic);
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin.describe_configs([&topic], &opts).await;
    let configs: Vec<(String, Option<String>)> = match described.as_deref() {
        Ok([Ok(resource)]) => resource
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        other => {
            tracing::warn!(
                "cannot read the settings of topic {} ({other:?}): make sure its retention \
                 never deletes unsettled orders",
                cfg.kafka.topic
            );
            Vec::new()
        }
    };
    let problems = keep_problems(keep, &replicas, &configs);
    anyhow::ensure!(
        problems.is_empty(),
        "topic {} could lose orders not yet settled: {}. Create it with those settings (or \
         let `dtss init` create it), or set kafka.replication_factor / \
         kafka.min_insync_replicas to what you accept",
        cfg.kafka.topic,
        problems.join("; ")
    );
    Ok(())
}

/// The replicas of each partition of the topic.
async fn replica_counts(cfg: &Config, bootstrap: &str) -> Result<Vec<usize>> {
    let (topic, bootstrap) = (cfg.kafka.topic.clone(), bootstrap.to_string());
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        let consumer = crate::kafka::consumer(&bootstrap)?;
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .with_context(|| format!("reading metadata of topic {topic}"))?;
        let counts = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions())
            .map(|p| p.replicas().len())
            .collect();
        anyhow::Ok(counts)
    })
    .await?
}

/// What in a topic's replica counts and configs could lose unsettled orders.
pub fn keep_problems(
    keep: Keep,
    replicas: &[usize],
    configs: &[(String, Option<String>)],
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(&fewest) = replicas.iter().min() {
        if (fewest as i32) < keep.replicas {
            problems.push(format!(
                "a partition has {fewest} replicas, fewer than {}",
                keep.replicas
            ));
        }
    }
    let get = |name: &str| {
        configs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    };
    if let Some(n) = get("min.insync.replicas").and_then(|v| v.parse::<i32>().ok()) {
        if n < keep.min_insync {
            problems.push(format!(
                "min.insync.replicas is {n}, fewer than {}",
                keep.min_insync
            ));
        }
    }
    if let Some(v) = get("retention.bytes").filter(|v| *v != "-1") {
        problems.push(format!(
            "retention.bytes is {v}: unsettled orders past it are deleted (want -1)"
        ));
    }
    let kept = |v: &str| {
        v.parse::<i64>()
            .is_ok_and(|ms| ms == -1 || (keep.retention_ms != -1 && ms >= keep.retention_ms))
    };
    if let Some(v) = get("retention.ms").filter(|v| !kept(v)) {
        problems.push(format!(
            "retention.ms is {v}: unsettled orders past it are deleted (want {})",
            keep.retention_ms
        ));
    }
    if let Some(v) = get("cleanup.policy").filter(|v| v.contains("compact")) {
        problems.push(format!(
            "cleanup.policy is {v}: compaction deletes orders (want delete)"
        ));
    }
    problems
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "[cluster]\nprocesses = [\"127.0.0.1:2101\"]\nworkers_per_process = 1\n\
             [kafka]\nbrokers = [\"k:9092\"]\n{extra}\n[mysql]\nurl = \"mysql://u@h/d\"\n\
             [currencies]\nbase = \"RMB\"\ninitial = {{ RMB = \"1\", USD = \"7\" }}\n"
        );
        Config::parse(&text).unwrap()
    }

    #[test]
    fn a_topic_survives_one_broker_lost_where_there_are_three() {
        let keep = |replicas, min_insync| Keep {
            replicas,
            min_insync,
            retention_ms: -1,
        };
        let auto = cfg("");
        assert_eq!(Keep::wanted(&auto, 1), keep(1, 1));
        assert_eq!(Keep::wanted(&auto, 2), keep(2, 1));
        assert_eq!(Keep::wanted(&auto, 5), keep(3, 2));
        let set = cfg("replication_factor = 5\nmin_insync_replicas = 3");
        assert_eq!(Keep::wanted(&set, 1), keep(5, 3));
    }

    #[test]
    fn settings_that_could_lose_orders_are_named() {
        let keep = Keep {
            replicas: 3,
            min_insync: 2,
            retention_ms: -1,
        };
        let good = vec![
            ("retention.ms".to_string(), Some("-1".to_string())),
            ("retention.bytes".to_string(), Some("-1".to_string())),
            ("min.insync.replicas".to_string(), Some("2".to_string())),
            ("cleanup.policy".to_string(), Some("delete".to_string())),
        ];
        assert!(keep_problems(keep, &[3, 3], &good).is_empty());
        let week = vec![
            ("retention.ms".to_string(), Some("604800000".to_string())),
            ("min.insync.replicas".to_string(), Some("1".to_string())),
            ("cleanup.policy".to_string(), Some("compact".to_string())),
        ];
        let p = keep_problems(keep, &[3, 1], &week).join("; ");
        for want in [
            "1 replicas, fewer than 3",
            "min.insync.replicas is 1",
            "retention.ms is 604800000",
            "compact",
        ] {
            assert!(p.contains(want), "{p}");
        }
        // A century where the broker mishandles -1: accepted when configured so.
        let century = Keep {
            retention_ms: 3_153_600_000_000,
            ..keep
        };
        let long = vec![(
            "retention.ms".to_string(),
            Some("3153600000000".to_string()),
        )];
        assert!(keep_problems(century, &[3], &long).is_empty());
        assert!(
            !keep_problems(keep, &[3], &long).is_empty(),
            "not where -1 is wanted"
        );
    }
}
