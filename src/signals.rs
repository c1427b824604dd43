//! SIGINT/SIGTERM/SIGHUP → a stop flag (for the synchronous worker) or a future (for async parts).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Resolves on the first SIGINT, SIGTERM or SIGHUP (the terminal closed).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = hangup.recv() => tracing::info!("SIGHUP received, shutting down"),
    }
}

/// A flag set on the first SIGINT, SIGTERM or SIGHUP (watched from a thread of its own).
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ore::spawn_on_runtime("signals", move || async move {
        shutdown_signal().await;
        f.store(true, Ordering::SeqCst);
    });
    flag
}
