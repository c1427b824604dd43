//! librdkafka's idempotent producer and a consumer against the embedded broker, across
//! a restart of the broker: offsets, payloads and order survive, nothing is repeated.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dtss_broker::Broker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const TOPIC: &str = "orders";

async fn start(dir: &Path) -> (Arc<Broker>, SocketAddr, tokio::task::JoinHandle<()>) {
    let broker = Broker::open(dir, TOPIC, 2).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(broker.clone().serve(listener, addr));
    (broker, addr, task)
}

/// Send `range` as "m{i}" to partition i % 2; returns (partition, offset) of each.
async fn produce(addr: SocketAddr, range: std::ops::Range<u32>) -> Vec<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr.to_string())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let sends: Vec<_> = range
        .map(|i| {
            let producer = producer.clone();
            async move {
                let payload = format!("m{i}");
                let record = FutureRecord::<(), _>::to(TOPIC)
                    .partition((i % 2) as i32)
                    .payload(&payload);
                let d = producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .unwrap();
                (d.partition, d.offset)
            }
        })
        .collect();
    let mut out = Vec::new();
    for s in sends {
        out.push(s.await);
    }
    out
}

/// Read `n` messages of `partition` from `from`: (offset, payload), fetching with
/// `min_bytes`.
fn consume(
    addr: SocketAddr,
    partition: i32,
    from: i64,
    n: usize,
    min_bytes: u32,
) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr.to_string())
        .set("group.id", "test")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .set("fetch.min.bytes", min_bytes.to_string())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, partition, Offset::Offset(from))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    drop(tpl);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < n && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let payload = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            got.push((m.offset(), payload));
        }
    }
    let (low, high) = consumer
        .fetch_watermarks(TOPIC, partition, Duration::from_secs(5))
        .unwrap();
    assert!(low <= from && from <= high, "{from} within {low}..{high}");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_and_restart() {
    let dir = std::env::temp_dir().join(format!("dtss-broker-clients-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let (broker, addr, task) = start(&dir).await;
    let acks = produce(addr, 0..1000).await;
    for p in 0..2 {
        let mut offsets: Vec<i64> = acks.iter().filter(|a| a.0 == p).map(|a| a.1).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..500).collect::<Vec<_>>(), "partition {p}");
    }
    let read = tokio::task::spawn_blocking(move || consume(addr, 1, 0, 500, 1))
        .await
        .unwrap();
    let want: Vec<(i64, String)> = (0..500).map(|k| (k, format!("m{}", 2 * k + 1))).collect();
    assert_eq!(read, want, "partition 1 in order, each message once");
    assert_eq!(broker.offsets(), vec![(0, 500), (0, 500)]);

    // Restart: the log is read back from its files; new messages follow on.
    task.abort();
    let _ = task.await;
    drop(broker);
    let (broker, addr, _task) = start(&dir).await;
    assert_eq!(broker.offsets(), vec![(0, 500), (0, 500)]);
    let acks = produce(addr, 1000..1010).await;
    assert!(
        acks.iter().all(|&(_, o)| (500..505).contains(&o)),
        "{acks:?}"
    );
    // Fewer bytes than the fetch's minimum: they come when its wait is over.
    let read = tokio::task::spawn_blocking(move || consume(addr, 0, 498, 7, 1 << 20))
        .await
        .unwrap();
    let want: Vec<(i64, String)> = [996, 998, 1000, 1002, 1004, 1006, 1008]
        .iter()
        .zip(498..)
        .map(|(m, o)| (o, format!("m{m}")))
        .collect();
    assert_eq!(read, want);
    // Opened for one partition, the log's second is reported, with where it ends.
    assert_eq!(Broker::logs_beyond(&dir, TOPIC, 1).unwrap(), vec![(1, 505)]);
    assert_eq!(Broker::logs_beyond(&dir, TOPIC, 2).unwrap(), vec![]);
    std::fs::remove_dir_all(&dir).unwrap();
}
