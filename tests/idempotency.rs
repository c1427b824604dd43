//! Exactly once from the client's side: an order sent with an `Idempotency-Key` is one
//! order however often, and through whichever replica, the client sends it; an answer
//! never hides an order that Kafka may hold (504 with its id); and `dtss bench`'s
//! retries across ingest crashes leave exactly one result per accepted order.

mod common;

use std::time::{Duration, Instant};

use common::{http_with, Cluster, Spec};

const CATALOGUE: &str = "id,name,price,currency,inventory
1,apple,2.50,RMB,100000
2,pear,1.00,RMB,100000
";

const BODY: &str =
    r#"{"user_id": "u-idem", "initiator": "RMB", "items": [{"id": 1, "number": 3}]}"#;

/// POST `body` to `addr` with `Idempotency-Key: key`.
fn post_keyed(addr: &str, body: &str, key: &str) -> (u16, serde_json::Value) {
    http_with(
        addr,
        "POST",
        "/api/orders",
        Some(body),
        &[("Idempotency-Key", key)],
    )
    .expect("POST /api/orders")
}

fn inventory(c: &Cluster, id: u32) -> u64 {
    c.count(&format!("SELECT inventory FROM commodity WHERE id = {id}"))
}

fn id_of(v: &serde_json::Value) -> String {
    v["order_id"].as_str().expect("an order id").to_string()
}

#[test]
fn one_key_is_one_order_through_any_replica_and_another_body_under_it_is_a_conflict() {
    let c = Cluster::start(
        "idem-key",
        Spec {
            catalogue: Some(CATALOGUE),
            ..Spec::default()
        },
    );
    let (other, mut other_child) = c.start_extra_ingest();
    // The same key four times: twice to each replica, one retry after it settled.
    let (s, v) = post_keyed(&c.listen, BODY, "checkout-1");
    assert_eq!(s, 202, "{v}");
    let id = id_of(&v);
    // A database `dtss init` created: the key's id, tagged with the user's tag.
    let tagged = model::IdScheme::UserTagged.keyed("u-idem", "checkout-1");
    assert_eq!(id, tagged.to_string());
    for addr in [&c.listen, &other, &other] {
        let (s, v) = post_keyed(addr, BODY, "checkout-1");
        assert_eq!((s, id_of(&v)), (202, id.clone()), "{v}");
    }
    c.wait_result(&id);
    let (s, v) = post_keyed(&other, BODY, "checkout-1");
    assert_eq!((s, id_of(&v)), (202, id.clone()), "{v}");
    // Another user's key of the same name is another order.
    let theirs = BODY.replace("u-idem", "u-other");
    let (s, v) = post_keyed(&c.listen, &theirs, "checkout-1");
    assert_eq!(s, 202, "{v}");
    let their_id = id_of(&v);
    assert_ne!(their_id, id);
    // The same key with another body: 202 (the id is the key's), and a dead letter.
    let changed = BODY.replace("\"number\": 3", "\"number\": 5");
    let (s, v) = post_keyed(&other, &changed, "checkout-1");
    assert_eq!((s, id_of(&v)), (202, id.clone()), "{v}");
    // An order after all of them on each partition shows they were all read.
    let mut after = vec![];
    for n in 0..8 {
        let (s, v) = post_keyed(&c.listen, BODY, &format!("after-{n}"));
        assert_eq!(s, 202, "{v}");
        after.push(id_of(&v));
    }
    for a in &after {
        c.wait_result(a);
    }
    c.wait_result(&their_id);
    let result = c.wait_result(&id);
    assert_eq!(result["success"], true, "{result}");
    assert_eq!(
        c.count(&format!(
            "SELECT COUNT(*) FROM result WHERE order_id = '{id}'"
        )),
        1
    );
    assert_eq!(
        inventory(&c, 1),
        100_000 - 3 * 10,
        "stock moved once per order"
    );
    common::wait_for(Duration::from_secs(30), "the copies to be recorded", || {
        c.count(&format!(
            "SELECT COUNT(*) FROM skipped_copy WHERE order_id = '{id}'"
        )) == 4
    });
    let conflicts: Vec<(String, String)> =
        c.query("SELECT order_id, detail FROM dead_letter WHERE reason = 'idempotency_conflict'");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].0, id);
    assert!(
        conflicts[0].1.contains("\"checkout-1\""),
        "{}",
        conflicts[0].1
    );
    let listed = c.run(&["dead-letters"]).unwrap();
    assert!(listed.contains("idempotency_conflict"), "{listed}");
    let mut accepted = vec![id, their_id];
    accepted.extend(after);
    c.check_invariants(&accepted);
    Cluster::terminate(&mut other_child);
}

/// The `result` table as the first version of DTSS created it, with its `by_user` index.
const FIRST_VERSION_RESULT: &str = "CREATE TABLE result (
    order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    user_id VARBINARY(256) NOT NULL, initiator CHAR(3) NOT NULL, success BOOL NOT NULL,
    reason VARCHAR(32) NULL, paid DECIMAL(24,2) NOT NULL,
    rate_version BIGINT UNSIGNED NOT NULL, epoch BIGINT UNSIGNED NOT NULL, items TEXT NOT NULL,
    client_time BIGINT NULL, accepted_at BIGINT NOT NULL, settled_at BIGINT NOT NULL,
    `partition` INT NOT NULL, `offset` BIGINT NOT NULL, digest BINARY(16) NULL,
    KEY by_user (user_id, accepted_at)) ENGINE=InnoDB";

#[test]
fn a_database_of_the_first_version_keeps_its_untagged_ids_and_lists_through_its_index() {
    use mysql_async::prelude::*;
    let c = Cluster::configure(
        "idem-upgrade",
        Spec {
            catalogue: Some(CATALOGUE),
            ..Spec::default()
        },
    );
    // The database as the first version left it, before this version's `dtss init`.
    c.rt.block_on(async {
        let server = mysql_async::Pool::new(common::mysql_url(3306, "").as_str());
        let mut conn = server.get_conn().await.unwrap();
        conn.query_drop(format!("CREATE DATABASE `{}`", c.db))
            .await
            .unwrap();
        conn.query_drop(format!("USE `{}`; {FIRST_VERSION_RESULT}", c.db))
            .await
            .unwrap();
        drop(conn);
        server.disconnect().await.unwrap();
    });
    let c = c.launch();
    let (s, v) = post_keyed(&c.listen, BODY, "old-1");
    assert_eq!(s, 202, "{v}");
    let keyed = id_of(&v);
    let untagged = model::IdScheme::Untagged.keyed("u-idem", "old-1");
    assert_eq!(
        keyed,
        untagged.to_string(),
        "the id a first-version ingest gave"
    );
    let (s, v) = c.post(BODY);
    assert_eq!(s, 202, "{v}");
    let fresh = id_of(&v);
    assert_eq!(fresh.parse::<model::Uuid>().unwrap().get_version_num(), 7);
    for id in [&keyed, &fresh] {
        assert_eq!(c.wait_result(id)["success"], true);
    }
    let (s, v) = c.admin("GET", "/api/orders?user_id=u-idem&limit=10", None);
    assert_eq!(s, 200, "{v}");
    let mut listed: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["order_id"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut expected = vec![keyed.as_str(), fresh.as_str()];
    expected.sort();
    assert_eq!(listed, expected);
    c.check_invariants(&[keyed.clone(), fresh.clone()]);
}

#[test]
fn a_bad_key_is_a_400_naming_the_header_and_nothing_is_enqueued() {
    let c = Cluster::start(
        "idem-bad",
        Spec {
            catalogue: Some(CATALOGUE),
            workers: 1,
            ..Spec::default()
        },
    );
    let long = "k".repeat(129);
    for key in ["has space", long.as_str(), "tab\there"] {
        let (s, v) = post_keyed(&c.listen, BODY, key);
        assert_eq!(
            (s, v["field"].as_str()),
            (400, Some("Idempotency-Key")),
            "{key:?}: {v}"
        );
    }
    let (s, v) = http_with(
        &c.listen,
        "POST",
        "/api/orders",
        Some(BODY),
        &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    )
    .unwrap();
    assert_eq!(
        (s, v["field"].as_str()),
        (400, Some("Idempotency-Key")),
        "{v}"
    );
    assert!(v["problem"].as_str().unwrap().contains("once"), "{v}");
    let (s, v) = post_keyed(&c.listen, BODY, &"k".repeat(128));
    assert_eq!(s, 202, "{v}");
    let id = id_of(&v);
    c.wait_result(&id);
    c.check_invariants(&[id]);
}

#[test]
fn a_produce_that_times_out_is_a_504_with_the_id_and_the_retry_settles_once() {
    let mut c = Cluster::start(
        "idem-504",
        Spec {
            catalogue: Some(CATALOGUE),
            workers: 1,
            ..Spec::default()
        },
    );
    let (s, v) = post_keyed(&c.listen, BODY, "warm-up");
    assert_eq!(s, 202, "{v}");
    let mut accepted = vec![id_of(&v)];
    c.wait_result(&accepted[0]);
    let broker = c.broker.as_ref().expect("broker").id() as i32;
    unsafe {
        libc::kill(broker, libc::SIGSTOP);
    }
    let t = Instant::now();
    let body = BODY.replace("\"id\": 1", "\"id\": 2");
    let (s, v) = post_keyed(&c.listen, &body, "paused-1");
    let waited = t.elapsed();
    unsafe {
        libc::kill(broker, libc::SIGCONT);
    }
    assert_eq!(s, 504, "{v}");
    let id = id_of(&v);
    assert!(
        v["retry"].as_str().unwrap().contains("Idempotency-Key"),
        "{v}"
    );
    eprintln!("504 after {waited:?} with the broker stopped: {v}");
    // Kafka may hold it (it does, once the broker reads its socket again): the retry
    // with the same key is the same order.
    let deadline = Instant::now() + Duration::from_secs(60);
    let retried = loop {
        let (s, v) = post_keyed(&c.listen, &body, "paused-1");
        match s {
            202 => break v,
            503 | 504 if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            _ => panic!("the retry got {s}: {v}"),
        }
    };
    assert_eq!(id_of(&retried), id);
    accepted.push(id.clone());
    let result = c.wait_result(&id);
    assert_eq!(result["success"], true, "{result}");
    // An order after the retry shows every copy was read.
    let (s, v) = post_keyed(&c.listen, BODY, "after");
    assert_eq!(s, 202, "{v}");
    accepted.push(id_of(&v));
    c.wait_result(&accepted[2]);
    assert_eq!(inventory(&c, 2), 100_000 - 3, "settled once");
    let copies = c.count(&format!(
        "SELECT COUNT(*) FROM skipped_copy WHERE order_id = '{id}'"
    ));
    eprintln!("copies of the timed-out order skipped: {copies}");
    // The stopped broker may make ingest's producer fail for good; it then exits. Either
    // way nothing was settled twice.
    if c.ingest.as_mut().unwrap().try_wait().unwrap().is_some() {
        c.start_ingest();
    }
    c.check_invariants(&accepted);
}

/// The pid of the ingest `dtss up` runs for `config`, once it answers /healthz.
fn serving_ingest(c: &Cluster, config: &str, not: Option<i32>) -> i32 {
    let mut pid = None;
    common::wait_for(Duration::from_secs(60), "ingest serving again", || {
        pid = common::find_process(&["ingest --config", config]).filter(|p| Some(*p) != not);
        pid.is_some()
            && common::http(&c.listen, "GET", "/healthz", None).is_ok_and(|(s, _)| s == 200)
    });
    pid.expect("found")
}

#[test]
fn ingest_killed_five_times_under_keyed_load_leaves_one_result_per_accepted_order() {
    let c = Cluster::configure("idem-kill", Spec::default());
    let _up = common::start_up(&c);
    let config = c.config.display().to_string();
    let out = c.dir.join("bench");
    let log = std::fs::File::create(c.dir.join("bench.log")).unwrap();
    let mut bench = std::process::Command::new(common::BIN)
        .args(["bench", "--rate", "500", "--duration", "40", "--ramp", "1"])
        .args(["--connections", "32", "--drain-timeout", "60", "--out"])
        .arg(&out)
        .args(["--config", &config])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    common::wait_for(Duration::from_secs(60), "results flowing", || {
        c.count("SELECT COUNT(*) FROM result") >= 500
    });
    let mut pid = serving_ingest(&c, &config, None);
    let mut kills = vec![];
    for _ in 0..5 {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let killed = Instant::now();
        pid = serving_ingest(&c, &config, Some(pid));
        kills.push(killed.elapsed());
        std::thread::sleep(Duration::from_secs(3));
    }
    let status = common::exit_within(&mut bench, Duration::from_secs(600));
    let bench_log = std::fs::read_to_string(c.dir.join("bench.log")).unwrap();
    assert!(status.success(), "dtss bench failed:\n{bench_log}");
    // Strict: every result belongs to an order that got a 202, and each has one.
    let accepted = out.join("accepted.txt");
    let checked = c
        .run(&["check", "--accepted", accepted.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("dtss check --accepted failed:\n{e}"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run-1.json")).unwrap()).unwrap();
    let n = &report["counts"];
    eprintln!(
        "ingest killed 5 times (back serving after {kills:?}): accepted {}, settled {}, \
         retried after no answer {}, after a 504 {}, after a 503 {}; copies skipped \
         (duplicates prevented) {}\n{checked}",
        n["accepted"],
        n["settled"],
        n["errors_retried"],
        n["unacknowledged_retried"],
        n["busy_retried"],
        n["copies_skipped"]
    );
    assert_eq!(n["accepted"], n["settled"], "{n}");
    assert!(
        n["errors_retried"].as_u64().unwrap() > 0,
        "the kills cut requests: {n}"
    );
    assert_eq!(n["dead_letters"], 0, "{n}");
}
