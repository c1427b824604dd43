//! End to end: HTTP ingest → embedded Kafka → timely workers → MariaDB, with ZooKeeper
//! rates. Real processes; see tests/common.

mod common;

use std::time::Duration;

use common::{Cluster, Spec};
use serde_json::json;

const CATALOGUE: &str = "id,name,price,currency,inventory
1,apple,2.50,RMB,10
2,pen,1.00,USD,5
3,book,10.00,EUR,1
4,ticket,0.0356,RMB,100
";

fn stock(c: &Cluster, id: u32) -> u32 {
    c.query::<u32>(&format!("SELECT inventory FROM commodity WHERE id = {id}"))[0]
}

/// Post one order, wait until it settles, return (order id, result).
fn settle_one(c: &Cluster, body: serde_json::Value) -> (String, serde_json::Value) {
    let (s, v) = c.post(&body.to_string());
    assert_eq!(s, 202, "expected 202 for {body}, got {v}");
    let id = v["order_id"].as_str().unwrap().to_string();
    assert_eq!(v["id"], v["order_id"]);
    assert!(v["accepted_at"].as_i64().unwrap() > 1_700_000_000_000);
    (id.clone(), c.wait_result(&id))
}

#[test]
fn orders_over_http_settle_exactly_and_bad_ones_are_refused() {
    let c = Cluster::start(
        "http",
        Spec {
            catalogue: Some(CATALOGUE),
            ..Spec::default()
        },
    );
    let mut accepted = vec![];

    // 2 × 2.50 RMB + 1 × 1.00 USD (7.12) = 12.12 RMB
    let (id, r) = settle_one(
        &c,
        json!({"user_id": "u-1", "initiator": "RMB", "items": [{"id": 1, "number": 2}, {"id": "2", "number": 1}], "time": 1558868400000u64}),
    );
    accepted.push(id);
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["reason"], serde_json::Value::Null);
    assert_eq!(r["paid"], "12.12");
    assert_eq!(r["time"], 1558868400000u64);
    assert_eq!((stock(&c, 1), stock(&c, 2)), (8, 4));

    // 1 × 10.00 EUR (7.80) in USD (7.12) = 78 / 7.12 = 10.9550… → 10.96; integer user id
    let (id, r) = settle_one(
        &c,
        json!({"user_id": 42, "initiator": "USD", "items": [{"id": 3, "number": 1}]}),
    );
    accepted.push(id);
    assert_eq!(r["paid"], "10.96");
    assert_eq!(r["user_id"], "42");
    assert_eq!(stock(&c, 3), 0);

    // half-even at the half cent: 0.0356 RMB / 7.12 = 0.005 USD → 0.00; ×3 = 0.015 → 0.02
    let (id, r) = settle_one(
        &c,
        json!({"user_id": "u-3", "initiator": "USD", "items": [{"id": 4, "number": 1}]}),
    );
    accepted.push(id);
    assert_eq!(
        (r["success"].clone(), r["paid"].clone()),
        (json!(true), json!("0.00"))
    );
    let (id, r) = settle_one(
        &c,
        json!({"user_id": "u-3", "initiator": "USD", "items": [{"id": 4, "number": 3}]}),
    );
    accepted.push(id);
    assert_eq!(r["paid"], "0.02");

    // the book is gone: insufficient, and the apple in the same order is not taken
    let (id, r) = settle_one(
        &c,
        json!({"user_id": "u-4", "initiator": "EUR", "items": [{"id": 1, "number": 1}, {"id": 3, "number": 1}]}),
    );
    accepted.push(id);
    assert_eq!(r["success"], false);
    assert_eq!(r["reason"], "insufficient_inventory");
    assert_eq!(r["paid"], "0.00");
    assert_eq!(stock(&c, 1), 8);

    // unknown item wins over insufficient stock
    let (id, r) = settle_one(
        &c,
        json!({"user_id": "u-5", "initiator": "JPY", "items": [{"id": 3, "number": 9}, {"id": 99, "number": 1}]}),
    );
    accepted.push(id);
    assert_eq!(r["reason"], "unknown_item");

    // the same id twice is merged: 3 + 2 apples = 5 of the remaining 8
    let (id, r) = settle_one(
        &c,
        json!({"user_id": "u-6", "initiator": "RMB", "items": [{"id": 1, "number": 3}, {"id": 1, "number": 2}]}),
    );
    accepted.push(id);
    assert_eq!(r["paid"], "12.50");
    assert_eq!(r["items"], "1:5");
    assert_eq!(stock(&c, 1), 3);

    // the compatibility routes of the original lab clients
    let (s, v) = common::http(
        &c.listen,
        "POST",
        "/order",
        Some(r#"{"user_id":"lab","initiator":"RMB","items":[{"id":1,"number":1}]}"#),
    )
    .unwrap();
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    c.wait_result(&id);
    let (s, v) = c.get(&format!("/order/{id}"));
    assert_eq!((s, v["paid"].clone()), (200, json!("2.50")));
    accepted.push(id);

    // every kind of malformed order: 400 naming the field, nothing enqueued
    let bad = [
        ("{not json", "body"),
        (
            r#"{"initiator":"USD","items":[{"id":1,"number":1}]}"#,
            "user_id",
        ),
        (
            r#"{"user_id":"u","initiator":"GBP","items":[{"id":1,"number":1}]}"#,
            "initiator",
        ),
        (
            r#"{"user_id":"u","items":[{"id":1,"number":1}]}"#,
            "initiator",
        ),
        (r#"{"user_id":"u","initiator":"USD","items":[]}"#, "items"),
        (r#"{"user_id":"u","initiator":"USD"}"#, "items"),
        (
            r#"{"user_id":"u","initiator":"USD","items":[{"id":"x","number":1}]}"#,
            "items[0].id",
        ),
        (
            r#"{"user_id":"u","initiator":"USD","items":[{"id":0,"number":1}]}"#,
            "items[0].id",
        ),
        (
            r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":0}]}"#,
            "items[0].number",
        ),
        (
            r#"{"user_id":"u","initiator":"USD","items":[{"id":1,"number":1000001}]}"#,
            "items[0].number",
        ),
    ];
    for (body, field) in bad {
        let (s, v) = c.post(body);
        assert_eq!(s, 400, "{body} → {v}");
        assert_eq!(v["field"], field, "{body} → {v}");
        assert!(v["problem"].as_str().is_some_and(|p| !p.is_empty()));
    }
    let many: Vec<String> = (1..=101)
        .map(|i| format!(r#"{{"id":{i},"number":1}}"#))
        .collect();
    let (s, v) = c.post(&format!(
        r#"{{"user_id":"u","initiator":"USD","items":[{}]}}"#,
        many.join(",")
    ));
    assert_eq!((s, v["field"].clone()), (400, json!("items")));
    let huge = format!(
        r#"{{"user_id":"u","initiator":"USD","items":[{{"id":1,"number":1}}],"pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    let (s, v) = c.post(&huge);
    assert_eq!(s, 413, "{v}");

    // queries
    let (s, _) = c.get("/api/orders/0191a3c4-0000-7000-8000-000000000000");
    assert_eq!(s, 404);
    let (s, v) = c.get("/api/orders/not-a-uuid");
    assert_eq!((s, v["field"].clone()), (400, json!("order_id")));
    let (s, v) = c.get("/healthz");
    assert_eq!((s, v["status"].clone()), (200, json!("ok")));
    let (s, v) = c.get("/metrics");
    assert_eq!(s, 200);
    assert!(
        v.as_str()
            .unwrap()
            .contains("dtss_ingest_orders_total{outcome=\"invalid\"} 11"),
        "{v}"
    );

    // nothing but the accepted orders reached the dataflow
    std::thread::sleep(Duration::from_millis(300));
    let offsets = c.count("SELECT CAST(SUM(next_offset) AS UNSIGNED) FROM offsets");
    assert_eq!(
        offsets,
        accepted.len() as u64,
        "Kafka holds exactly the accepted orders"
    );
    c.check_invariants(&accepted);
}

#[test]
fn two_workers_racing_for_the_last_units_never_oversell() {
    let c = Cluster::start(
        "race",
        Spec {
            catalogue: Some("id,name,price,currency,inventory\n1,last-units,1.00,RMB,100\n2,other,1.00,RMB,1000\n"),
            ..Spec::default()
        },
    );
    // 300 orders of 1 unit over 8 connections, spread over both partitions by their keys.
    let accepted = std::sync::Mutex::new(vec![]);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (c, accepted) = (&c, &accepted);
            s.spawn(move || {
                for i in 0..38 {
                    if t * 38 + i >= 300 {
                        break;
                    }
                    let (st, v) = c.post(r#"{"user_id":"racer","initiator":"RMB","items":[{"id":1,"number":1},{"id":2,"number":1}]}"#);
                    assert_eq!(st, 202, "{v}");
                    accepted.lock().unwrap().push(v["order_id"].as_str().unwrap().to_string());
                }
            });
        }
    });
    let accepted = accepted.into_inner().unwrap();
    assert_eq!(accepted.len(), 300);
    c.wait_results(300, Duration::from_secs(60));
    let per_partition: Vec<(i32, u64)> =
        c.query("SELECT `partition`, COUNT(*) FROM result GROUP BY `partition` ORDER BY 1");
    assert_eq!(
        per_partition.len(),
        2,
        "both workers settled orders: {per_partition:?}"
    );
    assert_eq!(c.count("SELECT COUNT(*) FROM result WHERE success"), 100);
    assert_eq!(
        c.count("SELECT COUNT(*) FROM result WHERE reason = 'insufficient_inventory'"),
        200
    );
    assert_eq!(stock(&c, 1), 0);
    assert_eq!(
        stock(&c, 2),
        900,
        "the other item was taken only by successful orders"
    );
    c.check_invariants(&accepted);
}

#[test]
fn killed_worker_resumes_from_stored_offsets_without_loss_or_duplicates() {
    let c = Cluster::start("kill", Spec::default());
    let accepted = std::sync::Mutex::new(Vec::<String>::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (c, accepted, done) = (&c, &accepted, &done);
            s.spawn(move || {
                let mut gen = harness::OrderGen::new(
                    t,
                    1000,
                    vec!["RMB".into(), "USD".into(), "JPY".into(), "EUR".into()],
                );
                for _ in 0..1000 {
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let (st, v) = c.post(&gen.next_body());
                    match st {
                        202 => accepted
                            .lock()
                            .unwrap()
                            .push(v["order_id"].as_str().unwrap().to_string()),
                        503 => std::thread::sleep(Duration::from_millis(20)),
                        _ => panic!("unexpected {st}: {v}"),
                    }
                }
            });
        }
        // Let some settle, then kill -9 the worker process mid-stream.
        common::wait_for(Duration::from_secs(60), "first results", || {
            c.count("SELECT COUNT(*) FROM result") >= 500
        });
        let status = c.kill_worker(0, libc::SIGKILL).expect("worker was running");
        assert!(!status.success());
        // A COMMIT the server had received before the kill still lands: wait for the
        // count to hold still, then nothing may settle while the worker is down.
        let mut at_kill = c.count("SELECT COUNT(*) FROM result");
        for tries in 1.. {
            std::thread::sleep(Duration::from_millis(300));
            let now = c.count("SELECT COUNT(*) FROM result");
            if now == at_kill {
                break;
            }
            assert!(tries < 10, "results still growing 3 s after the kill");
            at_kill = now;
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            c.count("SELECT COUNT(*) FROM result"),
            at_kill,
            "nothing settles while the worker is down"
        );
        c.start_worker(0);
        std::thread::sleep(Duration::from_secs(2));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let accepted = accepted.into_inner().unwrap();
    assert!(accepted.len() > 500);
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    c.check_invariants(&accepted);
    let log = c.log("worker-0");
    assert!(
        log.matches("reading orders/").count() >= 4,
        "both runs of both workers logged where they started:\n{log}"
    );
}

#[test]
fn dtss_up_serves_and_settles_a_load() {
    // The README's first command, on its own ports and database.
    let c = Cluster::configure("up", Spec::default());
    let out = std::process::Command::new(common::BIN)
        .args([
            "up",
            "--no-services",
            "--load",
            "3000",
            "--exit-after-load",
            "--connections",
            "8",
            "--config",
        ])
        .arg(&c.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dtss up failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("DTSS is up"), "{stdout}");
    assert!(stdout.contains("accepted 3000"), "{stdout}");
    assert!(stdout.contains("settled 3000/3000"), "{stdout}");
    assert_eq!(c.count("SELECT COUNT(*) FROM result"), 3000);
}

#[test]
fn dtss_services_up_starts_fresh_services_under_a_relative_data_dir() {
    // What `cargo run --release -- up` does first on a fresh machine: cluster.toml in the
    // working folder, `data_dir` relative to it. Own ports, so the shared services stay.
    let dir = std::env::temp_dir().join(format!(
        "dtss-test-fresh-{}-{}",
        std::process::id(),
        model::now_ms() % 1_000_000
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (my, zk) = (common::free_port(), common::free_port());
    std::fs::write(
        dir.join("cluster.toml"),
        format!(
            "[cluster]\nprocesses = [\"127.0.0.1:{}\"]\nworkers_per_process = 1\ndata_dir = \".dtss\"\n\
             [zookeeper]\nconnect = \"127.0.0.1:{zk}\"\n\
             [mysql]\nurl = \"mysql://dtss@127.0.0.1:{my}/dtss\"\n\
             [currencies]\nbase = \"RMB\"\ninitial = {{ RMB = \"1\", USD = \"7.12\" }}\n",
            common::free_port()
        ),
    )
    .unwrap();
    let services = |action: &str| {
        std::process::Command::new(common::BIN)
            .args(["services", action])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let up = services("up");
    let down = || services("down");
    if !up.status.success() {
        down();
        panic!(
            "dtss services up failed:\n{}",
            String::from_utf8_lossy(&up.stderr)
        );
    }
    assert!(dir.join(".dtss/services/mariadb/data/mysql").is_dir());
    // Its own random password, private to its owner; the old fixed one is refused.
    let password_file = dir.join(".dtss/mysql-password");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&password_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the password file is private");
    let password = std::fs::read_to_string(&password_file).unwrap();
    let password = password.trim();
    assert!(password.len() >= 24, "a long random password");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let one: Option<u32> = rt.block_on(async {
        let pool =
            mysql_async::Pool::new(format!("mysql://dtss:{password}@127.0.0.1:{my}").as_str());
        let mut conn = pool.get_conn().await.unwrap();
        let v = mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT 1")
            .await
            .unwrap();
        drop(conn);
        pool.disconnect().await.unwrap();
        let fixed = mysql_async::Conn::from_url(format!("mysql://dtss:dtss@127.0.0.1:{my}")).await;
        assert!(fixed.is_err(), "no working default password");
        v
    });
    assert_eq!(one, Some(1), "the new MariaDB answers as dtss");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", zk)).is_ok(),
        "ZooKeeper listens"
    );
    let stopped = down();
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", my)).is_err(),
        "MariaDB stopped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
