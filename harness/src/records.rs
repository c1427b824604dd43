//! The file of bench records: one JSON object per run (commit, time, machine, steal,
//! settings, figures), appended by `dtss bench --record FILE` and printed by
//! `dtss bench records FILE`. The history of the figures is this data, not prose.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::BenchReport;

/// A line longer than this is not a record (the file is read, not trusted).
const MAX_LINE: usize = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// What the run measured, as the caller named it (`d1k`, `direct`, …).
    pub label: String,
    pub commit: String,
    /// When the run started, in ms since the Unix epoch.
    pub started_at_ms: i64,
    pub machine: Machine,
    pub steal_pct: Option<f64>,
    pub busy_pct: Option<f64>,
    pub settings: Settings,
    pub figures: Figures,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub host: String,
    pub cpus: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// Orders per second offered; None: as fast as answered.
    pub rate: Option<f64>,
    pub direct_kafka: bool,
    pub connections: usize,
    pub steady_s: f64,
    pub partitions: usize,
    pub zipf: Option<f64>,
    /// The contended workload (`--contended`).
    #[serde(default)]
    pub contended: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    pub settled_per_s: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub committed_p50_ms: f64,
    pub committed_p99_ms: f64,
    /// The p99 of an fsynced one-row commit in the same steady phase.
    pub floor_commit_p99_ms: Option<f64>,
}

impl Record {
    pub fn of(report: &BenchReport, label: &str, commit: &str) -> Record {
        let o = &report.options;
        Record {
            label: label.to_string(),
            commit: commit.to_string(),
            started_at_ms: report.started_at_ms,
            machine: Machine {
                host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_default(),
                cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            },
            steal_pct: report.cpu.map(|c| c.steal_pct),
            busy_pct: report.cpu.map(|c| c.busy_pct),
            settings: Settings {
                rate: o.rate,
                direct_kafka: o.direct_kafka,
                connections: o.connections,
                steady_s: o.steady_s,
                partitions: report.partitions,
                zipf: o.zipf,
                contended: o.contended,
            },
            figures: Figures {
                settled_per_s: report.throughput.settled_per_s,
                ack_p50_ms: report.ack_ms.p50,
                ack_p99_ms: report.ack_ms.p99,
                committed_p50_ms: report.e2e_ms.p50,
                committed_p99_ms: report.e2e_ms.p99,
                floor_commit_p99_ms: report.floor.as_ref().map(|f| f.commit_ms.p99),
            },
        }
    }
}

/// Append `record` to `file` as one line.
pub fn append(file: &Path, record: &Record) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    writeln!(f, "{}", serde_json::to_string(record)?)
        .with_context(|| format!("appending to {}", file.display()))
}

/// Every record of `file`, in file order; a line that is not one is an error naming it.
pub fn read(file: &Path) -> Result<Vec<Record>> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut out = vec![];
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        anyhow::ensure!(
            line.len() <= MAX_LINE,
            "{}:{}: a line of {} bytes is not a record",
            file.display(),
            n + 1,
            line.len()
        );
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a bench record", file.display(), n + 1))?;
        out.push(r);
    }
    Ok(out)
}

/// The records as a table, oldest first; only those labelled `label` when given.
pub fn table(records: &[Record], label: Option<&str>) -> String {
    let mut out = format!(
        "{:<17} {:<18} {:<22} {:>10} {:>14} {:>14} {:>8} {:>6}\n",
        "started (UTC)",
        "commit",
        "label",
        "settled/s",
        "ack p50/p99",
        "commit p50/p99",
        "floor",
        "steal"
    );
    let chosen = records
        .iter()
        .filter(|r| label.is_none_or(|l| r.label == l));
    for r in chosen {
        let f = &r.figures;
        let floor = f
            .floor_commit_p99_ms
            .map_or("-".into(), |v| format!("{v:.1}"));
        let steal = r.steal_pct.map_or("-".into(), |v| format!("{v:.0}%"));
        out += &format!(
            "{:<17} {:<18} {:<22} {:>10.0} {:>14} {:>14} {:>8} {:>6}\n",
            utc(r.started_at_ms),
            r.commit.chars().take(18).collect::<String>(),
            r.label,
            f.settled_per_s,
            format!("{:.0}/{:.0}", f.ack_p50_ms, f.ack_p99_ms),
            format!("{:.0}/{:.0}", f.committed_p50_ms, f.committed_p99_ms),
            floor,
            steal
        );
    }
    out
}

/// `YYYY-MM-DD HH:MM` (UTC) of a time in ms since the epoch.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: &str, settled: f64) -> Record {
        Record {
            label: label.into(),
            commit: "abc1234".into(),
            started_at_ms: 1_796_655_600_000,
            machine: Machine {
                host: "h".into(),
                cpus: 2,
            },
            steal_pct: Some(0.0),
            busy_pct: Some(50.0),
            settings: Settings {
                rate: None,
                direct_kafka: true,
                connections: 256,
                steady_s: 20.0,
                partitions: 2,
                zipf: None,
                contended: false,
            },
            figures: Figures {
                settled_per_s: settled,
                ack_p50_ms: 1.0,
                ack_p99_ms: 2.0,
                committed_p50_ms: 9.0,
                committed_p99_ms: 12.0,
                floor_commit_p99_ms: Some(1.8),
            },
        }
    }

    #[test]
    fn records_append_read_back_and_print_by_label() {
        let file = std::env::temp_dir().join(format!("dtss-records-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        append(&file, &record("direct", 99_695.0)).unwrap();
        append(&file, &record("d1k", 1_000.0)).unwrap();
        let back = read(&file).unwrap();
        assert_eq!(
            back,
            vec![record("direct", 99_695.0), record("d1k", 1_000.0)]
        );
        let t = table(&back, Some("direct"));
        assert!(t.contains("2026-12-07 15:00") && t.contains("99695"), "{t}");
        assert!(!t.contains("d1k"), "{t}");
        std::fs::write(&file, "{\"label\": 1}\n").unwrap();
        let e = read(&file).unwrap_err();
        assert!(format!("{e:#}").contains(":1: not a bench record"), "{e:#}");
        std::fs::remove_file(&file).unwrap();
    }
}
