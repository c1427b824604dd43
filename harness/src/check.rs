//! `dtss check`: the invariants of SPEC §7, verified against MySQL and ZooKeeper.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use model::{Config, Currency, Decimal, RateTable};
use mysql_async::prelude::*;

/// One invariant's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn verdict(name: &'static str, problems: Vec<String>, ok_detail: String) -> Verdict {
    let ok = problems.is_empty();
    let detail = if ok {
        ok_detail
    } else {
        let more = problems.len().saturating_sub(5);
        let mut d = problems.into_iter().take(5).collect::<Vec<_>>().join("; ");
        if more > 0 {
            d.push_str(&format!("; and {more} more"));
        }
        d
    };
    Verdict { name, ok, detail }
}

/// Print one line per verdict (`PASS name: detail`, after `prefix`); an error if any failed.
pub fn report(verdicts: &[Verdict], prefix: &str) -> Result<()> {
    let mut failed = 0;
    for v in verdicts {
        println!(
            "{prefix}{} {}: {}",
            if v.ok { "PASS" } else { "FAIL" },
            v.name,
            v.detail
        );
        failed += !v.ok as usize;
    }
    anyhow::ensure!(failed == 0, "{failed} invariant(s) failed");
    Ok(())
}

/// Check every invariant. `accepted`: the ids that got a 202 (from the load's log), if
/// known. Published totals are given up to `patience` to catch up with the results.
pub async fn check(
    cfg: &Config,
    accepted: Option<&[String]>,
    patience: Duration,
) -> Result<Vec<Verdict>> {
    let pool = sinks::connect(&cfg.mysql.url, 1)?;
    let mut conn = pool.get_conn().await?;
    let mut out = vec![];

    // 1. exactly one result per accepted order, none for others
    let ids: Vec<String> = conn.query("SELECT order_id FROM result").await?;
    let mut problems = vec![];
    if let Some(acc) = accepted {
        let have: HashSet<&str> = ids.iter().map(|s| s.as_str()).collect();
        let want: HashSet<&str> = acc.iter().map(|s| s.as_str()).collect();
        if want.len() != acc.len() {
            problems.push(format!(
                "{} ids were accepted twice",
                acc.len() - want.len()
            ));
        }
        let missing: Vec<&&str> = want.iter().filter(|id| !have.contains(**id)).collect();
        let extra: Vec<&&str> = have.iter().filter(|id| !want.contains(**id)).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} accepted orders have no result (e.g. {})",
                missing.len(),
                missing[0]
            ));
        }
        if !extra.is_empty() {
            problems.push(format!(
                "{} results for orders never accepted (e.g. {})",
                extra.len(),
                extra[0]
            ));
        }
    }
    let detail = match accepted {
        Some(a) => format!("{} accepted, {} results", a.len(), ids.len()),
        None => format!(
            "{} results (no list of accepted ids given: only uniqueness checked)",
            ids.len()
        ),
    };
    out.push(verdict("one result per accepted order", problems, detail));

    // 2. stock conservation and non-negativity
    let results: Vec<(String, String, bool, Decimal, u64, u64, String)> = conn
        .query("SELECT order_id, initiator, success, paid, rate_version, epoch, items FROM result")
        .await?;
    let mut taken: HashMap<u32, u64> = HashMap::new();
    let mut problems = vec![];
    for (id, _, ok, _, _, _, items) in results.iter().filter(|r| r.2) {
        let _ = ok;
        for part in items.split(',') {
            match part
                .split_once(':')
                .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u64>().ok()?)))
            {
                Some((i, n)) => *taken.entry(i).or_default() += n,
                None => problems.push(format!("order {id}: unreadable items {items:?}")),
            }
        }
    }
    let stock: Vec<(u32, i64, i64, Decimal, String)> = conn
        .query("SELECT id, initial_inventory, inventory, price, currency FROM commodity")
        .await?;
    for (id, initial, now, _, _) in &stock {
        let t = taken.get(id).copied().unwrap_or(0) as i64;
        if initial - now != t {
            problems.push(format!(
                "commodity {id}: {initial} − {now} ≠ {t} taken by successful orders"
            ));
        }
        if *now < 0 {
            problems.push(format!("commodity {id}: negative inventory {now}"));
        }
    }
    out.push(verdict(
        "stock: initial − current = Σ successful numbers, ≥ 0",
        problems,
        format!("{} commodities", stock.len()),
    ));

    // 3. totals: MySQL, ZooKeeper and Σ paid agree
    let mut sums: BTreeMap<String, (Decimal, u64)> = BTreeMap::new();
    for r in results.iter().filter(|r| r.2) {
        let e = sums.entry(r.1.clone()).or_default();
        e.0 += r.3;
        e.1 += 1;
    }
    let deadline = Instant::now() + patience;
    let zk = rates::connect(cfg, Duration::from_secs(10)).await?;
    let problems = loop {
        let mysql: Vec<(String, Decimal)> = conn
            .query("SELECT currency, SUM(total) FROM totals GROUP BY currency")
            .await?;
        let published = sinks::read_published(cfg, &zk).await?;
        let mut problems = vec![];
        for c in cfg.currencies.all.clone() {
            let (sum, n) = sums.get(c.as_str()).copied().unwrap_or_default();
            let my = mysql
                .iter()
                .find(|(k, _)| k == c.as_str())
                .map(|(_, t)| *t)
                .unwrap_or_default();
            if my != sum {
                problems.push(format!("{c}: MySQL totals {my} ≠ Σ paid {sum}"));
            }
            if let Some((_, t, orders, _)) = published.iter().find(|(k, ..)| *k == c) {
                if *t != sum || *orders != n {
                    problems.push(format!(
                        "{c}: ZooKeeper total {t} over {orders} orders ≠ Σ paid {sum} over {n}"
                    ));
                }
            }
        }
        if problems.is_empty() || Instant::now() >= deadline {
            break problems;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let detail = sums
        .iter()
        .map(|(c, (t, n))| format!("{c} {t} ({n})"))
        .collect::<Vec<_>>()
        .join(", ");
    out.push(verdict(
        "totals: ZooKeeper = MySQL = Σ paid",
        problems,
        detail,
    ));

    // 4. paid recomputed from the recorded rate version; the version was in force at the epoch
    let history: Vec<(u64, String, Decimal, u64)> = conn
        .query("SELECT version, currency, rate, from_epoch FROM rate_history ORDER BY version")
        .await?;
    let mut tables: BTreeMap<u64, (u64, RateTable)> = BTreeMap::new();
    for (v, c, r, from) in &history {
        let e = tables.entry(*v).or_insert_with(|| {
            (
                *from,
                RateTable {
                    version: *v,
                    rates: vec![],
                },
            )
        });
        if let Ok(c) = c.parse::<Currency>() {
            e.1.rates.push((c, *r));
        }
    }
    let catalogue: HashMap<u32, (Decimal, String)> = stock
        .iter()
        .map(|(id, _, _, p, c)| (*id, (*p, c.clone())))
        .collect();
    let mut problems = vec![];
    for (id, initiator, success, paid, version, epoch, items) in &results {
        let in_force = tables
            .iter()
            .filter(|(_, (from, _))| from <= epoch)
            .map(|(v, _)| *v)
            .max()
            .or_else(|| tables.keys().next().copied());
        if in_force != Some(*version) {
            problems.push(format!(
                "order {id} of epoch {epoch} used rate version {version}, in force: {in_force:?}"
            ));
        }
        if !success {
            continue;
        }
        let Some((_, table)) = tables.get(version) else {
            problems.push(format!(
                "order {id}: rate version {version} is not in rate_history"
            ));
            continue;
        };
        let lines: Option<Vec<(Decimal, u32, Currency)>> = items
            .split(',')
            .map(|p| {
                let (i, n) = p.split_once(':')?;
                let (price, cur) = catalogue.get(&i.parse().ok()?)?;
                Some((*price, n.parse().ok()?, cur.parse().ok()?))
            })
            .collect();
        let want = lines
            .ok_or_else(|| anyhow::anyhow!("unreadable"))
            .and_then(|l| {
                Ok(model::paid(
                    l,
                    initiator.parse().map_err(anyhow::Error::msg)?,
                    table,
                )?)
            });
        match want {
            Ok(w) if w == *paid => {}
            Ok(w) => problems.push(format!(
                "order {id}: paid {paid}, formula gives {w} at version {version}"
            )),
            Err(e) => problems.push(format!("order {id}: cannot recompute: {e}")),
        }
    }
    out.push(verdict(
        "paid = formula at the recorded rate version (in force at the epoch)",
        problems,
        format!("{} results, {} rate versions", results.len(), tables.len()),
    ));
    drop(conn);
    pool.disconnect().await.ok();
    Ok(out)
}
