//! `dtss supervise`: `dtss up`'s restart policy for one command (the role systemd plays
//! on a host): a command that keeps failing young is started again after 1 s, then 2 s,
//! …; one that exits 0 or 2 is not; SIGTERM stops the command, then the supervisor.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn supervise(dir: &Path, script: &str) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    Command::new(common::BIN)
        .args(["supervise", "job"])
        .arg(dir.join("job.log"))
        .arg("--pidfile")
        .arg(dir.join("sup.pid"))
        .args(["--", "sh", "-c", script])
        .spawn()
        .unwrap()
}

/// The times (ms) of the supervisor's "started" lines.
fn starts(dir: &Path) -> Vec<i64> {
    std::fs::read_to_string(dir.join("job.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("[supervise]") && l.contains(" job started pid "))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect()
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dtss-supervise-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_command_failing_young_is_restarted_after_doubling_waits() {
    let d = dir("backoff");
    let mut sup = supervise(&d, "echo running; exit 3");
    common::wait_for(Duration::from_secs(20), "four starts", || {
        starts(&d).len() >= 4
    });
    unsafe { libc::kill(sup.id() as i32, libc::SIGTERM) };
    assert!(sup.wait().unwrap().success(), "stopped as asked: exit 0");
    let t = starts(&d);
    let gaps: Vec<i64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    // 1 s, 2 s, 4 s (each within scheduling slack).
    for (gap, want) in gaps.iter().zip([1000, 2000, 4000]) {
        assert!(
            *gap >= want && *gap < want + 900,
            "waits {gaps:?}, wanted about 1, 2, 4 s"
        );
    }
    let log = std::fs::read_to_string(d.join("job.log")).unwrap();
    assert!(
        log.contains("running") && log.contains("job exited 3 after 0 s"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("sup.pid")).unwrap(),
        sup.id().to_string()
    );
}

#[test]
fn exit_0_or_2_is_not_restarted_and_the_supervisor_exits_with_it() {
    for code in [0, 2] {
        let d = dir(&format!("exit{code}"));
        let mut sup = supervise(&d, &format!("exit {code}"));
        let status = sup.wait().unwrap();
        assert_eq!(status.code(), Some(code));
        assert_eq!(starts(&d).len(), 1);
        let log = std::fs::read_to_string(d.join("job.log")).unwrap();
        assert!(
            log.contains(&format!("not restarted (exit {code})")),
            "{log}"
        );
    }
}

#[test]
fn sigterm_stops_the_command_then_the_supervisor() {
    let d = dir("stop");
    let mut sup = supervise(&d, "exec sleep 600");
    common::wait_for(Duration::from_secs(10), "the command", || {
        !starts(&d).is_empty()
    });
    let log = std::fs::read_to_string(d.join("job.log")).unwrap();
    let pid: i32 = log
        .lines()
        .find_map(|l| l.split(" started pid ").nth(1))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    unsafe { libc::kill(sup.id() as i32, libc::SIGTERM) };
    assert!(sup.wait().unwrap().success());
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the command outlived its supervisor"
    );
    let log = std::fs::read_to_string(d.join("job.log")).unwrap();
    assert!(log.trim_end().ends_with("job stopped"), "{log}");
}
