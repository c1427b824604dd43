//! The embedded Kafka-protocol broker: one topic whose partitions are file logs
//! ([`log`]), served over enough of the Kafka protocol for librdkafka's idempotent
//! producer and for consumers that assign partitions themselves (ApiVersions, Metadata,
//! InitProducerId, Produce, Fetch with long polling, ListOffsets, FindCoordinator).
//! Fetches find their batch by binary search, so their cost does not grow with the log.
//!
//! A produce is answered once its bytes are on disk: group commit, one `fdatasync` per
//! partition covering every append waiting at that moment (`Broker::durable`); a fetch
//! or ListOffsets sees the synced end only. With `Durability::PageCache` appends are
//! answered once written (a machine crash loses up to the page cache's flush interval).

mod address;
pub mod batch;
mod log;
mod metrics;

pub use address::{bootstrap, publish};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::log::{PartitionLog, Refused};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// A partition whose log cannot be written now (as Kafka says of an offline log folder).
pub const KAFKA_STORAGE_ERROR: i16 = Refused::StorageError as i16;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNSUPPORTED_VERSION: i16 = 35;
/// Largest request accepted (librdkafka's message.max.bytes is 1 MB by default). Its
/// memory is taken as its bytes arrive, not when its length is read.
const MAX_REQUEST: usize = 16 << 20;
/// Largest fetch answer, whatever a request's `max_bytes` says.
const MAX_FETCH: usize = 16 << 20;
/// The smallest request: API key, version and correlation id.
const MIN_REQUEST: usize = 8;
/// At most this many pipelined produce requests of one connection answered together.
const MAX_GROUP: usize = 64;

/// What must be durable before a produce is answered: (topic answer, partition answer),
/// partition, the end its append reached, the log's count of cuts then.
type Wait = ((usize, usize), usize, i64, usize);

/// A produce request appended, waiting for the sync that makes it durable.
struct Appended {
    correlation_id: i32,
    version: i16,
    response: ProduceResponse,
    waits: Vec<Wait>,
}

/// A request's answer: encoded, or a produce to answer once durable.
enum Answer {
    Ready(BytesMut),
    Appended(Appended),
}

/// An answer with its length in front.
fn framed(body: BytesMut) -> BytesMut {
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_i32(body.len() as i32);
    out.extend_from_slice(&body);
    out
}

/// Whether the next request buffered is a produce (its API key is read; the rest of
/// it may still be on its way).
fn next_is_produce(buffered: &[u8]) -> bool {
    buffered.len() >= 6 && buffered[4..6] == (ApiKey::Produce as i16).to_be_bytes()
}

/// How long a connection may stay idle (Kafka's `connections.max.idle.ms` is 10 min), how
/// long a request's bytes may take once its length is read, and how many connections
/// are served at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub idle: Duration,
    pub request: Duration,
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: Duration::from_secs(600),
            request: Duration::from_secs(30),
            connections: 1024,
        }
    }
}

/// The API versions served: what librdkafka uses, within what kafka-protocol codes.
/// Fetch stays below v13 and Metadata below v10 so topics go by name, not by id.
const APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 9),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
];

/// When a produce is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once `fdatasync` put its bytes on disk: nothing answered is lost, even when the
    /// machine dies.
    #[default]
    Disk,
    /// Once written to the page cache: a crash of the broker loses nothing answered, a
    /// crash of the machine loses what the kernel had not yet written back (up to about
    /// 30 s at Linux's defaults).
    PageCache,
}

/// One partition's group commit: whether a sync runs, and a signal after each.
#[derive(Default)]
struct Syncer {
    running: AtomicBool,
    done: watch::Sender<u64>,
}

/// One topic's partitions, their logs and the address clients are told to use.
pub struct Broker {
    topic: String,
    partitions: Vec<Mutex<PartitionLog>>,
    syncers: Vec<Syncer>,
    appended: watch::Sender<u64>,
    next_producer_id: AtomicI64,
    counters: metrics::Counters,
    /// A test hook (`DTSS_TEST_SYNC_PAUSE_MS`): each sync starts this much later, so that
    /// a crash test finds written bytes no sync has covered yet.
    sync_pause: Option<Duration>,
}

/// The environment variable of the sync-pause test hook.
const SYNC_PAUSE_ENV: &str = "DTSS_TEST_SYNC_PAUSE_MS";

fn sync_pause() -> Option<Duration> {
    let ms: u64 = std::env::var(SYNC_PAUSE_ENV).ok()?.parse().ok()?;
    tracing::warn!("{SYNC_PAUSE_ENV}={ms}: every sync waits {ms} ms first (a test hook)");
    Some(Duration::from_millis(ms.min(10_000)))
}

impl Broker {
    /// Open the logs of `topic` under `dir` (one folder per partition), creating them;
    /// durable on disk.
    pub fn open(dir: &Path, topic: &str, partitions: usize) -> Result<Arc<Broker>> {
        Self::open_with(dir, topic, partitions, Durability::Disk)
    }

    /// `open`, answering produces as `durability` says.
    pub fn open_with(
        dir: &Path,
        topic: &str,
        partitions: usize,
        durability: Durability,
    ) -> Result<Arc<Broker>> {
        anyhow::ensure!(partitions > 0, "a topic needs at least one partition");
        let fsync = durability == Durability::Disk;
        let syncers = (0..partitions).map(|_| Syncer::default()).collect();
        let partitions = (0..partitions)
            .map(|p| PartitionLog::open(&dir.join(format!("{topic}-{p}")), fsync).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Arc::new(Broker {
            topic: topic.to_string(),
            partitions,
            syncers,
            appended: watch::channel(0).0,
            // Distinct across restarts: a producer id is never handed out twice.
            next_producer_id: AtomicI64::new(now.as_millis() as i64 * 1000),
            counters: Default::default(),
            sync_pause: sync_pause(),
        }))
    }

    /// The logs under `dir` of partitions `partitions` and above, which a broker opened
    /// with `partitions` does not serve (left by a cluster with more workers): each as
    /// (partition, next offset). Nothing is written.
    pub fn logs_beyond(dir: &Path, topic: &str, partitions: usize) -> Result<Vec<(usize, i64)>> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(vec![]); // no log yet
        };
        let prefix = format!("{topic}-");
        let mut extra: Vec<usize> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_prefix(&prefix)?.parse::<usize>().ok())
            .filter(|p| *p >= partitions)
            .collect();
        extra.sort_unstable();
        extra
            .into_iter()
            .map(|p| {
                let log = PartitionLog::open(&dir.join(format!("{topic}-{p}")), true)?;
                Ok((p, log.end()))
            })
            .collect()
    }

    /// Start partition `p`'s log under `dir` afresh at `offset` (after a loss: the offsets
    /// before it were given out already). Its old segments are deleted.
    pub fn restart_partition_at(dir: &Path, topic: &str, p: usize, offset: i64) -> Result<()> {
        PartitionLog::restart_at(&dir.join(format!("{topic}-{p}")), offset)
    }

    /// (first offset held, high watermark) of every partition.
    pub fn offsets(&self) -> Vec<(i64, i64)> {
        self.partitions
            .iter()
            .map(|p| {
                let p = p.lock().expect("log lock");
                (p.start(), p.high_watermark())
            })
            .collect()
    }

    /// Why appends to each partition are refused now (a full or failing disk), if they are.
    pub fn refusing(&self) -> Vec<(usize, String)> {
        self.partitions
            .iter()
            .enumerate()
            .filter_map(|(p, log)| Some((p, log.lock().expect("log lock").refusing()?.to_string())))
            .collect()
    }

    /// Wait until partition `p` is synced up to `end`; `cuts` is the log's count of cuts
    /// when the append was made: a cut since then means the append is gone, an error.
    /// Group commit: the first waiter to find no sync running runs one, covering every
    /// append made so far; the others wait for it and start the next if it did not
    /// cover them.
    async fn durable(&self, p: usize, end: i64, cuts: usize) -> Result<(), Refused> {
        let syncer = &self.syncers[p];
        loop {
            let mut done = syncer.done.subscribe();
            let durable = self.partitions[p]
                .lock()
                .expect("log lock")
                .is_durable(end, cuts);
            match durable {
                Some(true) => return Ok(()),
                Some(false) => return Err(Refused::StorageError),
                None => {}
            }
            if syncer.running.swap(true, Ordering::AcqRel) {
                let _ = done.changed().await;
                continue;
            }
            self.sync_round(p).await;
            syncer.running.store(false, Ordering::Release);
            syncer.done.send_modify(|n| *n += 1);
        }
    }

    /// One `fdatasync` of partition `p`'s active segment, outside the log's lock.
    async fn sync_round(&self, p: usize) {
        let job = self.partitions[p].lock().expect("log lock").sync_job();
        let job = match job {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("partition {p}: {e:#}");
                return;
            }
        };
        if let Some(pause) = self.sync_pause {
            tokio::time::sleep(pause).await;
        }
        let upto = job.upto;
        let file = job.file;
        self.counters.syncs.inc();
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let mut log = self.partitions[p].lock().expect("log lock");
        match synced {
            Ok(()) => log.synced_to(upto),
            Err(e) => {
                if let Err(e) = log.sync_failed(&e) {
                    tracing::error!("partition {p}: {e:#}");
                }
            }
        }
    }

    /// Delete log segments below `settled[p]`, the first unsettled offset of partition p.
    pub fn trim(&self, settled: &[i64]) -> Result<()> {
        for (p, &s) in self.partitions.iter().zip(settled) {
            p.lock().expect("log lock").trim(s)?;
        }
        Ok(())
    }

    /// Answer clients on `listener` until the task is dropped; `advertised` is the
    /// address given out in metadata.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, advertised: SocketAddr) {
        self.serve_with(listener, advertised, Limits::default())
            .await
    }

    /// `serve` with `limits`: past `limits.connections` a new connection is closed at
    /// once.
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        advertised: SocketAddr,
        limits: Limits,
    ) {
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accepting a Kafka client: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.counters.refused.inc();
                tracing::warn!(
                    "refusing Kafka client {peer}: {} connections open",
                    limits.connections
                );
                continue;
            };
            let _ = stream.set_nodelay(true);
            let broker = self.clone();
            tokio::spawn(async move {
                broker.counters.connections.inc();
                if let Err(e) = broker.connection(stream, advertised, limits).await {
                    tracing::warn!("Kafka client {peer}: {e:#}");
                }
                broker.counters.connections.dec();
                drop(slot);
            });
        }
    }

    /// Requests of one connection, answered in order (as Kafka does). Produce requests
    /// the client pipelined are appended one after the other as they are read, and
    /// answered together once durable: one sync covers them all, instead of one sync per
    /// request while the others wait unread.
    async fn connection(
        &self,
        stream: TcpStream,
        advertised: SocketAddr,
        limits: Limits,
    ) -> Result<()> {
        let (r, w) = stream.into_split();
        let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
        let mut appended: Vec<Appended> = Vec::new();
        loop {
            let more = appended.len() < MAX_GROUP && next_is_produce(r.buffer());
            if !appended.is_empty() && !more {
                self.answer_appended(&mut appended, &mut w).await?;
                w.flush().await?;
            }
            let Some(mut body) = read_request(&mut r, limits).await? else {
                self.answer_appended(&mut appended, &mut w).await?;
                w.flush().await?;
                return Ok(());
            };
            if body[..2] == (ApiKey::Fetch as i16).to_be_bytes() {
                // A fetch may wait for data: answers held back for pipelining go first.
                w.flush().await?;
            }
            match self.handle(&mut body, advertised).await? {
                Answer::Appended(a) => appended.push(a),
                Answer::Ready(out) => {
                    self.answer_appended(&mut appended, &mut w).await?;
                    w.write_all(&framed(out)).await?;
                }
            }
            if appended.is_empty() && r.buffer().is_empty() {
                w.flush().await?;
            }
        }
    }

    /// Answer the appended produce requests, in order, once each is durable.
    async fn answer_appended(
        &self,
        appended: &mut Vec<Appended>,
        w: &mut BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    ) -> Result<()> {
        for a in appended.drain(..) {
            let out = self.finish_produce(a).await?;
            w.write_all(&framed(out)).await?;
        }
        Ok(())
    }

    /// Decode and answer one request; a produce is appended here and answered by
    /// `finish_produce` once durable.
    async fn handle(&self, body: &mut Bytes, advertised: SocketAddr) -> Result<Answer> {
        let mut out = BytesMut::new();
        let (header, api, version, request) = match decode_request(body)? {
            Decoded::Request(header, api, version, request) => (header, api, version, request),
            Decoded::VersionsTooNew(correlation_id) => {
                // Tell the client what we speak, in version 0 of the answer (as Kafka does).
                let mut res = api_versions();
                res.error_code = UNSUPPORTED_VERSION;
                ResponseHeader::default()
                    .with_correlation_id(correlation_id)
                    .encode(&mut out, 0)?;
                res.encode(&mut out, 0)?;
                return Ok(Answer::Ready(out));
            }
        };
        let response = match request {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions()),
            RequestKind::Metadata(req) => ResponseKind::Metadata(self.metadata(req, advertised)),
            RequestKind::InitProducerId(_) => {
                let mut res = InitProducerIdResponse::default();
                res.producer_id = ProducerId(self.next_producer_id.fetch_add(1, Ordering::Relaxed));
                res.producer_epoch = 0;
                ResponseKind::InitProducerId(res)
            }
            RequestKind::Produce(req) => {
                let (response, waits) = self.append(req);
                return Ok(Answer::Appended(Appended {
                    correlation_id: header.correlation_id,
                    version,
                    response,
                    waits,
                }));
            }
            RequestKind::Fetch(req) => ResponseKind::Fetch(self.fetch(req).await),
            RequestKind::ListOffsets(req) => {
                ResponseKind::ListOffsets(self.list_offsets(req, version))
            }
            RequestKind::FindCoordinator(req) => {
                let mut res = FindCoordinatorResponse::default();
                let host = StrBytes::from_string(advertised.ip().to_string());
                res.node_id = BrokerId(0);
                res.host = host.clone();
                res.port = advertised.port() as i32;
                res.coordinators = req
                    .coordinator_keys
                    .into_iter()
                    .map(|key| {
                        let mut c = Coordinator::default();
                        c.key = key;
                        c.node_id = BrokerId(0);
                        c.host = host.clone();
                        c.port = advertised.port() as i32;
                        c
                    })
                    .collect();
                ResponseKind::FindCoordinator(res)
            }
            other => bail!("{:?} is not served", other),
        };
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut out, api.response_header_version(version))?;
        response.encode(&mut out, version)?;
        self.counters.answered(api);
        Ok(Answer::Ready(out))
    }

    /// The answer to an appended produce request, once every partition it wrote is
    /// durable (or the append was cut off: KAFKA_STORAGE_ERROR).
    async fn finish_produce(&self, a: Appended) -> Result<BytesMut> {
        let mut res = a.response;
        let written = !a.waits.is_empty();
        for ((t, i), p, end, cuts) in a.waits {
            if let Err(e) = self.durable(p, end, cuts).await {
                let pr = &mut res.responses[t].partition_responses[i];
                pr.error_code = e as i16;
                pr.base_offset = -1;
            }
        }
        if written {
            self.appended.send_modify(|n| *n += 1);
        }
        let mut out = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(a.correlation_id)
            .encode(&mut out, ApiKey::Produce.response_header_version(a.version))?;
        res.encode(&mut out, a.version)?;
        self.counters.answered(ApiKey::Produce);
        Ok(out)
    }

    fn partition(&self, topic: &str, p: i32) -> Option<&Mutex<PartitionLog>> {
        if topic != self.topic {
            return None;
        }
        usize::try_from(p).ok().and_then(|p| self.partitions.get(p))
    }

    fn metadata(&self, req: MetadataRequest, advertised: SocketAddr) -> MetadataResponse {
        let mut res = MetadataResponse::default();
        let mut broker = MetadataResponseBroker::default();
        broker.node_id = BrokerId(0);
        broker.host = StrBytes::from_string(advertised.ip().to_string());
        broker.port = advertised.port() as i32;
        res.brokers = vec![broker];
        res.cluster_id = Some(StrBytes::from_static_str("dtss-embedded"));
        res.controller_id = BrokerId(0);
        let names: Vec<String> = match req.topics {
            None => vec![self.topic.clone()],
            Some(ts) => ts
                .into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        };
        res.topics = names
            .into_iter()
            .map(|name| {
                let mut t = MetadataResponseTopic::default();
                if name == self.topic {
                    let refusing = self.refusing();
                    t.partitions = (0..self.partitions.len() as i32)
                        .map(|i| {
                            let mut p = MetadataResponsePartition::default();
                            p.partition_index = i;
                            if refusing.iter().any(|(r, _)| *r == i as usize) {
                                p.error_code = KAFKA_STORAGE_ERROR;
                            }
                            p.leader_id = BrokerId(0);
                            p.leader_epoch = 0;
                            p.replica_nodes = vec![BrokerId(0)];
                            p.isr_nodes = vec![BrokerId(0)];
                            p
                        })
                        .collect();
                } else {
                    t.error_code = UNKNOWN_TOPIC_OR_PARTITION;
                }
                t.name = Some(TopicName(StrBytes::from_string(name)));
                t
            })
            .collect();
        res
    }

    /// Append every partition's batches; the answer as it stands, and what must be
    /// durable before it goes out.
    fn append(&self, req: ProduceRequest) -> (ProduceResponse, Vec<Wait>) {
        let mut res = ProduceResponse::default();
        let mut waits = Vec::new();
        for topic in req.topic_data {
            let mut tr = TopicProduceResponse::default();
            for pd in topic.partition_data {
                let mut pr = PartitionProduceResponse::default();
                pr.index = pd.index;
                pr.log_append_time_ms = -1;
                match self.partition(&topic.name.0, pd.index) {
                    None => {
                        pr.error_code = UNKNOWN_TOPIC_OR_PARTITION;
                        pr.base_offset = -1;
                    }
                    Some(log) => {
                        let mut log = log.lock().expect("log lock");
                        let records = pd.records.unwrap_or_default();
                        match log.append(&records) {
                            Ok(base) => {
                                pr.base_offset = base;
                                let at = (res.responses.len(), tr.partition_responses.len());
                                waits.push((at, pd.index as usize, log.end(), log.cuts()));
                            }
                            Err(e) => {
                                pr.error_code = e as i16;
                                pr.base_offset = -1;
                            }
                        }
                        pr.log_start_offset = log.start();
                    }
                }
                tr.partition_responses.push(pr);
            }
            tr.name = topic.name;
            res.responses.push(tr);
        }
        (res, waits)
    }

    async fn fetch(&self, req: FetchRequest) -> FetchResponse {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(req.max_wait_ms.clamp(0, 30_000) as u64);
        let mut appended = self.appended.subscribe();
        // min_bytes of records, or whatever there is at the deadline. While waiting,
        // only count what there is: the response is built once.
        loop {
            appended.borrow_and_update();
            if self.fetchable(&req) >= req.min_bytes.max(0) as usize
                || tokio::time::timeout_at(deadline, appended.changed())
                    .await
                    .is_err()
            {
                return self.fetch_now(&req);
            }
        }
    }

    /// How many bytes of records a fetch would get now (each partition up to its
    /// maximum).
    fn fetchable(&self, req: &FetchRequest) -> usize {
        let mut total = 0;
        for topic in &req.topics {
            for fp in &topic.partitions {
                if let Some(log) = self.partition(&topic.topic.0, fp.partition) {
                    let log = log.lock().expect("log lock");
                    let max = fp.partition_max_bytes.max(1) as usize;
                    total += log.readable(fp.fetch_offset, max).unwrap_or(0);
                }
            }
        }
        total
    }

    /// What a fetch gets now.
    fn fetch_now(&self, req: &FetchRequest) -> FetchResponse {
        let mut res = FetchResponse::default();
        let mut budget = (req.max_bytes.max(1) as usize).min(MAX_FETCH);
        let mut first = true;
        let mut seen = std::collections::HashSet::new();
        for topic in &req.topics {
            let mut tr = FetchableTopicResponse::default();
            tr.topic = topic.topic.clone();
            for fp in &topic.partitions {
                // A partition named twice is answered once.
                if !seen.insert((topic.topic.0.clone(), fp.partition)) {
                    continue;
                }
                let mut pd = PartitionData::default();
                pd.partition_index = fp.partition;
                pd.last_stable_offset = -1;
                match self.partition(&topic.topic.0, fp.partition) {
                    None => pd.error_code = UNKNOWN_TOPIC_OR_PARTITION,
                    Some(log) => {
                        let log = log.lock().expect("log lock");
                        pd.high_watermark = log.high_watermark();
                        pd.last_stable_offset = log.high_watermark();
                        pd.log_start_offset = log.start();
                        // Past the budget nothing more, but for the first batch (as
                        // Kafka: a batch larger than max_bytes still goes out alone).
                        let max = (fp.partition_max_bytes.max(1) as usize).min(budget);
                        match log.read(fp.fetch_offset, max, first) {
                            None => pd.error_code = OFFSET_OUT_OF_RANGE,
                            Some(records) => {
                                first &= records.is_empty();
                                budget = budget.saturating_sub(records.len());
                                pd.records = Some(records);
                            }
                        }
                    }
                }
                pd.aborted_transactions = Some(Vec::new());
                pd.preferred_read_replica = BrokerId(-1);
                tr.partitions.push(pd);
            }
            res.responses.push(tr);
        }
        res
    }

    /// A field a version does not have must keep its default, or the answer does not
    /// encode: `leader_epoch` is v4 on.
    fn list_offsets(&self, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
        let mut res = ListOffsetsResponse::default();
        for topic in req.topics {
            let mut tr = ListOffsetsTopicResponse::default();
            for lp in topic.partitions {
                let mut pr = ListOffsetsPartitionResponse::default();
                pr.partition_index = lp.partition_index;
                pr.timestamp = -1;
                match self.partition(&topic.name.0, lp.partition_index) {
                    None => {
                        pr.error_code = UNKNOWN_TOPIC_OR_PARTITION;
                        pr.offset = -1;
                    }
                    Some(log) => {
                        let log = log.lock().expect("log lock");
                        // -2: earliest; -1 (latest) and any timestamp: the end.
                        pr.offset = if lp.timestamp == -2 {
                            log.start()
                        } else {
                            log.high_watermark()
                        };
                        if version >= 4 {
                            pr.leader_epoch = 0;
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            tr.name = topic.name;
            res.topics.push(tr);
        }
        res
    }
}

/// A request as decoded, or an ApiVersions request newer than served (answered with
/// the versions served, by correlation id). Made once per request and taken apart at
/// once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    Request(RequestHeader, ApiKey, i16, RequestKind),
    VersionsTooNew(i32),
}

/// Decode one request (a frame without its length): its API and version must be served.
/// Nothing in it is trusted: an error, never a panic, for any bytes.
pub fn decode_request(body: &mut Bytes) -> Result<Decoded> {
    anyhow::ensure!(
        body.len() >= MIN_REQUEST,
        "a request of {} bytes",
        body.len()
    );
    let (key, version) = (
        i16::from_be_bytes([body[0], body[1]]),
        i16::from_be_bytes([body[2], body[3]]),
    );
    let Ok(api) = ApiKey::try_from(key) else {
        bail!("unknown API key {key}");
    };
    let served = APIS.iter().find(|(k, _, _)| *k == api);
    if api == ApiKey::ApiVersions && served.is_some_and(|&(_, _, max)| version > max) {
        let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
        return Ok(Decoded::VersionsTooNew(correlation_id));
    }
    if !served.is_some_and(|(_, min, max)| (*min..=*max).contains(&version)) {
        bail!("{api:?} version {version} is not served");
    }
    let header = RequestHeader::decode(body, api.request_header_version(version))?;
    let request = RequestKind::decode(api, body, version)
        .with_context(|| format!("decoding {api:?} v{version}"))?;
    Ok(Decoded::Request(header, api, version, request))
}

/// The next request of a connection, its memory taken as its bytes arrive; None when
/// the client hung up or stayed idle past `limits.idle`.
async fn read_request(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    limits: Limits,
) -> Result<Option<Bytes>> {
    let len = match tokio::time::timeout(limits.idle, r.read_i32()).await {
        Err(_) => return Ok(None),
        Ok(Ok(n)) => n,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(e.into()),
    };
    let Some(len) = usize::try_from(len)
        .ok()
        .filter(|n| (MIN_REQUEST..=MAX_REQUEST).contains(n))
    else {
        bail!("a request of {len} bytes (served: {MIN_REQUEST} to {MAX_REQUEST})");
    };
    let mut buf = BytesMut::new();
    let read = async {
        while buf.len() < len {
            buf.reserve((len - buf.len()).min(64 << 10));
            let want = (len - buf.len()) as u64;
            if (&mut *r).take(want).read_buf(&mut buf).await? == 0 {
                bail!(
                    "the client hung up {} bytes into a {len}-byte request",
                    buf.len()
                );
            }
        }
        Ok(())
    };
    match tokio::time::timeout(limits.request, read).await {
        Ok(done) => done?,
        Err(_) => bail!(
            "a {len}-byte request not received within {:?}",
            limits.request
        ),
    }
    Ok(Some(buf.freeze()))
}

fn api_versions() -> ApiVersionsResponse {
    let mut res = ApiVersionsResponse::default();
    res.api_keys = APIS
        .iter()
        .map(|&(k, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = k as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    res
}
