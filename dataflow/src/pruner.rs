//! The process that runs worker 0 keeps the side tables bounded (`sinks::prune`): every
//! `EVERY` it prunes in steps of at most a thousand rows per table and partition, on a
//! connection of its own, until nothing more is due. Settlement never waits for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use model::Config;

/// How often the side tables are looked at.
const EVERY: Duration = Duration::from_secs(10);
/// At most this many steps in a row, then a pause: catching up never takes a connection
/// for long.
const STEPS: usize = 20;

/// Start the pruning thread; it ends once `stop` is set.
pub(crate) fn spawn_pruner(cfg: Config, stop: Arc<AtomicBool>) {
    let run = move || {
        let rt = match ore::current_thread_runtime() {
            Ok(rt) => rt,
            Err(e) => return tracing::warn!("no pruning: {e}"),
        };
        let pool = match sinks::connect(&cfg.mysql.urls, 1) {
            Ok(p) => p,
            Err(e) => return tracing::warn!("no pruning: {e:#}"),
        };
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..STEPS {
                let step = sinks::prune::prune_step(
                    &pool,
                    &cfg.kafka.topic,
                    &cfg.retention,
                    model::now_ms(),
                );
                match rt.block_on(step) {
                    Ok(p) if p == sinks::prune::Pruned::default() => break,
                    Ok(p) => tracing::debug!(
                        "pruned {} skipped copies, {} dead letters, {} transaction records",
                        p.skipped,
                        p.dead,
                        p.batches
                    ),
                    Err(e) => {
                        tracing::warn!("pruning the side tables: {e:#}");
                        break;
                    }
                }
            }
            let mut slept = Duration::ZERO;
            while slept < EVERY && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                slept += Duration::from_millis(200);
            }
        }
    };
    if let Err(e) = std::thread::Builder::new().name("pruner".into()).spawn(run) {
        tracing::warn!("no pruning: {e}");
    }
}
