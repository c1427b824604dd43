//! How a worker fails: the process exits and its supervisor starts it again from the
//! offsets committed in MySQL.

/// A failure inside an operator: nothing of the current batch was committed, so the
/// process exits (`model::exit::WORKER_FAILED`) and its supervisor restarts it from the
/// offsets in MySQL.
pub(crate) fn die(what: &str, e: anyhow::Error) -> ! {
    tracing::error!("{what}: {e:#}; exiting so the cluster restarts from committed offsets");
    std::process::exit(model::exit::WORKER_FAILED)
}
