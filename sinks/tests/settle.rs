//! settle_batch against the real MariaDB (dtss services up): results written from
//! a stale view of the stock are corrected under the lock before the commit.

mod common;

use std::str::FromStr;

use dtss_sinks::{ReadyOrder, SettleState};
use model::{Currency, Decimal, Item, Order, OrderRequest, RateTable, Reason, Uuid};
use mysql_async::prelude::*;

fn settling(offset: i64, o: &Order, rates: &RateTable) -> ReadyOrder {
    ReadyOrder {
        offset,
        epoch: 1,
        order: o.clone(),
        rates: std::sync::Arc::new(rates.clone()),
    }
}

fn order(user: &str, id: u32, number: u32) -> Order {
    OrderRequest {
        user_id: user.into(),
        initiator: Currency::from_str("RMB").unwrap(),
        items: vec![Item { id, number }],
        time: None,
    }
    .accept(Uuid::now_v7(), model::now_ms())
}

/// Settle `orders` as partition 0's next batch, numbered from `*offset`, which moves past
/// them.
async fn settle_next(
    pool: &dtss_sinks::Pool,
    view: &mut SettleState,
    offset: &mut i64,
    orders: &[Order],
    rates: &RateTable,
) -> Vec<dtss_sinks::Outcome> {
    let batch: Vec<ReadyOrder> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| settling(*offset + i as i64, o, rates))
        .collect();
    *offset += orders.len() as i64;
    dtss_sinks::settle_batch(pool, "orders", 0, &batch, *offset, view)
        .await
        .unwrap()
}

/// The tests share one server, and one of them turns `local_infile` off server-wide:
/// that one holds this alone, the others together (they may run in parallel).
static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// `create_db` for a test that shares the server; hold the guard to the end.
async fn fresh_db(
    tag: &str,
    conns: usize,
) -> (
    String,
    dtss_sinks::Pool,
    std::path::PathBuf,
    RateTable,
    tokio::sync::RwLockReadGuard<'static, ()>,
) {
    let shared = SERVER.read().await;
    let (db, pool, dir, rates) = create_db(tag, conns).await;
    (db, pool, dir, rates, shared)
}

/// A fresh database with items 1 (5 units at 2.50) and 2 (10 units at 1.00), partitions
/// 0 and 1 prepared, and a pool of at most `conns` connections.
async fn create_db(
    tag: &str,
    conns: usize,
) -> (String, dtss_sinks::Pool, std::path::PathBuf, RateTable) {
    let (db, url) = common::new_database(tag);
    dtss_sinks::ensure_schema(&[&url]).await.unwrap();
    let pool = dtss_sinks::connect(&[&url], conns).unwrap();
    let currencies = vec![Currency::from_str("RMB").unwrap()];
    let dir = std::env::temp_dir().join(&db);
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("catalogue.csv");
    std::fs::write(
        &csv,
        "id,name,price,currency,inventory\n1,one,2.50,RMB,5\n2,two,1.00,RMB,10\n",
    )
    .unwrap();
    dtss_sinks::load_catalogue(&pool, Some(&csv), 0, 0, &currencies)
        .await
        .unwrap();
    for p in [0, 1] {
        dtss_sinks::prepare_partition(&pool, "orders", p, &currencies)
            .await
            .unwrap();
    }
    let rates = RateTable {
        version: 1,
        rates: vec![(currencies[0], Decimal::ONE)],
    };
    (db, pool, dir, rates)
}

/// MariaDB's root, through the socket of the server dtss services started.
fn root_pool() -> mysql_async::Pool {
    let home = std::env::var("DTSS_HOME")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.dtss").to_string());
    let opts = mysql_async::OptsBuilder::default()
        .user(Some("root"))
        .socket(Some(format!("{home}/services/mariadb/mysqld.sock")));
    mysql_async::Pool::new(opts)
}

async fn drop_db(db: &str, pool: dtss_sinks::Pool, dir: std::path::PathBuf) {
    common::drop_database(db, pool).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn settlement_keeps_its_connection_and_prepared_statements() {
    let (db, pool, dir, rates, _shared) = fresh_db("keep", 1).await;
    let probe = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get_conn().await.unwrap();
            conn.query_first::<(u64, Option<u64>, u64), _>(sql)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let (id_before, _, prepared_before) = probe(
        "SELECT CONNECTION_ID(), (@probe := 1), \
         (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'COM_STMT_PREPARE')",
    )
    .await;
    let mut view = SettleState::default();
    let orders: Vec<Order> = (0..60).map(|i| order("u-k", 2 - i % 2, 1)).collect();
    for (b, chunk) in orders.chunks(3).enumerate() {
        let batch: Vec<ReadyOrder> = chunk
            .iter()
            .enumerate()
            .map(|(i, o)| settling((3 * b + i) as i64, o, &rates))
            .collect();
        let next = (3 * b + chunk.len()) as i64;
        dtss_sinks::settle_batch(&pool, "orders", 0, &batch, next, &mut view)
            .await
            .unwrap();
    }
    let (id_after, probe_var, prepared_after) = probe(
        "SELECT CONNECTION_ID(), @probe, \
         (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'COM_STMT_PREPARE')",
    )
    .await;
    assert_eq!(
        id_before, id_after,
        "20 transactions on the one pooled connection"
    );
    assert_eq!(
        probe_var,
        Some(1),
        "the session was not reset between transactions"
    );
    assert!(
        prepared_after - prepared_before <= 6, // 5 distinct statements; 20+ if per transaction
        "statements prepared once, not per transaction: {prepared_before} → {prepared_after}"
    );
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn a_stale_view_is_corrected_under_the_lock() {
    let (db, pool, dir, rates, _shared) = fresh_db("settle", 2).await;
    // Both views see 5 units of item 1 (and 10 of item 2).
    let (mut view_a, mut view_b) = (SettleState::default(), SettleState::default());
    let warm = order("u-0", 2, 1);
    dtss_sinks::settle_batch(
        &pool,
        "orders",
        0,
        &[settling(0, &warm, &rates)],
        1,
        &mut view_a,
    )
    .await
    .unwrap();
    let warm_b = order("u-0", 1, 1);
    // Partition 1 takes one unit of item 1, so both views know it: 4 left.
    let out = dtss_sinks::settle_batch(
        &pool,
        "orders",
        1,
        &[settling(0, &warm_b, &rates)],
        1,
        &mut view_b,
    )
    .await
    .unwrap();
    assert_eq!(out[0].reason, None);
    let first = dtss_sinks::settle_batch(
        &pool,
        "orders",
        0,
        &[settling(1, &order("u-a", 1, 1), &rates)],
        2,
        &mut view_a,
    )
    .await
    .unwrap();
    assert_eq!(
        first[0].reason, None,
        "view A was current: 4 units, 1 taken"
    );

    // Partition 0 takes the remaining 3; partition 1's view still says 4.
    let a = order("u-a", 1, 3);
    let out = dtss_sinks::settle_batch(
        &pool,
        "orders",
        0,
        &[settling(2, &a, &rates)],
        3,
        &mut view_a,
    )
    .await
    .unwrap();
    assert_eq!(out[0].reason, None);
    assert_eq!(out[0].paid, Decimal::from_str("7.50").unwrap());
    // Partition 1 guesses success for 2 units and 4 units (4 in its view: the first fits,
    // the second not), but the lock shows 0: both must end rejected, stock untouched.
    let (b1, b2, b3) = (order("u-b", 1, 2), order("u-b", 1, 4), order("u-b", 2, 3));
    let out = dtss_sinks::settle_batch(
        &pool,
        "orders",
        1,
        &[
            settling(1, &b1, &rates),
            settling(2, &b2, &rates),
            settling(3, &b3, &rates),
        ],
        4,
        &mut view_b,
    )
    .await
    .unwrap();
    let reasons: Vec<Option<Reason>> = out.iter().map(|o| o.reason).collect();
    assert_eq!(
        reasons,
        vec![
            Some(Reason::InsufficientInventory),
            Some(Reason::InsufficientInventory),
            None
        ]
    );

    let mut conn = pool.get_conn().await.unwrap();
    let rows: Vec<(String, bool, Option<String>, Decimal)> = conn
        .query("SELECT order_id, success, reason, paid FROM result")
        .await
        .unwrap();
    let row = |o: &Order| {
        rows.iter()
            .find(|r| r.0 == o.order_id.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("no result row for {}", o.order_id))
    };
    assert_eq!(rows.len(), 7);
    for o in [&b1, &b2] {
        let (_, ok, reason, paid) = row(o);
        assert!(!ok);
        assert_eq!(reason.as_deref(), Some("insufficient_inventory"));
        assert_eq!(paid, Decimal::ZERO);
    }
    let (_, ok, reason, paid) = row(&b3);
    assert!(ok && reason.is_none());
    assert_eq!(paid, Decimal::from(3));
    let stock: Vec<(u32, u32)> = conn
        .query("SELECT id, inventory FROM commodity ORDER BY id")
        .await
        .unwrap();
    assert_eq!(stock, vec![(1, 0), (2, 6)]);
    // A later batch on partition 1 decides from the corrected view: no stock left.
    let b4 = order("u-b", 1, 1);
    let out = dtss_sinks::settle_batch(
        &pool,
        "orders",
        1,
        &[settling(4, &b4, &rates)],
        5,
        &mut view_b,
    )
    .await
    .unwrap();
    assert_eq!(out[0].reason, Some(Reason::InsufficientInventory));
    drop(conn);
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn a_rejection_from_a_view_with_too_little_stock_is_corrected() {
    let (db, pool, dir, rates, _shared) = fresh_db("restock", 2).await;
    let mut view = SettleState::default();
    // 4 of item 1's 5 units: the view says 1 is left.
    let first = order("u-r", 1, 4);
    let out = dtss_sinks::settle_batch(
        &pool,
        "orders",
        0,
        &[settling(0, &first, &rates)],
        1,
        &mut view,
    )
    .await
    .unwrap();
    assert_eq!(out[0].reason, None);
    // Restocked behind the view's back: 10 units.
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop("UPDATE commodity SET inventory = 10 WHERE id = 1")
        .await
        .unwrap();
    // The view rejects 3 units (1 left) and the second order's 1 unit fits in it; the
    // real stock takes both.
    let (a, b) = (order("u-r", 1, 3), order("u-r", 1, 1));
    let out = dtss_sinks::settle_batch(
        &pool,
        "orders",
        0,
        &[settling(1, &a, &rates), settling(2, &b, &rates)],
        3,
        &mut view,
    )
    .await
    .unwrap();
    let reasons: Vec<Option<Reason>> = out.iter().map(|o| o.reason).collect();
    assert_eq!(reasons, vec![None, None]);
    assert_eq!(out[0].paid, Decimal::from_str("7.50").unwrap());
    let rows: Vec<(bool, Decimal)> = conn
        .query(format!(
            "SELECT success, paid FROM result WHERE order_id = '{}'",
            a.order_id
        ))
        .await
        .unwrap();
    assert_eq!(rows, vec![(true, Decimal::from_str("7.50").unwrap())]);
    let inv: Option<u32> = conn
        .query_first("SELECT inventory FROM commodity WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(inv, Some(6));
    drop(conn);
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn once_the_view_holds_a_batch_commodities_they_are_checked_not_locked() {
    let (db, pool, dir, rates, _shared) = fresh_db("verified", 2).await;
    let mut view = SettleState::default();
    let mut offset = 0;
    let mut settle = async |view: &mut SettleState, orders: &[Order]| {
        settle_next(&pool, view, &mut offset, orders, &rates)
            .await
            .into_iter()
            .map(|o| o.reason)
            .collect::<Vec<_>>()
    };
    // First batch: items 1 and 2 are new to the view, so they are locked and read.
    let out = settle(&mut view, &[order("u-v", 1, 1), order("u-v", 2, 1)]).await;
    assert_eq!(out, vec![None, None]);
    assert_eq!((view.verified_batches(), view.stale_views()), (0, 0));
    // Then the view holds them: decided from it, checked by the UPDATE.
    let out = settle(&mut view, &[order("u-v", 1, 1), order("u-v", 2, 9)]).await;
    assert_eq!(out, vec![None, None]);
    assert_eq!(view.verified_batches(), 1);
    // Item 1 is down to 2 units behind the view's back (it says 3): 3 units must be
    // refused, 2 accepted, whatever the view said; the check finds the difference and
    // the batch is settled again under locks.
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop("UPDATE commodity SET inventory = 2 WHERE id = 1")
        .await
        .unwrap();
    let out = settle(&mut view, &[order("u-v", 1, 3), order("u-v", 1, 2)]).await;
    assert_eq!(out, vec![Some(Reason::InsufficientInventory), None]);
    assert_eq!(
        view.verified_batches(),
        1,
        "the stale view was not committed"
    );
    assert_eq!(view.stale_views(), 1);
    // After a stale view, a few batches lock before it is trusted again: the view is
    // forgotten, read again, then its values are checked.
    conn.query_drop("UPDATE commodity SET inventory = 10 WHERE id = 2")
        .await
        .unwrap();
    let mut batches = 0;
    while view.verified_batches() == 1 {
        let out = settle(&mut view, &[order("u-v", 2, 1)]).await;
        assert_eq!(out, vec![None]);
        batches += 1;
        assert!(batches <= 4, "the view is trusted again after 4 batches");
    }
    // The one settled again and 3 more under locks, then one from the view.
    assert_eq!(batches, 4);
    // A commodity that no order changes is checked too: the view says 6 units of item
    // 2 and refuses 7, but the row holds 8.
    conn.query_drop("UPDATE commodity SET inventory = 8 WHERE id = 2")
        .await
        .unwrap();
    let out = settle(&mut view, &[order("u-v", 2, 7)]).await;
    assert_eq!(out, vec![None], "7 of the 8 units the row holds");
    assert_eq!(view.verified_batches(), 2, "settled under locks");
    assert_eq!(view.stale_views(), 2);
    let stock: Vec<(u32, u32)> = conn
        .query("SELECT id, inventory FROM commodity ORDER BY id")
        .await
        .unwrap();
    assert_eq!(stock, vec![(1, 0), (2, 1)]);
    drop(conn);
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn a_batch_changing_thousands_of_commodities_updates_each_once() {
    // Stock goes in by UPDATEs of at most 999 ids each (longer IN lists lose the
    // row-by-row update in MariaDB): 2,500 commodities take three such statements.
    let (db, pool, dir, rates, _shared) = fresh_db("wide", 1).await;
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop(
        "INSERT INTO commodity (id, name, price, currency, inventory, initial_inventory) \
         SELECT seq, CONCAT('item ', seq), 1.00, 'RMB', 10, 10 FROM seq_101_to_2600",
    )
    .await
    .unwrap();
    drop(conn);
    let mut view = SettleState::default();
    let mut offset = 0;
    for (take, expect_left) in [(3, 7), (7, 0)] {
        let orders: Vec<Order> = (101..=2600).map(|id| order("u-w", id, take)).collect();
        let out = settle_next(&pool, &mut view, &mut offset, &orders, &rates).await;
        assert!(out.iter().all(|o| o.reason.is_none()), "all in stock");
        let mut conn = pool.get_conn().await.unwrap();
        let left: Vec<(u32, u32)> = conn
            .query("SELECT inventory, COUNT(*) FROM commodity WHERE id > 100 GROUP BY inventory")
            .await
            .unwrap();
        assert_eq!(left, vec![(expect_left, 2500)], "every item took {take}");
    }
    // Nothing left: one more unit of any of them is refused.
    let more = order("u-w", 1800, 1);
    let out = settle_next(&pool, &mut view, &mut offset, &[more], &rates).await;
    assert_eq!(out[0].reason, Some(Reason::InsufficientInventory));
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn a_user_id_with_quotes_and_backslashes_is_stored_as_given() {
    let (db, pool, dir, rates, _shared) = fresh_db("quote", 1).await;
    let mut state = SettleState::default();
    // Quotes and backslashes (SQL), tab, newline, NUL and a literal \N (LOAD DATA).
    let user = "o'brien\\\"; DROP TABLE result; -- ü\t\n\0\\N";
    let o = order(user, 2, 1);
    dtss_sinks::settle_batch(
        &pool,
        "orders",
        0,
        &[settling(0, &o, &rates)],
        1,
        &mut state,
    )
    .await
    .unwrap();
    let mut conn = pool.get_conn().await.unwrap();
    let stored: Option<Vec<u8>> = conn
        .query_first(format!(
            "SELECT user_id FROM result WHERE order_id = '{}'",
            o.order_id
        ))
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(user.as_bytes()));
    drop(conn);
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn each_batch_is_logged_with_its_commit_time() {
    let (db, pool, dir, rates, _shared) = fresh_db("log", 2).await;
    let mut state = SettleState::default();
    let orders: Vec<Order> = (0..5).map(|_| order("u-l", 2, 1)).collect();
    let t0 = model::now_ms();
    let first: Vec<ReadyOrder> = (0..3)
        .map(|i| settling(i, &orders[i as usize], &rates))
        .collect();
    dtss_sinks::settle_batch(&pool, "orders", 1, &first, 3, &mut state)
        .await
        .unwrap();
    let mut conn = pool.get_conn().await.unwrap();
    assert!(
        batches(&mut conn).await.unwrap().is_empty(),
        "written with the next batch"
    );
    let second: Vec<ReadyOrder> = (3..5)
        .map(|i| settling(i, &orders[i as usize], &rates))
        .collect();
    dtss_sinks::settle_batch(&pool, "orders", 1, &second, 5, &mut state)
        .await
        .unwrap();
    let rows = batches(&mut conn).await.unwrap();
    assert_eq!(rows.len(), 1);
    let (p, first_offset, next, n, started, committed) = rows[0];
    assert_eq!((p, first_offset, next, n), (1, 0, 3, 3));
    assert!(t0 <= started && started <= committed && committed <= model::now_ms());
    state.flush(&pool).await.unwrap();
    let rows = batches(&mut conn).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[1].1, rows[1].2, rows[1].3), (3, 5, 2));
    assert!(rows[1].5 >= rows[0].5);
    // Every result's offset falls in a logged batch of its partition.
    let offsets: Vec<i64> = conn
        .query("SELECT `offset` FROM result WHERE `partition` = 1 ORDER BY `offset`")
        .await
        .unwrap();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    drop(conn);
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn a_replayed_batch_settles_only_what_was_not_committed() {
    let (db, pool, dir, rates, _shared) = fresh_db("replay", 1).await;
    let orders: Vec<Order> = (0..6).map(|_| order("u-p", 2, 1)).collect();
    // Offsets from..to, by a worker just started (no view of the stock yet).
    let settle = |from: usize, to: usize| {
        let batch: Vec<ReadyOrder> = (from..to)
            .map(|i| settling(i as i64, &orders[i], &rates))
            .collect();
        let pool = pool.clone();
        async move {
            let mut state = SettleState::default();
            dtss_sinks::settle_batch(&pool, "orders", 0, &batch, to as i64, &mut state)
                .await
                .unwrap()
        }
    };
    assert_eq!(settle(0, 3).await.len(), 3);
    // After a restart, Kafka is read again from an earlier offset: 1 and 2 are settled
    // already, 3–5 are new.
    let ids: Vec<Uuid> = settle(1, 6).await.iter().map(|o| o.order_id).collect();
    let new: Vec<Uuid> = orders[3..].iter().map(|o| o.order_id).collect();
    assert_eq!(
        ids, new,
        "only the orders not committed before are reported"
    );
    // A batch wholly committed before: nothing done, nothing reported.
    assert!(settle(0, 3).await.is_empty());
    let mut conn = pool.get_conn().await.unwrap();
    let (results, inventory, next, orders_total): (u64, u32, i64, u64) = conn
        .query_first(
            "SELECT (SELECT COUNT(*) FROM result), \
             (SELECT inventory FROM commodity WHERE id = 2), \
             (SELECT next_offset FROM offsets WHERE `partition` = 0), \
             (SELECT orders FROM totals WHERE `partition` = 0)",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((results, inventory, next, orders_total), (6, 10 - 6, 6, 6));
    drop(conn);
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn a_partition_without_an_offsets_row_settles_nothing() {
    let (db, pool, dir, rates, _shared) = fresh_db("nooffsets", 1).await;
    let o = order("u-n", 2, 1);
    let err = dtss_sinks::settle_batch(
        &pool,
        "orders",
        7, // not prepared
        &[settling(0, &o, &rates)],
        1,
        &mut SettleState::default(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("prepare_partition"),
        "the error says what to do: {err:#}"
    );
    let mut conn = pool.get_conn().await.unwrap();
    let (results, inventory): (u64, u32) = conn
        .query_first(
            "SELECT (SELECT COUNT(*) FROM result), (SELECT inventory FROM commodity WHERE id = 2)",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((results, inventory), (0, 10), "rolled back");
    drop(conn);
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn results_go_in_as_inserts_when_the_server_refuses_load_data() {
    // Server-wide: this test runs alone (other tests would fall back to INSERTs).
    let _alone = SERVER.write().await;
    let (db, pool, dir, rates) = create_db("infile", 2).await;
    let mut conn = pool.get_conn().await.unwrap();
    // A server-wide setting: the dtss user may not change it, root (through the
    // socket, as the OS root) may.
    let root = root_pool();
    let mut admin = root.get_conn().await.unwrap();
    admin
        .query_drop("SET GLOBAL local_infile = 0")
        .await
        .unwrap();
    let orders: Vec<Order> = (0..3).map(|i| order(&format!("u-i{i}\t"), 2, 1)).collect();
    let batch: Vec<ReadyOrder> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| settling(i as i64, o, &rates))
        .collect();
    let mut state = SettleState::default();
    let out = dtss_sinks::settle_batch(&pool, "orders", 0, &batch, 3, &mut state).await;
    // With INSERTs from then on, a replayed batch is still recognised as settled.
    let again = dtss_sinks::settle_batch(&pool, "orders", 0, &batch[1..], 3, &mut state).await;
    admin
        .query_drop("SET GLOBAL local_infile = 1")
        .await
        .unwrap();
    drop(admin);
    root.disconnect().await.unwrap();
    assert_eq!(out.unwrap().len(), 3);
    assert!(again.unwrap().is_empty());
    let users: Vec<String> = conn
        .query("SELECT CAST(user_id AS CHAR) FROM result ORDER BY `offset`")
        .await
        .unwrap();
    assert_eq!(users, vec!["u-i0\t", "u-i1\t", "u-i2\t"]);
    drop(conn);
    drop_db(&db, pool, dir).await;
}

type BatchRow = (i32, i64, i64, u32, i64, i64);

async fn batches(conn: &mut mysql_async::Conn) -> mysql_async::Result<Vec<BatchRow>> {
    conn.query(
        "SELECT `partition`, first_offset, next_offset, orders, started_at, committed_at \
         FROM settle_batches ORDER BY next_offset",
    )
    .await
}

/// Batches for `TransactionPipeline`: B1 at offsets 0..3 takes 8 of item 2 and 2 of item 1; B2
/// at 3..6 asks 3 of item 2 (2 left: rejected), 3 of item 1 and 2 of item 2 (both fit,
/// from the stock as B1 leaves it); B3 at 6..8 finds nothing left.
fn three_batches(rates: &RateTable) -> (Vec<dtss_sinks::Batch>, Vec<Vec<Option<Reason>>>) {
    let batch = |first: i64, items: &[(u32, u32)]| dtss_sinks::Batch {
        orders: items
            .iter()
            .enumerate()
            .map(|(i, &(id, n))| ReadyOrder {
                offset: first + i as i64,
                epoch: 1,
                order: order("u-p", id, n),
                rates: std::sync::Arc::new(rates.clone()),
            })
            .collect(),
        next_offset: first + items.len() as i64,
        ..Default::default()
    };
    let short = Some(Reason::InsufficientInventory);
    (
        vec![
            batch(0, &[(2, 4), (1, 2), (2, 4)]),
            batch(3, &[(2, 3), (1, 3), (2, 2)]),
            batch(6, &[(1, 1), (2, 1)]),
        ],
        vec![
            vec![None, None, None],
            vec![short, None, None],
            vec![short, short],
        ],
    )
}

/// (order id, offset) of each order of `batches`.
fn ids_of(batches: &[dtss_sinks::Batch]) -> Vec<(String, i64)> {
    batches
        .iter()
        .flat_map(|b| &b.orders)
        .map(|o| (o.order.order_id.to_string(), o.offset))
        .collect()
}

/// Everything `three_batches` leaves in MySQL, checked: `ids` are its (order id, offset).
async fn check_three_batches(pool: &dtss_sinks::Pool, ids: &[(String, i64)]) {
    let mut conn = pool.get_conn().await.unwrap();
    let rows: Vec<(String, Option<String>, i64)> = conn
        .query("SELECT order_id, reason, `offset` FROM result ORDER BY `offset`")
        .await
        .unwrap();
    let short = Some("insufficient_inventory".to_string());
    let reasons = [
        None,
        None,
        None,
        short.clone(),
        None,
        None,
        short.clone(),
        short,
    ];
    let want: Vec<(String, Option<String>, i64)> = ids
        .iter()
        .zip(reasons)
        .map(|((id, offset), r)| (id.clone(), r, *offset))
        .collect();
    assert_eq!(rows, want, "one result per order, as decided");
    let stock: Vec<(u32, u32)> = conn
        .query("SELECT id, inventory FROM commodity ORDER BY id")
        .await
        .unwrap();
    assert_eq!(stock, vec![(1, 0), (2, 0)]);
    let stored: Option<i64> = conn
        .query_first("SELECT next_offset FROM offsets WHERE `partition` = 0")
        .await
        .unwrap();
    assert_eq!(stored, Some(8));
    let total: Option<(Decimal, u64)> = conn
        .query_first("SELECT total, orders FROM totals WHERE `partition` = 0")
        .await
        .unwrap();
    // 2×2.50 + 8×1.00 + 3×2.50 + 2×1.00, in 5 orders
    assert_eq!(total, Some((Decimal::from_str("22.50").unwrap(), 5)));
}

/// Settle `batches` through one `TransactionPipeline`, returning each call's outcomes' reasons.
async fn settle_all(
    settlement: &mut dtss_sinks::TransactionPipeline,
    batches: Vec<dtss_sinks::Batch>,
) -> Vec<Vec<Option<Reason>>> {
    let mut queue: std::collections::VecDeque<_> = batches.into();
    let mut got = vec![];
    while let Some(out) = settlement.next(|| queue.pop_front()).await.unwrap() {
        got.push(out.iter().map(|o| o.reason).collect());
    }
    got
}

#[tokio::test]
async fn the_next_batch_writes_its_results_while_the_one_before_commits() {
    let (db, pool, dir, rates, _shared) = fresh_db("pipe", 4).await;
    let (batches, want) = three_batches(&rates);
    let ids = ids_of(&batches);
    // Hold partition 0's totals row: B1 cannot commit until it is let go.
    let mut holder = pool.get_conn().await.unwrap();
    holder
        .query_drop("START TRANSACTION; SELECT * FROM totals WHERE `partition` = 0 FOR UPDATE")
        .await
        .unwrap();
    let settler_pool = pool.clone();
    let task = tokio::spawn(async move {
        let mut settlement = dtss_sinks::TransactionPipeline::new(settler_pool, "orders", 0);
        let got = settle_all(&mut settlement, batches).await;
        settlement.flush().await.unwrap();
        (got, settlement)
    });
    // Meanwhile B2's results are written (by a second transaction) and it waits for
    // the offsets row B1 holds.
    // Other sessions' transactions are visible with PROCESS only: root's.
    let root = root_pool();
    let mut watcher = root.get_conn().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let waiting = loop {
        let trx: Vec<(String, u64)> = watcher
            .query(format!(
                "SELECT trx_state, trx_rows_modified FROM information_schema.INNODB_TRX \
                     WHERE trx_state = 'LOCK WAIT' AND trx_mysql_thread_id IN \
                     (SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{db}')"
            ))
            .await
            .unwrap();
        if trx.len() >= 2 || std::time::Instant::now() > deadline {
            break trx;
        }
        // InnoDB refreshes this table only when it was not read for 100 ms.
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    };
    let mut modified: Vec<u64> = waiting.iter().map(|t| t.1).collect();
    modified.sort_unstable();
    assert_eq!(
        modified.len(),
        2,
        "B1 waits for the totals row and B2 for the offsets row: {waiting:?}"
    );
    assert!(
        modified[0] >= 3,
        "both have written their 3 results before waiting: {waiting:?}"
    );
    holder.query_drop("ROLLBACK").await.unwrap();
    let (got, settlement) = task.await.unwrap();
    assert_eq!(got, want, "each batch decided after the one before");
    check_three_batches(&pool, &ids).await;
    // Each batch's commit record, B2's started before B1 committed.
    let mut conn = pool.get_conn().await.unwrap();
    let records: Vec<(i64, i64, i64, i64)> = conn
        .query("SELECT first_offset, next_offset, started_at, committed_at FROM settle_batches ORDER BY first_offset")
        .await
        .unwrap();
    assert_eq!(
        records.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
        vec![(0, 3), (3, 6), (6, 8)]
    );
    assert!(records[1].2 <= records[0].3, "{records:?}");
    drop((conn, holder, watcher));
    root.disconnect().await.unwrap();
    drop(settlement);
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn when_a_commit_fails_the_next_batch_waits_and_both_settle_once() {
    // B2's commit fails while B3 is under way.
    settle_with_a_commit_failing_once("pipefail", 6).await;
}

#[tokio::test]
async fn when_the_first_commit_fails_the_batch_started_behind_it_settles_once() {
    // B1's commit fails while B2 waits for the offsets row (and B1 read its commodities).
    settle_with_a_commit_failing_once("pipefail1", 3).await;
}

/// `three_batches` settled while the commit that moves the offset to `next` fails once
/// (its offsets write raises an error; the MEMORY table's count is not rolled back
/// with it): each batch is reported once, as decided, and settles once.
async fn settle_with_a_commit_failing_once(tag: &str, next: i64) {
    let (db, pool, dir, rates, _shared) = fresh_db(tag, 4).await;
    let (batches, want) = three_batches(&rates);
    let ids = ids_of(&batches);
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop(
        "CREATE TABLE fail_budget (n INT NOT NULL) ENGINE=MEMORY; \
         INSERT INTO fail_budget VALUES (1)",
    )
    .await
    .unwrap();
    conn.query_drop(format!(
        "CREATE TRIGGER fail_once BEFORE UPDATE ON offsets FOR EACH ROW BEGIN \
           IF NEW.next_offset = {next} AND (SELECT n FROM fail_budget) > 0 THEN \
             UPDATE fail_budget SET n = n - 1; \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected failure'; \
           END IF; \
         END"
    ))
    .await
    .unwrap();
    let mut settlement = dtss_sinks::TransactionPipeline::new(pool.clone(), "orders", 0);
    let got = settle_all(&mut settlement, batches).await;
    let budget: Option<i32> = conn.query_first("SELECT n FROM fail_budget").await.unwrap();
    assert_eq!(budget, Some(0), "the injected failure happened");
    assert_eq!(got, want, "each batch reported once, as decided");
    check_three_batches(&pool, &ids).await;
    drop(conn);
    drop(settlement);
    drop_db(&db, pool, dir).await;
}

/// A batch as the dataflow hands it over: `orders` at their offsets, `dead` letters,
/// and the offset after its last message.
fn batch_of(
    orders: Vec<ReadyOrder>,
    dead: Vec<dtss_sinks::DeadLetter>,
    next: i64,
) -> dtss_sinks::Batch {
    dtss_sinks::Batch {
        orders,
        dead,
        next_offset: next,
        ..Default::default()
    }
}

/// offset, order_id, reason, bytes, size
type DeadRow = (i64, Option<String>, String, Vec<u8>, u32);

#[tokio::test]
async fn poisons_are_kept_as_dead_letters_and_copies_skipped_and_the_partition_goes_on() {
    let (db, pool, dir, rates, _shared) = fresh_db("poison", 2).await;
    let a = order("u-a", 2, 1);
    let b = order("u-b", 2, 1);
    let c = order("u-c", 2, 1);
    let mut usd = order("u-usd", 2, 1);
    usd.initiator = Currency::from_str("USD").unwrap(); // no rate: cannot be settled
    let lost = Uuid::now_v7(); // a message that did not decode but whose id could be read
    let dead = dtss_sinks::DeadLetter::new(2, 1, Some(lost), "undecodable", "garbage", b"\x01junk");
    let first = batch_of(
        vec![
            settling(0, &a, &rates),
            settling(1, &a, &rates), // the same order twice in one batch
            settling(3, &usd, &rates),
            settling(4, &b, &rates),
        ],
        vec![dead],
        5,
    );
    // A replay of `a` (already settled) at a new offset, and a new order after it.
    let second = batch_of(
        vec![settling(5, &a, &rates), settling(6, &c, &rates)],
        vec![],
        7,
    );
    let mut settlement = dtss_sinks::TransactionPipeline::new(pool.clone(), "orders", 0);
    let got = settle_all(&mut settlement, vec![first, second]).await;
    settlement.flush().await.unwrap();
    let invalid = Some(Reason::InvalidOrder);
    assert_eq!(got, vec![vec![None, invalid, None], vec![None]]);
    let mut conn = pool.get_conn().await.unwrap();
    let results: Vec<(String, Option<String>, i64)> = conn
        .query("SELECT order_id, reason, `offset` FROM result ORDER BY `offset`")
        .await
        .unwrap();
    let want = [
        (a.order_id, None, 0),
        (lost, invalid, 2),
        (usd.order_id, invalid, 3),
        (b.order_id, None, 4),
        (c.order_id, None, 6),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(id, r, o)| (id.to_string(), r.map(|r| r.as_str().to_string()), *o))
        .collect();
    assert_eq!(results, want);
    let dead: Vec<DeadRow> = conn
        .query("SELECT `offset`, order_id, reason, bytes, size FROM dead_letter ORDER BY `offset`")
        .await
        .unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(
        (dead[0].0, dead[0].2.as_str(), &dead[0].3[..], dead[0].4),
        (2, "undecodable", &b"\x01junk"[..], 5)
    );
    assert_eq!((dead[1].0, dead[1].2.as_str()), (3, "unsettleable"));
    assert_eq!(dead[1].1, Some(usd.order_id.to_string()));
    let skipped: Vec<(i64, String)> = conn
        .query("SELECT `offset`, order_id FROM skipped_copy ORDER BY `offset`")
        .await
        .unwrap();
    let a_id = a.order_id.to_string();
    assert_eq!(skipped, vec![(1, a_id.clone()), (5, a_id)]);
    let (inventory, next, orders): (u32, i64, u64) = conn
        .query_first(
            "SELECT (SELECT inventory FROM commodity WHERE id = 2), \
             (SELECT next_offset FROM offsets WHERE `partition` = 0), \
             (SELECT orders FROM totals WHERE `partition` = 0)",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (inventory, next, orders),
        (10 - 3, 7, 3),
        "a, b and c took stock once each"
    );
    drop(conn);
    drop_db(&db, pool, dir).await;
}

#[tokio::test]
async fn a_digest_of_any_bytes_is_stored_as_it_is_and_tells_a_retry() {
    let (db, pool, dir, rates, _shared) = fresh_db("digest_bytes", 2).await;
    // Every byte a LOAD DATA line escapes or reads specially, and `\N` (NULL) spelt out.
    let odd: [[u8; 16]; 2] = [
        *b"\t\n\\\0\\N\rN\x1a\xff\x00\x00\t\n\\\\",
        *b"\\N\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
    ];
    let orders: Vec<Order> = odd
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut o = keyed("u-d", &format!("key-{i}"), 1, 1);
            o.keyed.as_mut().unwrap().digest = *d;
            o
        })
        .collect();
    let batches = vec![
        batch_of(
            vec![
                settling(0, &orders[0], &rates),
                settling(1, &orders[1], &rates),
            ],
            vec![],
            2,
        ),
        // Both sent again: copies of settled orders, told apart by the stored digests.
        batch_of(
            vec![
                settling(2, &orders[0], &rates),
                settling(3, &orders[1], &rates),
            ],
            vec![],
            4,
        ),
    ];
    let mut settlement = dtss_sinks::TransactionPipeline::new(pool.clone(), "orders", 0);
    let got = settle_all(&mut settlement, batches).await;
    settlement.flush().await.unwrap();
    assert_eq!(got, vec![vec![None, None], vec![]]);
    let mut conn = pool.get_conn().await.unwrap();
    let stored: Vec<(String, Vec<u8>)> = conn
        .query("SELECT order_id, digest FROM result")
        .await
        .unwrap();
    let mut want: Vec<(String, Vec<u8>)> = orders
        .iter()
        .map(|o| (o.order_id.to_string(), o.digest().unwrap().to_vec()))
        .collect();
    want.sort();
    let mut stored = stored;
    stored.sort();
    assert_eq!(stored, want);
    let skipped: Vec<i64> = conn
        .query("SELECT `offset` FROM skipped_copy ORDER BY `offset`")
        .await
        .unwrap();
    assert_eq!(skipped, vec![2, 3], "the copies are skipped, not conflicts");
    drop(conn);
    drop_db(&db, pool, dir).await;
}

/// `order` for `user`, sent with idempotency `key`.
fn keyed(user: &str, key: &str, id: u32, number: u32) -> Order {
    OrderRequest {
        user_id: user.into(),
        initiator: Currency::from_str("RMB").unwrap(),
        items: vec![Item { id, number }],
        time: None,
    }
    .accept_keyed(key, model::IdScheme::UserTagged, model::now_ms())
}

#[tokio::test]
async fn a_key_settles_once_and_another_order_under_it_is_a_conflict() {
    let (db, pool, dir, rates, _shared) = fresh_db("idem", 2).await;
    let first = keyed("u-k", "key-1", 2, 3);
    let retry = keyed("u-k", "key-1", 2, 3);
    let other = keyed("u-k", "key-1", 2, 4); // the same key, another order
    let second = keyed("u-k", "key-2", 2, 1);
    assert_eq!(retry.order_id, first.order_id);
    assert_eq!(other.order_id, first.order_id);
    let batches = vec![
        // In one batch: the order, its retry, and another order under its key.
        batch_of(
            vec![
                settling(0, &first, &rates),
                settling(1, &retry, &rates),
                settling(2, &other, &rates),
            ],
            vec![],
            3,
        ),
        // Later batches: both again, after the first committed; then a new key.
        batch_of(vec![settling(3, &retry, &rates)], vec![], 4),
        batch_of(
            vec![settling(4, &other, &rates), settling(5, &second, &rates)],
            vec![],
            6,
        ),
    ];
    let mut settlement = dtss_sinks::TransactionPipeline::new(pool.clone(), "orders", 0);
    let got = settle_all(&mut settlement, batches).await;
    settlement.flush().await.unwrap();
    assert_eq!(got, vec![vec![None], vec![], vec![None]]);
    let mut conn = pool.get_conn().await.unwrap();
    let results: Vec<(String, String, i64, Option<Vec<u8>>)> = conn
        .query("SELECT order_id, items, `offset`, digest FROM result ORDER BY `offset`")
        .await
        .unwrap();
    let digest = |o: &Order| o.digest().map(|d| d.to_vec());
    assert_eq!(
        results,
        vec![
            (first.order_id.to_string(), "2:3".into(), 0, digest(&first)),
            (
                second.order_id.to_string(),
                "2:1".into(),
                5,
                digest(&second)
            ),
        ]
    );
    let skipped: Vec<i64> = conn
        .query("SELECT `offset` FROM skipped_copy ORDER BY `offset`")
        .await
        .unwrap();
    assert_eq!(skipped, vec![1, 3], "the retries are copies");
    let dead: Vec<(i64, String, String)> = conn
        .query("SELECT `offset`, reason, detail FROM dead_letter ORDER BY `offset`")
        .await
        .unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for (d, offset) in dead.iter().zip([2, 4]) {
        assert_eq!((d.0, d.1.as_str()), (offset, "idempotency_conflict"));
        assert!(d.2.contains("\"key-1\""), "{}", d.2);
    }
    let (inventory, orders): (u32, u64) = conn
        .query_first(
            "SELECT (SELECT inventory FROM commodity WHERE id = 2), \
             (SELECT orders FROM totals WHERE `partition` = 0)",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (inventory, orders),
        (10 - 3 - 1, 2),
        "stock moved once per key"
    );
    drop(conn);
    drop_db(&db, pool, dir).await;
}
