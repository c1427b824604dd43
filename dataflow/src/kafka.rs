//! One Kafka consumer per worker, on its own thread: manual assignment of the worker's
//! partition from the offset stored in MySQL, messages handed to the worker in chunks
//! over a bounded channel (so a slow sink stops the reading), waking the worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossbeam_channel::Sender;
use model::Order;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// A message read from the worker's partition: its offset and the order, or `None`
/// for a message that does not decode (logged; its offset still counts as settled).
pub type Read = (i64, Option<Order>);

const CHUNK: usize = 1024;

pub fn consumer(bootstrap: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dtss-workers")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        // A fetch returns once 64 KiB (~400 orders) are there, or after 5 ms: under
        // load, a few hundred fetches a second rather than one per produce batch.
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "65536")
        // Back within a second of a broker restart (the default backs off up to 10 s).
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .context("creating Kafka consumer")
}

/// Start reading `topic`/`partition` at `start` on a new thread. Stops when `stop` is
/// set or the receiving side hangs up.
pub fn spawn_reader(
    bootstrap: String,
    topic: String,
    partition: i32,
    start: i64,
    tx: Sender<Vec<Read>>,
    wake: impl Fn() + Send + 'static,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let consumer = consumer(&bootstrap)?;
    let (low, high) = consumer
        .fetch_watermarks(&topic, partition, Duration::from_secs(10))
        .with_context(|| {
            format!("reading the offsets of {topic}/{partition} from Kafka at {bootstrap}")
        })?;
    if start > high {
        bail!(
            "MySQL says partition {partition} is settled up to offset {start}, but Kafka's {topic}/{partition} \
             ends at {high}: the broker lost its log (was the embedded broker's log folder deleted?). \
             Settle against the broker the orders went to, or start from a fresh database."
        );
    }
    if start < low {
        bail!(
            "{topic}/{partition} starts at offset {low} but offset {start} is not settled yet: \
             the broker dropped unsettled orders"
        );
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl).context("assigning the partition")?;
    drop(tpl);
    tracing::info!(
        partition,
        start,
        high,
        "reading {topic}/{partition} from offset {start}"
    );
    let handle = std::thread::Builder::new()
        .name(format!("kafka-p{partition}"))
        .spawn(move || {
            let mut chunk: Vec<Read> = Vec::with_capacity(CHUNK);
            let mut expected = start;
            // On stop: read on up to the partition's end as of that moment (ingest stops
            // first), so an orderly shutdown leaves nothing unsettled in the broker.
            let mut drain_to: Option<(i64, std::time::Instant)> = None;
            let mut lag_checked = std::time::Instant::now();
            loop {
                if lag_checked.elapsed() >= Duration::from_secs(10) {
                    lag_checked = std::time::Instant::now();
                    if let Ok((_, high)) =
                        consumer.fetch_watermarks(&topic, partition, Duration::from_secs(1))
                    {
                        let lag = high - expected;
                        if lag > 0 {
                            tracing::info!(partition, lag, "Kafka lag: {lag} orders not yet read");
                        }
                    }
                }
                if drain_to.is_none() && stop.load(Ordering::Relaxed) {
                    let end = consumer
                        .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                        .map(|(_, high)| high)
                        .unwrap_or(expected);
                    tracing::info!(partition, "stopping: reading on to offset {end} first");
                    drain_to = Some((end, std::time::Instant::now() + Duration::from_secs(30)));
                }
                if let Some((end, deadline)) = drain_to {
                    if expected >= end || std::time::Instant::now() > deadline {
                        if !chunk.is_empty() && tx.send(std::mem::take(&mut chunk)).is_ok() {
                            wake();
                        }
                        break;
                    }
                }
                let timeout = if chunk.is_empty() {
                    Duration::from_millis(50)
                } else {
                    Duration::ZERO
                };
                match consumer.poll(timeout) {
                    Some(Ok(msg)) => {
                        let offset = msg.offset();
                        if offset < expected {
                            continue; // a re-delivery after a fetch retry
                        }
                        expected = offset + 1;
                        let order = match model::wire::decode(msg.payload().unwrap_or_default()) {
                            Ok(o) => Some(o),
                            Err(e) => {
                                tracing::error!(
                                    partition,
                                    offset,
                                    "skipping undecodable message: {e}"
                                );
                                None
                            }
                        };
                        chunk.push((offset, order));
                        if chunk.len() < CHUNK {
                            continue;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(partition, "Kafka consumer error: {e}");
                    }
                    None => {}
                }
                if !chunk.is_empty() {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    // Blocks while the worker is behind: the backpressure.
                    if tx.send(full).is_err() {
                        break;
                    }
                    wake();
                }
            }
            wake();
        })
        .context("spawning Kafka reader thread")?;
    Ok(handle)
}
