//! MariaDB servers the project starts by hand: one server (`mariadb/`), several
//! independent ones (`mariadb-I/`, for a record spread over servers), or the nodes of a
//! Galera cluster (`galera/I/`). Each with its data folder, socket, pid file and error log
//! under its folder, on a loopback (or `--bind`) port; root only through the socket, the
//! `dtss` user only on the databases named `dtss…`, with the password of
//! `{home}/mysql-password` (made once, mode 0600).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::server::{log, run, run_with_input, spawn_detached, Server};
use super::Settings;

/// A dead Galera node is suspected after 3 s without a word from it (Galera's default:
/// 5 s). The install and eviction timeouts stay long: on a loaded machine a shorter
/// install timeout split the survivors into two non-primary components.
const GALERA_EVS: &str = "evs.keepalive_period=PT1S;evs.inactive_check_period=PT1S;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT15S;evs.install_timeout=PT7.5S";

/// One MariaDB server: its folder, port, and (for a Galera node) its place in the cluster.
pub(crate) struct MariaDb {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub bind: String,
    /// For a Galera node: (its number, the cluster's size).
    pub galera: Option<(usize, usize)>,
}

impl MariaDb {
    pub fn single(s: &Settings) -> MariaDb {
        MariaDb {
            name: "MariaDB".into(),
            dir: s.services().join("mariadb"),
            port: s.mysql_port,
            bind: s.bind.clone(),
            galera: None,
        }
    }

    /// Server `i` (1, 2, …) of several independent ones, on `mysql_port + i`.
    pub fn independent(s: &Settings, i: usize) -> MariaDb {
        MariaDb {
            name: format!("MariaDB server {i}"),
            dir: s.services().join(format!("mariadb-{i}")),
            port: s.mysql_port + i as u16,
            bind: s.bind.clone(),
            galera: None,
        }
    }

    /// Node `i` (1, 2, …) of a Galera cluster of `n`, on `galera_port + i`.
    pub fn galera_node(s: &Settings, i: usize, n: usize) -> MariaDb {
        MariaDb {
            name: format!("Galera node {i}"),
            dir: s.services().join("galera").join(i.to_string()),
            port: s.galera_port + i as u16,
            bind: "127.0.0.1".into(),
            galera: Some((i, n)),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    pub fn server(&self) -> Server {
        Server {
            name: self.name.clone(),
            pidfile: self.dir.join("mysqld.pid"),
            pattern: self.dir.join("data").display().to_string(),
            log: self.dir.join("error.log"),
            at: format!("{}:{} ({})", self.bind, self.port, self.socket().display()),
        }
    }

    /// Root over the socket: `sql` run, its output.
    pub fn root_sql(&self, sql: &str) -> Result<String> {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-N", "-B"]);
        run_with_input(&mut cmd, sql).with_context(|| self.name.clone())
    }

    pub fn ping(&self) -> bool {
        Command::new("mariadb-admin")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "ping"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Answers, and for a Galera node: has every write set of the cluster (Synced).
    pub fn ready(&self) -> bool {
        self.ping()
            && (self.galera.is_none()
                || self
                    .root_sql("SHOW STATUS LIKE 'wsrep_local_state_comment'")
                    .is_ok_and(|s| s.split_whitespace().nth(1) == Some("Synced")))
    }

    /// Start it unless it runs (a Galera node with `bootstrap`: as a new cluster), wait
    /// until it is ready, and set the users.
    pub fn up(&self, s: &Settings, bootstrap: bool) -> Result<()> {
        let server = self.server();
        if server.already_running(&|| self.ready(), "")? {
            return Ok(());
        }
        if super::server::answers_tcp(&format!("{}:{}", self.bind, self.port)) {
            bail!(
                "something not started from {} listens on {}:{}: stop it, or give {} another port",
                self.dir.display(),
                self.bind,
                self.port,
                self.name
            );
        }
        let user = if self.galera.is_some() {
            "mysql".to_string()
        } else {
            os_user(&s.services())
        };
        std::fs::create_dir_all(self.dir.join("files"))?;
        if !self.dir.join("data/mysql").exists() && (self.galera.is_none() || bootstrap) {
            log(&format!(
                "initialising {}'s data folder {}",
                self.name,
                self.dir.join("data").display()
            ));
            run(Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", self.dir.join("data").display()))
                .arg(format!("--user={user}"))
                .args(["--auth-root-authentication-method=socket", "--skip-test-db"]))?;
        }
        if bootstrap {
            safe_to_bootstrap(&self.dir.join("data/grastate.dat"))?;
        }
        std::fs::create_dir_all(self.dir.join("data"))?;
        run(Command::new("chown")
            .args(["-R", &format!("{user}:")])
            .arg(&self.dir))?;
        run(Command::new("chmod")
            .arg("750")
            .arg(&self.dir)
            .arg(self.dir.join("files")))?;
        log(&format!(
            "starting {} on {}:{} as {user}{} (log: {})",
            self.name,
            self.bind,
            self.port,
            if bootstrap { ", a new cluster" } else { "" },
            server.log.display()
        ));
        let pid = spawn_detached(&mut self.command(&user, bootstrap), None)?;
        server.wait_until_up(pid as i32, &|| self.ready())
    }

    fn command(&self, user: &str, bootstrap: bool) -> Command {
        let d = &self.dir;
        let mut c = Command::new("mariadbd");
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--bind-address={}", self.bind))
            .arg(format!("--user={user}"))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .args([
                "--skip-name-resolve",
                "--max-connections=1000",
                "--local-infile=1",
            ])
            // The server reads and writes files only under files/ (and the dtss user,
            // without FILE, not even there). LOCAL INFILE sends the client's data.
            .arg(format!("--secure-file-priv={}", d.join("files").display()));
        let Some((i, n)) = self.galera else {
            c.args([
                "--innodb-buffer-pool-size=2G",
                "--innodb-log-file-size=2G",
                "--innodb-io-capacity=2000",
                "--innodb-io-capacity-max=8000",
            ]);
            return c;
        };
        let members: Vec<String> = (1..=n).map(|m| format!("127.0.0.1:45{m}7")).collect();
        c.args([
            "--innodb-buffer-pool-size=512M",
            "--innodb-log-file-size=256M",
            "--binlog-format=ROW",
            "--innodb-autoinc-lock-mode=2",
            "--wsrep-on=ON",
            "--wsrep-provider=/usr/lib/galera/libgalera_smm.so",
            "--wsrep-cluster-name=dtss",
            "--wsrep-sst-method=rsync",
        ])
        .arg(format!("--wsrep-cluster-address=gcomm://{}", members.join(",")))
        .arg(format!("--wsrep-node-address=127.0.0.1:45{i}7"))
        .arg(format!(
            "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:45{i}7;ist.recv_addr=127.0.0.1:45{i}8;{GALERA_EVS}"
        ))
        .arg(format!("--wsrep-sst-receive-address=127.0.0.1:45{i}9"));
        if bootstrap {
            c.arg("--wsrep-new-cluster");
        }
        c
    }

    /// Root only through the socket, as the OS root; `dtss` only on the databases named
    /// `dtss…`, with no global privilege (no FILE, no SUPER), from loopback and from
    /// `clients` (a host pattern like 10.77.0.%). Applied at every start, so an older
    /// data folder is brought to the same state and the password never drifts.
    pub fn users(&self, password: &str, clients: Option<&str>) -> Result<()> {
        let mut hosts = vec!["127.0.0.1", "localhost"];
        if let Some(c) = clients {
            if c.is_empty()
                || !c
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ch == '.' || ch == '%')
            {
                bail!("DTSS_MYSQL_CLIENTS: an address pattern like 10.77.0.%, got {c}");
            }
            hosts.push(c);
        }
        let mut sql = String::new();
        for h in &hosts {
            sql += &format!(
                "CREATE USER IF NOT EXISTS 'dtss'@'{h}' IDENTIFIED BY '{password}';\n\
                 ALTER USER 'dtss'@'{h}' IDENTIFIED BY '{password}';\n\
                 REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'dtss'@'{h}';\n\
                 GRANT ALL PRIVILEGES ON `dtss%`.* TO 'dtss'@'{h}';\n"
            );
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        sql += &format!(
            "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1', 'root'@'%', 'root'@'{}';\n\
             ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket;\n",
            host.trim()
        );
        self.root_sql(&sql).map(|_| ())
    }
}

/// The OS user MariaDB runs as: `mysql` when it can reach the services folder (every
/// folder above it searchable by others), else root, with a warning.
fn os_user(services: &Path) -> String {
    let reachable = Command::new("runuser")
        .args(["-u", "mysql", "--", "test", "-x"])
        .arg(services)
        .status()
        .is_ok_and(|s| s.success());
    if reachable {
        return "mysql".into();
    }
    log(&format!(
        "warning: the mysql OS user cannot reach {} (a folder above it is not searchable): running MariaDB as root",
        services.display()
    ));
    "root".into()
}

/// A cluster started again after every node stopped: this node's state is the one to
/// start from (the nodes of a test cluster on one machine stop together).
fn safe_to_bootstrap(grastate: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(grastate) else {
        return Ok(());
    };
    let text = text.replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1");
    Ok(std::fs::write(grastate, text)?)
}
