//! A 202 is a promise, and an outcome depends on the log alone:
//!
//! - the embedded broker answers a produce only once it is on disk: a machine crash (the
//!   broker killed, then every segment cut back to the length it recorded as synced,
//!   which is all a power loss keeps) loses no acknowledged order;
//! - a log that ends before what MySQL settled is refused, never reset; going on is an
//!   operator's command that records the loss and reuses no offset;
//! - a worker started while ZooKeeper is down settles at the rates recorded last;
//! - a backlog settles at the rates recorded for its own epochs, not at today's;
//! - a rate written straight into ZooKeeper is checked as `PUT /api/rates` checks one;
//! - a full disk (the broker's, or MariaDB's) holds settlement and answers 503, loses no
//!   202, and everything goes on by itself once space is back.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Cluster, Spec};
use serde_json::json;

const ONE_USD: &str =
    "id,name,price,currency,inventory\n1,dollar,1.00,USD,4000000\n2,euro,1.00,EUR,4000000\n";
const USD_ORDER: &str = r#"{"user_id":"d","initiator":"RMB","items":[{"id":1,"number":1}]}"#;

/// Each partition folder of the broker's log under `dir`.
fn partitions(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// What a power loss keeps of a partition's log: each segment cut back to the synced
/// length the broker recorded (`segment bytes end`), later segments gone. Returns the
/// bytes cut off.
fn keep_only_synced(partition: &Path) -> u64 {
    let record = std::fs::read_to_string(partition.join("synced")).unwrap();
    let fields: Vec<u64> = record
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (segment, len) = (fields[0], fields[1]);
    let mut cut = 0;
    for e in std::fs::read_dir(partition).unwrap() {
        let path = e.unwrap().path();
        let Some(base) = path
            .file_name()
            .and_then(|n| n.to_str()?.strip_suffix(".log")?.parse::<u64>().ok())
        else {
            continue;
        };
        let size = std::fs::metadata(&path).unwrap().len();
        if base > segment {
            std::fs::remove_file(&path).unwrap();
            cut += size;
        } else if base == segment {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len)
                .unwrap();
            cut += size - len;
        }
    }
    cut
}

/// Bytes of a partition's active segment beyond the synced length the broker recorded.
fn unsynced(partition: &Path) -> u64 {
    let Ok(record) = std::fs::read_to_string(partition.join("synced")) else {
        return 0;
    };
    let fields: Vec<u64> = record
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let [segment, len, ..] = fields[..] else {
        return 0;
    };
    let path = partition.join(format!("{segment:020}.log"));
    std::fs::metadata(path).map_or(0, |m| m.len().saturating_sub(len))
}

#[test]
fn acknowledged_orders_survive_a_machine_crash_of_the_broker() {
    let mut c = Cluster::start("powerloss", Spec::default());
    // Each sync starts 500 ms late (a test hook), so that the crash surely finds written
    // bytes that no sync covered: the cut below must take them off and lose no 202.
    let mut broker = c.broker.take().unwrap();
    Cluster::terminate(&mut broker);
    let mut broker = c.spawn_env(
        "broker-1",
        &["broker"],
        &[("DTSS_TEST_SYNC_PAUSE_MS", "500")],
    );
    let log_dir = c.dir.join("data/broker");
    let mut restarted = None;
    let mut cut = 0;
    let accepted = c.post_while(4, || {
        common::wait_for(Duration::from_secs(60), "first results", || {
            c.count("SELECT COUNT(*) FROM result") >= 50
        });
        // The machine dies while a partition holds written bytes no sync covered yet:
        // nothing more reaches the disk.
        common::wait_for(Duration::from_secs(30), "unsynced bytes", || {
            partitions(&log_dir).iter().any(|p| unsynced(p) > 0)
        });
        broker.kill().unwrap();
        broker.wait().unwrap();
        for p in partitions(&log_dir) {
            cut += keep_only_synced(&p);
        }
        restarted = Some(c.spawn("broker-2", &["broker"]));
        c.wait_more_results_than(200, "settling after the broker came back");
    });
    eprintln!(
        "{} accepted across the crash; {cut} unsynced bytes cut off",
        accepted.len()
    );
    assert!(cut > 0, "the crash found nothing unsynced to cut off");
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    c.check_invariants(&accepted);
    Cluster::terminate(&mut restarted.unwrap());
}

#[test]
fn a_lost_log_is_refused_and_going_on_is_an_operator_command_that_records_the_loss() {
    let mut c = Cluster::start("lostlog", Spec::default());
    let mut accepted = c.post_while(2, || {
        common::wait_for(Duration::from_secs(60), "first results", || {
            c.count("SELECT COUNT(*) FROM result") >= 200
        });
    });
    c.wait_results(accepted.len() as u64, Duration::from_secs(60));
    Cluster::terminate(&mut c.broker.take().unwrap());
    for p in partitions(&c.dir.join("data/broker")) {
        std::fs::remove_dir_all(p).unwrap();
    }

    let refused = c
        .run(&["broker"])
        .expect_err("a broker on a lost log starts");
    assert!(
        refused.contains("MySQL settled up to offset") && refused.contains("--accept-loss"),
        "{refused}"
    );
    assert_eq!(c.count("SELECT COUNT(*) FROM lost_log"), 0);

    c.broker = Some(c.spawn("broker-2", &["broker", "--accept-loss"]));
    common::wait_for(Duration::from_secs(30), "the loss recorded", || {
        c.count("SELECT COUNT(*) FROM lost_log") == 2
    });
    let recorded: Vec<(i32, i64, i64)> =
        c.query("SELECT `partition`, log_end, settled FROM lost_log ORDER BY `partition`");
    assert!(
        recorded
            .iter()
            .all(|&(_, end, settled)| end == 0 && settled > 0),
        "{recorded:?}"
    );
    let (s, v) = c.post(USD_ORDER);
    assert_eq!(s, 202, "{v}");
    let id = v["order_id"].as_str().unwrap().to_string();
    c.wait_result(&id);
    let (p, offset): (i32, i64) = c.query(&format!(
        "SELECT `partition`, `offset` FROM result WHERE order_id = '{id}'"
    ))[0];
    accepted.push(id);
    let settled = recorded.iter().find(|r| r.0 == p).unwrap().2;
    assert!(
        offset >= settled,
        "a new order took offset {offset} of partition {p}, given out before the loss (< {settled})"
    );
    c.check_invariants(&accepted);
}

/// Post `USD_ORDER` (its id into `accepted`) until one settles paying `paid`: a rate
/// change reached the dataflow (within 30 s).
fn post_until_paid(c: &Cluster, paid: &str, accepted: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = c.post(USD_ORDER);
        let id = v["order_id"].as_str().unwrap().to_string();
        let got = c.wait_result(&id)["paid"].clone();
        accepted.push(id);
        if got == json!(paid) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no order paid {paid} within 30 s"
        );
    }
}

/// A cluster of one worker over the one-dollar catalogue, with one USD order settled:
/// the cluster and that order's id.
fn one_usd_settled(name: &str) -> (Cluster, Vec<String>) {
    let c = Cluster::start(
        name,
        Spec {
            catalogue: Some(ONE_USD),
            workers: 1,
            ..Spec::default()
        },
    );
    let (_, v) = c.post(USD_ORDER);
    let first = v["order_id"].as_str().unwrap().to_string();
    c.wait_result(&first);
    (c, vec![first])
}

/// The (rate_version, epoch, accepted_at) of every result.
fn versions_and_epochs(c: &Cluster) -> Vec<(u64, u64, i64)> {
    c.query("SELECT rate_version, epoch, accepted_at FROM result")
}

#[test]
fn a_backlog_settles_at_the_rates_recorded_for_its_own_epochs_not_at_todays() {
    let (c, mut accepted) = one_usd_settled("backlograte");
    assert_eq!(c.wait_result(&accepted[0])["paid"], "7.12");
    c.kill_worker(0, libc::SIGKILL);

    // While the workers are down: orders, a rate change, more orders.
    for _ in 0..20 {
        let (s, v) = c.post(USD_ORDER);
        assert_eq!(s, 202, "{v}");
        accepted.push(v["order_id"].as_str().unwrap().to_string());
    }
    c.run(&["rates", "set", "USD=8.5"]).expect("rates set");
    for _ in 0..20 {
        let (s, v) = c.post(USD_ORDER);
        assert_eq!(s, 202, "{v}");
        accepted.push(v["order_id"].as_str().unwrap().to_string());
    }
    let epoch_ms = 10;
    let restart_epoch = model::now_ms() as u64 / epoch_ms;
    c.start_worker(0);
    c.wait_results(accepted.len() as u64, Duration::from_secs(60));
    // The change was recorded when the worker came back: every order of the backlog was
    // accepted before that, at an epoch of version 1. Read after its epoch closed, it
    // settles in an epoch of this run, at the rates of its own.
    let mut moved = 0;
    for (version, epoch, accepted_at) in versions_and_epochs(&c) {
        assert_eq!(
            version, 1,
            "an order accepted at {accepted_at} settled at today's rates (epoch {epoch})"
        );
        moved += usize::from(epoch >= restart_epoch);
    }
    eprintln!("{moved} backlog orders settled in an epoch of the restarted run, at version 1");
    // Orders accepted from now on take the new version.
    post_until_paid(&c, "8.50", &mut accepted);
    c.check_invariants(&accepted);
}

#[test]
fn a_worker_started_while_zookeeper_is_down_settles_at_the_recorded_rates() {
    let (c, mut accepted) = one_usd_settled("zkdown");
    c.kill_worker(0, libc::SIGKILL);
    common::kill_service("zookeeper/zk.pid");
    let _zk_back = ZooKeeperBack;
    for _ in 0..20 {
        let (s, v) = c.post(USD_ORDER);
        assert_eq!(s, 202, "{v}");
        accepted.push(v["order_id"].as_str().unwrap().to_string());
    }
    c.start_worker(0);
    c.wait_results(accepted.len() as u64, Duration::from_secs(60));
    let paid: Vec<String> = c.query("SELECT CAST(paid AS CHAR) FROM result");
    assert!(paid.iter().all(|p| p == "7.12"), "{paid:?}");
    drop(_zk_back);
    c.check_invariants(&accepted);
}

/// Starts ZooKeeper again when dropped (also when a test fails half way).
struct ZooKeeperBack;

impl Drop for ZooKeeperBack {
    fn drop(&mut self) {
        common::dtss_services(&["up"]);
    }
}

#[test]
fn rates_written_straight_into_zookeeper_are_checked_and_refused() {
    let (c, mut accepted) = one_usd_settled("forgedrate");
    let root = format!("/{}", c.db);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for forged in ["0.0000001", "1e21", "7.123456789", "-7", "7,12"] {
        rt.block_on(async {
            let zk = rates::Client::connect("127.0.0.1:2181").await.unwrap();
            zk.set_data(&format!("{root}/rates/USD"), forged.as_bytes(), None)
                .await
                .unwrap();
        });
        std::thread::sleep(Duration::from_millis(300));
        let (_, v) = c.post(USD_ORDER);
        let id = v["order_id"].as_str().unwrap().to_string();
        let r = c.wait_result(&id);
        assert_eq!(
            r["paid"], "7.12",
            "settled at the forged rate {forged}: {r}"
        );
        assert_eq!(r["rate_version"], 1, "{r}");
        accepted.push(id);
    }
    let log = c.log("worker-0");
    assert!(log.contains("refusing the rates in ZooKeeper"), "{log}");
    let (_, health) = c.get("/healthz");
    assert_eq!(health["refused_rates"][0]["currency"], "USD", "{health}");
    assert_eq!(health["refused_rates"][0]["stored"], "7,12", "{health}");
    // A good rate is applied again.
    c.run(&["rates", "set", "USD=7.5"]).expect("rates set");
    post_until_paid(&c, "7.50", &mut accepted);
    c.check_invariants(&accepted);
}

#[test]
fn with_mysql_down_a_worker_stops_reading_at_its_window_and_ingest_answers_503() {
    let c = Cluster::start(
        "window",
        Spec {
            cluster: "max_unsettled_per_worker = 1000",
            kafka_extra: "max_backlog_per_partition = 3000",
            ..Spec::default()
        },
    );
    let (_, v) = c.post(USD_ORDER);
    let mut accepted = vec![v["order_id"].as_str().unwrap().to_string()];
    c.wait_result(&accepted[0]);
    common::kill_service("mariadb/mysqld.pid");
    let _back = MariaDbBack;
    // Orders until ingest says the backlog is full (2 partitions × 3,000).
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let (s, v) = c.post(USD_ORDER);
        match s {
            202 => accepted.push(v["order_id"].as_str().unwrap().to_string()),
            503 => break v,
            _ => panic!("{s}: {v}"),
        }
        assert!(
            Instant::now() < deadline,
            "never a 503 after {} orders",
            accepted.len()
        );
    };
    assert!(
        accepted.len() >= 4_000,
        "503 after only {} orders: {refused}",
        accepted.len()
    );
    let pid = c.workers.lock().unwrap()[0].as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("");
    eprintln!("{} accepted before the 503; worker {rss}", accepted.len());
    let log = c.log("worker-0");
    assert!(log.contains("fill the window"), "{log}");
    drop(_back);
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    c.check_invariants(&accepted);
}

/// Starts MariaDB again when dropped (also when a test fails half way).
struct MariaDbBack;

impl Drop for MariaDbBack {
    fn drop(&mut self) {
        common::dtss_services(&["up"]);
    }
}

/// A size-limited tmpfs mounted at `dir` until dropped (the tests run as root).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs at {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Post `body` with idempotency key `key` until it is taken (a 504 is retried with the
/// same key); Err with the answer when it is refused with a 503.
fn post_keyed(c: &Cluster, body: &str, key: &str) -> Result<String, serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = common::http_with(
            &c.listen,
            "POST",
            "/api/orders",
            Some(body),
            &[("Idempotency-Key", key)],
        );
        match answer {
            Ok((202, v)) => return Ok(v["order_id"].as_str().unwrap().to_string()),
            Ok((503, v)) => return Err(v),
            Ok((504, _)) | Err(_) => {}
            Ok((s, v)) => panic!("{s}: {v}"),
        }
        assert!(
            Instant::now() < deadline,
            "order {key} not answered within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_broker_disk_refuses_orders_with_503_loses_no_202_and_resumes_once_space_is_back() {
    let c = Cluster::configure("fulldisk", Spec::default());
    let disk = SmallDisk::mount(&c.dir.join("data/broker"), "8m");
    let filler = disk.0.join("filler");
    // Leave about 400 KiB: a couple of thousand orders.
    std::fs::write(&filler, vec![0u8; (8 << 20) - (400 << 10)]).unwrap();
    let c = c.launch();
    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 0..20_000 {
        match post_keyed(&c, USD_ORDER, &format!("fill-{n}")) {
            Ok(id) => accepted.push(id),
            Err(v) => {
                refused = Some(v);
                break;
            }
        }
    }
    let refused = refused.expect("no 503 with the broker's disk full");
    assert!(refused.to_string().contains("cannot write"), "{refused}");
    let (_, health) = common::http(&c.listen, "GET", "/healthz", None).unwrap();
    assert_eq!(health["status"], "refusing", "{health}");
    eprintln!("{} orders taken before the disk was full", accepted.len());
    // Space comes back: orders are taken again without anyone restarting anything.
    std::fs::remove_file(&filler).unwrap();
    let since = Instant::now();
    let mut n = 0;
    while n < 200 {
        match post_keyed(&c, USD_ORDER, &format!("after-{n}")) {
            Ok(id) => {
                accepted.push(id);
                n += 1;
            }
            Err(_) => {
                assert!(
                    since.elapsed() < Duration::from_secs(30),
                    "still refused 30 s after space came back"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    eprintln!(
        "taking orders again {:?} after space came back",
        since.elapsed()
    );
    c.wait_results(accepted.len() as u64, Duration::from_secs(60));
    c.check_invariants(&accepted);
    drop(c);
    drop(disk);
}

#[test]
fn side_tables_are_pruned_to_their_bound_and_every_offset_stays_accounted_for() {
    let c = Cluster::start(
        "prune",
        Spec {
            extra: "[retention]\nside_rows_per_partition = 1000",
            ..Spec::default()
        },
    );
    // One keyed order posted 3,000 times: one result, 2,999 skipped copies.
    let ids = std::sync::Mutex::new(std::collections::BTreeSet::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..750 {
                    let id = post_keyed(&c, USD_ORDER, "again-and-again").unwrap();
                    ids.lock().unwrap().insert(id);
                }
            });
        }
    });
    let accepted: Vec<String> = ids.into_inner().unwrap().into_iter().collect();
    assert_eq!(accepted.len(), 1);
    common::wait_for(Duration::from_secs(60), "every copy read", || {
        c.count("SELECT COUNT(*) FROM skipped_copy")
            + c.count("SELECT COALESCE(SUM(skipped), 0) FROM pruned")
            >= 2_999
    });
    common::wait_for(
        Duration::from_secs(60),
        "the copies pruned to the bound",
        || c.count("SELECT COUNT(*) FROM skipped_copy") <= 1_000,
    );
    let pruned = c.count("SELECT SUM(skipped) FROM pruned");
    assert!(pruned >= 1_999, "{pruned} pruned");
    c.check_invariants(&accepted);
}

/// A MariaDB server of its own with its data directory under `dir` (a small disk),
/// with the `dtss` user of the local services' password; stopped when dropped.
struct ScratchMariaDb {
    dir: PathBuf,
    port: u16,
    server: std::process::Child,
}

impl ScratchMariaDb {
    fn start(dir: &Path) -> ScratchMariaDb {
        let (data, sock) = (dir.join("data"), dir.join("mysqld.sock"));
        let out = std::process::Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--auth-root-authentication-method=socket"])
            .arg("--skip-test-db")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let port = common::free_port();
        let server = std::process::Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
            ])
            .args(["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=8M"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let scratch = ScratchMariaDb {
            dir: dir.to_path_buf(),
            port,
            server,
        };
        common::wait_for(Duration::from_secs(60), "the scratch MariaDB", || {
            scratch.root_sql("SELECT 1").is_ok()
        });
        let pw = std::fs::read_to_string(common::mysql_password_file()).unwrap();
        let pw = pw.trim();
        scratch
            .root_sql(&format!(
                "CREATE USER 'dtss'@'127.0.0.1' IDENTIFIED BY '{pw}'; \
                 GRANT ALL PRIVILEGES ON `dtss%`.* TO 'dtss'@'127.0.0.1';"
            ))
            .unwrap();
        scratch
    }

    fn root_sql(&self, sql: &str) -> Result<String, String> {
        let out = std::process::Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.join("mysqld.sock").display()
            ))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for ScratchMariaDb {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.server.id().to_string())
            .status();
        let _ = self.server.wait();
    }
}

/// Free bytes of the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn a_full_mariadb_disk_holds_settlement_answers_503_and_resumes_once_space_is_back() {
    let disk_dir = std::env::temp_dir().join(format!("dtss-mariadb-disk-{}", std::process::id()));
    let disk = SmallDisk::mount(&disk_dir, "400m");
    let mariadb = ScratchMariaDb::start(&disk.0);
    let c = Cluster::start(
        "mariadbfull",
        Spec {
            catalogue: Some(ONE_USD),
            mysql_ports: &[mariadb.port],
            kafka_extra: "max_backlog_per_partition = 1000",
            ..Spec::default()
        },
    );
    let (_, v) = c.post(USD_ORDER);
    let mut accepted = vec![v["order_id"].as_str().unwrap().to_string()];
    c.wait_result(&accepted[0]);
    // Leave MariaDB about 256 KiB.
    let filler = disk.0.join("filler");
    let free = free_bytes(&disk.0);
    std::fs::write(&filler, vec![0u8; (free - (256 << 10)) as usize]).unwrap();
    let mut refused = None;
    for n in 0..50_000 {
        match post_keyed(&c, USD_ORDER, &format!("fill-{n}")) {
            Ok(id) => accepted.push(id),
            Err(v) => {
                refused = Some(v);
                break;
            }
        }
    }
    let refused = refused.expect("no 503 with MariaDB's disk full");
    let settled = c.count("SELECT COUNT(*) FROM result");
    eprintln!(
        "{} orders taken, {settled} settled, before the 503: {refused}",
        accepted.len()
    );
    assert!(settled < accepted.len() as u64, "settlement was not held");
    let log = c.log("worker-0");
    assert!(log.contains("is full"), "no full table in the worker's log");
    // Space comes back: settlement goes on by itself, and orders are taken again.
    std::fs::remove_file(&filler).unwrap();
    let since = Instant::now();
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    eprintln!(
        "everything taken settled {:?} after space came back",
        since.elapsed()
    );
    let (_, v) = c.post(USD_ORDER);
    accepted.push(v["order_id"].as_str().expect("taken again").to_string());
    c.wait_results(accepted.len() as u64, Duration::from_secs(60));
    c.check_invariants(&accepted);
    drop(c);
    drop(mariadb);
    drop(disk);
}
