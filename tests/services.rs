//! `dtss services`: the servers the project starts by hand, on a data folder and ports of
//! their own (the shared services stay untouched): started twice, the second start leaves
//! them be; a server another program runs on the port is refused; a stale pid file that
//! names another process is left alone; N independent MariaDB servers, one killed and
//! started again; `down` stops exactly what `up` started.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::free_port;

struct Home {
    dir: PathBuf,
    mysql: u16,
    zk: u16,
}

impl Home {
    fn new(name: &str) -> Home {
        let dir = std::env::temp_dir().join(format!("dtss-services-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Independent servers take mysql + 1, + 2: keep a few ports free above it.
        Home {
            dir,
            mysql: free_port_block(4),
            zk: free_port(),
        }
    }

    fn services(&self, args: &[&str]) -> Output {
        Command::new(common::BIN)
            .arg("services")
            .arg("--home")
            .arg(&self.dir)
            .args(["--mysql-port", &self.mysql.to_string()])
            .args(["--zk-port", &self.zk.to_string()])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.services(args);
        let text = text(&out);
        assert!(out.status.success(), "services {args:?}:\n{text}");
        text
    }

    /// The pid a server's pid file holds.
    fn pid(&self, file: &str) -> i32 {
        std::fs::read_to_string(self.dir.join("services").join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.services(&["down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A port with the `n - 1` ports above it free too.
fn free_port_block(n: u16) -> u16 {
    loop {
        let p = free_port();
        if p < 60_000 && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// As the dtss user with the folder's password: `SELECT 1` on `port`.
fn dtss_can_query(home: &Home, port: u16) -> bool {
    let pw = std::fs::read_to_string(home.dir.join("mysql-password")).unwrap();
    Command::new("mariadb")
        .args(["--no-defaults", "-h127.0.0.1", "-udtss", "-e", "SELECT 1"])
        .arg(format!("-P{port}"))
        .env("MYSQL_PWD", pw.trim())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn up_twice_leaves_them_be_and_down_stops_exactly_them() {
    let home = Home::new("twice");
    home.ok(&["up"]);
    let (mysql, zk) = (home.pid("mariadb/mysqld.pid"), home.pid("zookeeper/zk.pid"));
    assert!(dtss_can_query(&home, home.mysql));
    let again = home.ok(&["up"]);
    assert!(again.contains("MariaDB already running"), "{again}");
    assert!(again.contains("ZooKeeper already running"), "{again}");
    assert_eq!(
        (home.pid("mariadb/mysqld.pid"), home.pid("zookeeper/zk.pid")),
        (mysql, zk)
    );
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("mariadb: up 127.0.0.1:{}", home.mysql)),
        "{status}"
    );
    assert!(
        status.contains(&format!("zookeeper: up 127.0.0.1:{}", home.zk)),
        "{status}"
    );
    // The secret is made once, private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(home.dir.join("mysql-password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    home.ok(&["down"]);
    common::wait_for(Duration::from_secs(30), "both stopped", || {
        !alive(mysql) && !alive(zk)
    });
    assert!(home.ok(&["status"]).contains("mariadb: down"));
}

#[test]
fn a_server_not_started_here_is_refused_and_a_stale_pid_file_left_alone() {
    let home = Home::new("foreign");
    // Something else listens on MariaDB's port.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", home.mysql)).unwrap();
    let out = home.services(&["up"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("not started from") && said.contains(&home.mysql.to_string()),
        "{said}"
    );
    drop(squatter);
    // A pid file naming a live process of another command line: not ours, left alone.
    let mut other = Command::new("sleep").arg("600").spawn().unwrap();
    let pidfile = home.dir.join("services/zookeeper/zk.pid");
    std::fs::create_dir_all(pidfile.parent().unwrap()).unwrap();
    std::fs::write(&pidfile, other.id().to_string()).unwrap();
    home.ok(&["up"]);
    assert!(
        alive(other.id() as i32),
        "a stranger was taken for ZooKeeper"
    );
    assert_ne!(home.pid("zookeeper/zk.pid"), other.id() as i32);
    home.ok(&["down"]);
    assert!(alive(other.id() as i32), "down stopped a stranger");
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
fn independent_mariadb_servers_one_killed_and_started_again() {
    let home = Home::new("independent");
    home.ok(&["up", "--mariadb-servers", "3"]);
    for i in 1..=3u16 {
        assert!(dtss_can_query(&home, home.mysql + i), "server {i}");
    }
    let second = home.pid("mariadb-2/mysqld.pid");
    unsafe { libc::kill(second, libc::SIGKILL) };
    common::wait_for(Duration::from_secs(10), "server 2 gone", || !alive(second));
    assert!(!dtss_can_query(&home, home.mysql + 2));
    let again = home.ok(&["up", "--mariadb-servers", "3"]);
    assert!(
        again.contains("MariaDB server 1 already running"),
        "{again}"
    );
    assert!(dtss_can_query(&home, home.mysql + 2), "server 2 back");
    let status = home.ok(&["status"]);
    assert_eq!(status.matches(": up 127.0.0.1:").count(), 4, "{status}");
}
