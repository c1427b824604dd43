//! Real clusters for the end-to-end tests: the `dtss` binary's broker, worker and
//! ingest processes on loopback, against the MariaDB and ZooKeeper that
//! `dtss services` runs. Each cluster has its own database, ZooKeeper root,
//! data directory and ports, and is torn down on drop.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_dtss");

static SERVICES: Once = Once::new();

pub fn services() {
    SERVICES.call_once(|| dtss_services(&["up"]));
}

/// `dtss services ARGS` on this repository's data folder (`.dtss`, the shared services
/// of the tests); panics unless it succeeds.
pub fn dtss_services(args: &[&str]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let st = Command::new(BIN)
        .args(["services", "--home"])
        .arg(format!("{root}/.dtss"))
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("run dtss services: {e}"));
    assert!(st.success(), "dtss services {args:?} failed");
}

/// The file `dtss services` keeps the dtss user's MySQL password in.
pub fn mysql_password_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".dtss/mysql-password")
}

/// A URL as the dtss user, with its password, for the local MariaDB (or Galera node)
/// on `port`; `db` may be empty.
pub fn mysql_url(port: u16, db: &str) -> String {
    let pw = std::fs::read_to_string(mysql_password_file()).expect("dtss services up ran");
    format!("mysql://dtss:{}@127.0.0.1:{port}/{db}", pw.trim())
}

/// kill -9 the local service whose pid file is `.dtss/services/{pidfile}`
/// (`mariadb/mysqld.pid`, `zookeeper/zk.pid`, `galera/1/mysqld.pid`, `tansu/tansu.pid`).
pub fn kill_service(pidfile: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/.dtss/services/{pidfile}");
    let pid: i32 = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("pid in {path}: {e}"));
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// kill -9 the local service whose pid file is `.dtss/services/{pidfile}`, wait `down`,
/// start it again.
pub fn crash_and_restart_service(pidfile: &str, down: Duration) {
    kill_service(pidfile);
    std::thread::sleep(down);
    dtss_services(&["up"]);
}

/// `n` distinct free ports (each bound until all are chosen, so none repeats).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub db: String,
    pub listen: String,
    pub processes: usize,
    pub broker: Option<Child>,
    pub workers: std::sync::Mutex<Vec<Option<Child>>>,
    pub ingest: Option<Child>,
    pub rt: tokio::runtime::Runtime,
    pub pool: sinks::Pool,
    /// Brokers are configured: no embedded broker is started.
    pub external_kafka: bool,
}

pub struct Spec<'a> {
    pub processes: usize,
    pub workers: usize,
    /// CSV catalogue text (header included); None: generated.
    pub catalogue: Option<&'a str>,
    /// More keys of the `[catalogue]` section.
    pub catalogue_keys: &'a str,
    pub items: u32,
    /// More keys of the `[cluster]` section.
    pub cluster: &'a str,
    /// The MySQL ports: empty, the single server of dtss services (3306); else the
    /// nodes of a cluster on loopback.
    pub mysql_ports: &'a [u16],
    /// Kafka brokers (`host:port`); empty: the embedded broker. With brokers the topic is
    /// the cluster's own.
    pub kafka_brokers: &'a [&'a str],
    /// More keys of the `[kafka]` section.
    pub kafka_extra: &'a str,
    /// More keys of the `[ingest]` section.
    pub ingest: &'a str,
    pub extra: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            processes: 1,
            workers: 2,
            catalogue: None,
            catalogue_keys: "",
            items: 1000,
            cluster: "",
            mysql_ports: &[],
            kafka_brokers: &[],
            kafka_extra: "",
            ingest: "",
            extra: "",
        }
    }
}

impl Cluster {
    /// Write a config, init, and start broker + workers + ingest; wait until healthy.
    pub fn start(name: &str, spec: Spec) -> Cluster {
        Cluster::configure(name, spec).launch()
    }

    /// Init, then start broker, workers and ingest of a configured cluster.
    pub fn launch(self) -> Cluster {
        self.run(&["init"]).expect("dtss init");
        let mut c = self;
        if !c.external_kafka {
            c.start_broker();
        }
        for p in 0..c.processes {
            c.start_worker(p);
        }
        c.start_ingest();
        c
    }

    /// Only write the config and create a fresh database.
    pub fn configure(name: &str, spec: Spec) -> Cluster {
        services();
        let unique = format!(
            "{name}_{}_{}",
            std::process::id(),
            model::now_ms() % 1_000_000
        );
        let dir = std::env::temp_dir().join(format!("dtss-test-{unique}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = format!("dtss_t_{unique}");
        let listen = format!("127.0.0.1:{}", free_port());
        let processes: Vec<String> = (0..spec.processes)
            .map(|_| format!("\"127.0.0.1:{}\"", free_port()))
            .collect();
        let catalogue = match spec.catalogue {
            Some(csv) => {
                std::fs::write(dir.join("catalogue.csv"), csv).unwrap();
                "csv = \"catalogue.csv\"".to_string()
            }
            None => String::new(),
        } + "\n"
            + spec.catalogue_keys;
        let ports: Vec<u16> = match spec.mysql_ports {
            [] => vec![3306],
            ports => ports.to_vec(),
        };
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("mysql://dtss@127.0.0.1:{p}/{db}"))
            .collect();
        let nodes = match urls.as_slice() {
            [one] => format!("url = \"{one}\""),
            many => format!(
                "urls = [{}]",
                many.iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mysql = format!(
            "{nodes}\npassword_file = \"{}\"",
            mysql_password_file().display()
        );
        let kafka = match spec.kafka_brokers {
            [] => "topic = \"orders\"".to_string(),
            brokers => format!(
                "topic = \"orders_{unique}\"\nbrokers = [{}]",
                brokers
                    .iter()
                    .map(|b| format!("\"{b}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let config = dir.join("cluster.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[cluster]
processes = [{}]
workers_per_process = {}
data_dir = "data"
{}
[kafka]
{kafka}
{}
[zookeeper]
connect = "127.0.0.1:2181"
root = "/dtss_t_{unique}"
[mysql]
{mysql}
[ingest]
listen = "{listen}"
{}
[catalogue]
items = {}
{catalogue}
[currencies]
base = "RMB"
initial = {{ RMB = "1", USD = "7.12", JPY = "0.048", EUR = "7.80" }}
{}
"#,
                processes.join(", "),
                spec.workers,
                spec.cluster,
                spec.kafka_extra,
                if spec.ingest.contains("admin_token") {
                    spec.ingest.to_string()
                } else {
                    format!("admin_token = \"secret\"\n{}", spec.ingest)
                },
                spec.items,
                spec.extra
            ),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let urls: Vec<String> = ports.iter().map(|p| mysql_url(*p, &db)).collect();
        let pool = sinks::connect(&urls, 4).unwrap();
        Cluster {
            name: name.into(),
            dir,
            config,
            db,
            listen,
            processes: spec.processes,
            broker: None,
            workers: std::sync::Mutex::new((0..spec.processes).map(|_| None).collect()),
            ingest: None,
            rt,
            pool,
            external_kafka: !spec.kafka_brokers.is_empty(),
        }
    }

    /// Start `dtss ARGS --config …`, logging to `{what}.log`.
    pub fn spawn(&self, what: &str, args: &[&str]) -> Child {
        self.spawn_env(what, args, &[])
    }

    /// `spawn` with environment variables set (a test hook).
    pub fn spawn_env(&self, what: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{what}.log")))
            .unwrap();
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Run a dtss subcommand to completion; Ok(stdout) or Err(stdout+stderr).
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        dtss(&self.config, args)
    }

    pub fn start_broker(&mut self) {
        let addr = self.dir.join("data/broker.addr");
        let _ = std::fs::remove_file(&addr);
        self.broker = Some(self.spawn("broker", &["broker"]));
        wait_for(Duration::from_secs(30), "broker address", || addr.exists());
    }

    pub fn start_worker(&self, p: usize) {
        self.workers.lock().unwrap()[p] = Some(self.spawn(
            &format!("worker-{p}"),
            &["worker", "--process", &p.to_string()],
        ));
    }

    /// Another ingest replica on its own port; returns its address.
    pub fn start_extra_ingest(&self) -> (String, Child) {
        let listen = format!("127.0.0.1:{}", free_port());
        let child = self.spawn("ingest-extra", &["ingest", "--listen", &listen]);
        let l = listen.clone();
        wait_for(Duration::from_secs(60), "extra ingest /healthz", || {
            http(&l, "GET", "/healthz", None)
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
        (listen, child)
    }

    pub fn start_ingest(&mut self) {
        self.ingest = Some(self.spawn("ingest", &["ingest"]));
        let listen = self.listen.clone();
        wait_for(Duration::from_secs(60), "ingest /healthz", || {
            http(&listen, "GET", "/healthz", None)
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
    }

    pub fn kill_worker(&self, p: usize, sig: i32) -> Option<std::process::ExitStatus> {
        let mut child = self.workers.lock().unwrap()[p].take()?;
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        Some(exit_within(&mut child, STOP_WITHIN))
    }

    pub fn post(&self, body: &str) -> (u16, serde_json::Value) {
        http(&self.listen, "POST", "/api/orders", Some(body)).expect("POST /api/orders")
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http(&self.listen, "GET", path, None).expect("GET")
    }

    /// Poll GET /api/orders/{id} until it is settled.
    pub fn wait_result(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, v) = self.get(&format!("/api/orders/{id}"));
            if s == 200 {
                return v;
            }
            assert_eq!(s, 404, "unexpected answer {v}");
            assert!(
                Instant::now() < deadline,
                "order {id} did not settle in 30 s; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run a query; retried for a while, so a MariaDB restart in a test is survived.
    pub fn query<T: FromRow + Send + 'static>(&self, sql: &str) -> Vec<T> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r: Result<Vec<T>, mysql_async::Error> = self.rt.block_on(async {
                let mut conn = self.pool.get_conn().await?;
                // A cluster node that cannot serve: the next query goes to another.
                conn.query(sql).await.inspect_err(|_| conn.fail_over())
            });
            match r {
                Ok(v) => return v,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("query failed, retrying: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
    }

    /// Post generated orders from `threads` threads while `during` runs on this thread,
    /// each with an idempotency key of its own, retried with it after a 503, a 504 or no
    /// answer; returns the ids that got 202 (each once).
    pub fn post_while(&self, threads: u64, during: impl FnOnce()) -> Vec<String> {
        let accepted = std::sync::Mutex::new(Vec::new());
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (accepted, done) = (&accepted, &done);
                s.spawn(move || {
                    let currencies = ["RMB", "USD", "JPY", "EUR"].map(String::from).to_vec();
                    let mut gen = harness::OrderGen::new(t, 1000, currencies);
                    let mut n = 0;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        // Each order with a key of its own, retried with it until a 202.
                        let (body, key) = (gen.next_body(), format!("post-{t}-{n}"));
                        n += 1;
                        let patience = Instant::now() + Duration::from_secs(90);
                        loop {
                            let answer = http_with(
                                &self.listen,
                                "POST",
                                "/api/orders",
                                Some(&body),
                                &[("Idempotency-Key", &key)],
                            );
                            match answer {
                                Ok((202, v)) => {
                                    let id = v["order_id"].as_str().unwrap().to_string();
                                    accepted.lock().unwrap().push(id);
                                    break;
                                }
                                Ok((503 | 504, _)) | Err(_) if Instant::now() < patience => {
                                    std::thread::sleep(Duration::from_millis(50))
                                }
                                Ok((503 | 504, v)) => panic!("not taken within 90 s: {v}"),
                                Err(e) => panic!("no answer within 90 s: {e}"),
                                Ok((st, v)) => panic!("unexpected {st}: {v}"),
                            }
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                });
            }
            let _stop = StopOnDrop(&done);
            during();
        });
        accepted.into_inner().unwrap()
    }

    /// SIGTERM a child and wait (a minute and a half at most); its exit status.
    pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        exit_within(child, STOP_WITHIN)
    }

    /// Wait (up to 60 s) until more than `more` further results are settled.
    pub fn wait_more_results_than(&self, more: u64, what: &str) {
        let before = self.count("SELECT COUNT(*) FROM result");
        wait_for(Duration::from_secs(60), what, || {
            self.count("SELECT COUNT(*) FROM result") > before + more
        });
    }

    pub fn count(&self, sql: &str) -> u64 {
        self.query::<u64>(sql)[0]
    }

    /// Wait until the result table holds `n` rows.
    pub fn wait_results(&self, n: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let have = self.count("SELECT COUNT(*) FROM result");
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {have} of {n} results after {within:?}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The invariants with `dtss check`'s own code: one result per accepted id and no other;
    /// stock conserved; totals equal three ways; every paid recomputed at the rate
    /// version that was in force at its epoch.
    pub fn check_invariants(&self, accepted: &[String]) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut cfg = model::Config::parse_at(&text, &self.config).unwrap();
        let password = std::fs::read_to_string(mysql_password_file()).unwrap();
        cfg.mysql.set_password(password.trim());
        let verdicts = self
            .rt
            .block_on(harness::check(
                &cfg,
                Some(accepted),
                Duration::from_secs(10),
            ))
            .expect("check ran");
        let failed: Vec<String> = verdicts
            .iter()
            .filter(|v| !v.ok)
            .map(|v| format!("{}: {}", v.name, v.detail))
            .collect();
        assert!(
            failed.is_empty(),
            "invariants failed (logs in {}):\n{}",
            self.dir.display(),
            failed.join("\n")
        );
    }

    /// The rate versions the results used.
    pub fn rate_versions_used(&self) -> std::collections::BTreeSet<u64> {
        self.query::<u64>("SELECT DISTINCT rate_version FROM result")
            .into_iter()
            .collect()
    }

    /// An admin request (the test clusters' token is "secret").
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        http_with(
            &self.listen,
            method,
            path,
            body,
            &[("Authorization", "Bearer secret")],
        )
        .expect("admin request")
    }

    pub fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{what}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut all: Vec<Child> = vec![];
        all.extend(self.ingest.take());
        all.extend(
            self.workers
                .lock()
                .unwrap()
                .iter_mut()
                .filter_map(|w| w.take()),
        );
        all.extend(self.broker.take());
        for c in &mut all {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let db = self.db.clone();
            let pool = self.pool.clone();
            self.rt.block_on(async move {
                if let Ok(mut conn) = pool.get_conn().await {
                    let _ = conn
                        .query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
                        .await;
                }
                let _ = pool.disconnect().await;
            });
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "cluster {} left for inspection in {}",
                self.name,
                self.dir.display()
            );
        }
    }
}

pub fn wait_for(within: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sets its flag when dropped: a scope's threads stop also when the test panics in it
/// (else the scope would wait for them for ever).
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, serde_json::Value)> {
    http_with(addr, method, path, body, &[])
}

pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let payload = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let json =
        serde_json::from_str(payload).unwrap_or(serde_json::Value::String(payload.to_string()));
    Ok((status, json))
}

/// The pid of the process whose command line holds all of `words`.
pub fn find_process(words: &[&str]) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if words.iter().all(|w| cmd.contains(w)) {
            return Some(pid);
        }
    }
    None
}

/// `dtss up` of a test cluster; killed on drop (and so, by the kernel, its services).
pub struct Up(pub std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dtss up --no-services` for cluster `c` (its output in up.log), once it serves.
pub fn start_up(c: &Cluster) -> Up {
    let log = std::fs::File::create(c.dir.join("up.log")).unwrap();
    let up = Up(std::process::Command::new(BIN)
        .args(["up", "--no-services", "--config"])
        .arg(&c.config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap());
    let listen = c.listen.clone();
    wait_for(Duration::from_secs(60), "dtss up serving", || {
        http(&listen, "GET", "/healthz", None)
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    up
}

/// How long a signalled process may take to exit: a worker reads its partition to the
/// end (30 s at most) and settles what it read.
pub const STOP_WITHIN: Duration = Duration::from_secs(90);

/// `child`'s exit status once it exits; killed, and the test failed, if that takes longer
/// than `within` (a hung process must not hang the suite).
pub fn exit_within(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `dtss ARGS --config CONFIG` to completion; Ok(stdout) or Err(stdout+stderr).
pub fn dtss(config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
