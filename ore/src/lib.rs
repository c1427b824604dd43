//! Helpers every DTSS crate uses, so that each is written once: a named thread that runs
//! a future on a single-threaded runtime of its own (a synchronous part, such as a timely
//! worker or the settlement thread, reaching MySQL, ZooKeeper or HTTP).

use std::future::Future;
use std::thread::JoinHandle;

/// A single-threaded runtime with I/O and time: what every such thread runs on.
pub fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Run the future `make` builds on a new thread `name`, on a runtime of its own, until it
/// ends; its output is the thread's. Panics if the thread or the runtime cannot be made
/// (the process cannot work without either).
pub fn spawn_on_runtime<F, Fut>(name: &str, make: F) -> JoinHandle<Fut::Output>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future,
    Fut::Output: Send + 'static,
{
    let what = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = current_thread_runtime()
                .unwrap_or_else(|e| panic!("a runtime for thread {what}: {e}"));
            rt.block_on(make())
        })
        .unwrap_or_else(|e| panic!("starting thread {name}: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_future_runs_on_its_own_named_thread() {
        let h = super::spawn_on_runtime("probe", || async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            std::thread::current().name().map(str::to_string)
        });
        assert_eq!(h.join().unwrap().as_deref(), Some("probe"));
    }
}
