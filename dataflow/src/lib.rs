//! The timely job (SPEC §1, §5): per worker, a Kafka source for partition = worker index,
//! a rate source (worker 0, fed by ZooKeeper watches, broadcast), and a settle operator
//! that hands closed epochs to its settlement thread (MySQL transactions through
//! `sinks::Settlement`).
//!
//! Time is the epoch `accepted_at / epoch_ms`. An order's epoch never goes below the
//! source's frontier nor below the previous order's in its partition (a late order is
//! moved to the current epoch), so closed epochs are always a prefix of the partition
//! and the offset committed with them is exact.

mod kafka;
mod operators;
mod totals;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use model::Config;

/// Run process `process` of the cluster until `stop` is set (then finish and commit
/// what was read, and return) or a part fails.
pub fn run(cfg: Config, process: usize, stop: Arc<AtomicBool>) -> Result<()> {
    let processes = cfg.cluster.processes.len();
    anyhow::ensure!(
        process < processes,
        "--process {process} is out of range: cluster.processes lists {processes} process(es), numbered 0 to {}",
        processes - 1
    );
    let bootstrap = cfg.kafka_bootstrap(Duration::from_secs(30))?;
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(sinks::ensure_schema(&cfg.mysql.url))?;
    }
    let threads = cfg.cluster.workers_per_process;
    let comm = if processes == 1 {
        timely::CommunicationConfig::Process(threads)
    } else {
        timely::CommunicationConfig::Cluster {
            threads,
            process,
            addresses: cfg.cluster.processes.clone(),
            report: false,
            zerocopy: false,
        }
    };
    if processes > 1 {
        stop_when_a_peer_is_lost();
    }
    let config = timely::Config {
        communication: comm,
        worker: timely::WorkerConfig::default(),
    };
    let failed = Arc::new(AtomicBool::new(false));
    let (cfg2, failed2, stop2) = (cfg.clone(), failed.clone(), stop.clone());
    let guards = timely::execute(config, move |worker| {
        let ctx = operators::WorkerContext {
            cfg: cfg2.clone(),
            bootstrap: bootstrap.clone(),
            stop: stop2.clone(),
        };
        let index = worker.index();
        if let Err(e) = operators::run_worker(worker, ctx) {
            tracing::error!(worker = index, "worker failed: {e:#}");
            failed2.store(true, Ordering::SeqCst);
            stop2.store(true, Ordering::SeqCst);
        }
    })
    .map_err(|e| anyhow::anyhow!("starting timely: {e}"))?;
    let results = guards.join();
    for r in results {
        r.map_err(|e| anyhow::anyhow!("a worker thread panicked: {e}"))?;
    }
    if failed.load(Ordering::SeqCst) {
        anyhow::bail!("a worker failed (see the log above)");
    }
    Ok(())
}

/// How a worker process exits when it lost the connection to another process of its
/// cluster (killed, crashed, or its host gone).
pub const PEER_LOST_EXIT: i32 = 5;

/// Timely cannot lose a process and go on: its network threads panic when a peer's
/// connection breaks, and the survivors would wait forever. Make that panic stop the
/// whole process at once with `PEER_LOST_EXIT` and a message that says what to do.
/// Nothing is lost by stopping here: a batch is one MySQL transaction with its offset,
/// so an interrupted one is rolled back and read again from Kafka.
fn stop_when_a_peer_is_lost() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("timely communication error") {
            tracing::error!(
                "lost the connection to another process of the cluster ({msg}); stopping this \
                 process (exit {PEER_LOST_EXIT}). Restart every process of the cluster: each \
                 worker resumes from the offsets committed in MySQL"
            );
            use std::io::Write as _;
            let _ = std::io::stderr().flush();
            // SAFETY: _exit ends the process without running destructors, which other
            // threads (librdkafka's among them) may still be using.
            unsafe { libc::_exit(PEER_LOST_EXIT) };
        }
        default(info)
    }));
}

/// Create the topic with one partition per worker when it is missing (configured
/// brokers only: the embedded broker creates its own), then check its partition count.
pub async fn ensure_topic(cfg: &Config) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let bootstrap = cfg.kafka_bootstrap(Duration::from_secs(30))?;
    if !cfg.kafka.brokers.is_empty() {
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
    let cfg2 = cfg.clone();
    tokio::task::spawn_blocking(move || check_topic(&cfg2, &bootstrap)).await?
}

/// The check that the topic has exactly one partition per worker.
pub fn check_topic(cfg: &Config, bootstrap: &str) -> Result<()> {
    use rdkafka::consumer::Consumer;
    let consumer = kafka::consumer(bootstrap)?;
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
