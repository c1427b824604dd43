//! Outcomes from the log alone: one topic, filled once while no worker runs, settled from
//! scratch into several fresh databases (each made by `dtss init`: the same catalogue,
//! the same first rates from epoch 0) gives the same results, row for row: the same
//! decisions, amounts, rate versions, epochs and places. Also when a worker process, or
//! MariaDB, is killed (SIGKILL) part-way and started again.
//!
//! With one partition the stock is contended (hot commodities run out), so the decisions
//! themselves are compared; with several partitions the stock is ample, as two
//! partitions still decide against shared stock in the order their transactions lock it
//! (docs/decisions/decider.md).

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{Cluster, Spec};

/// 60 commodities; ids 1–5 hold `hot` units each, the rest plenty.
fn catalogue(hot: u32) -> String {
    let mut csv = String::from("id,name,price,currency,inventory\n");
    for id in 1..=60u32 {
        let inventory = if id <= 5 { hot } else { 1_000_000 };
        let currency = ["RMB", "USD", "JPY", "EUR"][id as usize % 4];
        csv.push_str(&format!(
            "{id},item-{id},{}.{:02},{currency},{inventory}\n",
            id * 3,
            id % 100
        ));
    }
    csv
}

/// Post `n` orders through ingest: each takes one hot commodity and one other.
fn fill(c: &Cluster, n: u32) {
    let currencies = ["RMB", "USD", "JPY", "EUR"];
    for i in 0..n {
        let hot = 1 + i % 5;
        let other = 6 + (i * 7) % 55;
        let body = format!(
            r#"{{"user_id":"r-{}","initiator":"{}","items":[{{"id":{hot},"number":{}}},{{"id":{other},"number":{}}}]}}"#,
            i % 13,
            currencies[(i % 4) as usize],
            1 + i % 3,
            1 + i % 4,
        );
        let (s, v) = c.post(&body);
        assert_eq!(s, 202, "{v}");
    }
}

/// A fresh database beside the cluster's: its config (the cluster's, but for the
/// database) and a pool on it.
struct Fresh<'a> {
    c: &'a Cluster,
    db: String,
    config: std::path::PathBuf,
    workers: Vec<Option<Child>>,
}

impl<'a> Fresh<'a> {
    fn new(c: &'a Cluster, name: &str) -> Fresh<'a> {
        let db = format!("{}_{name}", c.db);
        let config = c.dir.join(format!("{name}.toml"));
        let url = format!("mysql.url=\"mysql://dtss@127.0.0.1:3306/{db}\"");
        let text = c.run(&["config", "--set", &url]).expect("dtss config");
        std::fs::write(&config, text).unwrap();
        let f = Fresh {
            c,
            db,
            config,
            workers: (0..c.processes).map(|_| None).collect(),
        };
        f.dtss(&["init"]).expect("dtss init");
        f
    }

    fn dtss(&self, args: &[&str]) -> Result<String, String> {
        common::dtss(&self.config, args)
    }

    fn start_worker(&mut self, p: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.c.dir.join(format!("{}-worker-{p}.log", self.db)))
            .unwrap();
        let child = std::process::Command::new(common::BIN)
            .args(["worker", "--process", &p.to_string(), "--config"])
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers[p] = Some(child);
    }

    fn kill_worker(&mut self, p: usize) {
        if let Some(mut w) = self.workers[p].take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    fn count(&self) -> u64 {
        let q = format!("SELECT COUNT(*) FROM `{}`.result", self.db);
        self.c.query::<u64>(&q)[0]
    }

    fn wait_results(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} results in {} after 180 s; logs in {}",
                self.count(),
                self.db,
                self.c.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every result, in place order, as one line each (all but when it was settled).
    fn results(&self) -> Vec<String> {
        let q = format!(
            "SELECT CONCAT_WS(' ', `partition`, `offset`, epoch, order_id, success, \
             COALESCE(reason, '-'), paid, rate_version, items) FROM `{}`.result \
             ORDER BY `partition`, `offset`",
            self.db
        );
        self.c.query::<String>(&q)
    }
}

impl Drop for Fresh<'_> {
    fn drop(&mut self) {
        for p in 0..self.workers.len() {
            self.kill_worker(p);
        }
        if !std::thread::panicking() {
            self.c
                .query::<u64>(&format!("DROP DATABASE IF EXISTS `{}`", self.db));
        }
    }
}

/// What is killed (SIGKILL) once a third of the results are in.
#[derive(Clone, Copy)]
enum Crash {
    /// This worker process; the others stop with it (exit 5) and all start again.
    Worker(usize),
    /// MariaDB, started again 2 s later; the workers retry and go on.
    MariaDb,
}

/// Settle the topic into a fresh database, with `crash` part-way.
fn settle(c: &Cluster, name: &str, n: u64, crash: Option<Crash>) -> Vec<String> {
    let mut f = Fresh::new(c, name);
    for p in 0..c.processes {
        f.start_worker(p);
    }
    if let Some(crash) = crash {
        f.wait_results(n / 3);
        match crash {
            Crash::Worker(p) => {
                f.kill_worker(p);
                for q in 0..c.processes {
                    f.kill_worker(q);
                }
                for q in 0..c.processes {
                    f.start_worker(q);
                }
            }
            Crash::MariaDb => {
                common::crash_and_restart_service("mariadb/mysqld.pid", Duration::from_secs(2))
            }
        }
    }
    f.wait_results(n);
    f.results()
}

fn differences(a: &[String], b: &[String]) -> String {
    let diff: Vec<String> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .take(3)
        .map(|(x, y)| format!("\n  {x}\n  {y}"))
        .collect();
    format!(
        "{} and {} rows; first differences:{}",
        a.len(),
        b.len(),
        diff.concat()
    )
}

/// Fill a topic of `processes` partitions, then settle it four times from scratch (the
/// third with a worker process killed part-way, the fourth with MariaDB) and compare.
fn replayed_identically(processes: usize, hot: u32, n: u32) {
    let csv = catalogue(hot);
    let spec = Spec {
        processes,
        workers: 1,
        catalogue: Some(&csv),
        items: 60,
        ..Spec::default()
    };
    let mut c = Cluster::configure(&format!("replay{processes}"), spec);
    c.run(&["init"]).expect("dtss init");
    c.start_broker();
    c.start_ingest();
    fill(&c, n);
    let first = settle(&c, "a", n as u64, None);
    let again = settle(&c, "b", n as u64, None);
    assert!(
        first == again,
        "settled twice: {}",
        differences(&first, &again)
    );
    let crashed = settle(&c, "c", n as u64, Some(Crash::Worker(processes - 1)));
    assert!(
        first == crashed,
        "worker killed: {}",
        differences(&first, &crashed)
    );
    let crashed = settle(&c, "d", n as u64, Some(Crash::MariaDb));
    assert!(
        first == crashed,
        "MariaDB killed: {}",
        differences(&first, &crashed)
    );
    let refused = first
        .iter()
        .filter(|r| r.contains("insufficient_inventory"))
        .count();
    let epochs: std::collections::BTreeSet<&str> =
        first.iter().filter_map(|r| r.split(' ').nth(2)).collect();
    eprintln!(
        "{processes} partitions: {} results identical four times, {refused} refused for stock, \
         {} epochs",
        first.len(),
        epochs.len()
    );
    if hot < 1_000 {
        assert!(refused > 0, "the hot commodities never ran out");
    }
    assert!(epochs.len() > 10, "orders of {} epochs only", epochs.len());
}

#[test]
fn one_partition_contended_settles_the_same_from_scratch_and_after_a_crash() {
    replayed_identically(1, 300, 1_500);
}

#[test]
fn two_and_four_partitions_settle_the_same_from_scratch_and_after_a_crash() {
    replayed_identically(2, 1_000_000, 1_500);
    replayed_identically(4, 1_000_000, 1_500);
}
