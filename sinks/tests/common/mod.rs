//! What the tests against the real MariaDB (dtss services up) share: a database of
//! their own, named after the test, and dropping it.

use mysql_async::prelude::*;

/// A new database's name (after `tag`, the process and the time) and the URL of the
/// `dtss` user on it; nothing is created yet.
pub fn new_database(tag: &str) -> (String, String) {
    let db = format!(
        "dtss_t_{tag}_{}_{}",
        std::process::id(),
        model::now_ms() % 1_000_000
    );
    let pw = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.dtss/mysql-password"
    ))
    .expect("dtss services up ran");
    let url = format!("mysql://dtss:{}@127.0.0.1:3306/{db}", pw.trim());
    (db, url)
}

/// Drop database `db` and close `pool`.
pub async fn drop_database(db: &str, pool: dtss_sinks::Pool) {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();
    drop(conn);
    pool.disconnect().await.unwrap();
}
