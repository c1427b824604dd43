//! ZooKeeper, started by hand under `{home}/services/zookeeper` (Debian's jars), alone or
//! as a member of an ensemble (`--zk-ensemble "A B C" --zk-id I`: quorum port 2888 and
//! election port 3888 on each member's address).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::server::{log, spawn_detached, Server};
use super::Settings;

const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-simple.jar";

pub(crate) struct ZooKeeper {
    dir: PathBuf,
    bind: String,
    port: u16,
    ensemble: Option<(Vec<String>, usize)>,
}

impl ZooKeeper {
    pub fn new(s: &Settings) -> Result<ZooKeeper> {
        let ensemble = match (&s.zk_ensemble, s.zk_id) {
            (None, _) => None,
            (Some(members), id) => {
                let members: Vec<String> = members.split_whitespace().map(str::to_string).collect();
                let Some(id) = id else {
                    bail!(
                        "DTSS_ZK_ID: this member's place in DTSS_ZK_ENSEMBLE (1, 2, …) is missing"
                    );
                };
                if id == 0 || id > members.len() {
                    bail!("DTSS_ZK_ID: {id} is not between 1 and {}", members.len());
                }
                Some((members, id))
            }
        };
        Ok(ZooKeeper {
            dir: s.services().join("zookeeper"),
            bind: s.bind.clone(),
            port: s.zk_port,
            ensemble,
        })
    }

    pub fn server(&self) -> Server {
        Server {
            name: "ZooKeeper".into(),
            pidfile: self.dir.join("zk.pid"),
            pattern: self.dir.join("zoo.cfg").display().to_string(),
            log: self.dir.join("zk.log"),
            at: format!("{}:{}", self.bind, self.port),
        }
    }

    /// ZooKeeper answers "imok" to "ruok". Exactly those 4 bytes are read, not up to EOF:
    /// a ruok that arrives while the server still loads its database is answered, but
    /// its socket is never closed.
    pub fn ruok(&self) -> bool {
        let ask = || -> std::io::Result<bool> {
            use std::net::ToSocketAddrs as _;
            let addr = (self.bind.as_str(), self.port)
                .to_socket_addrs()?
                .next()
                .ok_or(std::io::ErrorKind::NotFound)?;
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"ruok")?;
            let mut reply = [0u8; 4];
            s.read_exact(&mut reply)?;
            Ok(&reply == b"imok")
        };
        ask().unwrap_or(false)
    }

    pub fn up(&self) -> Result<()> {
        let server = self.server();
        let hint = ", or give this one another port (DTSS_ZK_PORT)";
        if server.already_running(&|| self.ruok(), hint)? {
            return Ok(());
        }
        std::fs::create_dir_all(self.dir.join("data"))?;
        std::fs::write(self.dir.join("zoo.cfg"), self.config()).context("writing zoo.cfg")?;
        if let Some((_, id)) = &self.ensemble {
            std::fs::write(self.dir.join("data/myid"), format!("{id}\n"))?;
        }
        let member = match &self.ensemble {
            Some((m, id)) => format!(" (member {id} of {})", m.join(" ")),
            None => String::new(),
        };
        log(&format!(
            "starting ZooKeeper on {}:{}{member} (log: {})",
            self.bind,
            self.port,
            server.log.display()
        ));
        let mut java = Command::new("java");
        java.args([
            "-Xmx512m",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
            "-cp",
            CLASSPATH,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
        ])
        .arg(self.dir.join("zoo.cfg"));
        let _ = std::fs::remove_file(&server.log);
        let pid = spawn_detached(&mut java, Some(&server.log))?;
        std::fs::write(&server.pidfile, pid.to_string())?;
        server.wait_until_up(pid as i32, &|| self.ruok())
    }

    fn config(&self) -> String {
        let mut c = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\n\
             clientPortAddress={}\nmaxClientCnxns=0\nadmin.enableServer=false\n\
             4lw.commands.whitelist=srvr,stat,ruok,mntr\nminSessionTimeout=1000\n\
             maxSessionTimeout=30000\n",
            self.dir.join("data").display(),
            self.port,
            self.bind
        );
        if let Some((members, _)) = &self.ensemble {
            for (n, a) in members.iter().enumerate() {
                c += &format!("server.{}={a}:2888:3888\n", n + 1);
            }
        }
        c
    }
}
