use anyhow::{Context, Result};
use model::IdScheme;
use mysql_async::prelude::*;
use mysql_async::{Opts, OptsBuilder};

const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS commodity (
        id INT UNSIGNED NOT NULL PRIMARY KEY,
        name VARCHAR(128) NOT NULL,
        price DECIMAL(20,6) NOT NULL,
        currency CHAR(3) NOT NULL,
        inventory INT UNSIGNED NOT NULL,
        initial_inventory INT UNSIGNED NOT NULL
    ) ENGINE=InnoDB",
    // One row per settled order. `items` is `id:number,…` so every result can be
    // recomputed; `rate_version` names the rate_history snapshot it used. Indexes cost
    // settlement throughput: only the primary key, which also lists a user's orders
    // (user-tagged ids start with the user's tag, `model::ids`). A table the first
    // version created has the index `by_user (user_id, accepted_at)` for that, and
    // keeps it: its ids are untagged.
    "CREATE TABLE IF NOT EXISTS result (
        order_id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
        user_id VARBINARY(256) NOT NULL,
        initiator CHAR(3) NOT NULL,
        success BOOL NOT NULL,
        reason VARCHAR(32) NULL,
        paid DECIMAL(24,2) NOT NULL,
        rate_version BIGINT UNSIGNED NOT NULL,
        epoch BIGINT UNSIGNED NOT NULL,
        items TEXT NOT NULL,
        client_time BIGINT NULL,
        accepted_at BIGINT NOT NULL,
        settled_at BIGINT NOT NULL,
        `partition` INT NOT NULL,
        `offset` BIGINT NOT NULL,
        digest BINARY(16) NULL
    ) ENGINE=InnoDB",
    // Added with idempotency keys: the digest of a keyed order (NULL without a key), to
    // tell a retry from another order under the same key.
    "ALTER TABLE result ADD COLUMN IF NOT EXISTS digest BINARY(16) NULL",
    "CREATE TABLE IF NOT EXISTS offsets (
        topic VARCHAR(249) NOT NULL,
        `partition` INT NOT NULL,
        next_offset BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (topic, `partition`)
    ) ENGINE=InnoDB",
    // The least epoch the partition had not closed when its last transaction's orders
    // were handed over: no order after `next_offset` goes to an epoch before it.
    "ALTER TABLE offsets ADD COLUMN IF NOT EXISTS next_epoch BIGINT UNSIGNED NOT NULL DEFAULT 0",
    // One row per settlement transaction: when it began and when its COMMIT returned
    // (written with the partition's next transaction). `dtss bench` reads an order's
    // end-to-end latency from here: `result.settled_at` is stamped before the batch's
    // rows are written.
    "CREATE TABLE IF NOT EXISTS settle_batches (
        `partition` INT NOT NULL,
        next_offset BIGINT NOT NULL,
        first_offset BIGINT NOT NULL,
        orders INT UNSIGNED NOT NULL,
        started_at BIGINT NOT NULL,
        committed_at BIGINT NOT NULL,
        PRIMARY KEY (`partition`, next_offset)
    ) ENGINE=InnoDB",
    // Every rate snapshot the dataflow applied: all currencies at `version`,
    // in force for orders of epoch >= from_epoch until the next version.
    "CREATE TABLE IF NOT EXISTS rate_history (
        version BIGINT UNSIGNED NOT NULL,
        currency CHAR(3) NOT NULL,
        rate DECIMAL(24,8) NOT NULL,
        from_epoch BIGINT UNSIGNED NOT NULL,
        recorded_at BIGINT NOT NULL,
        PRIMARY KEY (version, currency)
    ) ENGINE=InnoDB",
    // Running totals per partition and initiator currency, updated in the same
    // transaction as the results: the total of C is the sum over partitions.
    "CREATE TABLE IF NOT EXISTS totals (
        `partition` INT NOT NULL,
        currency CHAR(3) NOT NULL,
        total DECIMAL(30,2) NOT NULL,
        orders BIGINT UNSIGNED NOT NULL,
        PRIMARY KEY (`partition`, currency)
    ) ENGINE=InnoDB",
    // A message read from the topic that could not be settled (it did not decode, it
    // failed validation, or its amount cannot be computed or stored), written in the
    // transaction that moves its partition's offset past it. `bytes` holds the first
    // 4 KiB of the message, `size` its length.
    "CREATE TABLE IF NOT EXISTS dead_letter (
        topic VARCHAR(249) NOT NULL,
        `partition` INT NOT NULL,
        `offset` BIGINT NOT NULL,
        order_id CHAR(36) CHARACTER SET ascii NULL,
        reason VARCHAR(32) NOT NULL,
        detail VARCHAR(1024) NOT NULL,
        bytes VARBINARY(4096) NOT NULL,
        size INT UNSIGNED NOT NULL,
        recorded_at BIGINT NOT NULL,
        PRIMARY KEY (topic, `partition`, `offset`)
    ) ENGINE=InnoDB",
    // A message whose order id already had a result (a producer retry, a re-produce, a
    // replay): skipped, and kept here so that every offset is accounted for.
    "CREATE TABLE IF NOT EXISTS skipped_copy (
        topic VARCHAR(249) NOT NULL,
        `partition` INT NOT NULL,
        `offset` BIGINT NOT NULL,
        order_id CHAR(36) CHARACTER SET ascii NOT NULL,
        recorded_at BIGINT NOT NULL,
        PRIMARY KEY (topic, `partition`, `offset`)
    ) ENGINE=InnoDB",
    // A partition whose reader met a message of a newer wire format than it reads: it
    // waits there (nothing skipped) until the workers are upgraded. Cleared when the
    // partition's worker starts.
    "CREATE TABLE IF NOT EXISTS held_partition (
        topic VARCHAR(249) NOT NULL,
        `partition` INT NOT NULL,
        `offset` BIGINT NOT NULL,
        format_version INT UNSIGNED NOT NULL,
        since BIGINT NOT NULL,
        PRIMARY KEY (topic, `partition`)
    ) ENGINE=InnoDB",
    // Facts about the database fixed when it was created: `order_ids`, the id scheme
    // (`model::IdScheme`).
    "CREATE TABLE IF NOT EXISTS meta (
        name VARCHAR(64) CHARACTER SET ascii NOT NULL PRIMARY KEY,
        value VARCHAR(255) NOT NULL
    ) ENGINE=InnoDB",
    // A loss of the broker's log that an operator accepted (`dtss broker --accept-loss`):
    // the log of a partition ended at `log_end` while MySQL had settled up to `settled`;
    // the log went on at `settled`, so no offset names two orders. Orders acknowledged
    // after `settled` and not settled before the loss are gone.
    "CREATE TABLE IF NOT EXISTS lost_log (
        topic VARCHAR(249) NOT NULL,
        `partition` INT NOT NULL,
        log_end BIGINT NOT NULL,
        settled BIGINT NOT NULL,
        recorded_at BIGINT NOT NULL,
        PRIMARY KEY (topic, `partition`, settled)
    ) ENGINE=InnoDB",
    // How far each partition's skipped copies and dead letters were pruned (`prune`):
    // every such row below `below` may be gone; `gaps` offsets below it are accounted for
    // by pruned rows alone (the checker counts them).
    "CREATE TABLE IF NOT EXISTS pruned (
        topic VARCHAR(249) NOT NULL,
        `partition` INT NOT NULL,
        below BIGINT NOT NULL,
        gaps BIGINT NOT NULL,
        skipped BIGINT UNSIGNED NOT NULL,
        dead BIGINT UNSIGNED NOT NULL,
        PRIMARY KEY (topic, `partition`)
    ) ENGINE=InnoDB",
    // What the dataflow last published: cumulative totals complete up to an epoch.
    "CREATE TABLE IF NOT EXISTS totals_published (
        currency CHAR(3) NOT NULL PRIMARY KEY,
        total DECIMAL(30,2) NOT NULL,
        orders BIGINT UNSIGNED NOT NULL,
        complete_epoch BIGINT UNSIGNED NOT NULL,
        published_at BIGINT NOT NULL
    ) ENGINE=InnoDB",
];

/// Create the database named in the URLs and every table, if missing, through the first
/// node that answers (a cluster replicates the schema to the others).
pub async fn ensure_schema<S: AsRef<str>>(urls: &[S]) -> Result<()> {
    let mut failed = None;
    for url in urls {
        match ensure_schema_at(url.as_ref()).await {
            Ok(()) => return Ok(()),
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| anyhow::anyhow!("no MySQL URL given")))
}

async fn ensure_schema_at(url: &str) -> Result<()> {
    let opts = Opts::from_url(url)
        .with_context(|| format!("mysql.url {:?} does not parse", model::redact_url(url)))?;
    let db = opts
        .db_name()
        .context("mysql.url must name a database, e.g. mysql://dtss@127.0.0.1:3306/dtss")?
        .to_string();
    let server = OptsBuilder::from_opts(opts.clone()).db_name(None::<String>);
    let mut conn = mysql_async::Conn::new(server).await.with_context(|| {
        format!("cannot connect to MySQL at {url}: is it running? (dtss services up)")
    })?;
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS `{}`",
        db.replace('`', "")
    ))
    .await
    .context("CREATE DATABASE")?;
    conn.query_drop(format!("USE `{}`", db.replace('`', "")))
        .await?;
    for t in TABLES {
        conn.query_drop(*t)
            .await
            .with_context(|| format!("creating the schema: {}", first_line(t)))?;
    }
    record_id_scheme(&mut conn).await?;
    conn.disconnect().await.ok();
    Ok(())
}

/// Record the database's id scheme once: untagged where `result` has the first
/// version's `by_user` index (its ids are untagged and that index lists them),
/// user-tagged otherwise. Never changed afterwards: ids, and so idempotency, stay as
/// they were.
async fn record_id_scheme(conn: &mut mysql_async::Conn) -> Result<()> {
    let by_user: Option<u8> = conn
        .query_first(
            "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'result' AND INDEX_NAME = 'by_user' LIMIT 1",
        )
        .await
        .context("looking for the result table's by_user index")?;
    let scheme = match by_user {
        Some(_) => IdScheme::Untagged,
        None => IdScheme::UserTagged,
    };
    conn.exec_drop(
        "INSERT IGNORE INTO meta (name, value) VALUES ('order_ids', ?)",
        (scheme.as_str(),),
    )
    .await
    .context("recording the id scheme")
}

/// How this database's order ids are made (`model::ids`), as `dtss init` recorded it.
pub async fn id_scheme(pool: &crate::Pool) -> Result<IdScheme> {
    let value: Option<String> = pool
        .get_conn()
        .await?
        .query_first("SELECT value FROM meta WHERE name = 'order_ids'")
        .await
        .context("reading the id scheme (does the schema exist? run `dtss init`)")?;
    let value = value.context("the database records no id scheme: run `dtss init`")?;
    IdScheme::parse(&value).with_context(|| {
        format!("the database's id scheme {value:?} is unknown to this build: upgrade DTSS")
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
