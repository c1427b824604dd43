//! DTSS against a Kafka-protocol broker it did not write: Tansu (scripts/tansu.sh, on
//! its SQLite storage). The topic is created by `dtss init`, ingest produces with acks=all
//! on an idempotent producer, the workers read their assigned partitions from the
//! offsets in MySQL. The end-to-end scenario, a worker killed, and the broker itself
//! killed with SIGKILL under load: nothing lost, nothing settled twice.

mod common;

use std::sync::Once;
use std::time::{Duration, Instant};

use common::{Cluster, Spec};

const BROKER: &str = "127.0.0.1:9092";

static TANSU: Once = Once::new();

fn start() -> Cluster {
    TANSU.call_once(|| common::script("tansu.sh", &["up"]));
    Cluster::start(
        "tansu",
        Spec {
            kafka_brokers: &[BROKER],
            ..Spec::default()
        },
    )
}

#[test]
fn orders_settle_through_tansu_and_a_killed_worker_loses_nothing() {
    let c = start();
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
        "Tansu: {} orders accepted, worker killed with SIGKILL and restarted, settling resumed after {resumed:?}",
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
        common::script("tansu.sh", &["up"]);
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
