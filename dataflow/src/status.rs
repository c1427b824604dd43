//! What this process says about itself for the console (docs/DESIGN.md, "Console"):
//! every second, one JSON document at ZooKeeper `Config::workers_path()/{process}`, an ephemeral
//! node, so a process that dies drops out of the list when its session ends.
//!
//! Per partition: the partition's end (Kafka's high watermark), the offset committed in
//! MySQL, the orders settled since the process started (and how many succeeded), and the
//! p50/p99 of accepted → committed and of the transactions committed in the last second;
//! the same two windows over all the process's partitions.
//! The reader (`kafka.rs`) reports the end; the settlement thread (`settlement_thread.rs`) reports
//! each commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use model::Config;
use serde_json::{json, Value};
use sinks::Outcome;
use zookeeper_client as zk;

/// Samples kept per partition and second, at most (the rest overwrite them in turn).
const SAMPLES: usize = 10_000;

#[derive(Default)]
struct Partition {
    end: Option<i64>,
    committed: Option<i64>,
    settled: u64,
    succeeded: u64,
    /// Accepted → committed, ms, of orders committed this second.
    latency: Window,
    /// Given to MySQL → committed, ms, of transactions committed this second.
    commit: Window,
}

#[derive(Default)]
struct Window {
    samples: Vec<u64>,
    seen: usize,
}

impl Window {
    fn push(&mut self, v: u64) {
        if self.samples.len() < SAMPLES {
            self.samples.push(v);
        } else {
            self.samples[self.seen % SAMPLES] = v;
        }
        self.seen += 1;
    }

    /// `{"p50", "p99", "n"}` of this second's samples, and start the next second.
    fn take(&mut self) -> Value {
        let mut s = std::mem::take(&mut self.samples);
        let n = std::mem::take(&mut self.seen);
        s.sort_unstable();
        let q = |p: f64| s.get(((s.len() as f64 * p) as usize).min(s.len().saturating_sub(1)));
        json!({"p50": q(0.50), "p99": q(0.99), "n": n})
    }
}

/// The whole process: its partitions, and the windows of all of them together.
#[derive(Default)]
struct Process {
    partitions: BTreeMap<i32, Partition>,
    latency: Window,
    commit: Window,
}

static PROCESS: LazyLock<Mutex<Process>> = LazyLock::new(Default::default);

fn lock() -> std::sync::MutexGuard<'static, Process> {
    PROCESS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The partition's end, as the reader last saw it.
pub(crate) fn observe_end(partition: i32, end: i64) {
    lock().partitions.entry(partition).or_default().end = Some(end);
}

/// A transaction committed `outcomes` and moved the partition's offset to `next_offset`,
/// `commit_ms` after it was given to MySQL.
pub(crate) fn observe_commit(
    partition: i32,
    next_offset: Option<i64>,
    commit_ms: Option<u64>,
    outcomes: &[Outcome],
) {
    let now = model::now_ms();
    let mut all = lock();
    let Process {
        partitions,
        latency,
        commit,
    } = &mut *all;
    let p = partitions.entry(partition).or_default();
    if next_offset.is_some() {
        p.committed = next_offset;
    }
    if let Some(ms) = commit_ms {
        p.commit.push(ms);
        commit.push(ms);
    }
    for o in outcomes {
        let ms = u64::try_from(now - o.accepted_at).unwrap_or(0);
        p.settled += 1;
        p.succeeded += u64::from(o.reason.is_none());
        p.latency.push(ms);
        latency.push(ms);
    }
}

/// This second's document, and start the next second.
fn document(process: usize, state: &str, started_at: i64) -> Value {
    let mut all = lock();
    let partitions: Vec<Value> = all
        .partitions
        .iter_mut()
        .map(|(id, p)| {
            let lag = p.end.zip(p.committed).map(|(e, c)| (e - c).max(0));
            json!({
                "partition": id, "end": p.end, "committed": p.committed, "lag": lag,
                "settled": p.settled, "succeeded": p.succeeded,
                "latency_ms": p.latency.take(), "commit_ms": p.commit.take(),
            })
        })
        .collect();
    json!({
        "process": process, "state": state, "pid": std::process::id(),
        "host": hostname(), "started_at": started_at, "published_at": model::now_ms(),
        "latency_ms": all.latency.take(), "commit_ms": all.commit.take(),
        "partitions": partitions,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Start the thread that publishes the process's document every second until `stop`
/// is set (then once more, as "stopping").
pub(crate) fn spawn_publisher(cfg: Config, process: usize, stop: Arc<AtomicBool>) {
    let started_at = model::now_ms();
    let path = format!("{}/{process}", cfg.workers_path());
    spawn_writer(cfg, "status-publisher", path, move || {
        let stopping = stop.load(Ordering::SeqCst);
        let state = if stopping { "stopping" } else { "running" };
        let doc = document(process, state, started_at)
            .to_string()
            .into_bytes();
        if stopping {
            Next::Last(doc)
        } else {
            Next::Write(doc)
        }
    });
}

/// What a ZooKeeper writer does next (`spawn_writer`).
pub(crate) enum Next {
    Write(Vec<u8>),
    /// Write this, then end.
    Last(Vec<u8>),
    /// Nothing new this time.
    Skip,
    End,
}

/// Start thread `name`: once a second it asks `next` what to write at `path` (an
/// ephemeral node) and writes it, connecting to ZooKeeper again whenever a write failed.
/// A document that could not be written is dropped: the next one replaces it.
pub(crate) fn spawn_writer(
    cfg: Config,
    name: &str,
    path: String,
    mut next: impl FnMut() -> Next + Send + 'static,
) {
    ore::spawn_on_runtime(name, move || async move {
        let mut client: Option<zk::Client> = None;
        loop {
            let (doc, last) = match next() {
                Next::Write(doc) => (Some(doc), false),
                Next::Last(doc) => (Some(doc), true),
                Next::Skip => (None, false),
                Next::End => return,
            };
            if let Some(doc) = doc {
                if client.is_none() {
                    client = rates::connect(&cfg, Duration::from_secs(1)).await.ok();
                }
                if let Some(c) = &client {
                    if let Err(e) = write(c, &path, &doc).await {
                        tracing::debug!("publishing {path}: {e:#}");
                        client = None;
                    }
                }
            }
            if last {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Write `data` at `path`, an ephemeral node (its folder made if missing).
async fn write(client: &zk::Client, path: &str, data: &[u8]) -> anyhow::Result<()> {
    match client.set_data(path, data, None).await {
        Ok(_) => return Ok(()),
        Err(zk::Error::NoNode) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = path.rsplit_once('/').map_or(path, |(d, _)| d);
    client
        .mkdir(
            dir,
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .or_else(|e| matches!(e, zk::Error::NodeExists).then_some(()).ok_or(e))?;
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    match client.create(path, data, &ephemeral).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_gives_its_seconds_quantiles_and_starts_afresh() {
        let mut w = Window::default();
        for v in (1..=100).rev() {
            w.push(v);
        }
        assert_eq!(w.take(), json!({"p50": 51, "p99": 100, "n": 100}));
        assert_eq!(w.take(), json!({"p50": null, "p99": null, "n": 0}));
        for v in 0..(SAMPLES as u64 + 5) {
            w.push(v);
        }
        assert_eq!(
            w.take()["n"],
            SAMPLES + 5,
            "n counts every sample, kept or not"
        );
    }
}
