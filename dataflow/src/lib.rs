//! The timely job (docs/DESIGN.md, "The flow" and "Time and rates"): per worker, a Kafka
//! source for partition = worker index, a rate source (worker 0, fed by ZooKeeper
//! watches, broadcast), a settle operator that hands closed epochs to its settlement
//! thread (MySQL transactions through `sinks::TransactionPipeline`), and totals by epoch.
//!
//! Follow one order: `kafka.rs` (the reader thread) → `sources.rs` (its epoch) →
//! `handover.rs` (the settle operator: joined with its epoch's rates once the epoch
//! closes, handed over) → `settlement_thread.rs` (in a batch, a transaction) →
//! `totals.rs` (its paid amount, summed per currency and epoch).
//! `views.rs` keeps live views of the outcomes with differential dataflow.
//! `worker.rs` wires them together, with its MySQL handles (`db.rs`), its counts
//! (`stats.rs`) and how it fails (`fail.rs`); `topic.rs` checks the topic has one
//! partition per worker; `status.rs` publishes what the process is doing, every second,
//! for the console.
//!
//! Time is the epoch `accepted_at / epoch_ms`. An order's epoch never goes below the
//! source's frontier nor below the previous order's in its partition (a late order is
//! moved to the current epoch), so closed epochs are always a prefix of the partition
//! and the offset committed with them is exact.

mod db;
mod fail;
mod handover;
mod kafka;
mod metrics;
mod pruner;
mod settlement_thread;
mod sources;
mod stats;
mod status;
mod topic;
mod totals;
mod views;
mod window;
mod worker;

pub use metrics::render as render_metrics;
pub use topic::{check_topic, ensure_topic};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use model::Config;

/// Run process `process` of the cluster until `stop` is set (then finish and commit
/// what was read, and return) or a part fails.
pub fn run(cfg: Config, process: usize, stop: Arc<AtomicBool>) -> Result<()> {
    let processes = cfg.cluster.processes.len();
    anyhow::ensure!(
        process < processes,
        "--process {process} is out of range: cluster.processes lists {processes} process(es), numbered 0 to {}",
        processes - 1
    );
    let bootstrap = broker::bootstrap(
        &cfg.kafka.brokers,
        &cfg.broker_addr_file(),
        Duration::from_secs(30),
    )?;
    {
        let rt = ore::current_thread_runtime()?;
        rt.block_on(sinks::ensure_schema(&cfg.mysql.urls))?;
    }
    let threads = cfg.cluster.workers_per_process;
    let comm = if processes == 1 {
        timely::CommunicationConfig::Process(threads)
    } else {
        timely::CommunicationConfig::Cluster {
            threads,
            process,
            addresses: cfg.cluster.processes.clone(),
            report: false,
            zerocopy: false,
        }
    };
    if processes > 1 {
        stop_when_a_peer_is_lost();
    }
    let config = timely::Config {
        communication: comm,
        worker: timely::WorkerConfig::default(),
    };
    status::spawn_publisher(cfg.clone(), process, stop.clone());
    if process == 0 {
        pruner::spawn_pruner(cfg.clone(), stop.clone());
    }
    let failed = Arc::new(AtomicBool::new(false));
    let (cfg2, failed2, stop2) = (cfg.clone(), failed.clone(), stop.clone());
    let guards = timely::execute(config, move |worker| {
        let ctx = worker::WorkerContext {
            cfg: cfg2.clone(),
            bootstrap: bootstrap.clone(),
            stop: stop2.clone(),
        };
        let index = worker.index();
        if let Err(e) = worker::run_worker(worker, ctx) {
            tracing::error!(worker = index, "worker failed: {e:#}");
            failed2.store(true, Ordering::SeqCst);
            stop2.store(true, Ordering::SeqCst);
        }
    })
    .map_err(|e| anyhow::anyhow!("starting timely: {e}"))?;
    let results = guards.join();
    for r in results {
        r.map_err(|e| anyhow::anyhow!("a worker thread panicked: {e}"))?;
    }
    if failed.load(Ordering::SeqCst) {
        anyhow::bail!("a worker failed (see the log above)");
    }
    Ok(())
}

/// Timely cannot lose a process and go on: its network threads panic when a peer's
/// connection breaks, and the survivors would wait forever. Make that panic stop the
/// whole process at once with `model::exit::PEER_LOST` and a message that says what to do.
/// Nothing is lost by stopping here: a batch is one MySQL transaction with its offset,
/// so an interrupted one is rolled back and read again from Kafka.
fn stop_when_a_peer_is_lost() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("timely communication error") {
            tracing::error!(
                "lost the connection to another process of the cluster ({msg}); stopping this \
                 process (exit {}). Restart every process of the cluster: each \
                 worker resumes from the offsets committed in MySQL",
                model::exit::PEER_LOST
            );
            use std::io::Write as _;
            let _ = std::io::stderr().flush();
            // SAFETY: _exit ends the process without running destructors, which other
            // threads (librdkafka's among them) may still be using.
            unsafe { libc::_exit(model::exit::PEER_LOST) };
        }
        default(info)
    }));
}
