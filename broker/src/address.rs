//! Where the embedded broker's clients find it: the broker writes its address into a
//! file (atomically, by rename) when it listens; producers and consumers read it, waiting
//! for it to appear when they start first.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Publish `addr` in `file`.
pub fn publish(file: &Path, addr: &str) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, addr).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file)
        .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))
}

/// The Kafka bootstrap servers: `brokers` when any are configured, else the embedded
/// broker's address from `file`, waiting up to `patience` for it to be published.
/// Blocking: call it from a thread that may wait.
pub fn bootstrap(brokers: &[String], file: &Path, patience: Duration) -> Result<String> {
    if !brokers.is_empty() {
        return Ok(brokers.join(","));
    }
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(s) = std::fs::read_to_string(file) {
            let s = s.trim();
            if !s.is_empty() {
                return Ok(s.to_string());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "kafka.brokers is empty and the embedded broker has not published {}: start it \
                 with `dtss broker` (or `dtss up`), or configure kafka.brokers",
                file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_brokers_win_and_a_published_address_is_found() {
        let dir = std::env::temp_dir().join(format!("dtss-addr-{}", std::process::id()));
        let file = dir.join("broker.addr");
        let brokers = ["a:9092".to_string(), "b:9092".to_string()];
        assert_eq!(
            bootstrap(&brokers, &file, Duration::ZERO).unwrap(),
            "a:9092,b:9092"
        );
        let e = bootstrap(&[], &file, Duration::from_millis(150))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dtss broker"), "{e}");
        publish(&file, "127.0.0.1:4000").unwrap();
        assert_eq!(
            bootstrap(&[], &file, Duration::ZERO).unwrap(),
            "127.0.0.1:4000"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
