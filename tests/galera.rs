//! DTSS on a MariaDB Galera cluster of three nodes (`dtss services up --galera 3`):
//! every process writes through one node and fails over to the next when it dies; the
//! node is killed with SIGKILL three times under load (restarted each time, so it
//! rejoins), and nothing is lost or settled twice. Ingest may read from another node.

mod common;

use std::sync::Once;
use std::time::{Duration, Instant};

use common::{Cluster, Spec};

const PORTS: [u16; 3] = [3311, 3312, 3313];

static GALERA: Once = Once::new();

fn galera() {
    common::services();
    GALERA.call_once(|| common::dtss_services(&["up", "--galera", "3"]));
}

/// kill -9 Galera node `n` (1-based).
fn kill_node(n: usize) {
    common::kill_service(&format!("galera/{n}/mysqld.pid"));
}

#[test]
fn the_write_node_killed_three_times_under_load_loses_nothing_and_settles_nothing_twice() {
    galera();
    let c = Cluster::start(
        "galera-kill",
        Spec {
            mysql_ports: &PORTS,
            ..Spec::default()
        },
    );
    let mut resumed = vec![];
    let accepted = c.post_while(4, || {
        c.wait_results(300, Duration::from_secs(60));
        // The workers write through node 1; after it dies, through 2; then 3.
        for node in 1..=3 {
            kill_node(node);
            let killed = Instant::now();
            c.wait_more_results_than(200, "settling again after the write node died");
            resumed.push(killed.elapsed());
            common::dtss_services(&["node-start", &node.to_string()]);
        }
    });
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    let logs = format!("{}{}", c.log("worker-0"), c.log("ingest"));
    let failovers = logs.matches("failing over to").count();
    eprintln!(
        "{} orders accepted; write node killed 3 times, settling resumed after {resumed:?}; \
         {failovers} failovers in the worker and ingest logs",
        accepted.len()
    );
    for line in logs
        .lines()
        .filter(|l| l.contains("failing over") || l.contains("retrying in"))
    {
        eprintln!("  {line}");
    }
    assert!(failovers >= 3, "{logs}");
    c.check_invariants(&accepted);
}

#[test]
fn workers_write_through_one_node_while_ingest_reads_from_another() {
    galera();
    let c = Cluster::start(
        "galera-read",
        Spec {
            mysql_ports: &PORTS,
            ingest: "mysql_node = 1",
            ..Spec::default()
        },
    );
    let accepted = c.post_while(2, || {
        c.wait_results(500, Duration::from_secs(60));
    });
    // Every result, looked up through ingest, comes from node 2.
    for id in accepted.iter().step_by(50) {
        c.wait_result(id);
    }
    assert!(
        c.log("ingest")
            .contains("reading MySQL through node 127.0.0.1:3312"),
        "{}",
        c.log("ingest")
    );
    c.wait_results(accepted.len() as u64, Duration::from_secs(60));
    c.check_invariants(&accepted);
}

/// A count through node 2 alone (the test's own pool would wait on a silent node 1).
fn count_on_node_2(c: &Cluster, sql: &str) -> u64 {
    let pool = sinks::connect(&[common::mysql_url(PORTS[1], &c.db)], 1).unwrap();
    let n = c.rt.block_on(async {
        use mysql_async::prelude::*;
        let mut conn = pool.get_conn().await.unwrap();
        let n: Option<u64> = conn.query_first(sql).await.unwrap();
        drop(conn);
        pool.disconnect().await.ok();
        n.unwrap_or(0)
    });
    n
}

#[test]
fn a_silent_write_node_is_left_within_seconds_and_nothing_is_lost() {
    galera();
    let c = Cluster::start(
        "galera-silent",
        Spec {
            mysql_ports: &PORTS,
            ..Spec::default()
        },
    );
    let pid: i32 = std::fs::read_to_string(format!(
        "{}/.dtss/services/galera/1/mysqld.pid",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let mut resumed = None;
    let accepted = c.post_while(4, || {
        c.wait_results(300, Duration::from_secs(60));
        // Node 1 stops answering: its sockets stay open, nothing comes back, no reset.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        let silent = Instant::now();
        let before = count_on_node_2(&c, "SELECT COUNT(*) FROM result");
        common::wait_for(
            Duration::from_secs(60),
            "settling through another node",
            || count_on_node_2(&c, "SELECT COUNT(*) FROM result") > before + 200,
        );
        resumed = Some(silent.elapsed());
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        common::dtss_services(&["node-start", "1"]);
    });
    let resumed = resumed.unwrap();
    eprintln!(
        "{} orders accepted; settling resumed {resumed:?} after the write node went silent",
        accepted.len()
    );
    c.wait_results(accepted.len() as u64, Duration::from_secs(120));
    c.check_invariants(&accepted);
}
