//! Statements that are safe to run twice, tried again when they fail: a deadlock, a
//! cluster's certification conflict or a lost connection is not the statement's fault.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;

/// How often `idempotent` tries before it gives up.
const ATTEMPTS: u32 = 8;

/// Run `attempt` until it succeeds, at most `ATTEMPTS` times, waiting 50 ms, doubling up
/// to 2 s, between tries; the last error is returned. `what` names it in the log.
pub(crate) async fn idempotent<T, Fut>(what: &str, mut attempt: impl FnMut() -> Fut) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    let mut wait = Duration::from_millis(50);
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if tries < ATTEMPTS => {
                tracing::warn!(
                    attempt = tries,
                    "{what} failed, retrying in {wait:?}: {e:#}"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
                tries += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_statement_is_tried_again_and_then_given_up() {
        let mut calls = 0;
        let ok = idempotent("t", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    anyhow::bail!("deadlock")
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(ok.unwrap(), 3);
        let mut calls = 0;
        let err = idempotent::<(), _>("t", || {
            calls += 1;
            async { anyhow::bail!("down") }
        })
        .await;
        assert!(err.is_err());
        assert_eq!(calls, ATTEMPTS);
    }
}
