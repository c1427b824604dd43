//! DTSS against a Kafka-protocol broker it did not write: Tansu (`dtss services tansu`), one
//! broker on its SQLite storage, and three brokers sharing one PostgreSQL. The topic is
//! created by `dtss init`, ingest produces with acks=all on an idempotent producer, the
//! workers read their assigned partitions from the offsets in MySQL. The end-to-end
//! scenario and a worker killed on each; the SQLite broker killed with SIGKILL under load
//! and restarted; of the three, the one serving the most connections killed with SIGKILL
//! under load and left down while the others serve. Nothing lost, nothing settled twice.

mod common;

use std::sync::Once;
use std::time::{Duration, Instant};

use common::{Cluster, Spec};

const BROKER: &str = "127.0.0.1:9092";

/// The brokers of `dtss services tansu up --postgres 3`.
const ON_POSTGRES: [&str; 3] = ["127.0.0.1:9093", "127.0.0.1:9094", "127.0.0.1:9095"];

static TANSU: Once = Once::new();
static TANSU_ON_POSTGRES: Once = Once::new();

/// Tansu 0.6 drops a topic's records after a restart when its `retention.ms` is -1
/// (measured: acknowledged orders lost); a century keeps them as well.
const TANSU_RETENTION: &str = "retention_ms = 3153600000000";

fn start() -> Cluster {
    TANSU.call_once(|| common::dtss_services(&["tansu", "up"]));
    Cluster::start(
        "tansu",
        Spec {
            kafka_brokers: &[BROKER],
            kafka_extra: TANSU_RETENTION,
            ..Spec::default()
        },
    )
}

fn start_on_postgres() -> Cluster {
    TANSU_ON_POSTGRES.call_once(|| common::dtss_services(&["tansu", "up", "--postgres", "3"]));
    Cluster::start(
        "tansu_pg",
        Spec {
            kafka_brokers: &ON_POSTGRES,
            kafka_extra: TANSU_RETENTION,
            ..Spec::default()
        },
    )
}

#[test]
fn orders_settle_through_tansu_and_a_killed_worker_loses_nothing() {
    settle_and_kill_a_worker(&start(), "Tansu on SQLite");
}

#[test]
fn orders_settle_through_three_tansu_brokers_on_postgres_and_a_killed_worker_loses_nothing() {
    settle_and_kill_a_worker(&start_on_postgres(), "three Tansu brokers on PostgreSQL");
}

fn settle_and_kill_a_worker(c: &Cluster, what: &str) {
    let body = r#"{"user_id": "u-t", "initiator": "USD", "items": [{"id": 1, "number": 2}]}"#;
    let (s, v) = c.post(body);
    assert_eq!(s, 202, "{v}");
    let first = v["order_id"].as_str().unwrap().to_string();
    let result = c.wait_result(&first);
    assert_eq!(result["success"], true, "{result}");
    let mut resumed = Duration::ZERO;
    let mut accepted = c.post_while(4, || {
        c.wait_results(1500, Duration::from_secs(60));
        c.kill_worker(0, libc::SIGKILL);
        let killed = Instant::now();
        c.start_worker(0);
        c.wait_more_results_than(10, "settling again after the worker restarted");
        resumed = killed.elapsed();
        c.wait_more_results_than(1500, "more load after the restart");
    });
    accepted.push(first);
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    eprintln!(
        "{what}: {} orders accepted, worker killed with SIGKILL and restarted, settling resumed after {resumed:?}",
        accepted.len()
    );
    c.check_invariants(&accepted);
}

#[test]
fn tansu_killed_under_load_and_restarted_loses_nothing() {
    let c = start();
    let mut resumed = Duration::ZERO;
    let accepted = c.post_while(4, || {
        c.wait_results(1500, Duration::from_secs(60));
        common::kill_service("tansu/tansu.pid");
        let killed = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        common::dtss_services(&["tansu", "up"]);
        c.wait_more_results_than(10, "settling again after Tansu restarted");
        resumed = killed.elapsed();
        c.wait_more_results_than(1500, "more load after the restart");
    });
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    eprintln!(
        "Tansu killed with SIGKILL and restarted after 1 s: {} orders accepted, settling resumed after {resumed:?}",
        accepted.len()
    );
    c.check_invariants(&accepted);
}

#[test]
fn a_tansu_broker_on_postgres_killed_under_load_the_others_serve() {
    let c = start_on_postgres();
    let mut resumed = Duration::ZERO;
    let (mut killed_port, mut connections) = (0, 0);
    let accepted = c.post_while(4, || {
        c.wait_results(1500, Duration::from_secs(60));
        let i;
        (i, connections) = busiest_broker();
        assert!(connections > 0, "no connection to any of {ON_POSTGRES:?}");
        killed_port = 9093 + i;
        common::kill_service(&format!("tansu/broker-{i}/tansu.pid"));
        let killed = Instant::now();
        c.wait_more_results_than(10, "settling again with one broker down");
        resumed = killed.elapsed();
        c.wait_more_results_than(1500, "more load with one broker down");
        common::dtss_services(&["tansu", "up", "--postgres", "3"]);
    });
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    eprintln!(
        "Tansu on PostgreSQL: broker on port {killed_port} (the busiest: {connections} connections) killed with SIGKILL under load, {} orders accepted, settling resumed after {resumed:?} on the others",
        accepted.len()
    );
    c.check_invariants(&accepted);
}

/// Which of the brokers on PostgreSQL holds the most established TCP connections (its
/// index, and the count), from /proc/net/tcp: the one DTSS is using.
fn busiest_broker() -> (u16, usize) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let mut counts = [0usize; ON_POSTGRES.len()];
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local_address is HEXIP:HEXPORT; state 01 is ESTABLISHED.
        let (Some(local), Some(&"01")) = (fields.get(1), fields.get(3)) else {
            continue;
        };
        let port = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if let Some(i) = port
            .and_then(|p| p.checked_sub(9093))
            .filter(|&i| (i as usize) < counts.len())
        {
            counts[i as usize] += 1;
        }
    }
    let (i, n) = counts.iter().enumerate().max_by_key(|(_, n)| **n).unwrap();
    (i as u16, *n)
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Starts MariaDB again when dropped (also when the test fails half way).
struct MariaDbBack;

impl Drop for MariaDbBack {
    fn drop(&mut self) {
        common::dtss_services(&["up"]);
    }
}

#[test]
fn with_mariadb_stopped_under_load_memory_stays_bounded_and_ingest_answers_503() {
    TANSU.call_once(|| common::dtss_services(&["tansu", "up"]));
    let c = Cluster::start(
        "tansu_backpressure",
        Spec {
            kafka_brokers: &[BROKER],
            kafka_extra: "retention_ms = 3153600000000\nmax_backlog_per_partition = 20000",
            cluster: "max_unsettled_per_worker = 10000",
            ..Spec::default()
        },
    );
    let pid = c.workers.lock().unwrap()[0].as_ref().unwrap().id();
    let (ok, busy) = (
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    );
    let mut peak = 0;
    let probes = std::sync::Mutex::new(Vec::new());
    // 60 s, as a long outage: the posting threads give an order up after 90 s of 503s.
    let outage = Duration::from_secs(60);
    let mut accepted = c.post_while(8, || {
        c.wait_results(500, Duration::from_secs(60));
        let before = rss_kib(pid);
        common::kill_service("mariadb/mysqld.pid");
        let _back = MariaDbBack;
        let down = Instant::now();
        while down.elapsed() < outage {
            peak = peak.max(rss_kib(pid));
            let (s, v) =
                c.post(r#"{"user_id":"bp","initiator":"RMB","items":[{"id":1,"number":1}]}"#);
            match s {
                202 => {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    probes.lock().unwrap().push(v["order_id"].as_str().unwrap().to_string());
                }
                503 => {
                    busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => panic!("{s}: {v}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "MariaDB down {outage:?}: worker RSS {before} KiB before, at most {peak} KiB; probes: {} \
             taken, {} refused with 503",
            ok.load(std::sync::atomic::Ordering::Relaxed),
            busy.load(std::sync::atomic::Ordering::Relaxed)
        );
    });
    assert!(
        busy.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "ingest never answered 503 with MariaDB down"
    );
    assert!(
        c.log("worker-0").contains("fill the window"),
        "the worker never stopped reading"
    );
    accepted.extend(probes.into_inner().unwrap());
    c.wait_results(accepted.len() as u64, Duration::from_secs(180));
    c.check_invariants(&accepted);
}
