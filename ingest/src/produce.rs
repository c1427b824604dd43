//! Accepting an order: stamp it (its id, made as the database's id scheme says: new, or
//! the one its idempotency key names, `model::ids`; `accepted_at`), encode it (the wire
//! format, `model::wire`) and hand it to Kafka with acks=all on an idempotent producer.
//! Used by the HTTP intake and by `dtss bench --direct-kafka`, which skips only the HTTP
//! part.
//!
//! Kafka's answer is one of three: taken (`Ok`), certainly not taken
//! (`NotTaken::Backlog`, `NotTaken::Kafka`: refused before it was sent, or by the broker),
//! or cannot tell (`NotTaken::Unknown`: a timeout or a lost connection after sending; the
//! order may be in the log and may settle). The client must hear which.
//!
//! With any broker, orders are refused while too many are unsettled
//! (`kafka.max_backlog_per_partition`): backpressure instead of an ever longer log.
//! Unsettled = last offset Kafka acknowledged − next offset committed in MySQL (as read
//! every 100 ms: while MySQL cannot be read, the settled offsets stand still and the
//! backlog grows with every order taken).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use model::{Config, IdScheme, OrderRequest, Uuid};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sinks::Pool;

pub struct OrderProducer {
    producer: FutureProducer,
    topic: String,
    /// How order ids are made: read once from the database (`sinks::id_scheme`).
    ids: IdScheme,
    backlog: Arc<Backlog>,
    /// Set when the producer failed for good (librdkafka's fatal error: e.g. the
    /// broker refused a batch as out of sequence). Nothing sent after that is taken.
    fatal: tokio::sync::watch::Sender<Option<String>>,
    /// Set while the broker says a partition cannot be written (`watch_storage`).
    storage: tokio::sync::watch::Receiver<Option<String>>,
}

/// Why an order was not acknowledged.
#[derive(Debug)]
pub enum NotTaken {
    /// Too many unsettled orders in a partition: retry shortly. Nothing sent.
    Backlog,
    /// The broker says a partition's log cannot be written now (a full or failing disk:
    /// KAFKA_STORAGE_ERROR in its metadata): retry shortly. Nothing sent.
    Storage(String),
    /// Kafka certainly did not take the order (refused before sending, or by the broker).
    Kafka(String),
    /// Sent, but no acknowledgement came (a timeout, a lost connection): the order
    /// `order_id` may be in the log and settle. Retrying with the same idempotency key
    /// is safe; so is asking for the id's result.
    Unknown { order_id: Uuid, why: String },
}

/// An acknowledged order: its id and its stamp.
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    pub order_id: Uuid,
    pub accepted_at: i64,
}

impl OrderProducer {
    /// A producer for the configured topic; `pool` is read (every 100 ms) for the
    /// settled offsets that the backlog guard needs.
    pub async fn connect(cfg: &Config, pool: Pool) -> Result<OrderProducer> {
        let bootstrap = {
            let c = cfg.clone();
            tokio::task::spawn_blocking(move || {
                broker::bootstrap(
                    &c.kafka.brokers,
                    &c.broker_addr_file(),
                    Duration::from_secs(30),
                )
            })
            .await??
        };
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            // Back within a second of a broker restart (the default backs off up to 10 s).
            .set("reconnect.backoff.max.ms", "1000")
            .set("message.timeout.ms", "5000")
            .set("queue.buffering.max.messages", "200000")
            .create()
            .context("creating the Kafka producer")?;
        let partitions = cfg.partitions();
        let backlog = Backlog::new(partitions, Some(cfg.kafka.max_backlog_per_partition));
        for p in 0..partitions as i32 {
            // A blocking call, once at start.
            let (_, high) = producer
                .client()
                .fetch_watermarks(&cfg.kafka.topic, p, Duration::from_secs(10))
                .with_context(|| {
                    format!("reading {}/{p} from Kafka at {bootstrap}", cfg.kafka.topic)
                })?;
            if high > 0 {
                backlog.produced(p, high - 1);
            }
        }
        let ids = sinks::id_scheme(&pool).await?;
        backlog.spawn_follower(pool, cfg.kafka.topic.clone());
        let storage = watch_storage(&producer, &cfg.kafka.topic);
        Ok(OrderProducer {
            producer,
            topic: cfg.kafka.topic.clone(),
            ids,
            backlog,
            fatal: tokio::sync::watch::Sender::new(None),
            storage,
        })
    }

    /// Accept `request` now, named by the client's idempotency `key` if it sent one (a
    /// valid key: `model::idempotency::parse_key`): Ok once Kafka has it (acks=all).
    pub async fn send(&self, request: OrderRequest, key: Option<&str>) -> Result<Taken, NotTaken> {
        if self.backlog.full() {
            return Err(NotTaken::Backlog);
        }
        if let Some(why) = self.storage.borrow().clone() {
            return Err(NotTaken::Storage(why));
        }
        if let Some(why) = self.fatal.borrow().clone() {
            return Err(NotTaken::Kafka(why));
        }
        let accepted_at = model::now_ms();
        let order = match key {
            Some(key) => request.accept_keyed(key, self.ids, accepted_at),
            None => {
                let id = self.ids.fresh(&request.user_id);
                request.accept(id, accepted_at)
            }
        };
        let order_id = order.order_id;
        let payload = model::wire::encode(&order);
        let record = FutureRecord::to(&self.topic)
            .key(&order_id.as_bytes()[..])
            .payload(&payload);
        match self.producer.send(record, Duration::from_secs(5)).await {
            Ok(delivery) => {
                self.backlog.produced(delivery.partition, delivery.offset);
                Ok(Taken {
                    order_id,
                    accepted_at,
                })
            }
            Err((e, _)) => {
                tracing::warn!("Kafka did not acknowledge order {order_id}: {e}");
                if let Some((code, why)) = self.producer.client().fatal_error() {
                    let why = format!("the Kafka producer failed for good ({code:?}): {why}");
                    self.fatal.send_replace(Some(why));
                }
                Err(match certainly_not_written(&e) {
                    true => NotTaken::Kafka(e.to_string()),
                    false => NotTaken::Unknown {
                        order_id,
                        why: e.to_string(),
                    },
                })
            }
        }
    }

    /// Resolves once the producer failed for good, with why: ingest must then stop (and
    /// be started again, with a new producer).
    pub async fn failed(&self) -> String {
        let mut rx = self.fatal.subscribe();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        };
        why
    }

    /// Why the broker cannot write now, if it said so (for `/healthz`).
    pub fn storage_refusal(&self) -> Option<String> {
        self.storage.borrow().clone()
    }

    /// The largest number of unsettled orders in any partition, as far as known.
    pub fn unsettled_max(&self) -> i64 {
        self.backlog.worst().max(0)
    }

    /// Wait (up to `timeout`) for everything queued to be acknowledged.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// Whether a failed produce certainly wrote nothing: librdkafka refused it before
/// sending (its queue is full, the message too large, the partition unknown, the producer
/// failed or purged its queue), or the broker refused the batch. Anything else (a
/// message timeout, a lost connection, an error after the append) may have been written.
fn certainly_not_written(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    let Some(code) = e.rdkafka_error_code() else {
        return false;
    };
    matches!(
        code,
        C::QueueFull
            | C::BadMessage
            | C::UnknownPartition
            | C::UnknownTopic
            | C::PurgeQueue
            | C::Fatal
            | C::InvalidMessage
            | C::UnknownTopicOrPartition
            | C::InvalidMessageSize
            | C::MessageSizeTooLarge
            | C::InvalidTopic
            | C::NotEnoughReplicas
            | C::InvalidRequiredAcks
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::OutOfOrderSequenceNumber
            | C::InvalidProducerEpoch
            | C::UnknownProducerId
            | C::InvalidRecord
    )
}

/// How often the topic's metadata is read for partitions that cannot be written.
const STORAGE_CHECK: Duration = Duration::from_millis(500);

/// Follow the broker's word on its partitions (Metadata, every `STORAGE_CHECK`): the value
/// names the partitions whose log cannot be written (KAFKA_STORAGE_ERROR), None while
/// every one can. A metadata request that fails changes nothing.
fn watch_storage(
    producer: &FutureProducer,
    topic: &str,
) -> tokio::sync::watch::Receiver<Option<String>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let producer = producer.clone();
    let topic = topic.to_string();
    std::thread::Builder::new()
        .name("storage-watch".into())
        .spawn(move || {
            while !tx.is_closed() {
                let md = producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(2));
                if let Ok(md) = md {
                    let offline: Vec<String> = md
                        .topics()
                        .iter()
                        .flat_map(|t| t.partitions())
                        .filter(|p| p.error() == Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR))
                        .map(|p| p.id().to_string())
                        .collect();
                    let now = (!offline.is_empty()).then(|| {
                        format!("the broker cannot write partitions {} now (storage error: a full or failing disk)", offline.join(", "))
                    });
                    if *tx.borrow() != now {
                        match &now {
                            Some(why) => tracing::warn!("{why}: refusing orders"),
                            None => tracing::info!("the broker writes every partition again"),
                        }
                        tx.send_replace(now);
                    }
                }
                std::thread::sleep(STORAGE_CHECK);
            }
        })
        .expect("spawning the storage watch");
    rx
}

struct Backlog {
    produced: Vec<AtomicI64>,
    settled: Vec<AtomicI64>,
    limit: Option<i64>,
}

impl Backlog {
    fn new(partitions: usize, limit: Option<u64>) -> Arc<Backlog> {
        Arc::new(Backlog {
            produced: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            settled: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            limit: limit.map(|l| l as i64),
        })
    }

    /// Kafka acknowledged `offset` in `partition`.
    fn produced(&self, partition: i32, offset: i64) {
        if let Some(p) = self.produced.get(partition as usize) {
            p.fetch_max(offset + 1, Ordering::Relaxed);
        }
    }

    /// The largest number of unsettled orders in any partition.
    fn worst(&self) -> i64 {
        self.produced
            .iter()
            .zip(&self.settled)
            .map(|(p, s)| p.load(Ordering::Relaxed) - s.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    fn full(&self) -> bool {
        self.limit.is_some_and(|l| self.worst() >= l)
    }

    /// Follow the committed offsets in MySQL (every 100 ms) while anyone holds the guard.
    fn spawn_follower(self: &Arc<Self>, pool: Pool, topic: String) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(me) = weak.upgrade() {
                match sinks::load_offsets(&pool, &topic).await {
                    Ok(map) => {
                        for (p, next) in map {
                            if let Some(s) = me.settled.get(p as usize) {
                                s.fetch_max(next, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) => tracing::warn!("cannot read settled offsets: {e:#}"),
                }
                drop(me);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}
