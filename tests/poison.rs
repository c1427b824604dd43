//! Poison messages: written straight to the topic by a raw producer (not through
//! ingest), each must become a dead letter (or a skipped copy, or a held partition),
//! and the orders produced after it must settle. Real processes; see tests/common.

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use common::{wait_for, Cluster, Spec};
use model::{Currency, Item, Order, Uuid};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Item 1 is plentiful; item 2 so dear that 100 × 1,000,000 of it cannot be paid
/// (past the result table's DECIMAL(24,2)).
const CATALOGUE: &str = "id,name,price,currency,inventory
1,apple,2.50,RMB,100000
2,gem,99999999999999,USD,200000000
3,gem,99999999999999,USD,200000000
4,gem,99999999999999,USD,200000000
5,gem,99999999999999,USD,200000000
6,gem,99999999999999,USD,200000000
7,gem,99999999999999,USD,200000000
8,gem,99999999999999,USD,200000000
9,gem,99999999999999,USD,200000000
10,gem,99999999999999,USD,200000000
11,gem,99999999999999,USD,200000000
12,gem,99999999999999,USD,200000000
13,gem,99999999999999,USD,200000000
14,gem,99999999999999,USD,200000000
15,gem,99999999999999,USD,200000000
16,gem,99999999999999,USD,200000000
";

fn order(user: &str, initiator: &str, items: &[(u32, u32)]) -> Order {
    Order {
        order_id: Uuid::now_v7(),
        user_id: user.into(),
        initiator: Currency::from_str(initiator).unwrap(),
        items: items
            .iter()
            .map(|&(id, number)| Item { id, number })
            .collect(),
        time: None,
        accepted_at: model::now_ms(),
        keyed: None,
    }
}

/// A message whose user id claims `len` bytes, after a readable order id.
fn claiming(len: u64) -> (Uuid, Vec<u8>) {
    let o = order("u", "RMB", &[(1, 1)]);
    let mut bytes = model::wire::encode(&o);
    bytes.truncate(1 + 1 + 16); // the version, the id's length and its 16 bytes
    bytes.push(253); // bincode's varint: a u64 follows
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(b"abc");
    (o.order_id, bytes)
}

/// What a poison is, the message, the order id its result should carry, and the
/// reason of its dead letter (None: it makes none).
type Poison<'a> = (&'a str, Vec<u8>, Option<Uuid>, Option<&'a str>);

struct Raw {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Raw {
    fn new(c: &Cluster) -> Raw {
        let addr = std::fs::read_to_string(c.dir.join("data/broker.addr")).unwrap();
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", addr.trim())
            .set("linger.ms", "0")
            .create()
            .unwrap();
        Raw { producer }
    }

    fn send(&self, partition: i32, bytes: &[u8]) {
        let record = BaseRecord::<(), [u8]>::to("orders")
            .partition(partition)
            .payload(bytes);
        self.producer.send(record).map_err(|(e, _)| e).unwrap();
        self.producer.flush(Duration::from_secs(10)).unwrap();
    }
}

fn offset_of(c: &Cluster, partition: i32) -> i64 {
    c.query::<i64>(&format!(
        "SELECT next_offset FROM offsets WHERE `partition` = {partition}"
    ))[0]
}

#[test]
fn no_message_on_the_topic_stalls_or_corrupts_settlement() {
    let c = Cluster::start(
        "poison",
        Spec {
            catalogue: Some(CATALOGUE),
            ..Spec::default()
        },
    );
    let raw = Raw::new(&c);
    let mut accepted = vec![];
    // A good order first: its bytes are replayed below.
    let first = order("u-first", "RMB", &[(1, 1)]);
    let first_bytes = model::wire::encode(&first);
    raw.send(0, &first_bytes);
    assert_eq!(c.wait_result(&first.order_id.to_string())["success"], true);
    accepted.push(first.order_id.to_string());

    let (max_id, max_prefix) = claiming(u64::MAX);
    let (big_id, big_prefix) = claiming(1 << 60);
    let gbp = order("u-gbp", "GBP", &[(1, 1)]);
    let long_user = order(&"u".repeat(300), "RMB", &[(1, 1)]);
    let many: Vec<(u32, u32)> = (0..20_000).map(|i| (1 + i % 2, 1)).collect();
    let many = order("u-many", "RMB", &many);
    let copies = order("u-copies", "RMB", &vec![(1, 1); 1001]);
    // 15 gems of 10^6 units at 10^14 USD: past what DECIMAL(24,2) holds, in RMB.
    let dear: Vec<(u32, u32)> = (2..=16).map(|id| (id, 1_000_000)).collect();
    let dear = order("u-dear", "RMB", &dear);
    // 100 lines of one id, each within the limit, together past it: ingest refuses
    // this (400), so on the topic it is invalid.
    let merged = order("u-merged", "RMB", &vec![(2, 1_000_000); 100]);
    let twice = order("u-twice", "RMB", &[(1, 40_000), (1, 40_000)]);
    let poisons: Vec<Poison> = vec![
        (
            "u64::MAX length prefix",
            max_prefix,
            Some(max_id),
            Some("undecodable"),
        ),
        (
            "2^60 length prefix",
            big_prefix,
            Some(big_id),
            Some("undecodable"),
        ),
        (
            "garbage",
            b"\x01\xff\xfe\xfd not an order".to_vec(),
            None,
            Some("undecodable"),
        ),
        (
            "unconfigured currency",
            model::wire::encode(&gbp),
            Some(gbp.order_id),
            Some("invalid_order"),
        ),
        (
            "300-byte user id",
            model::wire::encode(&long_user),
            Some(long_user.order_id),
            Some("invalid_order"),
        ),
        // Its items claim more memory than a message may hold: refused by the decoder.
        (
            "20,000 items",
            model::wire::encode(&many),
            Some(many.order_id),
            Some("undecodable"),
        ),
        (
            "1,001 copies of one item id",
            model::wire::encode(&copies),
            Some(copies.order_id),
            Some("invalid_order"),
        ),
        (
            "paid past DECIMAL(24,2)",
            model::wire::encode(&dear),
            Some(dear.order_id),
            Some("unsettleable"),
        ),
        (
            "lines of one id past 1,000,000 units together",
            model::wire::encode(&merged),
            Some(merged.order_id),
            Some("invalid_order"),
        ),
        (
            "replay of a settled message",
            first_bytes.clone(),
            None,
            None,
        ),
    ];
    let mut timings = vec![];
    for (what, bytes, id, reason) in &poisons {
        let at = offset_of(&c, 0).max(0);
        let next = order("u-next", "RMB", &[(1, 1)]);
        let t0 = Instant::now();
        raw.send(0, bytes);
        raw.send(0, &model::wire::encode(&next));
        let r = c.wait_result(&next.order_id.to_string());
        timings.push(format!(
            "{what}: next order settled {:?} after the poison",
            t0.elapsed()
        ));
        assert_eq!(
            r["success"], true,
            "{what}: the order after it settles: {r}"
        );
        accepted.push(next.order_id.to_string());
        let dead: Vec<(i64, String)> = c.query(&format!(
            "SELECT `offset`, reason FROM dead_letter WHERE `partition` = 0 AND `offset` >= {at}"
        ));
        match reason {
            Some(reason) => {
                assert_eq!(dead.len(), 1, "{what}: one dead letter: {dead:?}");
                assert_eq!(dead[0].1, *reason, "{what}");
            }
            None => assert!(dead.is_empty(), "{what}: {dead:?}"),
        }
        if let Some(id) = id {
            let (s, v) = c.get(&format!("/api/orders/{id}"));
            assert_eq!(
                (s, v["success"].clone()),
                (200, false.into()),
                "{what}: {v}"
            );
            assert_eq!(v["reason"], "invalid_order", "{what}: {v}");
        }
    }
    // Batches the broker must refuse: nothing of them reaches the topic, and the offsets
    // do not jump.
    let end = offset_of(&c, 0);
    let mut bad_crc = broker::batch::build(
        &[&model::wire::encode(&order("u-c", "RMB", &[(1, 1)]))],
        -1,
        0,
    );
    let at = bad_crc.len() - 3;
    bad_crc[at] ^= 0x01;
    let mut lying = broker::batch::build(
        &[&model::wire::encode(&order("u-l", "RMB", &[(1, 1)]))],
        -1,
        0,
    );
    lying[23..27].copy_from_slice(&1_000_000i32.to_be_bytes());
    broker::batch::reseal(&mut lying);
    for (what, batch) in [("wrong CRC", bad_crc), ("lastOffsetDelta that lies", lying)] {
        let t0 = Instant::now();
        assert_eq!(raw_produce(&c, &batch).0, 2, "{what}: CORRUPT_MESSAGE");
        let next = order("u-next", "RMB", &[(1, 1)]);
        raw.send(0, &model::wire::encode(&next));
        c.wait_result(&next.order_id.to_string());
        timings.push(format!(
            "batch with a {what}: refused; next order settled {:?} after",
            t0.elapsed()
        ));
        accepted.push(next.order_id.to_string());
    }
    assert_eq!(
        offset_of(&c, 0),
        end + 2,
        "only the two good orders were written"
    );
    // The replay was skipped, not settled twice; the same id twice in one order merged
    // (80,000 of the 100,000 left), checked.
    let skipped = c.count("SELECT COUNT(*) FROM skipped_copy");
    assert_eq!(skipped, 1);
    raw.send(0, &model::wire::encode(&twice));
    let r = c.wait_result(&twice.order_id.to_string());
    assert_eq!(r["success"], true, "{r}");
    accepted.push(twice.order_id.to_string());
    let inventory: Vec<u32> = c.query("SELECT inventory FROM commodity WHERE id = 1");
    let settled_units = 1 + poisons.len() as u32 + 2 + 80_000;
    assert_eq!(inventory, [100_000 - settled_units]);

    // A newer wire format: partition 1 holds there, nothing after it settles, and
    // /healthz says so; partition 0 goes on.
    let before = order("u-before", "RMB", &[(1, 1)]);
    raw.send(1, &model::wire::encode(&before));
    c.wait_result(&before.order_id.to_string());
    accepted.push(before.order_id.to_string());
    let held_at = offset_of(&c, 1);
    let mut newer = model::wire::encode(&order("u-newer", "RMB", &[(1, 1)]));
    newer[0] = model::wire::FORMAT_VERSION + 1;
    raw.send(1, &newer);
    let after = order("u-after", "RMB", &[(1, 1)]);
    raw.send(1, &model::wire::encode(&after));
    wait_for(
        Duration::from_secs(30),
        "/healthz to report the hold",
        || c.get("/healthz").1["status"] == "held",
    );
    let (_, health) = c.get("/healthz");
    assert_eq!(health["held"][0]["partition"], 1, "{health}");
    assert_eq!(health["held"][0]["offset"], held_at, "{health}");
    assert!(
        health["held"][0]["action"]
            .as_str()
            .unwrap()
            .contains("upgrade the workers"),
        "{health}"
    );
    let other = order("u-other", "RMB", &[(1, 1)]);
    raw.send(0, &model::wire::encode(&other));
    c.wait_result(&other.order_id.to_string());
    accepted.push(other.order_id.to_string());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        offset_of(&c, 1),
        held_at,
        "nothing of the held partition is skipped"
    );
    let (s, _) = c.get(&format!("/api/orders/{}", after.order_id));
    assert_eq!(s, 404, "the order behind the newer message waits");
    assert!(c.log("worker-0").contains("upgrade the workers"));

    // The worker lived through all of it, and `dtss dead-letters` lists them.
    let mut workers = c.workers.lock().unwrap();
    let alive = workers[0].as_mut().unwrap().try_wait().unwrap().is_none();
    assert!(alive, "the worker process did not exit");
    drop(workers);
    let list = c.run(&["dead-letters"]).unwrap();
    assert_eq!(list.lines().count(), 1 + 9, "{list}");
    assert!(
        list.contains("unsettleable") && list.contains("undecodable"),
        "{list}"
    );
    let one = c.run(&["dead-letters", "--show", "0:1"]).unwrap();
    assert!(one.contains("reason       undecodable"), "{one}");
    let (_, metrics) = common::http(&c.listen, "GET", "/metrics", None).unwrap();
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(metrics.contains("dtss_dead_letters 9"), "{metrics}");
    assert!(metrics.contains("dtss_skipped_copies 1"), "{metrics}");
    c.check_invariants(&accepted);
    for t in timings {
        eprintln!("{t}");
    }
}

/// Send `batch` to partition 0 as a raw Produce request; its error code and offset.
fn raw_produce(c: &Cluster, batch: &[u8]) -> (i16, i64) {
    use std::io::{Read, Write};
    let addr = std::fs::read_to_string(c.dir.join("data/broker.addr")).unwrap();
    let mut s = std::net::TcpStream::connect(addr.trim()).unwrap();
    s.write_all(&broker::batch::produce_request("orders", 0, batch))
        .unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).unwrap();
    broker::batch::produce_answer(&answer, "orders").unwrap()
}

/// The producer id, epoch and last sequence of the last batch in partition 0's log of
/// the embedded broker (read from its segment file).
fn last_batch_producer(c: &Cluster) -> (i64, i16, i32) {
    let seg = c.dir.join("data/broker/orders-0/00000000000000000000.log");
    let data = std::fs::read(seg).unwrap();
    let (mut at, mut last) = (0, None);
    while at + 61 <= data.len() {
        let len = 12 + i32::from_be_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let b = &data[at..at + len];
        let pid = i64::from_be_bytes(b[43..51].try_into().unwrap());
        let epoch = i16::from_be_bytes(b[51..53].try_into().unwrap());
        let base_seq = i32::from_be_bytes(b[53..57].try_into().unwrap());
        let delta = i32::from_be_bytes(b[23..27].try_into().unwrap());
        last = Some((pid, epoch, base_seq + delta));
        at += len;
    }
    last.expect("a batch in the log")
}

#[test]
fn a_batch_forged_with_ingests_producer_id_never_earns_a_false_202() {
    let mut c = Cluster::start(
        "hijack",
        Spec {
            catalogue: Some(CATALOGUE),
            workers: 1,
            ..Spec::default()
        },
    );
    let body = r#"{"user_id": "u-h", "initiator": "RMB", "items": [{"id": 1, "number": 1}]}"#;
    let (s, v) = c.post(body);
    assert_eq!(s, 202, "{v}");
    let mut accepted = vec![v["order_id"].as_str().unwrap().to_string()];
    c.wait_result(&accepted[0]);
    // Take ingest's next sequence number with a batch of someone else's.
    let (pid, epoch, seq) = last_batch_producer(&c);
    assert!(pid >= 0, "ingest's producer is idempotent");
    let forged = order("u-forged", "RMB", &[(1, 1)]);
    let mut batch = broker::batch::build(&[&model::wire::encode(&forged)], pid, seq + 1);
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    broker::batch::reseal(&mut batch);
    assert_eq!(raw_produce(&c, &batch).0, 0, "the forged batch is written");
    c.wait_result(&forged.order_id.to_string());
    accepted.push(forged.order_id.to_string()); // written to the topic: it settles
                                                // Ingest's next order takes that sequence: the broker refuses it, and the client is
                                                // not told it was accepted. Ingest's producer cannot go on: ingest exits (a
                                                // supervisor starts it again, with a new producer).
    let (s, v) = common::http(&c.listen, "POST", "/api/orders", Some(body)).unwrap();
    assert_eq!(s, 503, "{v}");
    let mut ingest = c.ingest.take().unwrap();
    wait_for(Duration::from_secs(30), "ingest to exit", || {
        ingest.try_wait().unwrap().is_some()
    });
    assert!(!ingest.wait().unwrap().success());
    assert!(c.log("ingest").contains("failed for good"));
    c.start_ingest();
    for _ in 0..5 {
        let (s, v) = c.post(body);
        assert_eq!(s, 202, "{v}");
        accepted.push(v["order_id"].as_str().unwrap().to_string());
    }
    for id in &accepted {
        c.wait_result(id);
    }
    c.check_invariants(&accepted);
}
