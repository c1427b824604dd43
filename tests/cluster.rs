//! The cluster as processes: several timely processes and ingest replicas, orderly
//! shutdown and restart, and MariaDB killed under load. Each ends with `dtss check`.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Spec};

fn currencies() -> Vec<String> {
    ["RMB", "USD", "JPY", "EUR"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn two_processes_of_two_workers_and_two_ingest_replicas_settle_50000_orders() {
    let c = Cluster::start(
        "multi",
        Spec {
            processes: 2,
            workers: 2,
            items: 2000,
            ..Spec::default()
        },
    );
    let (second, mut second_child) = c.start_extra_ingest();
    let started = Instant::now();
    let (url1, url2) = (format!("http://{}", c.listen), format!("http://{second}"));
    let (a, b) = c.rt.block_on(async {
        tokio::join!(
            harness::post_orders(
                &url1,
                25_000,
                16,
                harness::OrderGen::new(1, 2000, currencies()),
                |_| {}
            ),
            harness::post_orders(
                &url2,
                25_000,
                16,
                harness::OrderGen::new(2, 2000, currencies()),
                |_| {}
            ),
        )
    });
    let mut accepted = a.unwrap().accepted;
    accepted.extend(b.unwrap().accepted);
    assert_eq!(accepted.len(), 50_000);
    c.wait_results(50_000, Duration::from_secs(300));
    eprintln!(
        "50,000 orders through 2 replicas and 2 × 2 workers in {:.1?}",
        started.elapsed()
    );
    let partitions: Vec<(i32, u64)> =
        c.query("SELECT `partition`, COUNT(*) FROM result GROUP BY 1 ORDER BY 1");
    assert_eq!(
        partitions.len(),
        4,
        "every worker of both processes settled orders: {partitions:?}"
    );
    c.check_invariants(&accepted);
    assert!(Cluster::terminate(&mut second_child).success());
}

#[test]
fn sigterm_to_every_process_then_restart_loses_and_repeats_nothing() {
    let mut c = Cluster::start("sigterm", Spec::default());
    let url = format!("http://{}", c.listen);
    let first =
        c.rt.block_on(harness::post_orders(
            &url,
            3000,
            16,
            harness::OrderGen::new(5, 1000, currencies()),
            |_| {},
        ))
        .unwrap();
    // Orderly stop while the workers are still behind: ingest, workers, broker.
    assert!(
        Cluster::terminate(c.ingest.as_mut().unwrap()).success(),
        "ingest exits 0 on SIGTERM"
    );
    let worker = c.workers.lock().unwrap()[0].take();
    let status = Cluster::terminate(&mut worker.unwrap());
    assert!(status.success(), "worker exits 0 on SIGTERM: {status}");
    assert_eq!(
        c.count("SELECT COUNT(*) FROM result"),
        3000,
        "a worker settles everything in its partitions before exiting"
    );
    assert!(Cluster::terminate(c.broker.as_mut().unwrap()).success());

    // Everything again (the embedded broker reads its log back).
    c.start_broker();
    c.start_worker(0);
    c.start_ingest();
    let second =
        c.rt.block_on(harness::post_orders(
            &url,
            1000,
            8,
            harness::OrderGen::new(6, 1000, currencies()),
            |_| {},
        ))
        .unwrap();
    let mut accepted = first.accepted;
    accepted.extend(second.accepted);
    c.wait_results(4000, Duration::from_secs(120));
    c.check_invariants(&accepted);
}

/// SIGTERM before the first rates came (here ZooKeeper is out of the worker's reach): the
/// worker still exits, settling nothing; the next start settles every order once.
#[test]
fn a_worker_stopped_before_any_rates_exits_and_the_next_start_settles_all() {
    let mut c = Cluster::configure("norates", Spec::default());
    c.run(&["init"]).expect("dtss init");
    // No rates recorded (a database from before `dtss init` recorded the first ones).
    c.query::<u64>("DELETE FROM rate_history");
    c.start_broker();
    c.start_ingest();
    let config = std::fs::read_to_string(&c.config).unwrap();
    let unreachable = format!("127.0.0.1:{}", common::free_port());
    std::fs::write(&c.config, config.replace("127.0.0.1:2181", &unreachable)).unwrap();
    c.start_worker(0);
    let url = format!("http://{}", c.listen);
    let posted = c.rt.block_on(harness::post_orders(
        &url,
        500,
        8,
        harness::OrderGen::new(7, 1000, currencies()),
        |_| {},
    ));
    let accepted = posted.unwrap().accepted;
    common::wait_for(Duration::from_secs(30), "both partitions read", || {
        let log = c.log("worker-0");
        log.contains("reading orders/0") && log.contains("reading orders/1")
    });
    let status = c.kill_worker(0, libc::SIGTERM).expect("a worker");
    assert!(status.success(), "worker exits 0 on SIGTERM: {status}");
    assert!(c.log("worker-0").contains("before any rates came"));
    assert_eq!(c.count("SELECT COUNT(*) FROM result"), 0);

    std::fs::write(&c.config, config).unwrap();
    c.start_worker(0);
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    c.check_invariants(&accepted);
}

#[test]
fn mariadb_killed_mid_stream_no_crash_loop_no_loss_no_duplicate() {
    let c = Cluster::start("mysqlkill", Spec::default());
    let accepted = c.post_while(4, || {
        common::wait_for(Duration::from_secs(60), "first results", || {
            c.count("SELECT COUNT(*) FROM result") >= 300
        });
        common::crash_and_restart_service("mariadb/mysqld.pid", Duration::from_secs(3));
        let restarted = Instant::now();
        c.wait_more_results_than(0, "settling after MariaDB is back");
        eprintln!(
            "settling resumed {:?} after MariaDB answered again",
            restarted.elapsed()
        );
        std::thread::sleep(Duration::from_secs(2));
    });
    // The worker rode it out: still the same process, waiting and retrying.
    assert!(
        c.workers.lock().unwrap()[0]
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the worker process did not exit"
    );
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    eprintln!("{} orders accepted, all settled once", accepted.len());
    let log = c.log("worker-0");
    assert!(
        log.contains("retrying"),
        "the worker retried while MariaDB was down"
    );
    c.check_invariants(&accepted);
}

#[test]
fn a_killed_worker_process_stops_its_peer_and_the_restarted_cluster_loses_nothing() {
    let c = Cluster::start(
        "peerlost",
        Spec {
            processes: 2,
            workers: 1,
            ..Spec::default()
        },
    );
    let (mut stopped, mut recovery) = (None, Duration::ZERO);
    let mut stopped_in = Duration::ZERO;
    let accepted = c.post_while(4, || {
        common::wait_for(Duration::from_secs(60), "first results", || {
            c.count("SELECT COUNT(*) FROM result") >= 500
        });
        let killed = Instant::now();
        c.kill_worker(1, libc::SIGKILL);
        // Process 0 cannot go on without process 1: it must stop by itself.
        let mut survivor = c.workers.lock().unwrap()[0].take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stopped.is_none() && Instant::now() < deadline {
            stopped = survivor.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        stopped_in = killed.elapsed();
        if stopped.is_none() {
            let _ = survivor.kill();
        }
        let _ = survivor.wait();
        if stopped.is_none() {
            return;
        }
        // The whole cluster again.
        c.start_worker(0);
        c.start_worker(1);
        c.wait_more_results_than(200, "settling again after the restart");
        recovery = killed.elapsed();
    });
    let status = stopped.expect("process 0 did not stop within 30 s of losing process 1");
    assert_eq!(
        status.code(),
        Some(model::exit::PEER_LOST),
        "process 0 exits with the peer-lost code: {status}"
    );
    let log = c.log("worker-0");
    assert!(
        log.contains("lost the connection to another process of the cluster"),
        "{log}"
    );
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    eprintln!(
        "{} orders accepted; process 0 stopped {stopped_in:?} after kill -9 of process 1; \
         settling resumed {recovery:?} after the kill",
        accepted.len()
    );
    c.check_invariants(&accepted);
}

#[test]
fn dtss_up_restarts_a_killed_worker_process_and_nothing_is_lost() {
    // Two worker processes: killing one must bring the other down and both up again.
    let c = Cluster::configure(
        "supervise",
        Spec {
            processes: 2,
            workers: 1,
            ..Spec::default()
        },
    );
    let mut up = common::start_up(&c);
    let config = c.config.display().to_string();
    let mut recovery = Duration::ZERO;
    let accepted = c.post_while(4, || {
        common::wait_for(Duration::from_secs(60), "first results", || {
            c.count("SELECT COUNT(*) FROM result") >= 500
        });
        let pid = common::find_process(&["worker --process 1 --config", &config])
            .expect("worker process 1 of dtss up");
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let killed = Instant::now();
        c.wait_more_results_than(200, "settling again after the restart");
        recovery = killed.elapsed();
    });
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    eprintln!(
        "{} orders accepted; settling resumed {recovery:?} after kill -9 of worker process 1 of 2",
        accepted.len()
    );
    let up_log = std::fs::read_to_string(c.dir.join("up.log")).unwrap();
    assert!(
        up_log.contains("restarting all worker processes"),
        "{up_log}"
    );
    c.check_invariants(&accepted);
    assert!(
        Cluster::terminate(&mut up.0).success(),
        "dtss up exits 0 on SIGTERM"
    );
}

#[test]
fn dtss_up_restarts_a_killed_broker_on_its_port_and_the_rest_keeps_running() {
    let c = Cluster::configure("up-broker", Spec::default());
    let mut up = common::start_up(&c);
    let config = c.config.display().to_string();
    let broker =
        common::find_process(&["broker --config", &config]).expect("the broker of dtss up");
    let ingest = common::find_process(&["ingest --config", &config]).expect("ingest of dtss up");
    let addr = std::fs::read_to_string(c.dir.join("data/broker.addr")).unwrap();
    let mut recovery = Duration::ZERO;
    let accepted = c.post_while(4, || {
        c.wait_results(500, Duration::from_secs(60));
        unsafe {
            libc::kill(broker, libc::SIGKILL);
        }
        let killed = Instant::now();
        c.wait_more_results_than(500, "settling again after the broker restarted");
        recovery = killed.elapsed();
    });
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    let again = common::find_process(&["broker --config", &config]).expect("a new broker");
    assert_ne!(again, broker);
    assert_eq!(
        std::fs::read_to_string(c.dir.join("data/broker.addr")).unwrap(),
        addr,
        "the same port"
    );
    assert_eq!(
        common::find_process(&["ingest --config", &config]),
        Some(ingest),
        "ingest kept running"
    );
    eprintln!(
        "{} orders accepted; the broker killed with SIGKILL, restarted by dtss up on {addr}; \
         settling resumed after {recovery:?}",
        accepted.len()
    );
    c.check_invariants(&accepted);
    assert!(Cluster::terminate(&mut up.0).success());
}

/// (session id, nice value) of process `pid`, from /proc/PID/stat.
fn session_and_nice(pid: i32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name: state ppid pgrp session ... (nice is the 19th field).
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    (f[3].parse().unwrap(), f[16].parse().unwrap())
}

#[test]
fn dtss_up_runs_each_service_in_its_own_session_and_none_outlives_it() {
    let c = Cluster::configure("sessions", Spec::default());
    let mut up = common::start_up(&c);
    let config = c.config.display().to_string();
    let services = [
        ("ingest", "ingest --config"),
        ("broker", "broker --config"),
        ("worker", "worker --process 0 --config"),
        ("rate modifier", "rates run --config"),
    ];
    let (up_session, _) = session_and_nice(up.0.id() as i32);
    let root = unsafe { libc::geteuid() } == 0;
    for (name, words) in services {
        let pid =
            common::find_process(&[words, &config]).unwrap_or_else(|| panic!("{name} of dtss up"));
        let (session, nice) = session_and_nice(pid);
        assert_eq!(session, pid, "{name} leads a session of its own");
        assert_ne!(session, up_session, "{name}");
        if root {
            let want = if matches!(name, "ingest" | "broker") {
                -5
            } else {
                0
            };
            assert_eq!(nice, want, "nice value of {name}");
        }
    }
    // kill -9 of `up`: its services get SIGTERM from the kernel and stop.
    up.0.kill().unwrap();
    up.0.wait().unwrap();
    common::wait_for(
        Duration::from_secs(30),
        "the services of a killed dtss up stop",
        || {
            services
                .iter()
                .all(|(_, words)| common::find_process(&[words, &config]).is_none())
        },
    );
}

#[test]
fn killed_ingest_replica_the_other_keeps_taking_orders() {
    let mut c = Cluster::start("ingestkill", Spec::default());
    let (second, mut second_child) = c.start_extra_ingest();
    let url1 = format!("http://{}", c.listen);
    let url2 = format!("http://{second}");
    let gen = |seed| harness::OrderGen::new(seed, 1000, currencies());
    let a =
        c.rt.block_on(harness::post_orders(&url1, 500, 4, gen(1), |_| {}))
            .unwrap();
    let mut accepted = a.accepted;
    let mut first = c.ingest.take().unwrap();
    unsafe {
        libc::kill(first.id() as i32, libc::SIGKILL);
    }
    first.wait().unwrap();
    assert!(
        common::http(&c.listen, "POST", "/api/orders", Some("{}")).is_err(),
        "the killed replica refuses connections"
    );
    let b =
        c.rt.block_on(harness::post_orders(&url2, 1500, 8, gen(2), |_| {}))
            .unwrap();
    assert_eq!(
        b.accepted.len(),
        1500,
        "the other replica takes every order"
    );
    accepted.extend(b.accepted);
    c.wait_results(accepted.len() as u64, Duration::from_secs(60));
    c.check_invariants(&accepted);
    assert!(Cluster::terminate(&mut second_child).success());
}

/// Three ZooKeeper servers on loopback, killed on drop.
struct Ensemble {
    members: Vec<(u16, std::process::Child)>,
}

impl Ensemble {
    fn start(dir: &std::path::Path) -> Ensemble {
        let free = common::free_ports(9);
        let ports: Vec<(u16, u16, u16)> = free.chunks(3).map(|p| (p[0], p[1], p[2])).collect();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, election))| {
                format!("server.{}=127.0.0.1:{peer}:{election}\n", i + 1)
            })
            .collect();
        let mut members = vec![];
        for (i, (client, _, _)) in ports.iter().enumerate() {
            let data = dir.join(format!("zk{}", i + 1));
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("myid"), format!("{}\n", i + 1)).unwrap();
            let cfg = data.join("zoo.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={client}\nclientPortAddress=127.0.0.1\n\
                     admin.enableServer=false\n4lw.commands.whitelist=srvr,ruok\nmaxClientCnxns=0\n{servers}",
                    data.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(data.join("zk.log")).unwrap();
            let child = std::process::Command::new("java")
                .args(["-Xmx256m", "-cp"])
                .arg("/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-simple.jar")
                .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                .arg(&cfg)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            members.push((*client, child));
        }
        let e = Ensemble { members };
        common::wait_for(Duration::from_secs(60), "a ZooKeeper quorum", || {
            e.members.iter().filter(|(p, _)| mode(*p).is_some()).count() == 3
        });
        e
    }

    fn connect(&self) -> String {
        self.members
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for (_, c) in &mut self.members {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// "leader" or "follower", from the `srvr` four-letter word.
fn mode(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"srvr").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("Mode: ").map(|m| m.trim().to_string()))
}

#[test]
fn zookeeper_ensemble_leader_killed_orders_keep_settling() {
    let c = Cluster::configure("ensemble", Spec::default());
    let ensemble = Ensemble::start(&c.dir);
    let text = std::fs::read_to_string(&c.config).unwrap().replace(
        "connect = \"127.0.0.1:2181\"",
        &format!(
            "connect = \"{}\"\nsession_timeout_ms = 4000",
            ensemble.connect()
        ),
    );
    std::fs::write(&c.config, text).unwrap();
    let mut ensemble = ensemble;
    let c = c.launch();
    let mut pause = Duration::ZERO;
    let accepted = c.post_while(4, || {
        common::wait_for(Duration::from_secs(60), "first results", || {
            c.count("SELECT COUNT(*) FROM result") >= 300
        });
        let leader = ensemble
            .members
            .iter()
            .position(|(p, _)| mode(*p).as_deref() == Some("leader"))
            .expect("a leader");
        let (_, mut child) = ensemble.members.remove(leader);
        child.kill().unwrap();
        child.wait().unwrap();
        let killed = Instant::now();
        c.wait_more_results_than(200, "settling after the leader died");
        pause = killed.elapsed();
        // rates still flow: a change through the surviving quorum reaches the dataflow
        c.run(&["rates", "set", "USD=8.5"])
            .expect("rates set through the surviving members");
        common::wait_for(Duration::from_secs(30), "the new rate applied", || {
            c.count("SELECT COUNT(*) FROM rate_history WHERE currency = 'USD' AND rate = 8.5") > 0
        });
        std::thread::sleep(Duration::from_secs(1));
    });
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    eprintln!(
        "{} orders accepted; 200 more settled {pause:?} after kill -9 of the ZooKeeper leader",
        accepted.len()
    );
    c.check_invariants(&accepted);
    drop(c);
    drop(ensemble);
}

#[test]
fn killed_embedded_broker_restarts_from_its_log_nothing_lost_or_repeated() {
    let mut c = Cluster::start("brokerkill", Spec::default());
    let mut broker = c.broker.take().unwrap();
    let addr_before = std::fs::read_to_string(c.dir.join("data/broker.addr")).unwrap();
    let mut restarted = None;
    let accepted = c.post_while(4, || {
        common::wait_for(Duration::from_secs(60), "first results", || {
            c.count("SELECT COUNT(*) FROM result") >= 300
        });
        broker.kill().unwrap(); // SIGKILL: no chance to flush or say goodbye
        broker.wait().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let b = c.spawn("broker-2", &["broker"]);
        let since = Instant::now();
        c.wait_more_results_than(200, "settling after the broker restarted");
        eprintln!(
            "200 more settled {:?} after the broker restarted",
            since.elapsed()
        );
        restarted = Some(b);
    });
    let addr_after = std::fs::read_to_string(c.dir.join("data/broker.addr")).unwrap();
    assert_eq!(
        addr_before, addr_after,
        "the restarted broker kept its port"
    );
    eprintln!("{} accepted across the broker crash", accepted.len());
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    c.check_invariants(&accepted);
    Cluster::terminate(&mut restarted.unwrap());
}

#[test]
fn dtss_up_stops_restarting_workers_that_fail_on_the_same_batch() {
    let c = Cluster::configure(
        "crashloop",
        Spec {
            workers: 1,
            ..Spec::default()
        },
    );
    let _up = common::start_up(&c);
    // The result table can no longer hold this order's user id: its batch fails the
    // same way at every attempt.
    c.query::<u8>("ALTER TABLE result MODIFY user_id VARBINARY(2) NOT NULL");
    let body = r#"{"user_id": "long-user", "initiator": "RMB", "items": [{"id": 1, "number": 1}]}"#;
    assert_eq!(c.post(body).0, 202);
    let up_log = || std::fs::read_to_string(c.dir.join("up.log")).unwrap();
    common::wait_for(Duration::from_secs(120), "dtss up to give up", || {
        up_log().contains("not restarting them")
    });
    std::thread::sleep(Duration::from_secs(5));
    let log = up_log();
    assert!(log.contains("failed 3 times in a row"), "{log}");
    assert!(log.contains("partition 0 at offset 0"), "{log}");
    assert_eq!(
        log.matches("restarting all worker processes").count(),
        2,
        "restarted twice, then left stopped:\n{log}"
    );
    let (s, _) = common::http(&c.listen, "GET", "/healthz", None).unwrap();
    assert_eq!(s, 200, "ingest still serves");
}
