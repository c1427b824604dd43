//! A service process that `dtss up` starts and supervises: its own session and log
//! file, SIGTERM when `up` dies, and a graceful stop (SIGTERM, then SIGKILL).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub(crate) struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Child,
    started: Instant,
    /// The wait before the next restart, and when it is due once the process exited.
    delay: Duration,
    due: Option<Instant>,
}

/// A process that lived this long before it exited restarts at once; one that died
/// sooner waits twice as long as the last time, from 1 s up to 30 s.
const STABLE: Duration = Duration::from_secs(10);

/// The nice value of the services on the way to an order's 202 (ingest, the broker).
const ACK_PATH_NICE: i32 = -5;

/// In a service's process, before it runs `dtss`:
/// - a session of its own, as under a service manager. With Linux's autogroup scheduling
///   (on by default) the kernel then shares the CPUs between the services rather than
///   between the sessions that started them, so ingest no longer shares one share with
///   the workers' settlement bursts;
/// - ingest and the broker at nice -5 (their session too, set by `Proc::spawn`): a 202
///   waits on both, while the workers and MariaDB settle in batches every
///   `settle_interval_ms`. Best effort: without root (CAP_SYS_NICE) they keep the default;
/// - SIGTERM when `up` dies, so no service outlives it (Ctrl-C and SIGTERM reach only `up`,
///   which stops the services in order). The kernel ties this to the thread that forked:
///   `Proc::spawn` runs on `up`'s main thread (`block_on`), which lives as long as `up`.
fn service_setup(parent: i32, ack_path: bool) -> std::io::Result<()> {
    // SAFETY: plain system calls on this process.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != parent {
            // `up` died before the line above took effect.
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        if ack_path {
            // Threads inherit it; the session's own value is set by `Proc::spawn`.
            libc::setpriority(libc::PRIO_PROCESS, 0, ACK_PATH_NICE);
        }
    }
    Ok(())
}

impl Proc {
    /// `dtss ARGS` (this binary) as service `name`, its output in `{logs}/{name}.log`.
    pub(crate) fn spawn(name: &str, args: &[String], logs: &std::path::Path) -> Result<Proc> {
        let log = logs.join(format!("{name}.log"));
        Proc::start(name, &std::env::current_exe()?, args, &log)
    }

    /// `program ARGS` as service `name`, its output appended to `log`.
    pub(crate) fn start(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        log: &std::path::Path,
    ) -> Result<Proc> {
        let log = log.to_path_buf();
        let out = open_log(&log)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let (parent, ack_path) = (
            std::process::id() as i32,
            matches!(name, "ingest" | "broker"),
        );
        // SAFETY: the closure runs between fork and exec and makes only
        // async-signal-safe calls (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || service_setup(parent, ack_path));
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        if ack_path {
            // Autogroup scheduling weighs a session by the session's nice value.
            let autogroup = format!("/proc/{}/autogroup", child.id());
            if let Err(e) = std::fs::write(&autogroup, ACK_PATH_NICE.to_string()) {
                tracing::info!("{name} keeps the default CPU share ({autogroup}: {e})");
            }
        }
        Ok(Proc {
            name: name.into(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            log,
            child,
            started: Instant::now(),
            delay: Duration::ZERO,
            due: None,
        })
    }

    /// An exited process started again: at once if it had lived `STABLE`, else after a
    /// wait that doubles while it keeps dying young. True when it was started now.
    pub(crate) fn respawn(&mut self) -> Result<bool> {
        let now = Instant::now();
        let due = *self.due.get_or_insert_with(|| {
            self.delay = match self.started.elapsed() < STABLE {
                true => (self.delay * 2).clamp(Duration::from_secs(1), Duration::from_secs(30)),
                false => Duration::ZERO,
            };
            now + self.delay
        });
        if now < due {
            return Ok(false);
        }
        let delay = self.delay;
        *self = Proc::start(
            &self.name.clone(),
            &self.program.clone(),
            &self.args.clone(),
            &self.log.clone(),
        )?;
        self.delay = delay;
        Ok(true)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How long it has been running (or ran, once exited).
    pub(crate) fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// The wait before its next restart.
    pub(crate) fn restart_delay(&self) -> Duration {
        self.delay
    }

    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("{} did not stop within {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// A log file, opened to append (made if missing).
pub(crate) fn open_log(path: &std::path::Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// `text` appended to the file at `path`.
pub(crate) fn append(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    open_log(path)?
        .write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
