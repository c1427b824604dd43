//! Tansu (crates.io `tansu`), a Kafka-protocol broker not written here, for running DTSS
//! against a broker it did not write: built once from its crates.io sources (checked
//! against their SHA-256, with `deploy/tansu/pg15.patch` applied) into
//! `~/.cache/dtss/tansu` (`DTSS_TANSU_HOME`), started by hand on loopback: one broker on
//! SQLite, or N brokers sharing one PostgreSQL. Broker i keeps its pid and log in
//! `services/tansu/broker-i/` (the SQLite one in `services/tansu/`). The PostgreSQL URL,
//! with its password, goes to a broker in its environment, never on a command line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::postgres::Postgres;
use super::server::{answers_tcp, log, run, spawn_detached, Server};
use super::Settings;

const VERSION: &str = "0.6.0";
/// The crates Tansu is built from, pinned by their SHA-256 (crates.io's checksums).
const CRATES: [(&str, &str); 2] = [
    (
        "tansu",
        "4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d",
    ),
    (
        "tansu-storage",
        "720d2ed8e6010c70f7f06e5af5a7274ebbf6e42fdcd9e46de542b10dc4d2f35d",
    ),
];
/// What DTSS changes in them: one alias that PostgreSQL 15 needs.
const PATCH: &str = include_str!("../../deploy/tansu/pg15.patch");
/// The schema Tansu's PostgreSQL storage reads and writes.
const SCHEMA: &str = include_str!("../../deploy/tansu/schema.sql");

pub(crate) struct Tansu {
    dir: PathBuf,
    build: PathBuf,
    port: u16,
    pg_port: u16,
    password_file: PathBuf,
}

impl Tansu {
    pub fn new(s: &Settings) -> Tansu {
        Tansu {
            dir: s.services().join("tansu"),
            build: s.tansu_home.clone(),
            port: s.tansu_port,
            pg_port: s.tansu_pg_port,
            password_file: s.home.join("tansu-pg-password"),
        }
    }

    fn bin(&self) -> PathBuf {
        self.build.join("bin/tansu")
    }

    /// The broker of `dir` listening on `port`.
    fn broker(&self, dir: &Path, port: u16) -> Server {
        Server {
            name: format!("Tansu on 127.0.0.1:{port}"),
            pidfile: dir.join("tansu.pid"),
            pattern: format!("--listener-url tcp://127.0.0.1:{port}"),
            log: dir.join("tansu.log"),
            at: format!("127.0.0.1:{port}"),
        }
    }

    /// The brokers' folders and ports: SQLite's, then PostgreSQL's broker-0, broker-1, …
    fn brokers(&self) -> Vec<(PathBuf, u16)> {
        let mut out = vec![(self.dir.clone(), self.port)];
        for i in 0..9u16 {
            let d = self.dir.join(format!("broker-{i}"));
            if d.is_dir() {
                out.push((d, self.port + 1 + i));
            }
        }
        out
    }

    /// One broker on SQLite, or (`postgres`: Some(n)) n brokers on one PostgreSQL.
    pub fn up(&self, postgres: Option<usize>) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        self.build()?;
        let Some(n) = postgres else {
            return self.broker_up(&self.dir, self.port, "sqlite://tansu.db");
        };
        if !(1..=9).contains(&n) {
            bail!("--postgres takes the number of brokers, 1 to 9 (got {n})");
        }
        let password = crate::secrets::ensure_secret(&self.password_file, 24)?;
        let mut pg = Postgres::at(&self.dir, self.pg_port)?;
        pg.up(&self.dir, &password, SCHEMA)?;
        let url = format!(
            "postgres://tansu:{password}@127.0.0.1:{}/tansu",
            self.pg_port
        );
        for i in 0..n {
            let dir = self.dir.join(format!("broker-{i}"));
            self.broker_up(&dir, self.port + 1 + i as u16, &url)?;
        }
        Ok(())
    }

    fn broker_up(&self, dir: &Path, port: u16, storage: &str) -> Result<()> {
        let server = self.broker(dir, port);
        let at = format!("127.0.0.1:{port}");
        let hint = ", or give Tansu another port (DTSS_TANSU_PORT)";
        if server.already_running(&|| answers_tcp(&at), hint)? {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        log(&format!(
            "starting Tansu on {at} (log: {})",
            server.log.display()
        ));
        let url = format!("tcp://{at}");
        let mut cmd = Command::new(self.bin());
        cmd.args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .env("STORAGE_ENGINE", storage)
            .current_dir(dir);
        let pid = spawn_detached(&mut cmd, Some(&server.log))?;
        std::fs::write(&server.pidfile, pid.to_string())?;
        server.wait_until_up(pid as i32, &|| answers_tcp(&at))
    }

    /// Built, and from these sources with this patch.
    fn built(&self) -> bool {
        let version = Command::new(self.bin()).arg("--version").output();
        version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION))
            && std::fs::read_to_string(self.build.join("bin/.dtss-patch"))
                .is_ok_and(|p| hunks(&p) == hunks(PATCH))
    }

    fn build(&self) -> Result<()> {
        if self.built() {
            return Ok(());
        }
        let src = self.build.join("src");
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(self.build.join("bin"))?;
        std::fs::create_dir_all(&src)?;
        let build_log = self.build.join("build.log");
        log(&format!(
            "building tansu {VERSION} into {} (once; about 12 minutes on 2 cores; log: {})",
            self.build.display(),
            build_log.display()
        ));
        for (name, sum) in CRATES {
            let file = src.join(format!("{name}.crate"));
            run(Command::new("curl")
                .args(["-sSfL", "--retry", "3", "-o"])
                .arg(&file)
                .arg(format!(
                    "https://static.crates.io/crates/{name}/{VERSION}/download"
                )))
            .with_context(|| format!("downloading the {name} {VERSION} crate"))?;
            let got = run(Command::new("sha256sum").arg(&file))?;
            if got.split_whitespace().next() != Some(sum) {
                bail!("the {name} {VERSION} crate does not match its checksum");
            }
            run(Command::new("tar")
                .arg("xzf")
                .arg(&file)
                .arg("-C")
                .arg(&src))?;
        }
        std::fs::write(src.join("pg15.patch"), PATCH)?;
        run(Command::new("git")
            .args(["apply", "-p1", "pg15.patch"])
            .current_dir(&src))?;
        let manifest = src.join(format!("tansu-{VERSION}/Cargo.toml"));
        let mut toml = std::fs::read_to_string(&manifest)?;
        toml += &format!(
            "\n[patch.crates-io]\ntansu-storage = {{ path = \"../tansu-storage-{VERSION}\" }}\n"
        );
        std::fs::write(&manifest, toml)?;
        let out = Command::new("cargo")
            .args([
                "build",
                "--release",
                "--features",
                "libsql,postgres",
                "--bin",
                "tansu",
            ])
            .env("CARGO_TARGET_DIR", self.build.join("target"))
            .current_dir(src.join(format!("tansu-{VERSION}")))
            .output()
            .context("running cargo to build Tansu")?;
        std::fs::write(&build_log, [&out.stdout[..], &out.stderr[..]].concat())?;
        if !out.status.success() {
            bail!(
                "building Tansu failed:\n{}",
                super::server::tail(&build_log, 30)
            );
        }
        std::fs::copy(self.build.join("target/release/tansu"), self.bin())?;
        std::fs::write(self.build.join("bin/.dtss-patch"), PATCH)?;
        Ok(())
    }

    pub fn down(&self) {
        for (dir, port) in self.brokers() {
            self.broker(&dir, port).stop(Duration::from_secs(5));
        }
        if let Ok(pg) = Postgres::at(&self.dir, self.pg_port) {
            pg.stop();
        }
    }

    pub fn status(&self) -> Vec<String> {
        let mut out = vec![];
        for (dir, port) in self.brokers() {
            let up = self.broker(&dir, port).pid().is_some()
                && answers_tcp(&format!("127.0.0.1:{port}"));
            let storage = if dir == self.dir {
                "SQLite"
            } else {
                "PostgreSQL"
            };
            let state = if up { "up" } else { "down" };
            out.push(format!("tansu: {state} 127.0.0.1:{port} ({storage})"));
        }
        if let Ok(pg) = Postgres::at(&self.dir, self.pg_port) {
            if pg.ready() {
                out.push(format!("postgresql: up 127.0.0.1:{}", self.pg_port));
            }
        }
        out
    }
}

/// A patch's changes, without the words above them.
fn hunks(patch: &str) -> &str {
    patch.find("--- a/").map_or(patch, |at| &patch[at..])
}
