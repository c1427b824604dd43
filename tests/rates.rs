//! Rates and totals end to end: injection while orders flow, the modifier's leader
//! election under kill -9, many rate changes under load, a ZooKeeper restart.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Cluster, Spec};
use serde_json::json;

const ONE_USD: &str =
    "id,name,price,currency,inventory\n1,dollar,1.00,USD,4000000\n2,euro,1.00,EUR,4000000\n";

/// Post orders from `threads` threads until `stop`; returns the accepted ids.
fn post_until(c: &Cluster, threads: usize, stop: &AtomicBool, pause: Duration) -> Vec<String> {
    let accepted = Mutex::new(vec![]);
    std::thread::scope(|s| {
        for t in 0..threads {
            let accepted = &accepted;
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let cur = ["RMB", "USD", "JPY", "EUR"][(i as usize + t) % 4];
                    let body = format!(
                        r#"{{"user_id":"u-{t}","initiator":"{cur}","items":[{{"id":1,"number":1}},{{"id":2,"number":{}}}]}}"#,
                        1 + i % 3
                    );
                    let (st, v) = c.post(&body);
                    match st {
                        202 => accepted.lock().unwrap().push(v["order_id"].as_str().unwrap().to_string()),
                        503 => std::thread::sleep(Duration::from_millis(20)),
                        _ => panic!("{st}: {v}"),
                    }
                    i += 1;
                    std::thread::sleep(pause);
                }
            });
        }
    });
    accepted.into_inner().unwrap()
}

#[test]
fn injected_rate_applies_from_its_epoch_and_totals_agree() {
    let c = Cluster::start(
        "inject",
        Spec {
            catalogue: Some(ONE_USD),
            ..Spec::default()
        },
    );
    // bad injections: 401 without the token, 400 naming the field
    let put = |cur: &str, body: &str| c.admin("PUT", &format!("/api/rates/{cur}"), Some(body));
    let (s, _) = common::http(&c.listen, "PUT", "/api/rates/USD", Some(r#"{"rate":"8"}"#)).unwrap();
    assert_eq!(s, 401);
    for token in ["Bearer wrong", "Bearer dtss-admin", "Bearer  secret"] {
        let (s, _) = common::http_with(
            &c.listen,
            "PUT",
            "/api/rates/USD",
            Some(r#"{"rate":"8"}"#),
            &[("Authorization", token)],
        )
        .unwrap();
        assert_eq!(s, 401, "{token}");
    }
    for (cur, body, field) in [
        ("GBP", r#"{"rate":"8"}"#, "currency"),
        ("RMB", r#"{"rate":"2"}"#, "currency"),
        ("USD", r#"{"rate":"-1"}"#, "rate"),
        ("USD", r#"{"rate":"0"}"#, "rate"),
        ("USD", r#"{"rate":"7.1234567"}"#, "rate"),
        ("USD", r#"{"rate":"abc"}"#, "rate"),
        // Not plain decimals, or outside the hard range (10× either way of 7.12).
        ("USD", r#"{"rate":"1e3"}"#, "rate"),
        ("USD", r#"{"rate":"1e21"}"#, "rate"),
        ("USD", r#"{"rate":" 7.5"}"#, "rate"),
        ("USD", r#"{"rate":"1000000"}"#, "rate"),
        ("USD", r#"{"rate":"71.21"}"#, "rate"),
        ("USD", r#"{"rate":"0.000001"}"#, "rate"),
        ("USD", r#"{"rate":"0.711"}"#, "rate"),
        ("USD", r#"{}"#, "rate"),
    ] {
        let (s, v) = put(cur, body);
        assert_eq!(
            (s, v["field"].as_str()),
            (400, Some(field)),
            "{cur} {body}: {v}"
        );
    }
    let err = c.run(&["rates", "set", "USD=7.1234567"]).unwrap_err();
    assert!(err.contains("more than 6 decimals"), "{err}");
    let err = c.run(&["rates", "set", "RMB=2"]).unwrap_err();
    assert!(err.contains("base currency"), "{err}");
    let (s, v) = c.get("/api/rates");
    assert_eq!(s, 200);
    assert_eq!(v["rates"]["USD"]["rate"], "7.12");

    // orders flow; the rate of USD changes half-way
    let stop = AtomicBool::new(false);
    let accepted = std::thread::scope(|s| {
        let poster = s.spawn(|| post_until(&c, 3, &stop, Duration::from_millis(5)));
        let _stop = common::StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(1500));
        // A 503 (ZooKeeper slow to answer) is retried, as a client would.
        let mut answer = put("USD", r#"{"rate":"8.00"}"#);
        for _ in 0..10 {
            if answer.0 != 503 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            answer = put("USD", r#"{"rate":"8.00"}"#);
        }
        assert_eq!(answer.0, 200, "{}", answer.1);
        let out = c.run(&["rates", "set", "EUR=7.5"]).expect("rates set");
        assert!(out.contains("EUR = 7.5"), "{out}");
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        poster.join().unwrap()
    });
    c.wait_results(accepted.len() as u64, Duration::from_secs(60));
    let used = c.rate_versions_used();
    assert!(
        used.len() >= 2,
        "orders before and after the change: versions {used:?}"
    );
    // the orders of RMB buy 1 USD + n EUR: paid shows which rates were used
    let rmb: Vec<(u64, String, String)> =
        c.query("SELECT epoch, items, CAST(paid AS CHAR) FROM result WHERE initiator = 'RMB' ORDER BY epoch");
    let first = &rmb[0];
    let last = rmb.last().unwrap();
    let n = |items: &str| {
        items
            .split(',')
            .nth(1)
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    assert_eq!(
        first.2.parse::<f64>().unwrap(),
        7.12 + 7.80 * n(&first.1) as f64,
        "{first:?}"
    );
    assert_eq!(
        last.2.parse::<f64>().unwrap(),
        8.00 + 7.5 * n(&last.1) as f64,
        "{last:?}"
    );
    c.check_invariants(&accepted);

    let (s, v) = common::http(&c.listen, "GET", "/api/totals", None).unwrap();
    assert_eq!(s, 401, "{v}");
    let (s, v) = c.get("/amount/USD");
    assert_eq!(s, 200);
    let usd_sum: Vec<String> = c.query("SELECT CAST(COALESCE(SUM(paid), 0) AS CHAR) FROM result WHERE success AND initiator = 'USD'");
    assert_eq!(
        v["amount"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        usd_sum[0].parse::<rust_decimal::Decimal>().unwrap()
    );

    // the admin query of a user's results: newest first, bounded
    let (s, v) = c.admin("GET", "/api/orders?user_id=u-1&limit=5", None);
    assert_eq!(s, 200, "{v}");
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["user_id"] == "u-1"));
    let times: Vec<i64> = rows
        .iter()
        .map(|r| r["accepted_at"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let (s, v) = c.admin("GET", "/api/orders?limit=5", None);
    assert_eq!((s, v["field"].as_str()), (400, Some("user_id")));
    let (s, v) = c.admin("GET", "/api/orders?user_id=u-1&limit=100000", None);
    assert_eq!((s, v["field"].as_str()), (400, Some("limit")));
    let (s, _) = common::http(&c.listen, "GET", "/api/orders?user_id=u-1", None).unwrap();
    assert_eq!(s, 401);
}

fn written_versions(log: &str) -> Vec<(String, i64)> {
    log.lines()
        .filter(|l| l.contains("rate written"))
        .map(|l| {
            let field = |k: &str| {
                l.split(&format!("{k}="))
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string()
            };
            (field("currency"), field("version").parse().unwrap())
        })
        .collect()
}

#[test]
fn two_modifiers_one_leader_takeover_after_kill_and_no_lost_update() {
    let c = Cluster::configure(
        "modifier",
        Spec {
            extra: "",
            ..Spec::default()
        },
    );
    // a short session so the survivor takes over quickly
    let text = std::fs::read_to_string(&c.config)
        .unwrap()
        .replace("root = ", "session_timeout_ms = 2000\nroot = ");
    std::fs::write(&c.config, text).unwrap();
    c.run(&["init"]).expect("init");
    let spawn = |name: &str| {
        let log = std::fs::File::create(c.dir.join(format!("{name}.log"))).unwrap();
        std::process::Command::new(common::BIN)
            .args([
                "rates",
                "run",
                "--period-ms",
                "20",
                "--seed",
                "3",
                "--config",
            ])
            .arg(&c.config)
            .env("RUST_LOG", "info,dtss_rates=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let mut procs: BTreeMap<&str, std::process::Child> = BTreeMap::new();
    procs.insert("a", spawn("a"));
    std::thread::sleep(Duration::from_millis(300));
    procs.insert("b", spawn("b"));
    common::wait_for(Duration::from_secs(20), "a leader", || {
        c.log("a").contains("is the leader") || c.log("b").contains("is the leader")
    });
    std::thread::sleep(Duration::from_secs(1));
    let (leader, fname) = if c.log("a").contains("is the leader") {
        ("a", "b")
    } else {
        ("b", "a")
    };
    assert!(!c.log(fname).contains("is the leader"), "two leaders");
    assert!(
        written_versions(&c.log(fname)).is_empty(),
        "the follower wrote"
    );
    assert!(
        !written_versions(&c.log(leader)).is_empty(),
        "the leader did not write"
    );
    let mut lp = procs.remove(leader).unwrap();
    unsafe {
        libc::kill(lp.id() as i32, libc::SIGKILL);
    }
    lp.wait().unwrap();
    let killed = Instant::now();
    common::wait_for(Duration::from_secs(20), "takeover", || {
        c.log(fname).contains("is the leader")
    });
    let takeover = killed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let mut fp = procs.remove(fname).unwrap();
    assert!(
        Cluster::terminate(&mut fp).success(),
        "SIGTERM stops a modifier cleanly"
    );
    assert!(
        !written_versions(&c.log(fname)).is_empty(),
        "the new leader did not write"
    );
    eprintln!("takeover after kill -9 of the leader: {takeover:?}");

    // Every write of both processes is one znode version: 1, 2, …, final, no repeats
    // (compare-and-set: never two writers of one version), and no gaps but one: the
    // killed leader's last write can land in ZooKeeper after its last log line.
    let shown = c.run(&["rates", "show"]).unwrap();
    let mut by_currency: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut killed_last: BTreeMap<String, i64> = BTreeMap::new();
    for (cur, v) in written_versions(&c.log(leader)) {
        let k = killed_last.entry(cur.clone()).or_default();
        *k = (*k).max(v);
        by_currency.entry(cur).or_default().push(v);
    }
    for (cur, v) in written_versions(&c.log(fname)) {
        by_currency.entry(cur).or_default().push(v);
    }
    assert_eq!(
        by_currency.len(),
        3,
        "the three non-base currencies move: {by_currency:?}"
    );
    for (cur, mut versions) in by_currency {
        versions.sort();
        let last = *versions.last().unwrap();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{cur}: a version written twice: {versions:?}"
        );
        let missing: Vec<i64> = (1..=last).filter(|v| !versions.contains(v)).collect();
        let unlogged = killed_last.get(&cur).map(|k| k + 1);
        assert!(
            missing.is_empty() || (missing.len() == 1 && Some(missing[0]) == unlogged),
            "{cur}: versions missing {missing:?} (the killed leader logged up to {:?}): {versions:?}",
            killed_last.get(&cur)
        );
        assert!(
            shown.contains(&format!("{cur} = "))
                && shown.contains(&format!("(znode version {last})")),
            "{shown}"
        );
    }
    assert!(
        shown.contains("RMB = 1 (znode version 0)"),
        "the base never moves: {shown}"
    );
}

#[test]
fn a_hundred_rate_changes_per_second_under_load() {
    let c = Cluster::start(
        "storm",
        Spec {
            catalogue: Some(ONE_USD),
            ..Spec::default()
        },
    );
    // 3 currencies every 30 ms = 100 changes per second, for 30 s
    let log = std::fs::File::create(c.dir.join("modifier.log")).unwrap();
    let mut modifier = std::process::Command::new(common::BIN)
        .args([
            "rates",
            "run",
            "--period-ms",
            "30",
            "--seed",
            "9",
            "--config",
        ])
        .arg(&c.config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let stop = AtomicBool::new(false);
    let accepted = std::thread::scope(|s| {
        let poster = s.spawn(|| post_until(&c, 2, &stop, Duration::from_millis(10)));
        let _stop = common::StopOnDrop(&stop);
        std::thread::sleep(Duration::from_secs(30));
        stop.store(true, Ordering::Relaxed);
        poster.join().unwrap()
    });
    Cluster::terminate(&mut modifier);
    c.wait_results(accepted.len() as u64, Duration::from_secs(60));
    let used = c.rate_versions_used();
    let recorded = c.count("SELECT COUNT(DISTINCT version) FROM rate_history");
    eprintln!(
        "{} orders, {recorded} rate versions applied, {} used by orders",
        accepted.len(),
        used.len()
    );
    // Every write is one znode version. A watch fires once for all the changes made
    // while the rate stream reads, so under load changes coalesce (the newest is what
    // counts); CI once applied 416 versions of ~1,000 periods. The stream must still
    // have followed them all along: one in ten at least, and over a hundred.
    let shown = c.run(&["rates", "show"]).unwrap();
    let writes: i64 = shown
        .split("(znode version ")
        .skip(1)
        .map(|v| v.split(')').next().unwrap().parse::<i64>().unwrap())
        .sum();
    eprintln!("{writes} rate writes in ZooKeeper");
    assert!(
        recorded > 100 && recorded as i64 * 10 >= writes,
        "the dataflow followed the changes: {recorded} versions applied of {writes} writes: {shown}"
    );
    assert!(
        used.len() > 100,
        "orders used many versions: {}",
        used.len()
    );
    c.check_invariants(&accepted);
}

#[test]
fn zookeeper_restart_rate_stream_resumes_and_catches_changes() {
    let c = Cluster::start(
        "zkrestart",
        Spec {
            catalogue: Some(ONE_USD),
            ..Spec::default()
        },
    );
    let order = r#"{"user_id":"z","initiator":"RMB","items":[{"id":1,"number":1}]}"#;
    let (_, v) = c.post(order);
    let r = c.wait_result(v["order_id"].as_str().unwrap());
    assert_eq!(r["paid"], "7.12");

    // kill -9 ZooKeeper, start it again, change the rate at once
    common::crash_and_restart_service("zookeeper/zk.pid", Duration::from_millis(1500));
    c.run(&["rates", "set", "USD=9.5"])
        .expect("set after restart");

    // the dataflow keeps settling and picks the change up
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut accepted = vec![v["order_id"].as_str().unwrap().to_string()];
    loop {
        let (s, v) = c.post(order);
        assert_eq!(s, 202, "{v}");
        let id = v["order_id"].as_str().unwrap().to_string();
        let r = c.wait_result(&id);
        accepted.push(id);
        if r["paid"] == json!("9.50") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rate change after the ZooKeeper restart never reached the dataflow"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.check_invariants(&accepted);
}
