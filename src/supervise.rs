//! `dtss supervise NAME LOG -- COMMAND…`: the role systemd plays in production
//! (deploy/systemd/), for the emulated hosts: run a command, and when it exits start it
//! again with `dtss up`'s restart policy (`Proc::respawn`: at once after a run of 10 s or
//! more, else after 1 s, 2 s, … up to 30 s), unless it exited 0 (stopped as asked) or 2
//! (a bad command line: a restart will not help). SIGTERM or SIGINT stops the command
//! (SIGTERM, then SIGKILL after 30 s), then the supervisor. The command's output goes to
//! LOG, with a line of the supervisor's own for every start and exit:
//! `[supervise] <unix ms> NAME started pid P`, `… exited C after S s`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::proc::Proc;

/// How long a stopping command has before it is killed.
const GRACE: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct SuperviseArgs {
    /// The command's name in the log lines.
    name: String,
    /// The file its output (and the supervisor's lines) is appended to.
    log: PathBuf,
    /// Write the supervisor's own pid here.
    #[arg(long, env = "SUPERVISE_PIDFILE")]
    pidfile: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Supervise until stopped (Ok(0)) or the command exits 0 or 2 (that code).
pub fn run(a: SuperviseArgs) -> Result<i32> {
    if let Some(p) = &a.pidfile {
        std::fs::write(p, std::process::id().to_string())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let stop = crate::signals::stop_flag();
    let program = PathBuf::from(&a.command[0]);
    let mut proc = Proc::start(&a.name, &program, &a.command[1..], &a.log)?;
    note(&a, &format!("started pid {}", proc.pid()))?;
    loop {
        if stop.load(Ordering::SeqCst) {
            let code = stop_now(&mut proc);
            note(
                &a,
                &format!("exited {code} after {} s", proc.age().as_secs()),
            )?;
            note(&a, "stopped")?;
            return Ok(0);
        }
        let Some(status) = proc.exited() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let code = status.code().unwrap_or(128 + signal_of(&status));
        note(
            &a,
            &format!("exited {code} after {} s", proc.age().as_secs()),
        )?;
        if matches!(code, 0 | 2) {
            note(&a, &format!("not restarted (exit {code})"))?;
            return Ok(code);
        }
        while !proc.respawn()? {
            if stop.load(Ordering::SeqCst) {
                note(&a, "stopped")?;
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        note(&a, &format!("started pid {}", proc.pid()))?;
    }
}

/// SIGTERM, then SIGKILL after `GRACE`; the exit code.
fn stop_now(proc: &mut Proc) -> i32 {
    proc.signal(libc::SIGTERM);
    let deadline = Instant::now() + GRACE;
    loop {
        if let Some(s) = proc.exited() {
            return s.code().unwrap_or(128 + signal_of(&s));
        }
        if Instant::now() >= deadline {
            proc.signal(libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal_of(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal().unwrap_or(0)
}

/// One line of the supervisor's own in the log.
fn note(a: &SuperviseArgs, what: &str) -> Result<()> {
    let ms = model::now_ms();
    crate::proc::append(&a.log, &format!("[supervise] {ms} {} {what}\n", a.name))
}
