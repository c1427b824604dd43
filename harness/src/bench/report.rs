//! What a bench run reports, and the figures computed from what it measured: latency
//! percentiles and distributions, the per-second timeline, throughput, and the
//! settlement transactions' durations.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use model::Uuid;
use serde::Serialize;
use sinks::audit::CommitRecord;

use super::figures::{distribution, latency_us};
pub use super::figures::{CpuUse, LagSample, Percentiles};
use super::readback::Settled;
use super::{BenchOptions, Clock, Sent};

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Orders the timetable (or the closed loop) sent.
    pub sent: u64,
    pub accepted: u64,
    /// 400/413 answers (the generator makes valid orders: expect 0).
    pub invalid: u64,
    /// 503 answers (backlog guard), each retried.
    pub busy_retried: u64,
    /// 504 answers (sent, not acknowledged), each retried with the order's key.
    pub unacknowledged_retried: u64,
    /// No answer (connection errors; Kafka did not take it), each retried.
    pub errors_retried: u64,
    /// Copies of settled orders the workers skipped during the run (retries that had
    /// reached Kafka before: duplicates prevented).
    pub copies_skipped: u64,
    /// Messages kept as dead letters during the run (expect 0).
    pub dead_letters: u64,
    /// Other HTTP statuses (not retried; expect 0).
    pub failed: u64,
    /// Accepted orders with a result row after the drain.
    pub settled: u64,
    /// Settled orders read after their epoch had closed, so settled in a later one
    /// (`cluster.watermark_delay_ms` too short for the path from ingest to the worker).
    pub late: u64,
    pub succeeded: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Accepted orders with no result after the drain (expect 0).
    pub unsettled: u64,
    /// Settled orders whose batch had no commit record in `settle_batches` (expect 0):
    /// their end-to-end latency is taken to `settled_at`, which is earlier.
    pub commit_time_unknown: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Throughput {
    /// Orders per second the timetable offered in the steady phase.
    pub offered_per_s: f64,
    /// 202s per second in the steady phase.
    pub accepted_per_s: f64,
    /// Results committed per second in the steady phase.
    pub settled_per_s: f64,
    /// All settled / (last settled − first accepted): end to end, whole run.
    pub end_to_end_per_s: f64,
}

/// One second of the run (t = seconds since the start).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Second {
    pub t: u32,
    pub offered: u64,
    pub accepted: u64,
    pub settled: u64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub options: BenchOptions,
    pub target: String,
    pub started_at_ms: i64,
    pub partitions: usize,
    pub counts: Counts,
    pub throughput: Throughput,
    /// Steady phase: ack latency (from the scheduled time in open loop).
    pub ack_ms: Percentiles,
    /// Steady phase: accepted_at → result committed (settled_at).
    pub e2e_ms: Percentiles,
    /// Steady phase: settlement transactions, from their start to COMMIT's answer. A
    /// slow one holds up every order behind it: a tail here is the database's.
    pub transactions_ms: Percentiles,
    /// The run's slowest settlement transactions, slowest first.
    pub slowest_transactions: Vec<SlowTransaction>,
    pub rate_changes: u64,
    /// How busy this machine's CPUs were in the steady phase (everything on it, the
    /// bench included), and how much time the hypervisor took (steal); Linux only.
    pub cpu: Option<CpuUse>,
    /// What the disk and the broker allowed in the same steady phase (None if the
    /// probes failed).
    pub floor: Option<super::floor::Floor>,
    pub timeline: Vec<Second>,
    pub lag: Vec<LagSample>,
    /// (quantile, ms) points of the steady-phase distributions, for plotting.
    pub ack_distribution: Vec<(f64, f64)>,
    pub e2e_distribution: Vec<(f64, f64)>,
    /// The ids that got a 202 (for `dtss check --accepted`).
    #[serde(skip)]
    pub accepted_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowTransaction {
    /// When it started, in seconds since the start of the run.
    pub t_s: f64,
    pub ms: f64,
    pub orders: u32,
}

/// How many of the slowest settlement transactions a report names.
const SLOWEST: usize = 5;

/// The durations of the transactions that committed in the steady phase (`steady_ms`,
/// since `started_at_ms`), and the run's slowest.
pub(super) fn transaction_figures(
    transactions: &[CommitRecord],
    started_at_ms: i64,
    steady_ms: &std::ops::Range<u32>,
) -> (Percentiles, Vec<SlowTransaction>) {
    let mut h = latency_us();
    let ms = |t: &CommitRecord| (t.committed_at - t.started_at).max(0);
    for t in transactions {
        let at = (t.committed_at - started_at_ms).max(0);
        if steady_ms.contains(&(at as u32)) {
            h.saturating_record((ms(t) as u64 * 1000).max(1));
        }
    }
    let mut slowest: Vec<&CommitRecord> = transactions.iter().collect();
    slowest.sort_by_key(|t| std::cmp::Reverse(ms(t)));
    let slowest = slowest
        .into_iter()
        .take(SLOWEST)
        .map(|t| SlowTransaction {
            t_s: (t.started_at - started_at_ms) as f64 / 1000.0,
            ms: ms(t) as f64,
            orders: t.orders,
        })
        .collect();
    (Percentiles::of_us(&h), slowest)
}

/// Everything a run measured, for `build`.
pub(super) struct Measured {
    pub target: String,
    pub partitions: usize,
    pub clock: Clock,
    /// Every order the senders placed, by due time.
    pub sent: Vec<Sent>,
    /// Counts of the answers other than 202 (the rest is filled in by `build`).
    pub counts: Counts,
    pub results: Vec<Settled>,
    pub commits: Vec<CommitRecord>,
    pub lag: Vec<LagSample>,
    pub cpu: Option<CpuUse>,
    pub floor: Option<super::floor::Floor>,
    pub rate_changes: u64,
}

/// The report of a run.
pub(super) fn build(opts: &BenchOptions, m: Measured) -> BenchReport {
    let clock = m.clock;
    let steady_ms = clock.steady_ms();
    let ids: Vec<Uuid> = m.sent.iter().filter_map(|s| s.id).collect();
    let mut counts = m.counts;
    counts.sent = m.sent.len() as u64;
    counts.accepted = ids.len() as u64;
    let seconds = ((clock.end_of_load_s() + opts.drain_timeout_s).ceil() as usize).max(1) + 1;
    let mut t = Timeline::new(seconds, steady_ms.clone());
    t.add_sent(&m.sent);
    t.add_settled(&m.results, clock.started_at_ms, &mut counts);
    counts.unsettled = counts.accepted - counts.settled;
    let throughput = throughput(&m.sent, &counts, &t, opts.steady_s);
    let (transactions_ms, slowest_transactions) =
        transaction_figures(&m.commits, clock.started_at_ms, &steady_ms);
    let (ack, e2e) = (t.ack.clone(), t.e2e.clone());
    BenchReport {
        options: opts.clone(),
        target: m.target,
        started_at_ms: clock.started_at_ms,
        partitions: m.partitions,
        counts,
        throughput,
        ack_ms: Percentiles::of_us(&ack),
        e2e_ms: Percentiles::of_us(&e2e),
        transactions_ms,
        slowest_transactions,
        rate_changes: m.rate_changes,
        cpu: m.cpu,
        floor: m.floor,
        timeline: t.seconds(clock.end_of_load_s()),
        lag: m.lag,
        ack_distribution: distribution(&ack),
        e2e_distribution: distribution(&e2e),
        accepted_ids: ids,
    }
}

/// Steady-phase throughput.
fn throughput(sent: &[Sent], counts: &Counts, t: &Timeline, steady_s: f64) -> Throughput {
    let in_steady = |ms: u32| t.steady_ms.contains(&ms);
    let accepted = sent
        .iter()
        .filter(|s| s.id.is_some() && in_steady(s.done_ms))
        .count();
    let offered = sent.iter().filter(|s| in_steady(s.due_ms)).count();
    let span = (t.last_committed - t.first_accepted).max(1) as f64;
    Throughput {
        offered_per_s: offered as f64 / steady_s,
        accepted_per_s: accepted as f64 / steady_s,
        settled_per_s: t.settled_in_steady as f64 / steady_s,
        end_to_end_per_s: if counts.settled > 0 {
            counts.settled as f64 * 1000.0 / span
        } else {
            0.0
        },
    }
}

/// The run second by second, and the steady phase's latencies.
struct Timeline {
    steady_ms: std::ops::Range<u32>,
    rows: Vec<Second>,
    ack_by_s: Vec<Histogram<u64>>,
    e2e_by_s: Vec<Histogram<u64>>,
    ack: Histogram<u64>,
    e2e: Histogram<u64>,
    first_accepted: i64,
    last_committed: i64,
    settled_in_steady: u64,
}

impl Timeline {
    fn new(seconds: usize, steady_ms: std::ops::Range<u32>) -> Timeline {
        Timeline {
            steady_ms,
            rows: (0..seconds)
                .map(|t| Second {
                    t: t as u32,
                    ..Default::default()
                })
                .collect(),
            ack_by_s: (0..seconds).map(|_| latency_us()).collect(),
            e2e_by_s: (0..seconds).map(|_| latency_us()).collect(),
            ack: latency_us(),
            e2e: latency_us(),
            first_accepted: i64::MAX,
            last_committed: i64::MIN,
            settled_in_steady: 0,
        }
    }

    /// The second `ms` (since the start) falls in; the drain's tail goes in the last.
    fn sec(&self, ms: i64) -> usize {
        ((ms.max(0) / 1000) as usize).min(self.rows.len() - 1)
    }

    fn add_sent(&mut self, sent: &[Sent]) {
        for s in sent {
            let due = self.sec(s.due_ms as i64);
            self.rows[due].offered += 1;
            self.ack_by_s[due].saturating_record(s.ack_us.max(1) as u64);
            if s.id.is_some() {
                let done = self.sec(s.done_ms as i64);
                self.rows[done].accepted += 1;
            }
            if self.steady_ms.contains(&s.due_ms) {
                self.ack.saturating_record(s.ack_us.max(1) as u64);
            }
        }
    }

    fn add_settled(&mut self, results: &[Settled], started_at_ms: i64, counts: &mut Counts) {
        for r in results {
            counts.settled += 1;
            counts.late += r.late as u64;
            match r.reason {
                None => counts.succeeded += 1,
                Some(reason) => {
                    *counts
                        .rejected
                        .entry(reason.as_str().to_string())
                        .or_default() += 1
                }
            }
            let (acc, set) = (
                r.accepted_at - started_at_ms,
                r.committed_at - started_at_ms,
            );
            self.first_accepted = self.first_accepted.min(r.accepted_at);
            self.last_committed = self.last_committed.max(r.committed_at);
            let us = ((r.committed_at - r.accepted_at).max(0) as u64 * 1000).max(1);
            let (s_set, s_acc) = (self.sec(set), self.sec(acc));
            self.rows[s_set].settled += 1;
            self.e2e_by_s[s_acc].saturating_record(us);
            if self.steady_ms.contains(&(acc.max(0) as u32)) {
                self.e2e.saturating_record(us);
            }
            if self.steady_ms.contains(&(set.max(0) as u32)) {
                self.settled_in_steady += 1;
            }
        }
    }

    /// The per-second rows with their percentiles, without the drain's empty tail.
    fn seconds(mut self, end_of_load_s: f64) -> Vec<Second> {
        for (t, s) in self.rows.iter_mut().enumerate() {
            let (a, e) = (&self.ack_by_s[t], &self.e2e_by_s[t]);
            if !a.is_empty() {
                s.ack_p50_ms = a.value_at_quantile(0.5) as f64 / 1000.0;
                s.ack_p99_ms = a.value_at_quantile(0.99) as f64 / 1000.0;
            }
            if !e.is_empty() {
                s.e2e_p50_ms = e.value_at_quantile(0.5) as f64 / 1000.0;
                s.e2e_p99_ms = e.value_at_quantile(0.99) as f64 / 1000.0;
            }
        }
        let keep = (end_of_load_s.ceil() as usize).max(1);
        while self.rows.len() > keep
            && self
                .rows
                .last()
                .is_some_and(|s| s.offered + s.accepted + s.settled == 0)
        {
            self.rows.pop();
        }
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_distribution_runs_from_the_median_to_the_maximum() {
        let mut h = latency_us();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let d = distribution(&h);
        assert_eq!(d.first().unwrap().0, 0.0);
        assert_eq!(d.last().unwrap(), &(1.0, h.max() as f64 / 1000.0));
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let p99 = d.iter().find(|(q, _)| (*q - 0.99).abs() < 1e-9).unwrap().1;
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.01, "p99 {p99}");
    }

    #[test]
    fn transaction_figures_cover_the_steady_phase_and_name_the_slowest_of_the_run() {
        let start = 1_000_000;
        // One transaction of 20 ms every 10 ms for 10 s, three slow ones in the steady
        // phase (2..8 s) and a slower one in the ramp.
        let record = |started_at, committed_at, orders| CommitRecord {
            partition: 0,
            next_offset: 0,
            started_at,
            committed_at,
            orders,
        };
        let mut txns: Vec<CommitRecord> = (0..1000)
            .map(|i| record(start + i * 10, start + i * 10 + 20, 100))
            .collect();
        for (at, ms) in [(3_000, 300), (5_000, 450), (7_000, 120), (1_000, 900)] {
            txns.push(record(start + at, start + at + ms, 7));
        }
        let (p, slowest) = transaction_figures(&txns, start, &(2_000..8_000));
        // Committed at 2.0..8.0 s: 600 of the regular ones and the three slow ones.
        assert_eq!(p.count, 603);
        assert!((p.p50 - 20.0).abs() < 0.1, "p50 {}", p.p50);
        assert!((p.max - 450.0).abs() < 1.0, "max {}", p.max);
        let named: Vec<(f64, f64, u32)> = slowest.iter().map(|t| (t.t_s, t.ms, t.orders)).collect();
        assert_eq!(
            named,
            [
                (1.0, 900.0, 7),
                (5.0, 450.0, 7),
                (3.0, 300.0, 7),
                (7.0, 120.0, 7),
                (0.0, 20.0, 100)
            ]
        );
        // No transactions: empty figures, none named.
        let (p, slowest) = transaction_figures(&[], start, &(0..1000));
        assert_eq!((p.count, slowest.len()), (0, 0));
    }
}
