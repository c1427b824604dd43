//! The files of deploy/ say what the binary does: every systemd unit runs a command line
//! the `dtss` binary accepts, restarts on the exit codes that mean "restart" and not on
//! the one that means "fix the command line"; the example config parses.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_dtss");

fn units() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    v.sort();
    v
}

/// The value of `key=` in a unit's text (the last one, as systemd takes it).
fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

#[test]
fn every_unit_runs_a_command_line_dtss_accepts() {
    let units = units();
    assert!(
        units.len() >= 5,
        "broker, init, worker, ingest, rates: {units:?}"
    );
    for unit in units {
        let text = std::fs::read_to_string(&unit).unwrap();
        let exec = value(&text, "ExecStart").unwrap_or_else(|| panic!("{unit:?}: no ExecStart"));
        let mut args = exec.split_whitespace();
        assert_eq!(args.next(), Some("/usr/local/bin/dtss"), "{unit:?}");
        let args: Vec<String> = args
            .map(|a| a.replace("${DTSS_BROKER_LISTEN}", "10.0.0.11:9092"))
            .collect();
        assert!(!args.iter().any(|a| a.contains('$')), "{unit:?}: {args:?}");
        // --help after the whole command line: clap refuses an unknown subcommand or
        // flag before it shows any help.
        let out = Command::new(BIN)
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{unit:?}: dtss {args:?} is refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn units_restart_on_failure_but_not_on_a_bad_command_line() {
    for unit in units() {
        let text = std::fs::read_to_string(&unit).unwrap();
        assert_eq!(value(&text, "Restart"), Some("on-failure"), "{unit:?}");
        assert_eq!(
            value(&text, "RestartPreventExitStatus"),
            Some(model::exit::USAGE.to_string().as_str()),
            "{unit:?}"
        );
        assert_eq!(
            value(&text, "User"),
            Some("dtss"),
            "{unit:?}: never as root"
        );
        assert_eq!(value(&text, "NoNewPrivileges"), Some("yes"), "{unit:?}");
        assert_eq!(value(&text, "CapabilityBoundingSet"), Some(""), "{unit:?}");
    }
}

#[test]
fn a_bad_command_line_exits_with_the_code_units_do_not_restart() {
    let out = Command::new(BIN)
        .args(["worker", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(model::exit::USAGE));
}
