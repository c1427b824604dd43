//! The campaign's results: one row per round (rounds.tsv), one line per fault
//! (table.md).

use std::fmt::Write as _;
use std::time::Duration;

/// One round of one fault.
pub struct Round {
    pub fault: &'static str,
    pub round: u32,
    /// From the bench's report; None when it wrote none.
    pub accepted: Option<u64>,
    pub settled: Option<u64>,
    /// Accepted orders without a result, and results of orders never accepted, over
    /// every round so far (from the strict check).
    pub lost: u64,
    pub duplicated: u64,
    /// None: the cluster did not come back within the patience.
    pub recovery: Option<Duration>,
    pub restarted: Duration,
    pub check_passed: bool,
}

impl Round {
    pub fn failed(&self) -> bool {
        !self.check_passed || self.recovery.is_none() || self.accepted.is_none()
    }

    pub const TSV_HEADER: &'static str =
        "scenario\tround\taccepted\tsettled\tlost\tduplicated\trecovery_ms\trestarted_ms\n";

    pub fn tsv(&self) -> String {
        let recovery = self.recovery.map_or(-1, |d| d.as_millis() as i64);
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.fault,
            self.round,
            opt(self.accepted),
            opt(self.settled),
            self.lost,
            self.duplicated,
            recovery,
            self.restarted.as_millis()
        )
    }
}

fn opt(n: Option<u64>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}

/// The table: one line per fault, in the order given, then the steal over the campaign.
pub fn markdown(faults: &[&str], rounds: &[Round], steal_pct: Option<f64>) -> String {
    let mut t = String::from(
        "| fault | rounds | accepted | settled | lost | duplicated | recovery p50 (s) | recovery max (s) | restarted p50 (s) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in faults {
        let rs: Vec<&Round> = rounds.iter().filter(|r| r.fault == *f).collect();
        let sum = |get: fn(&Round) -> u64| rs.iter().map(|r| get(r)).sum::<u64>();
        let recovered: Vec<Duration> = rs.iter().filter_map(|r| r.recovery).collect();
        let any_timeout = rs.iter().any(|r| r.recovery.is_none());
        let restarted: Vec<Duration> = rs.iter().map(|r| r.restarted).collect();
        let max = match any_timeout {
            true => "-".to_string(),
            false => secs(recovered.iter().max().copied()),
        };
        let _ = writeln!(
            t,
            "| {f} | {} | {} | {} | {} | {} | {} | {max} | {} |",
            rs.len(),
            sum(|r| r.accepted.unwrap_or(0)),
            sum(|r| r.settled.unwrap_or(0)),
            sum(|r| r.lost),
            sum(|r| r.duplicated),
            secs(median(&recovered)),
            secs(median(&restarted)),
        );
    }
    if let Some(s) = steal_pct {
        let _ = write!(
            t,
            "\nCPU time taken by the hypervisor (steal) over the campaign: {s:.1} %\n"
        );
    }
    t
}

/// The nearest-rank median; None for no values.
fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * 0.5).round();
    (!v.is_empty()).then(|| v[i as usize])
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()))
}

/// The number before `what` in a check's verdict detail ("3 accepted orders have no
/// result (e.g. …)"): 0 when the detail does not say it.
pub fn count_in(detail: &str, what: &str) -> u64 {
    detail
        .split("; ")
        .find_map(|part| part.find(what).map(|i| &part[..i]))
        .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(fault: &'static str, rec_ms: Option<u64>, lost: u64) -> Round {
        Round {
            fault,
            round: 1,
            accepted: Some(100),
            settled: Some(100 - lost),
            lost,
            duplicated: 0,
            recovery: rec_ms.map(Duration::from_millis),
            restarted: Duration::from_millis(500),
            check_passed: lost == 0,
        }
    }

    #[test]
    fn the_table_sums_the_rounds_and_takes_the_median() {
        let rounds = [
            round("host", Some(3000), 0),
            round("host", Some(1000), 0),
            round("host", Some(2000), 2),
            round("cut", None, 0),
        ];
        let t = markdown(&["host", "cut"], &rounds, Some(0.44));
        assert!(
            t.contains("| host | 3 | 300 | 298 | 2 | 0 | 2.00 | 3.00 | 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("| cut | 1 | 100 | 100 | 0 | 0 | - | - | 0.50 |"),
            "{t}"
        );
        assert!(t.ends_with("over the campaign: 0.4 %\n"), "{t}");
        assert!(rounds[2].failed() && rounds[3].failed() && !rounds[0].failed());
    }

    #[test]
    fn counts_are_read_from_the_verdict() {
        let d = "3 accepted orders have no result (e.g. a); 1 results for orders never accepted (e.g. b)";
        assert_eq!(count_in(d, " accepted orders have no result"), 3);
        assert_eq!(count_in(d, " results for orders never accepted"), 1);
        assert_eq!(
            count_in(
                "9,000 orders, one result each",
                " accepted orders have no result"
            ),
            0
        );
    }
}
