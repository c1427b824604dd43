//! The live views the job keeps with differential dataflow (`GET /api/views`) agree with
//! the same figures computed from MySQL once everything accepted has settled: sales per
//! currency and minute, the ten commodities with the most units sold, and the commodities
//! below the stock threshold (some of them already low when the job started).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use common::{wait_for, Cluster, Spec};
use model::Decimal;
use serde_json::Value;

const THRESHOLD: u32 = 400;

/// 24 commodities in two currencies; ids 1–4 start below the threshold.
fn catalogue() -> String {
    let mut csv = String::from("id,name,price,currency,inventory\n");
    for id in 1..=24u32 {
        let inventory = if id <= 4 {
            100 + id * 50
        } else {
            420 + id * 10
        };
        let (price, currency) = if id % 2 == 0 {
            (format!("{}.25", id), "USD")
        } else {
            (format!("{}.10", 3 * id), "RMB")
        };
        csv.push_str(&format!("{id},item-{id},{price},{currency},{inventory}\n"));
    }
    csv
}

/// The views once they are complete up to `epoch`.
fn views_complete_to(c: &Cluster, epoch: u64) -> Value {
    let mut last = Value::Null;
    wait_for(
        Duration::from_secs(30),
        "views complete to the last epoch",
        || {
            let (status, body) = c.get("/api/views");
            assert_eq!(status, 200, "{body}");
            last = body["views"].clone();
            last["complete_up_to_epoch"]
                .as_u64()
                .is_some_and(|e| e >= epoch)
        },
    );
    last
}

/// Post `count` orders (numbered from `from`) of two lines each, in every currency.
fn post_orders(c: &Cluster, from: u32, count: u32) {
    let currencies = ["RMB", "USD", "JPY", "EUR"];
    for i in from..from + count {
        let a = 1 + (i * 7) % 24;
        let b = 1 + (i * 11 + 3) % 24;
        let body = format!(
            r#"{{"user_id":"v-{}","initiator":"{}","items":[{{"id":{a},"number":{}}},{{"id":{b},"number":{}}}]}}"#,
            i % 9,
            currencies[(i % 4) as usize],
            5 + i % 20,
            3 + (i * 5) % 17,
        );
        let (s, v) = c.post(&body);
        assert_eq!(s, 202, "{v}");
    }
}

fn cluster(name: &str, processes: usize, workers: usize) -> Cluster {
    let csv = catalogue();
    let keys = format!("low_stock_below = {THRESHOLD}");
    Cluster::start(
        name,
        Spec {
            processes,
            workers,
            catalogue: Some(&csv),
            catalogue_keys: &keys,
            ..Spec::default()
        },
    )
}

#[test]
fn the_live_views_agree_with_mysql_once_everything_has_settled() {
    let c = cluster("views", 2, 1);
    let (status, body) = c.get("/api/views");
    assert_eq!(status, 200, "{body}");
    post_orders(&c, 0, 240);
    c.wait_results(240, Duration::from_secs(60));
    let failed = c.count("SELECT COUNT(*) FROM result WHERE NOT success");
    assert!(failed > 0, "some orders run out of stock");
    let views = settled_views(&c);
    assert_agree(&c, &views, 0);
    let low = low_stock(&views);
    assert!(
        low.iter().any(|(id, _)| *id <= 4) && low.iter().any(|(id, _)| *id > 4),
        "some were low from the start and some fell below during the run: {low:?}"
    );
    assert_eq!(views["low_stock_below"], THRESHOLD);
}

#[test]
fn after_a_worker_is_killed_the_views_count_what_the_new_run_settled() {
    let c = cluster("views-restart", 1, 2);
    post_orders(&c, 0, 120);
    c.wait_results(120, Duration::from_secs(60));
    let before = settled_views(&c);
    assert_agree(&c, &before, 0);
    c.kill_worker(0, libc::SIGKILL);
    c.start_worker(0);
    post_orders(&c, 120, 120);
    c.wait_results(240, Duration::from_secs(60));
    let after = settled_views(&c);
    let since = after["since"].as_i64().expect("since");
    assert!(since > before["since"].as_i64().unwrap(), "a new run");
    assert_agree(&c, &after, since);
    assert!(
        !low_stock(&after).is_empty(),
        "stock is read again from MySQL at start: {after}"
    );
}

/// The views once they cover every result in MySQL.
fn settled_views(c: &Cluster) -> Value {
    let last_epoch: u64 = c
        .query::<(u64,)>("SELECT MAX(epoch) FROM result")
        .first()
        .map_or(0, |r| r.0);
    views_complete_to(c, last_epoch)
}

fn low_stock(views: &Value) -> Vec<(u32, u32)> {
    views["low_stock"]
        .as_array()
        .expect("low_stock")
        .iter()
        .map(|l| {
            (
                l["id"].as_u64().unwrap() as u32,
                l["left"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

/// The views equal what MySQL's results settled at or after `since` (ms) add up to,
/// and MySQL's stock.
fn assert_agree(c: &Cluster, views: &Value, since: i64) {
    let rows: Vec<(String, u64, Decimal, String)> = c.query(&format!(
        "SELECT initiator, epoch, paid, items FROM result WHERE success AND settled_at >= {since}"
    ));
    assert!(!rows.is_empty(), "orders succeeded");
    let epoch_ms = views["epoch_ms"].as_u64().expect("epoch_ms");
    // Sales per (currency, minute).
    let mut sales: BTreeMap<(String, u64), (Decimal, i64)> = BTreeMap::new();
    let mut units: BTreeMap<u32, i64> = BTreeMap::new();
    for (cur, epoch, paid, items) in &rows {
        let minute = epoch * epoch_ms / 60_000 * 60_000;
        let e = sales.entry((cur.clone(), minute)).or_default();
        e.0 += *paid;
        e.1 += 1;
        for (id, number) in sinks::parse_items_text(items).expect("items text") {
            *units.entry(id).or_default() += i64::from(number);
        }
    }
    let shown: BTreeMap<(String, u64), (Decimal, i64)> = views["sales"]
        .as_array()
        .expect("sales")
        .iter()
        .map(|s| {
            let key = (
                s["currency"].as_str().unwrap().to_string(),
                s["minute"].as_u64().unwrap(),
            );
            let paid = Decimal::from_str(s["paid"].as_str().unwrap()).unwrap();
            (key, (paid, s["orders"].as_i64().unwrap()))
        })
        .collect();
    assert_eq!(shown, sales, "sales per currency and minute");

    // The top ten by units: each listed with MySQL's units, none left out that sold more.
    let top: Vec<(u32, i64)> = views["top"]
        .as_array()
        .expect("top")
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap() as u32,
                t["units"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(top.len(), units.len().min(10), "{top:?}");
    for (id, u) in &top {
        assert_eq!(units.get(id), Some(u), "units of commodity {id}");
    }
    let tenth = top.last().expect("something sold").1;
    let listed: BTreeSet<u32> = top.iter().map(|t| t.0).collect();
    for (id, u) in &units {
        assert!(
            listed.contains(id) || *u <= tenth,
            "commodity {id} sold {u} units, more than the tenth listed ({tenth})"
        );
    }
    assert!(
        top.windows(2).all(|w| (w[0].1, w[1].0) > (w[1].1, w[0].0)),
        "most units first, then the lower id: {top:?}"
    );

    // Low stock: exactly the commodities MySQL has below the threshold.
    let low_mysql: Vec<(u32, u32)> = c.query(&format!(
        "SELECT id, inventory FROM commodity WHERE inventory < {THRESHOLD} ORDER BY id"
    ));
    let low = low_stock(views);
    assert_eq!(low, low_mysql, "commodities below {THRESHOLD}");
}
