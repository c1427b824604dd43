//! A server the project starts by hand (no systemd): its pid file, checked against the
//! process's command line (a pid is reused once its process is gone, so a pid file alone
//! is never trusted), a wait until it answers, and a stop that sends SIGTERM, then
//! SIGKILL. Every service (MariaDB, Galera nodes, ZooKeeper, PostgreSQL, Tansu) is one.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a server may take to answer after it started (a JVM on a loaded machine, or a
/// host name looked up in DNS, can take tens of seconds); `DTSS_SERVICE_WAIT` (seconds)
/// overrides it.
const DEFAULT_WAIT: Duration = Duration::from_secs(180);

pub(crate) fn log(what: &str) {
    eprintln!("[services] {what}");
}

/// One server: what it is called, where its pid file and log are, and the text its
/// command line must hold to be this one (its data folder or config file).
pub(crate) struct Server {
    pub name: String,
    pub pidfile: PathBuf,
    pub pattern: String,
    pub log: PathBuf,
    /// host:port, for messages.
    pub at: String,
}

impl Server {
    /// The pid of the server this pid file names, when it runs and is this server.
    pub fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        cmdline.contains(&self.pattern).then_some(pid)
    }

    /// True when this server runs (waiting for `answers` if it is still starting);
    /// false when nothing answers; an error when something this project did not start
    /// answers at its place (one started beside it would exit unseen, and `down` could
    /// not stop what serves).
    pub fn already_running(&self, answers: &dyn Fn() -> bool, hint: &str) -> Result<bool> {
        if let Some(pid) = self.pid() {
            if !answers() {
                self.wait_until_up(pid, answers)?;
            }
            log(&format!("{} already running on {}", self.name, self.at));
            return Ok(true);
        }
        if answers() {
            bail!(
                "a {} not started from here answers on {}: stop it{hint}",
                self.name,
                self.at
            );
        }
        Ok(false)
    }

    /// Wait until `answers`, saying so every 10 s; an error at once if process `pid`
    /// exited, or after the wait (`DTSS_SERVICE_WAIT`), with the log's end.
    pub fn wait_until_up(&self, pid: i32, answers: &dyn Fn() -> bool) -> Result<()> {
        let limit = std::env::var("DTSS_SERVICE_WAIT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(DEFAULT_WAIT, Duration::from_secs);
        let start = Instant::now();
        let mut next = Duration::from_secs(10);
        while !answers() {
            if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
                bail!(
                    "{} (pid {pid}) exited while starting; the end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 40)
                );
            }
            if start.elapsed() >= limit {
                bail!(
                    "{} did not answer within {limit:?}; the end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 40)
                );
            }
            if start.elapsed() >= next {
                log(&format!(
                    "still waiting for {} ({} s)",
                    self.name,
                    start.elapsed().as_secs()
                ));
                next += Duration::from_secs(10);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        log(&format!(
            "{} answers after {} s",
            self.name,
            start.elapsed().as_secs()
        ));
        Ok(())
    }

    /// Stop it: SIGTERM, then SIGKILL after `grace`; the pid file goes. A live process of
    /// another command line keeps its pid file (its own `down` needs it).
    pub fn stop(&self, grace: Duration) {
        let Some(pid) = self.pid() else {
            log(&format!("{} is not running (from here)", self.name));
            let other = std::fs::read_to_string(&self.pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !other {
                let _ = std::fs::remove_file(&self.pidfile);
            }
            return;
        };
        log(&format!("stopping {} (pid {pid})", self.name));
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(pid) {
            signal(pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

/// Start `cmd` detached: a session of its own, stdin from /dev/null, its output to
/// `log` (appended) or nowhere; returns its pid. It outlives this process.
pub(crate) fn spawn_detached(cmd: &mut Command, log: Option<&Path>) -> Result<u32> {
    let (out, err) = match log {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            (Stdio::from(f.try_clone()?), Stdio::from(f))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id();
    // Reaped by a thread, so that a server that exits early is seen gone, not a zombie.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

/// Run `cmd` to its end; an error with its output when it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{:?} failed ({}):\n{text}", cmd.get_program(), out.status);
    }
    Ok(text)
}

/// Run `cmd` with `input` on its standard input (a secret or a script stays off the
/// command line); its output, or an error with what it said.
pub(crate) fn run_with_input(cmd: &mut Command, input: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{:?}: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether something accepts a TCP connection at `addr` within 2 s.
pub(crate) fn answers_tcp(addr: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    let Ok(mut addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// The last `n` lines of `path`.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: a plain system call.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(dir: &Path, pattern: &str) -> Server {
        Server {
            name: "sleeper".into(),
            pidfile: dir.join("s.pid"),
            pattern: pattern.into(),
            log: dir.join("s.log"),
            at: "nowhere".into(),
        }
    }

    #[test]
    fn a_pid_file_counts_only_for_its_own_command_line_and_stop_ends_it() {
        let dir = std::env::temp_dir().join(format!("dtss-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pid = spawn_detached(Command::new("sleep").arg("300.5"), None).unwrap();
        std::fs::write(dir.join("s.pid"), pid.to_string()).unwrap();
        assert_eq!(server(&dir, "300.5").pid(), Some(pid as i32));
        // A pid file naming another process is not this server: left alone.
        let other = server(&dir, "something else");
        assert_eq!(other.pid(), None);
        other.stop(Duration::from_secs(1));
        assert!(
            alive(pid as i32),
            "a process of another command line was stopped"
        );
        assert!(dir.join("s.pid").exists(), "its pid file was taken");
        server(&dir, "300.5").stop(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!alive(pid as i32));
        assert!(!dir.join("s.pid").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_server_that_exits_while_starting_is_an_error_with_its_log() {
        let dir = std::env::temp_dir().join(format!("dtss-server-x-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = server(&dir, "x");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo cannot bind; exit 3"]);
        let pid = spawn_detached(&mut cmd, Some(&s.log)).unwrap();
        let e = s.wait_until_up(pid as i32, &|| false).unwrap_err();
        assert!(format!("{e:#}").contains("cannot bind"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
