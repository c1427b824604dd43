//! The campaign's faults, and how each is made.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use anyhow::Result;

use super::hosts::Hosts;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// kill -9 host 2's timely process.
    Worker,
    /// kill -9 every process of host 3 (its supervisors start them again).
    Host,
    /// Host 3 off the network for 10 s.
    Cut,
    /// kill -9 host 2's ingest replica.
    Ingest,
    /// kill -9 the ZooKeeper leader.
    ZkLeader,
    /// kill -9 MariaDB.
    Mariadb,
    /// kill -9 the broker.
    Broker,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Worker,
        Fault::Host,
        Fault::Cut,
        Fault::Ingest,
        Fault::ZkLeader,
        Fault::Mariadb,
        Fault::Broker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Worker => "worker",
            Fault::Host => "host",
            Fault::Cut => "cut",
            Fault::Ingest => "ingest",
            Fault::ZkLeader => "zk-leader",
            Fault::Mariadb => "mariadb",
            Fault::Broker => "broker",
        }
    }

    /// Make the fault now. A cut goes on in the background (its child is returned, to
    /// be waited for); `zookeeper`: the ensemble's addresses, host 1's first.
    pub fn inject(self, hosts: &Hosts, zookeeper: &str, log: &Path) -> Result<Option<Child>> {
        let leader = zk_leader(zookeeper).to_string();
        let args: &[&str] = match self {
            Fault::Worker => &["kill", "2", "worker"],
            Fault::Host => &["kill-host", "3"],
            Fault::Cut => return Ok(Some(hosts.spawn(&["cut", "3", "10"], log)?)),
            Fault::Ingest => &["kill", "2", "ingest"],
            Fault::ZkLeader => &["kill", &leader, "zookeeper"],
            Fault::Mariadb => &["kill", "1", "mariadb"],
            Fault::Broker => &["kill", "1", "broker"],
        };
        let status = hosts.spawn(args, log)?.wait()?;
        anyhow::ensure!(
            status.success(),
            "hosts.sh {} failed ({status})",
            args.join(" ")
        );
        Ok(None)
    }
}

/// The host (1-based) whose ZooKeeper member leads, asked with the `srvr` command; 1
/// when none answers as leader.
fn zk_leader(ensemble: &str) -> usize {
    let members = ensemble.split(',').map(str::trim);
    for (i, addr) in members.enumerate() {
        if srvr(addr).is_some_and(|s| s.lines().any(|l| l.trim() == "Mode: leader")) {
            return i + 1;
        }
    }
    1
}

fn srvr(addr: &str) -> Option<String> {
    let addr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"srvr").ok()?;
    let mut text = String::new();
    s.take(64 * 1024).read_to_string(&mut text).ok()?;
    Some(text)
}
