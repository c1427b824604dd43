//! The id scheme against the real MariaDB (dtss services up): a database `dtss
//! init` creates gets user-tagged ids and lists a user's orders by the primary key's
//! range; a database of the first version keeps untagged ids and its `by_user` index.

mod common;

use model::ids::user_tag;
use model::IdScheme;
use mysql_async::prelude::*;

/// A database named after `tag`, its URL, and a pool on it (nothing created yet).
fn new_db(tag: &str) -> (String, String, dtss_sinks::Pool) {
    let (db, url) = common::new_database(tag);
    let pool = dtss_sinks::connect(&[&url], 2).unwrap();
    (db, url, pool)
}

async fn run(pool: &dtss_sinks::Pool, sql: &str) {
    pool.get_conn()
        .await
        .unwrap()
        .query_drop(sql)
        .await
        .unwrap();
}

/// A result row for `user` with id `id`, accepted at `at`.
async fn insert(pool: &dtss_sinks::Pool, id: model::Uuid, user: &str, at: i64) {
    pool.get_conn()
        .await
        .unwrap()
        .exec_drop(
            "INSERT INTO result (order_id, user_id, initiator, success, reason, paid, \
             rate_version, epoch, items, client_time, accepted_at, settled_at, `partition`, \
             `offset`) VALUES (?, ?, 'RMB', 1, NULL, 1.00, 1, 1, '1:1', NULL, ?, ?, 0, 0)",
            (id.to_string(), user, at, at + 5),
        )
        .await
        .unwrap();
}

/// Two user ids with the same tag, found by trying.
fn users_sharing_a_tag() -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for i in 0.. {
        let user = format!("u-{i}");
        if let Some(other) = seen.insert(user_tag(&user), user.clone()) {
            return (other, user);
        }
    }
    unreachable!()
}

async fn listed(pool: &dtss_sinks::Pool, user: &str, limit: u32) -> Vec<(String, i64)> {
    dtss_sinks::results_by_user(pool, user, limit)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.user_id, user);
            (r.order_id, r.accepted_at)
        })
        .collect()
}

#[tokio::test]
async fn a_new_database_lists_a_users_orders_by_the_tag_of_its_ids() {
    let (db, url, pool) = new_db("tagged");
    dtss_sinks::ensure_schema(&[&url]).await.unwrap();
    dtss_sinks::ensure_schema(&[&url]).await.unwrap(); // idempotent
    assert_eq!(
        dtss_sinks::id_scheme(&pool).await.unwrap(),
        IdScheme::UserTagged
    );
    let mut conn = pool.get_conn().await.unwrap();
    let indexes: Vec<String> = conn
        .query("SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'result'")
        .await
        .unwrap();
    assert_eq!(indexes, ["PRIMARY"], "no index besides the primary key");
    drop(conn);

    // Two users of one tag, and a third: each lists exactly its own, newest first.
    let (a, b) = users_sharing_a_tag();
    let c = "someone-else";
    let mut expected: std::collections::HashMap<&str, Vec<(String, i64)>> = Default::default();
    for i in 0..12i64 {
        for user in [a.as_str(), b.as_str(), c] {
            let id = if i % 2 == 0 {
                IdScheme::UserTagged.fresh(user)
            } else {
                IdScheme::UserTagged.keyed(user, &format!("key-{i}"))
            };
            let at = 1_000 + i * 10;
            insert(&pool, id, user, at).await;
            expected.entry(user).or_default().push((id.to_string(), at));
        }
    }
    for (user, mut orders) in expected {
        orders.reverse();
        assert_eq!(listed(&pool, user, 100).await, orders, "{user}");
        assert_eq!(listed(&pool, user, 5).await, orders[..5], "{user}");
    }
    assert!(listed(&pool, "nobody", 10).await.is_empty());
    common::drop_database(&db, pool).await;
}

#[tokio::test]
async fn a_database_of_the_first_version_keeps_untagged_ids_and_its_index() {
    let (db, url, pool) = new_db("untagged");
    // The result table as the first version created it.
    let server = url.rsplit_once('/').unwrap().0.to_string();
    let server = mysql_async::Pool::new(server.as_str());
    let mut conn = server.get_conn().await.unwrap();
    conn.query_drop(format!(
        "CREATE DATABASE {db}; CREATE TABLE {db}.result (
            order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
            user_id VARBINARY(256) NOT NULL, initiator CHAR(3) NOT NULL, success BOOL NOT NULL,
            reason VARCHAR(32) NULL, paid DECIMAL(24,2) NOT NULL,
            rate_version BIGINT UNSIGNED NOT NULL, epoch BIGINT UNSIGNED NOT NULL,
            items TEXT NOT NULL, client_time BIGINT NULL, accepted_at BIGINT NOT NULL,
            settled_at BIGINT NOT NULL, `partition` INT NOT NULL, `offset` BIGINT NOT NULL,
            KEY by_user (user_id, accepted_at)) ENGINE=InnoDB"
    ))
    .await
    .unwrap();
    drop(conn);
    server.disconnect().await.unwrap();
    dtss_sinks::ensure_schema(&[&url]).await.unwrap();
    assert_eq!(
        dtss_sinks::id_scheme(&pool).await.unwrap(),
        IdScheme::Untagged
    );
    let (a, b) = users_sharing_a_tag();
    for i in 0..4i64 {
        insert(&pool, IdScheme::Untagged.fresh(&a), &a, 100 + i).await;
        insert(
            &pool,
            IdScheme::Untagged.keyed(&b, &format!("k{i}")),
            &b,
            200 + i,
        )
        .await;
    }
    let times = |l: Vec<(String, i64)>| l.into_iter().map(|(_, t)| t).collect::<Vec<_>>();
    assert_eq!(times(listed(&pool, &a, 10).await), [103, 102, 101, 100]);
    assert_eq!(times(listed(&pool, &b, 3).await), [203, 202, 201]);
    // Recorded once: dropping the index later does not change how ids are made.
    run(&pool, "ALTER TABLE result DROP INDEX by_user").await;
    dtss_sinks::ensure_schema(&[&url]).await.unwrap();
    assert_eq!(
        dtss_sinks::id_scheme(&pool).await.unwrap(),
        IdScheme::Untagged
    );
    common::drop_database(&db, pool).await;
}

#[tokio::test]
async fn a_database_without_a_recorded_scheme_says_to_run_init() {
    let (db, url, pool) = new_db("noscheme");
    dtss_sinks::ensure_schema(&[&url]).await.unwrap();
    for (sql, advice) in [
        ("DELETE FROM meta", "dtss init"),
        (
            "INSERT INTO meta VALUES ('order_ids', 'from-the-future')",
            "upgrade",
        ),
    ] {
        run(&pool, sql).await;
        let e = dtss_sinks::id_scheme(&pool).await.unwrap_err();
        assert!(format!("{e:#}").contains(advice), "{e:#}");
    }
    common::drop_database(&db, pool).await;
}
