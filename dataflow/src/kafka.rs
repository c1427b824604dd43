//! One Kafka consumer per worker, on its own thread: manual assignment of the worker's
//! partition from the offset stored in MySQL, messages handed to the worker in chunks
//! over a bounded channel (so a slow sink stops the reading), waking the worker.
//!
//! Nothing on the topic is trusted. Each message is decoded with limits and checked as
//! ingest checks an order; one that fails goes on as a dead letter, kept by the
//! transaction that moves the offset past it. A message of a newer wire format than this
//! build holds the partition where it is until the workers are upgraded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::Sender;
use model::wire::{self, WireError};
use model::{Currency, Order};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sinks::DeadLetter;

use crate::metrics::{label, METRICS};
use crate::window::Window;

/// A message read from the worker's partition: its offset and the order, or the dead
/// letter it makes when it does not decode or fails the checks (its epoch is set when
/// it is handed over).
pub type Read = (i64, Result<Order, DeadLetter>);

/// Where a partition waits: the offset of a message of a newer wire format, and that
/// format's version.
pub type Hold = (i64, u8);

const CHUNK: usize = 1024;

pub fn consumer(bootstrap: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dtss-workers")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        // A fetch returns as soon as anything is there: an order reaches its worker
        // within the broker's round trip, well inside the watermark delay. Under load
        // each fetch takes what arrived during the one before. Idle, one fetch waits
        // up to 100 ms.
        .set("fetch.wait.max.ms", "100")
        .set("fetch.min.bytes", "1")
        // Back within a second of a broker restart (the default backs off up to 10 s).
        .set("reconnect.backoff.max.ms", "1000")
        // What librdkafka fetches ahead of the reader, per partition (default 64 MiB):
        // part of the memory a stopped reader still holds.
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .context("creating Kafka consumer")
}

/// What a reader is given besides its partition: the currencies an order may be in, and
/// what to do when the partition holds (record it for `/healthz`).
pub struct Checks {
    pub currencies: Vec<Currency>,
    pub on_hold: Box<dyn Fn(Hold) + Send>,
    /// At most this many orders read and not yet committed (`crate::window`).
    pub max_unsettled: u64,
}

/// Start reading `topic`/`partition` at `start` on a new thread. Stops when `stop` is
/// set or the receiving side hangs up.
#[allow(clippy::too_many_arguments)]
pub fn spawn_reader(
    bootstrap: String,
    topic: String,
    partition: i32,
    start: i64,
    tx: Sender<Vec<Read>>,
    wake: impl Fn() + Send + 'static,
    stop: Arc<AtomicBool>,
    caught_up: Arc<AtomicBool>,
    checks: Checks,
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
    let window = Window::open(partition, start, checks.max_unsettled);
    let reader = Reader {
        consumer,
        topic,
        partition,
        window,
        expected: start,
        tx,
        wake,
        stop,
        chunk: Vec::with_capacity(CHUNK),
        drain_to: None,
        lag_checked: Instant::now(),
        lag_logged: Instant::now(),
        checks,
        held: None,
        caught_up,
    };
    std::thread::Builder::new()
        .name(format!("kafka-p{partition}"))
        .spawn(move || reader.run())
        .context("spawning Kafka reader thread")
}

/// A partition's reader thread.
struct Reader<W> {
    consumer: BaseConsumer,
    topic: String,
    partition: i32,
    window: Window,
    /// The next offset to read.
    expected: i64,
    tx: Sender<Vec<Read>>,
    wake: W,
    stop: Arc<AtomicBool>,
    /// Messages read and not yet handed to the worker.
    chunk: Vec<Read>,
    /// On stop: read on up to the partition's end as of that moment (ingest stops
    /// first), so an orderly shutdown leaves nothing unsettled in the broker; give up at
    /// the deadline.
    drain_to: Option<(i64, Instant)>,
    lag_checked: Instant,
    lag_logged: Instant,
    checks: Checks,
    /// Set when a message of a newer format was read: nothing more is read.
    held: Option<Hold>,
    /// Whether the reader has nothing more to read now: it handed over everything up to
    /// the partition's end as the broker last reported it, or its window is full. Only
    /// then may the order source close epochs by the clock (`sources::order_source`);
    /// while it reads, the log's own epochs close them.
    caught_up: Arc<AtomicBool>,
}

impl<W: Fn()> Reader<W> {
    fn run(mut self) {
        loop {
            self.log_lag();
            if self.drained() {
                if !self.chunk.is_empty() && self.tx.send(std::mem::take(&mut self.chunk)).is_ok() {
                    (self.wake)();
                }
                break;
            }
            if self.held.is_some() {
                self.wait_held();
                break;
            }
            if self.window.full(self.expected) {
                self.wait_for_room();
                continue;
            }
            if self.poll() && self.chunk.len() < CHUNK {
                continue;
            }
            if !self.chunk.is_empty() {
                let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
                // Blocks while the worker is behind: the backpressure.
                if self.tx.send(full).is_err() {
                    break;
                }
                (self.wake)();
            }
        }
        (self.wake)();
    }

    /// Hand over what was read, then wait until commits make room in the window (or a
    /// stop is asked for), polling nothing meanwhile.
    fn wait_for_room(&mut self) {
        if !self.chunk.is_empty() {
            let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
            if self.tx.send(full).is_ok() {
                (self.wake)();
            }
        }
        // A full window must not wait for an epoch that only more reading would close.
        self.caught_up.store(true, Ordering::Release);
        let since = Instant::now();
        let mut logged: Option<Instant> = None;
        while self.window.full(self.expected) && !self.stop.load(Ordering::Relaxed) {
            if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                logged = Some(Instant::now());
                tracing::warn!(
                    partition = self.partition,
                    "not reading for {:?}: the orders read and not yet committed fill the \
                     window (cluster.max_unsettled_per_worker)",
                    since.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every second, how far the partition's end is ahead of what was read (the
    /// `lag` metric); logged every 10 s while there is any.
    fn log_lag(&mut self) {
        if self.lag_checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.lag_checked = Instant::now();
        let w = self
            .consumer
            .fetch_watermarks(&self.topic, self.partition, Duration::from_secs(1));
        let Ok((_, high)) = w else { return };
        let lag = high - self.expected;
        crate::status::observe_end(self.partition, high);
        METRICS.lag.get_or_create(&label(self.partition)).set(lag);
        if lag > 0 && self.lag_logged.elapsed() >= Duration::from_secs(10) {
            self.lag_logged = Instant::now();
            tracing::info!(
                partition = self.partition,
                lag,
                "Kafka lag: {lag} orders not yet read"
            );
        }
    }

    /// Whether a stop was asked for and everything up to the partition's end at that
    /// moment was read (or the drain's deadline passed).
    fn drained(&mut self) -> bool {
        if self.drain_to.is_none() && self.stop.load(Ordering::Relaxed) {
            let end = self
                .consumer
                .fetch_watermarks(&self.topic, self.partition, Duration::from_secs(5))
                .map(|(_, high)| high)
                .unwrap_or(self.expected);
            tracing::info!(
                partition = self.partition,
                "stopping: reading on to offset {end} first"
            );
            self.drain_to = Some((end, Instant::now() + Duration::from_secs(30)));
        }
        self.drain_to
            .is_some_and(|(end, deadline)| self.expected >= end || Instant::now() > deadline)
    }

    /// Poll once (waiting up to 50 ms when nothing is pending); true when a message was
    /// added to the chunk.
    fn poll(&mut self) -> bool {
        let timeout = if self.chunk.is_empty() {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        let msg = match self.consumer.poll(timeout) {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                tracing::warn!(partition = self.partition, "Kafka consumer error: {e}");
                return false;
            }
            None => {
                self.note_end();
                return false;
            }
        };
        self.caught_up.store(false, Ordering::Release);
        let offset = msg.offset();
        if offset < self.expected {
            return true; // a re-delivery after a fetch retry
        }
        let read = match self.read(offset, msg.payload().unwrap_or_default()) {
            Ok(read) => read,
            Err(hold) => {
                self.hold(hold);
                return false;
            }
        };
        self.expected = offset + 1;
        self.chunk.push((offset, read));
        true
    }

    /// After a poll that found nothing: caught up if everything read is handed over and
    /// nothing lies between it and the partition's end (one round trip to the broker,
    /// once per burst of messages). A broker that does not answer has nothing to read.
    fn note_end(&self) {
        if !self.chunk.is_empty() || self.caught_up.load(Ordering::Relaxed) {
            return;
        }
        let end =
            self.consumer
                .fetch_watermarks(&self.topic, self.partition, Duration::from_millis(500));
        if end.is_err() || end.is_ok_and(|(_, high)| self.expected >= high) {
            self.caught_up.store(true, Ordering::Release);
            (self.wake)();
        }
    }

    /// The message at `offset` as an order, or the dead letter it makes; Err when it is
    /// of a newer wire format (the partition holds).
    fn read(&self, offset: i64, bytes: &[u8]) -> Result<Result<Order, DeadLetter>, Hold> {
        let dead = |order_id, reason, detail: String| {
            tracing::error!(
                partition = self.partition,
                offset,
                reason,
                "a message that cannot be settled, kept as a dead letter: {detail}"
            );
            Ok(Err(DeadLetter::new(
                offset, 0, order_id, reason, detail, bytes,
            )))
        };
        match wire::decode(bytes) {
            Ok(order) => {
                let id = order.order_id;
                match order.check(&self.checks.currencies) {
                    Ok(order) => Ok(Ok(order)),
                    Err(e) => dead(Some(id), "invalid_order", e.to_string()),
                }
            }
            Err(WireError::Newer(version)) => Err((offset, version)),
            Err(e) => dead(wire::order_id(bytes), "undecodable", e.to_string()),
        }
    }

    /// A message of a newer format at `hold`: read nothing more (the fetcher paused),
    /// say so, and hand over what was read before it.
    fn hold(&mut self, hold: Hold) {
        let (offset, version) = hold;
        tracing::error!(
            partition = self.partition,
            offset,
            version,
            "partition {} holds at offset {offset}: its message is of wire format {version}, \
             newer than this build's {}; upgrade the workers (nothing is skipped)",
            self.partition,
            wire::FORMAT_VERSION
        );
        if let Ok(tpl) = self.consumer.assignment() {
            let _ = self.consumer.pause(&tpl);
        }
        (self.checks.on_hold)(hold);
        self.held = Some(hold);
    }

    /// Held: hand over what was read before, then wait for the stop, reminding the log
    /// every minute.
    fn wait_held(&mut self) {
        if !self.chunk.is_empty() && self.tx.send(std::mem::take(&mut self.chunk)).is_ok() {
            (self.wake)();
        }
        // Nothing more will be read: what was read settles as its epochs close by the clock.
        self.caught_up.store(true, Ordering::Release);
        (self.wake)();
        let mut said = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if said.elapsed() >= Duration::from_secs(60) {
                let (offset, version) = self.held.expect("held");
                tracing::error!(
                    partition = self.partition,
                    offset,
                    version,
                    "still holding: upgrade the workers to read wire format {version}"
                );
                said = Instant::now();
            }
        }
    }
}
