//! PostgreSQL for Tansu's brokers (Debian's, installed when missing), initialised once
//! and started by hand as the `postgres` OS user on loopback: TCP connections need a
//! password, local ones are the `postgres` OS user's only. The role and database `tansu`
//! get the password of `{home}/tansu-pg-password` (made once, mode 0600), handed over on
//! stdin, never on a command line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::install::install;
use super::server::{log, run, run_with_input, spawn_detached, tail};

pub(crate) struct Postgres {
    /// Its folder: `{services}/tansu/postgres`, or one under /var/lib/dtss-tansu when the
    /// postgres OS user cannot reach that (the first start records which).
    pub dir: PathBuf,
    pub port: u16,
}

/// The highest installed PostgreSQL's bin folder.
fn bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

impl Postgres {
    pub fn at(tansu_dir: &Path, port: u16) -> Result<Postgres> {
        let record = tansu_dir.join("postgres.path");
        let dir = match std::fs::read_to_string(&record) {
            Ok(p) => PathBuf::from(p.trim()),
            Err(_) => tansu_dir.join("postgres"),
        };
        Ok(Postgres { dir, port })
    }

    fn tool(name: &str) -> Result<PathBuf> {
        Ok(bin().context("PostgreSQL is not installed")?.join(name))
    }

    pub fn ready(&self) -> bool {
        Self::tool("pg_isready").is_ok_and(|t| {
            Command::new(t)
                .arg("-q")
                .arg("-h")
                .arg(&self.dir)
                .arg("-p")
                .arg(self.port.to_string())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// psql as the postgres superuser over the server's own socket, `sql` on stdin.
    fn psql(&self, db: &str, sql: &str) -> Result<()> {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(Self::tool("psql")?)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-d", db]);
        run_with_input(&mut cmd, sql).map(|_| ())
    }

    /// Installed, initialised, started, and the role, database and `schema` there.
    pub fn up(&mut self, tansu_dir: &Path, password: &str, schema: &str) -> Result<()> {
        if bin().is_none() {
            install(&["postgresql"], &tansu_dir.join("apt.log"))?;
        }
        self.place(tansu_dir)?;
        if self.dir.join("data/postmaster.pid").exists() && self.ready() {
            log(&format!(
                "PostgreSQL already running on 127.0.0.1:{}",
                self.port
            ));
        } else {
            self.start()?;
        }
        let escaped = password.replace('\'', "''");
        self.psql(
            "postgres",
            &format!(
                "SELECT 'CREATE ROLE tansu LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tansu') \\gexec\n\
                 ALTER ROLE tansu PASSWORD '{escaped}';\n\
                 SELECT 'CREATE DATABASE tansu OWNER tansu' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tansu') \\gexec\n"
            ),
        )?;
        self.psql(
            "tansu",
            &format!("SET client_min_messages = warning;\nSET ROLE tansu;\n{schema}"),
        )
    }

    /// Where its folder goes, decided once.
    fn place(&mut self, tansu_dir: &Path) -> Result<()> {
        let record = tansu_dir.join("postgres.path");
        if record.exists() {
            return Ok(());
        }
        let reachable = Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-x"])
            .arg(tansu_dir)
            .status()
            .is_ok_and(|s| s.success());
        if !reachable {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&tansu_dir, &mut h);
            let hash = format!("{:016x}", std::hash::Hasher::finish(&h));
            self.dir = PathBuf::from("/var/lib/dtss-tansu").join(hash);
            log(&format!(
                "the postgres OS user cannot reach {} (a folder above it is not searchable): PostgreSQL's data goes to {}",
                tansu_dir.display(),
                self.dir.display()
            ));
        }
        std::fs::write(&record, self.dir.display().to_string())?;
        Ok(())
    }

    fn start(&self) -> Result<()> {
        let data = self.dir.join("data");
        if !data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&self.dir)?;
            run(Command::new("chown").arg("postgres:").arg(&self.dir))?;
            run(Command::new("chmod").arg("700").arg(&self.dir))?;
            run(Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(Self::tool("initdb")?)
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                ]))?;
        }
        let logfile = self.dir.join("postgres.log");
        log(&format!(
            "starting PostgreSQL on 127.0.0.1:{} (log: {})",
            self.port,
            logfile.display()
        ));
        let mut pg = Command::new("runuser");
        pg.args(["-u", "postgres", "--"])
            .arg(Self::tool("postgres")?)
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("port={}", self.port)])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()));
        // The log belongs to postgres's folder, written by this process: created first.
        spawn_detached(&mut pg, Some(&logfile))?;
        let start = Instant::now();
        while !self.ready() {
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "PostgreSQL did not answer within 60 s:\n{}",
                    tail(&logfile, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    pub fn stop(&self) {
        if !self.dir.join("data/postmaster.pid").exists() {
            return;
        }
        log("stopping PostgreSQL");
        if let Ok(ctl) = Self::tool("pg_ctl") {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(ctl)
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "stop"])
                .output();
        }
    }
}
