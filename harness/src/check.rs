//! `dtss check`: the invariants (docs/DESIGN.md, "Invariants"), verified against MySQL
//! and ZooKeeper. The reads come from `sinks::audit`; each invariant is one function of
//! what was read, so each can be tested without a database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use model::{Config, Currency, Decimal, RateTable};
use sinks::audit::{Accounted, AuditResult, RateRow, StockRow};
use sinks::TotalRow;

/// One invariant's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

pub(crate) fn verdict(name: &'static str, problems: Vec<String>, ok_detail: String) -> Verdict {
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
        let word = if v.ok { "PASS" } else { "FAIL" };
        println!("{prefix}{word} {}: {}", v.name, v.detail);
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
    let pool = sinks::connect(&cfg.mysql.urls, 1)?;
    let ids = sinks::audit::result_ids(&pool).await?;
    let results = sinks::audit::audit_results(&pool).await?;
    let stock = sinks::audit::stock(&pool).await?;
    let history = sinks::audit::rate_history(&pool).await?;
    let (offsets, stored) = sinks::audit::accounted_offsets(&pool, &cfg.kafka.topic).await?;
    let pruned = sinks::prune::pruned(&pool, &cfg.kafka.topic).await?;
    let dead = sinks::audit::dead_letters(&pool, &cfg.kafka.topic, None).await?;
    let totals = totals_agree(cfg, &pool, &results, patience).await?;
    pool.disconnect().await.ok();
    // Results made for dead letters: their orders were never accepted through ingest.
    let dead_ids: HashSet<&str> = dead.iter().filter_map(|d| d.order_id.as_deref()).collect();
    Ok(vec![
        one_result_per_accepted(&ids, accepted, &dead_ids),
        stock_conserved(&results, &stock),
        totals,
        paid_matches_formula(&results, &stock, &history, cfg.cluster.epoch_ms),
        every_offset_accounted(offsets, &stored, &pruned),
    ])
}

/// Every offset of every partition below its stored offset is exactly one of a result,
/// a skipped copy or a dead letter (whose order, when its id reads, also has a result
/// there), and nothing lies at or above it. Below a partition's pruning cut (`pruned`:
/// partition, cut, gaps) skipped copies and dead letters may be gone: the offsets
/// missing there must be exactly as many as the pruned rows alone accounted for.
fn every_offset_accounted(
    mut offsets: Vec<(i32, i64, Accounted)>,
    stored: &[(i32, i64)],
    pruned: &[(i32, i64, i64)],
) -> Verdict {
    offsets.sort_unstable();
    let mut problems = vec![];
    let mut counts: BTreeMap<Accounted, u64> = BTreeMap::new();
    for &(partition, next) in stored {
        let mine: Vec<(i64, Accounted)> = offsets
            .iter()
            .filter(|(p, ..)| *p == partition)
            .map(|(_, o, a)| (*o, *a))
            .collect();
        let (cut, gaps) = pruned
            .iter()
            .find(|(p, ..)| *p == partition)
            .map_or((0, 0), |&(_, cut, gaps)| (cut, gaps));
        let mut missing_below_cut = 0;
        let mut missing = |from: i64, to: i64, problems: &mut Vec<String>| {
            missing_below_cut += to.min(cut) - from.min(cut);
            if to > cut {
                problems.push(format!(
                    "partition {partition}: offsets {}..{to} are neither a result, a skipped \
                     copy nor a dead letter",
                    from.max(cut)
                ));
            }
        };
        let mut want = 0;
        for (i, &(offset, what)) in mine.iter().enumerate() {
            *counts.entry(what).or_default() += 1;
            if i > 0 && mine[i - 1].0 == offset {
                // A dead letter whose order id reads has its result at the same offset.
                if (mine[i - 1].1, what) == (Accounted::Result, Accounted::Dead) {
                    continue;
                }
                problems.push(format!(
                    "partition {partition} offset {offset}: both {:?} and {what:?}",
                    mine[i - 1].1
                ));
                continue;
            }
            if offset >= next {
                problems.push(format!(
                    "partition {partition} offset {offset}: a {what:?} at or above the stored \
                     offset {next}"
                ));
            } else if offset != want {
                missing(want, offset, &mut problems);
            }
            want = offset + 1;
        }
        if want < next {
            missing(want, next, &mut problems);
        }
        if missing_below_cut != gaps {
            problems.push(format!(
                "partition {partition}: {missing_below_cut} offsets below the pruning cut {cut} \
                 have no row, but pruned rows accounted for {gaps}"
            ));
        }
    }
    let on_partitions: HashSet<i32> = stored.iter().map(|(p, _)| *p).collect();
    if let Some((p, o, what)) = offsets.iter().find(|(p, ..)| !on_partitions.contains(p)) {
        problems.push(format!(
            "a {what:?} at partition {p} offset {o}, which has no stored offset"
        ));
    }
    let n = |a| counts.get(&a).copied().unwrap_or(0);
    let detail = format!(
        "{} partitions: {} results, {} skipped copies, {} dead letters",
        stored.len(),
        n(Accounted::Result),
        n(Accounted::Skipped),
        n(Accounted::Dead)
    );
    verdict(
        "every offset below the stored one is a result, a skipped copy or a dead letter",
        problems,
        detail,
    )
}

/// Every order that got a 202 has exactly one result; no result exists for another but
/// for the orders of dead letters (`dead`, written to the topic by something else).
fn one_result_per_accepted(
    ids: &[String],
    accepted: Option<&[String]>,
    dead: &HashSet<&str>,
) -> Verdict {
    let name = "one result per accepted order";
    let Some(acc) = accepted else {
        let detail = format!(
            "{} results (no list of accepted ids given: only uniqueness checked)",
            ids.len()
        );
        return verdict(name, vec![], detail);
    };
    let mut problems = vec![];
    let have: HashSet<&str> = ids.iter().map(|s| s.as_str()).collect();
    let want: HashSet<&str> = acc.iter().map(|s| s.as_str()).collect();
    if want.len() != acc.len() {
        problems.push(format!(
            "{} ids were accepted twice",
            acc.len() - want.len()
        ));
    }
    let missing: Vec<&&str> = want.iter().filter(|id| !have.contains(**id)).collect();
    let extra: Vec<&&str> = have
        .iter()
        .filter(|id| !want.contains(**id) && !dead.contains(**id))
        .collect();
    if let Some(first) = missing.first() {
        problems.push(format!(
            "{} accepted orders have no result (e.g. {first})",
            missing.len()
        ));
    }
    if let Some(first) = extra.first() {
        problems.push(format!(
            "{} results for orders never accepted (e.g. {first})",
            extra.len()
        ));
    }
    verdict(
        name,
        problems,
        format!("{} accepted, {} results", acc.len(), ids.len()),
    )
}

/// For every commodity, initial − current inventory = Σ number over the successful
/// results containing it, and the inventory is not negative.
fn stock_conserved(results: &[AuditResult], stock: &[StockRow]) -> Verdict {
    let mut taken: HashMap<u32, i64> = HashMap::new();
    let mut problems = vec![];
    for r in results.iter().filter(|r| r.success) {
        match sinks::parse_items_text(&r.items) {
            Some(lines) => lines
                .iter()
                .for_each(|(i, n)| *taken.entry(*i).or_default() += *n as i64),
            None => problems.push(format!(
                "order {}: unreadable items {:?}",
                r.order_id, r.items
            )),
        }
    }
    for s in stock {
        let t = taken.get(&s.id).copied().unwrap_or(0);
        if s.initial - s.inventory != t {
            problems.push(format!(
                "commodity {}: {} − {} ≠ {t} taken by successful orders",
                s.id, s.initial, s.inventory
            ));
        }
        if s.inventory < 0 {
            problems.push(format!(
                "commodity {}: negative inventory {}",
                s.id, s.inventory
            ));
        }
    }
    let name = "stock: initial − current = Σ successful numbers, ≥ 0";
    verdict(name, problems, format!("{} commodities", stock.len()))
}

/// Per currency, Σ paid and the number of successful results.
fn paid_sums(results: &[AuditResult]) -> BTreeMap<String, (Decimal, u64)> {
    let mut sums: BTreeMap<String, (Decimal, u64)> = BTreeMap::new();
    for r in results.iter().filter(|r| r.success) {
        let e = sums.entry(r.initiator.clone()).or_default();
        e.0 += r.paid;
        e.1 += 1;
    }
    sums
}

/// The totals in MySQL and those published to ZooKeeper equal Σ paid, per currency,
/// within `patience` (the publisher writes at most every 100 ms).
async fn totals_agree(
    cfg: &Config,
    pool: &sinks::Pool,
    results: &[AuditResult],
    patience: Duration,
) -> Result<Verdict> {
    let sums = paid_sums(results);
    let deadline = Instant::now() + patience;
    let zk = rates::connect(cfg, Duration::from_secs(10)).await?;
    let problems = loop {
        let mysql = sinks::totals(pool).await?;
        let published = sinks::read_published(cfg, &zk).await?;
        let published: Vec<(Currency, Decimal, u64)> = published
            .into_iter()
            .map(|(c, t, n, _)| (c, t, n))
            .collect();
        let problems = totals_problems(&cfg.currencies.all, &sums, &mysql, &published);
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
    Ok(verdict(
        "totals: ZooKeeper = MySQL = Σ paid",
        problems,
        detail,
    ))
}

/// Where MySQL's totals or the published ones (currency, total, orders) differ from `sums`.
fn totals_problems(
    currencies: &[Currency],
    sums: &BTreeMap<String, (Decimal, u64)>,
    mysql: &[TotalRow],
    published: &[(Currency, Decimal, u64)],
) -> Vec<String> {
    let mut problems = vec![];
    for c in currencies {
        let (sum, n) = sums.get(c.as_str()).copied().unwrap_or_default();
        let my = mysql
            .iter()
            .find(|t| t.currency == c.as_str())
            .map(|t| t.total)
            .unwrap_or_default();
        if my != sum {
            problems.push(format!("{c}: MySQL totals {my} ≠ Σ paid {sum}"));
        }
        if let Some((_, t, orders)) = published.iter().find(|(k, ..)| k == c) {
            if *t != sum || *orders != n {
                problems.push(format!(
                    "{c}: ZooKeeper total {t} over {orders} orders ≠ Σ paid {sum} over {n}"
                ));
            }
        }
    }
    problems
}

/// Every result used the rate version in force at its own epoch (`accepted_at /
/// epoch_ms`, whichever epoch it settled in), and every successful `paid` equals the
/// formula recomputed at that version.
fn paid_matches_formula(
    results: &[AuditResult],
    stock: &[StockRow],
    history: &[RateRow],
    epoch_ms: u64,
) -> Verdict {
    let tables = rate_tables(history);
    let catalogue: HashMap<u32, (Decimal, &str)> = stock
        .iter()
        .map(|s| (s.id, (s.price, s.currency.as_str())))
        .collect();
    let mut problems = vec![];
    // An order refused as invalid was settled by no rate (a dead letter's has none).
    let invalid = Some(model::Reason::InvalidOrder.as_str());
    for r in results.iter().filter(|r| r.reason.as_deref() != invalid) {
        let own = r.accepted_at.max(0) as u64 / epoch_ms.max(1);
        let in_force = tables
            .iter()
            .filter(|(_, (from, _))| *from <= own)
            .map(|(v, _)| *v)
            .max()
            .or_else(|| tables.keys().next().copied());
        if in_force != Some(r.rate_version) {
            problems.push(format!(
                "order {} of epoch {own} used rate version {}, in force: {in_force:?}",
                r.order_id, r.rate_version
            ));
        }
        if !r.success {
            continue;
        }
        let Some((_, table)) = tables.get(&r.rate_version) else {
            problems.push(format!(
                "order {}: rate version {} is not in rate_history",
                r.order_id, r.rate_version
            ));
            continue;
        };
        match recompute(r, &catalogue, table) {
            Ok(w) if w == r.paid => {}
            Ok(w) => problems.push(format!(
                "order {}: paid {}, formula gives {w} at version {}",
                r.order_id, r.paid, r.rate_version
            )),
            Err(e) => problems.push(format!("order {}: cannot recompute: {e}", r.order_id)),
        }
    }
    let name = "paid = formula at the recorded rate version (in force at the order's own epoch)";
    verdict(
        name,
        problems,
        format!("{} results, {} rate versions", results.len(), tables.len()),
    )
}

/// `rate_history` as tables by version, each with the epoch it applies from.
fn rate_tables(history: &[RateRow]) -> BTreeMap<u64, (u64, RateTable)> {
    let mut tables: BTreeMap<u64, (u64, RateTable)> = BTreeMap::new();
    for h in history {
        let e = tables.entry(h.version).or_insert_with(|| {
            let table = RateTable {
                version: h.version,
                rates: vec![],
            };
            (h.from_epoch, table)
        });
        if let Ok(c) = h.currency.parse::<Currency>() {
            e.1.rates.push((c, h.rate));
        }
    }
    tables
}

/// The formula's `paid` for result `r` at `table`.
fn recompute(
    r: &AuditResult,
    catalogue: &HashMap<u32, (Decimal, &str)>,
    table: &RateTable,
) -> Result<Decimal> {
    let lines: Option<Vec<(Decimal, u32, Currency)>> =
        sinks::parse_items_text(&r.items).and_then(|lines| {
            lines
                .into_iter()
                .map(|(id, n)| {
                    let (price, cur) = catalogue.get(&id)?;
                    Some((*price, n, cur.parse().ok()?))
                })
                .collect()
        });
    let lines = lines.ok_or_else(|| anyhow::anyhow!("unreadable"))?;
    let initiator = r.initiator.parse().map_err(anyhow::Error::msg)?;
    Ok(model::paid(lines, initiator, table)?)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn result(
        id: &str,
        initiator: &str,
        success: bool,
        paid: &str,
        version: u64,
        epoch: u64,
        items: &str,
    ) -> AuditResult {
        AuditResult {
            order_id: id.into(),
            initiator: initiator.into(),
            success,
            paid: Decimal::from_str(paid).unwrap(),
            rate_version: version,
            epoch,
            accepted_at: epoch as i64,
            items: items.into(),
            reason: (!success).then(|| "insufficient_inventory".into()),
            partition: 0,
            offset: 0,
        }
    }

    fn stock(id: u32, initial: i64, inventory: i64, price: &str, currency: &str) -> StockRow {
        StockRow {
            id,
            initial,
            inventory,
            price: Decimal::from_str(price).unwrap(),
            currency: currency.into(),
        }
    }

    fn rate(version: u64, currency: &str, r: &str, from_epoch: u64) -> RateRow {
        RateRow {
            version,
            currency: currency.into(),
            rate: Decimal::from_str(r).unwrap(),
            from_epoch,
        }
    }

    #[test]
    fn results_must_match_the_accepted_ids_one_to_one() {
        let none = HashSet::new();
        let ids = vec!["a".to_string(), "b".to_string()];
        assert!(one_result_per_accepted(&ids, None, &none).ok);
        assert!(one_result_per_accepted(&ids, Some(&["b".into(), "a".into()]), &none).ok);
        let v = one_result_per_accepted(&ids, Some(&["a".into(), "c".into()]), &none);
        assert!(!v.ok);
        assert!(
            v.detail
                .contains("1 accepted orders have no result (e.g. c)"),
            "{}",
            v.detail
        );
        assert!(
            v.detail
                .contains("1 results for orders never accepted (e.g. b)"),
            "{}",
            v.detail
        );
        let twice =
            one_result_per_accepted(&ids, Some(&["a".into(), "a".into(), "b".into()]), &none);
        // b is a dead letter's order: written to the topic, not accepted by ingest.
        let dead: HashSet<&str> = ["b"].into();
        assert!(one_result_per_accepted(&ids, Some(&["a".into()]), &dead).ok);
        assert!(twice.detail.contains("accepted twice"), "{}", twice.detail);
    }

    #[test]
    fn stock_taken_must_equal_what_successful_orders_took() {
        let results = vec![
            result("o1", "RMB", true, "5", 1, 0, "1:2,2:1"),
            result("o2", "RMB", false, "0", 1, 0, "1:9"),
        ];
        assert!(
            stock_conserved(
                &results,
                &[stock(1, 10, 8, "1", "RMB"), stock(2, 3, 2, "1", "RMB")]
            )
            .ok
        );
        let v = stock_conserved(
            &results,
            &[stock(1, 10, 7, "1", "RMB"), stock(2, 3, 2, "1", "RMB")],
        );
        assert!(
            !v.ok && v.detail.contains("commodity 1: 10 − 7 ≠ 2"),
            "{}",
            v.detail
        );
        let bad = vec![result("o3", "RMB", true, "1", 1, 0, "1:x")];
        assert!(stock_conserved(&bad, &[])
            .detail
            .contains("unreadable items"));
    }

    #[test]
    fn totals_must_agree_in_mysql_and_zookeeper() {
        let results = vec![
            result("o1", "USD", true, "2.50", 1, 0, "1:1"),
            result("o2", "USD", true, "1.25", 1, 0, "1:1"),
            result("o3", "USD", false, "0", 1, 0, "1:1"),
        ];
        let sums = paid_sums(&results);
        let usd = Currency::from_str("USD").unwrap();
        let row = |t: &str| TotalRow {
            currency: "USD".into(),
            total: Decimal::from_str(t).unwrap(),
            orders: 2,
        };
        let good = [(usd, Decimal::from_str("3.75").unwrap(), 2)];
        assert!(totals_problems(&[usd], &sums, &[row("3.75")], &good).is_empty());
        let p = totals_problems(&[usd], &sums, &[row("3.70")], &good);
        assert_eq!(p, ["USD: MySQL totals 3.70 ≠ Σ paid 3.75"]);
        let stale = [(usd, Decimal::from_str("2.50").unwrap(), 1)];
        assert_eq!(
            totals_problems(&[usd], &sums, &[row("3.75")], &stale).len(),
            1
        );
    }

    #[test]
    fn paid_is_recomputed_at_the_version_in_force() {
        let history = vec![
            rate(1, "RMB", "1", 0),
            rate(1, "USD", "7", 0),
            rate(2, "RMB", "1", 100),
            rate(2, "USD", "8", 100),
        ];
        let stock = [stock(1, 10, 10, "2", "USD")];
        // 3 × 2 USD at 8 RMB/USD = 48 RMB, at version 2 (epoch 150).
        let good = result("o1", "RMB", true, "48", 2, 150, "1:3");
        assert!(paid_matches_formula(std::slice::from_ref(&good), &stock, &history, 1).ok);
        let wrong_paid = result("o2", "RMB", true, "42", 2, 150, "1:3");
        let v = paid_matches_formula(&[wrong_paid], &stock, &history, 1);
        assert!(v.detail.contains("formula gives 48"), "{}", v.detail);
        let wrong_version = result("o3", "RMB", true, "42", 1, 150, "1:3");
        let v = paid_matches_formula(&[wrong_version], &stock, &history, 1);
        assert!(v.detail.contains("in force: Some(2)"), "{}", v.detail);
    }

    #[test]
    fn every_offset_is_a_result_a_copy_or_a_dead_letter() {
        use Accounted::*;
        let good = vec![
            (0, 0, Result),
            (0, 2, Dead),
            (0, 1, Skipped),
            (1, 0, Result),
        ];
        let v = every_offset_accounted(good.clone(), &[(0, 3), (1, 1)], &[]);
        assert!(v.ok, "{}", v.detail);
        assert!(
            v.detail
                .contains("2 results, 1 skipped copies, 1 dead letters"),
            "{}",
            v.detail
        );
        let v = every_offset_accounted(good.clone(), &[(0, 5), (1, 1)], &[]);
        assert!(
            v.detail.contains("partition 0: offsets 3..5 are neither"),
            "{}",
            v.detail
        );
        let mut gap = good.clone();
        gap.retain(|r| *r != (0, 1, Skipped));
        let v = every_offset_accounted(gap, &[(0, 3), (1, 1)], &[]);
        assert!(
            v.detail.contains("offsets 1..2 are neither"),
            "{}",
            v.detail
        );
        let mut with_result = good.clone();
        with_result.push((0, 2, Result));
        assert!(every_offset_accounted(with_result, &[(0, 3), (1, 1)], &[]).ok);
        let mut twice = good.clone();
        twice.push((0, 1, Result));
        let v = every_offset_accounted(twice, &[(0, 3), (1, 1)], &[]);
        assert!(
            v.detail.contains("offset 1: both Result and Skipped"),
            "{}",
            v.detail
        );
        // Pruned below offset 2 of partition 0: the skipped copy at 1 is gone, and the
        // cut says one offset below it was accounted for by a pruned row alone.
        let mut pruned = good.clone();
        pruned.retain(|r| *r != (0, 1, Skipped));
        let v = every_offset_accounted(pruned.clone(), &[(0, 3), (1, 1)], &[(0, 2, 1)]);
        assert!(v.ok, "{}", v.detail);
        let v = every_offset_accounted(pruned.clone(), &[(0, 3), (1, 1)], &[(0, 2, 0)]);
        assert!(
            v.detail.contains("1 offsets below the pruning cut 2"),
            "{}",
            v.detail
        );
        let v = every_offset_accounted(pruned, &[(0, 4), (1, 1)], &[(0, 2, 1)]);
        assert!(
            v.detail.contains("offsets 3..4 are neither"),
            "{}",
            v.detail
        );
        let v = every_offset_accounted(good, &[(0, 2), (1, 1)], &[]);
        assert!(
            v.detail.contains("at or above the stored offset 2"),
            "{}",
            v.detail
        );
    }
}
