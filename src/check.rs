//! `dtss check`: the invariants, verified against MySQL and ZooKeeper.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use model::Config;

/// Check, print one line per invariant; an error if any failed. `accepted`: a file of the
/// order ids that got a 202, one per line; `in_order`: also the decisions against their
/// places.
pub async fn run(
    cfg: &Config,
    accepted: Option<&Path>,
    wait: Duration,
    in_order: bool,
) -> Result<()> {
    let ids = match accepted {
        Some(p) => Some(read_ids(p)?),
        None => None,
    };
    let mut verdicts = harness::check(cfg, ids.as_deref(), wait).await?;
    if in_order {
        let pool = sinks::connect(&cfg.mysql.urls, 1)?;
        let results = sinks::audit::audit_results(&pool).await?;
        let stock = sinks::audit::stock(&pool).await?;
        pool.disconnect().await.ok();
        verdicts.push(harness::decisions_in_place_order(&results, &stock));
    }
    harness::report(&verdicts, "")
}

fn read_ids(p: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("reading --accepted {}", p.display()))?;
    Ok(text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}
