//! One MySQL transaction per batch: write the results, lock the partition's offsets
//! row and the batch's commodity rows in id order, decide every order in offset order,
//! write stock, the totals delta and the partition's next offset, commit. Retried on
//! any failure; the stored offset makes a retry after an ambiguous commit a no-op, so
//! nothing is applied twice.
//!
//! Workers of different partitions touch the same commodities, so their transactions
//! queue on those row locks. To keep the locked part short, the result rows are written
//! first, from decisions against the worker's last view of the stock (`SettleState`);
//! then the rows are locked, every order is decided again against the locked stock,
//! and the few results whose decision changed are corrected, all before the commit.
//! The whole transaction is three round trips (see `settle_on`), and the locks are held
//! for one of them. `Settlement` keeps two transactions of a partition in flight: the
//! next one writes its results while the one before commits.
//!
//! Once the view holds every commodity of a batch, the batch is decided against it
//! without reading the commodities: the stock UPDATE locks each of them and changes it
//! only if it still holds what the view said, and the commit happens only if every one
//! did (`Open::left`). With one partition the view is always right, and a batch's
//! commodities cost MariaDB one statement instead of two (the locking read was a fifth
//! of its CPU direct from Kafka). A stale view costs the batch a second
//! attempt under locks, and the next batches lock too, for longer after each miss.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use model::{decide, now_ms, Commodity, Currency, Decimal, Order, RateTable, Reason};
use mysql_async::prelude::*;
use mysql_async::Pool;

/// An order ready to settle: where it was read, its epoch and the rates of that epoch.
pub struct Settling<'a> {
    pub offset: i64,
    pub epoch: u64,
    pub order: &'a Order,
    pub rates: &'a RateTable,
}

/// What was committed for one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub order_id: model::Uuid,
    pub initiator: Currency,
    pub epoch: u64,
    pub reason: Option<Reason>,
    pub paid: Decimal,
    pub accepted_at: i64,
    pub settled_at: i64,
}

/// What a partition's settlement carries from one batch to the next: its last view of
/// the commodities it settled against (as of its last commit, or as read without
/// locks: only a guess, checked under the lock), and the commit record of its last
/// batch, written with the next batch (or by `flush`).
#[derive(Default)]
pub struct SettleState {
    stock: HashMap<u32, Commodity>,
    unrecorded: Option<Committed>,
    /// Results go in as INSERTs: the server refused LOAD DATA LOCAL.
    insert_results: bool,
    /// Batches still to settle under locks before the view is trusted again (see
    /// `Open::left`), and what that count becomes when the view next turns out stale:
    /// it doubles each time (a cluster whose partitions share commodities ends up
    /// locking), and a batch settled from the view resets it.
    locked_batches: u32,
    stale_penalty: u32,
    /// Batches committed from the view alone, checked by the stock UPDATE.
    verified: u64,
    /// Times the view was found stale by that check.
    stale: u64,
}

/// One settlement transaction, as kept in `settle_batches`: its partition's offsets
/// `first_offset..next_offset`, its number of orders, when it began (the `settled_at`
/// of its results, stamped before their rows are written) and when its COMMIT
/// returned. An order's end-to-end latency is `committed_at − accepted_at` of the batch
/// holding its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Committed {
    partition: i32,
    first_offset: i64,
    next_offset: i64,
    orders: u32,
    started_at: i64,
    committed_at: i64,
}

impl Committed {
    /// The statement that records it (numbers only; INSERT IGNORE: a retry after an
    /// ambiguous commit may write it twice).
    fn insert_sql(&self) -> String {
        format!(
            "INSERT IGNORE INTO settle_batches \
             (`partition`, next_offset, first_offset, orders, started_at, committed_at) \
             VALUES ({},{},{},{},{},{})",
            self.partition,
            self.next_offset,
            self.first_offset,
            self.orders,
            self.started_at,
            self.committed_at
        )
    }
}

impl SettleState {
    /// How many batches were committed from the view alone: their commodities were not
    /// read under locks, the stock UPDATE checked that each still held what the view
    /// said (see `Open::left`).
    pub fn verified_batches(&self) -> u64 {
        self.verified
    }

    /// How many times a batch decided against the view found it stale (and was settled
    /// again under locks).
    pub fn stale_views(&self) -> u64 {
        self.stale
    }

    /// A transaction failed after its decisions went into the view, or the view turned
    /// out stale (`stale`): forget it, it is read again (and the next batches lock).
    fn distrust(&mut self, stale: bool) {
        self.stock.clear();
        if stale {
            self.stale += 1;
            self.stale_penalty = (self.stale_penalty * 2).clamp(4, 1024);
            self.locked_batches = self.stale_penalty;
        }
    }

    /// Write the last batch's commit record now: the settlement thread calls this when
    /// no batch has followed for a while, and before it stops.
    pub async fn flush(&mut self, pool: &Pool) -> Result<()> {
        if let Some(c) = self.unrecorded {
            let mut conn = pool.get_conn().await?;
            conn.query_drop(c.insert_sql())
                .await
                .context("recording a batch's commit time")?;
            self.unrecorded = None;
        }
        Ok(())
    }
}

/// Create the partition's `offsets` row and its `totals` rows (one per currency) if
/// missing, so the settlement transaction only ever updates rows that exist.
pub async fn prepare_partition(
    pool: &Pool,
    topic: &str,
    partition: i32,
    currencies: &[Currency],
) -> Result<()> {
    let mut conn = pool.get_conn().await?;
    conn.exec_drop(
        "INSERT IGNORE INTO offsets (topic, `partition`, next_offset, updated_at) VALUES (?, ?, 0, ?)",
        (topic, partition, now_ms()),
    )
    .await
    .context("creating the offsets row")?;
    for c in currencies {
        conn.exec_drop(
            "INSERT IGNORE INTO totals (`partition`, currency, total, orders) VALUES (?, ?, 0, 0)",
            (partition, c.as_str()),
        )
        .await
        .context("creating a totals row")?;
    }
    Ok(())
}

/// Settle `batch` (offset order, one partition) and store `next_offset` for the
/// partition, atomically. Orders below the offset already stored were committed
/// before (an ambiguous commit, or a replay) and are skipped. Retries until it
/// commits: while MySQL is down the caller waits here, and so stops reading Kafka.
pub async fn settle_batch(
    pool: &Pool,
    topic: &str,
    partition: i32,
    batch: &[Settling<'_>],
    next_offset: i64,
    state: &mut SettleState,
) -> Result<Vec<Outcome>> {
    let job = Job::new(topic, partition, batch, next_offset);
    settle_with_retries(pool, job, state, now_ms(), false).await
}

/// `settle_batch`, for a batch that may have been committed already by an attempt whose
/// answer was lost (`commit_sent`): then its outcomes are read back and reported.
async fn settle_with_retries(
    pool: &Pool,
    job: Job<'_, '_>,
    state: &mut SettleState,
    started_at: i64,
    mut commit_sent: bool,
) -> Result<Vec<Outcome>> {
    let mut backoff = Backoff::default();
    for attempt in 1.. {
        match attempt_batch(pool, job, state, &mut commit_sent).await {
            Ok(out) => {
                if commit_sent {
                    state.unrecorded = Some(job.record(started_at, now_ms()));
                }
                return Ok(out);
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => backoff.wait(job, attempt, &e).await,
            Err(Failure::Stale(e)) => {
                tracing::debug!(
                    partition = job.partition,
                    "settling again under locks: {e:#}"
                );
                state.distrust(true);
            }
        }
    }
    unreachable!()
}

/// The wait before another attempt: 20 ms, doubling up to 2 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(20))
    }
}

impl Backoff {
    /// Say why attempt `attempt` at `job` failed, and wait.
    async fn wait(&mut self, job: Job<'_, '_>, attempt: u32, e: &anyhow::Error) {
        tracing::warn!(
            partition = job.partition,
            attempt,
            orders = job.batch.len(),
            "settlement transaction failed, retrying in {:?}: {e:#}",
            self.0
        );
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}

enum Failure {
    /// A database problem (deadlock, lost connection, server down): try again.
    Retry(anyhow::Error),
    /// The stock the batch was decided against (the view) was not the stock in MySQL:
    /// settle it again under locks.
    Stale(anyhow::Error),
    /// The batch itself cannot be settled (e.g. a rate missing): stop.
    Fatal(anyhow::Error),
}

impl From<mysql_async::Error> for Failure {
    fn from(e: mysql_async::Error) -> Self {
        Failure::Retry(e.into())
    }
}

/// One batch, as `settle_batch` was given it.
#[derive(Clone, Copy)]
struct Job<'a, 'b> {
    topic: &'a str,
    partition: i32,
    batch: &'a [Settling<'b>],
    next_offset: i64,
}

impl<'a, 'b> Job<'a, 'b> {
    fn new(topic: &'a str, partition: i32, batch: &'a [Settling<'b>], next_offset: i64) -> Self {
        Job {
            topic,
            partition,
            batch,
            next_offset,
        }
    }

    fn record(&self, started_at: i64, committed_at: i64) -> Committed {
        Committed {
            partition: self.partition,
            first_offset: self.batch.first().map_or(self.next_offset, |s| s.offset),
            next_offset: self.next_offset,
            orders: self.batch.len() as u32,
            started_at,
            committed_at,
        }
    }
}

/// A connection whose transaction failed: rolled back. If even that fails, it keeps its
/// reset on: when it is dropped the pool resets it, or discards it if that fails too.
async fn abandon(conn: &mut mysql_async::Conn) {
    if conn.query_drop("ROLLBACK").await.is_ok() {
        conn.reset_connection(false);
    }
}

async fn attempt_batch(
    pool: &Pool,
    job: Job<'_, '_>,
    state: &mut SettleState,
    commit_sent: &mut bool,
) -> Result<Vec<Outcome>, Failure> {
    let mut conn = pool.get_conn().await?;
    // The transaction is begun and ended by statements inside multi-statements, which
    // mysql_async does not track: should this future be dropped half way, the pool must
    // reset the connection (rolling back) rather than hand on an open transaction.
    conn.reset_connection(true);
    let out = settle_on(&mut conn, job, state, commit_sent).await;
    match &out {
        Ok(_) => conn.reset_connection(false),
        Err(_) => abandon(&mut conn).await,
    }
    out
}

/// The transaction, in three round trips:
///
/// 1. `START TRANSACTION` and the result rows as decided against the worker's view
///    (`write_results`): none of these rows exists unless part of the batch was
///    committed before, and then the batch goes the slow way, locking the partition's
///    offsets row and reading the stored offset first;
/// 2. lock the partition's offsets row and the batch's commodities, and read them
///    (`lock_rows`; only the offsets row when the batch is decided against the view);
///    the stored offset must not lie beyond the batch's first;
/// 3. correct the results whose decision changed under the lock, write stock (checking
///    each commodity against the view when it was not locked), the totals delta, the
///    last batch's commit record and the next offset, `COMMIT`.
///
/// The locks are held from 2 to the end of 3: one round trip. Checks that need a row
/// count are made by the server (strict mode: writing NULL into a NOT NULL column is an
/// error, and no statement after it runs): the next offset is written only if every
/// correction and stock update touched one row.
async fn settle_on(
    conn: &mut mysql_async::Conn,
    job: Job<'_, '_>,
    state: &mut SettleState,
    commit_sent: &mut bool,
) -> Result<Vec<Outcome>, Failure> {
    let open = match open_on(conn, job, state, Expect::NotBeyondFirst, *commit_sent).await? {
        Opening::Open(open) => open,
        Opening::Committed(outcomes) => return Ok(outcomes),
    };
    let decided = decide_open(job, open, state)?;
    finish_on(conn, job.partition, &decided, commit_sent).await?;
    Ok(state.committed(decided))
}

/// What the stored offset must be for a batch to go on.
#[derive(Clone, Copy)]
enum Expect {
    /// At most the batch's first offset (nothing of it committed): the batch is the
    /// first this process settles since it started, or the one before is done.
    NotBeyondFirst,
    /// Exactly this: the `next_offset` of the batch before, committing meanwhile.
    /// Anything else means that batch did not commit, and this one must wait for it.
    Exactly(i64),
}

/// A transaction that has written its results and holds the partition's offsets row
/// and the batch's commodities: left to do are the decisions and the commit.
struct Open {
    /// The index in the batch of the first order not committed before.
    todo_from: usize,
    /// The decisions of `batch[todo_from..]` as the results were written.
    guessed: Vec<model::Decision>,
    settled_at: i64,
    /// The batch's commodities as locked, or as the view has them (`left`).
    stock: HashMap<u32, Commodity>,
    /// Some when the commodities were not locked and read (the batch is "verified"): it
    /// is decided against the view, as `guessed` already did, leaving the stock this
    /// holds; the stock UPDATE checks every one of the batch's commodities (changed or
    /// not) against the view, locking it as it does, and the commit happens only if all
    /// of them matched. One statement per commodity fewer, no read of them, and no
    /// second decision of each order when the view is right, as it is while this
    /// partition is the only one changing them.
    left: Option<HashMap<u32, Commodity>>,
}

enum Opening {
    Open(Open),
    /// Committed before, by an attempt whose answer was lost: its outcomes.
    Committed(Vec<Outcome>),
}

/// Round trips 1 and 2 of the transaction (see `settle_on`). With `Expect::Exactly` a
/// batch whose results exist already is not settled the slow way: a Retry.
async fn open_on(
    conn: &mut mysql_async::Conn,
    job: Job<'_, '_>,
    state: &mut SettleState,
    expect: Expect,
    commit_sent: bool,
) -> Result<Opening, Failure> {
    let Job {
        topic,
        partition,
        batch,
        next_offset,
    } = job;
    let topic_hex = Hex(topic.as_bytes()).to_string();
    let ids = batch_ids(batch);
    // Commodities the view lacks are read without locks (first batches only), and the
    // batch locks them.
    let unseen: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| !state.stock.contains_key(id))
        .collect();
    let verified = unseen.is_empty() && state.locked_batches == 0;
    if !unseen.is_empty() {
        let sql = format!(
            "SELECT id, price, currency, inventory FROM commodity WHERE id IN ({})",
            join(unseen.iter())
        );
        state.stock.extend(commodities(conn.query(sql).await?)?);
    }
    let settled_at = now_ms();

    // 1. Begin and insert the results as guessed. READ COMMITTED (the session's level,
    //    set by `connect`): no gap locks; FOR UPDATE still locks every row it reads, and
    //    rows are always locked offsets → commodities (by id) → own totals, so two
    //    transactions can wait on each other but never deadlock. The new result rows
    //    (before the offsets row; after it the slow way) are no other transaction's.
    //    Multi-statements go through query_drop, never query_iter: iterating a
    //    multi-statement result loses an error of a later statement (mysql_async 0.37);
    //    query_drop returns it, and the server runs none of the statements after it.
    let begin = "START TRANSACTION; SET @n = 0, @c = 0";
    let mut todo_from = 0;
    let (mut guessed, mut left) = guess(batch, &ids, state)?;
    let fast = !batch.is_empty()
        && write_results(
            conn,
            &format!("{begin}; "),
            batch,
            &guessed,
            partition,
            settled_at,
            state,
        )
        .await?;
    if !fast {
        if !batch.is_empty() {
            // Some of these results exist: part of the batch was committed before.
            tracing::debug!(partition, "part of the batch was committed before");
            conn.query_drop("ROLLBACK").await?;
            if let Expect::Exactly(_) = expect {
                return Err(Failure::Retry(anyhow::anyhow!(
                    "partition {partition}: results of the batch exist already"
                )));
            }
        }
        // The slow way: lock the offsets row, settle only what lies at or above it.
        conn.query_drop(begin).await?;
        let stored: Option<i64> = conn
            .query_first(format!(
                "SELECT next_offset FROM offsets WHERE topic = X'{topic_hex}' AND `partition` = {partition} FOR UPDATE"
            ))
            .await?;
        let Some(stored) = stored else {
            return Err(no_offsets_row(topic, partition));
        };
        if next_offset <= stored {
            conn.query_drop("ROLLBACK").await?;
            // Committed already. By an earlier attempt of this call whose answer was
            // lost: its outcomes were never reported, so read them back. Otherwise it
            // was reported before (or by another run), and reporting it again would
            // count twice.
            if !commit_sent {
                return Ok(Opening::Committed(vec![]));
            }
            return committed_outcomes(conn, batch)
                .await
                .map(Opening::Committed);
        }
        todo_from = batch.partition_point(|s| s.offset < stored);
        let todo = &batch[todo_from..];
        (guessed, left) = guess(todo, &ids, state)?;
        if !todo.is_empty()
            && !write_results(conn, "", todo, &guessed, partition, settled_at, state).await?
        {
            return Err(Failure::Fatal(anyhow::anyhow!(
                "partition {partition}: results exist for orders at or above the stored offset {stored}"
            )));
        }
    }
    let first_todo = batch.get(todo_from).map_or(next_offset, |s| s.offset);

    // 2. Lock the offsets row and the commodities (in id order), or only the offsets
    //    row when the stock UPDATE checks the view.
    let none = BTreeSet::new();
    let lock = if verified { &none } else { &ids };
    let (stored, mut stock) = lock_rows(conn, &topic_hex, partition, lock).await?;
    if verified {
        stock.extend(ids.iter().map(|id| (*id, state.stock[id])));
    }
    let Some(stored) = stored else {
        return Err(no_offsets_row(topic, partition));
    };
    match expect {
        Expect::NotBeyondFirst if stored > first_todo => {
            return Err(Failure::Fatal(anyhow::anyhow!(
                "partition {partition}: the stored offset {stored} lies beyond the batch's first                  unsettled order at {first_todo}, yet its results did not exist"
            )))
        }
        Expect::Exactly(want) if stored != want => {
            return Err(Failure::Retry(anyhow::anyhow!(
                "partition {partition}: the stored offset is {stored}, not {want}: the batch                  before did not commit"
            )))
        }
        _ => {}
    }
    Ok(Opening::Open(Open {
        todo_from,
        guessed,
        settled_at,
        stock,
        left: verified.then_some(left),
    }))
}

fn no_offsets_row(topic: &str, partition: i32) -> Failure {
    Failure::Fatal(anyhow::anyhow!(
        "offsets row ({topic}, {partition}) is missing: run prepare_partition first"
    ))
}

fn batch_ids(batch: &[Settling<'_>]) -> BTreeSet<u32> {
    batch
        .iter()
        .flat_map(|s| s.order.items.iter().map(|it| it.id))
        .collect()
}

/// Lock the partition's offsets row and then the commodities `ids` (in id order: a range
/// scan of the primary key; in a join's ON clause MariaDB keeps a long IN list a range,
/// where in a WHERE clause it turns 1,000 or more values into a temporary table), and
/// read them: the stored offset (None: no offsets row) and the commodities that exist.
async fn lock_rows(
    conn: &mut mysql_async::Conn,
    topic_hex: &str,
    partition: i32,
    ids: &BTreeSet<u32>,
) -> Result<(Option<i64>, HashMap<u32, Commodity>), Failure> {
    let sql = if ids.is_empty() {
        format!(
            "SELECT next_offset, NULL, NULL, NULL, NULL FROM offsets \
             WHERE topic = X'{topic_hex}' AND `partition` = {partition} FOR UPDATE"
        )
    } else {
        format!(
            "SELECT o.next_offset, c.id, c.price, c.currency, c.inventory \
             FROM offsets o LEFT JOIN commodity c ON c.id IN ({}) \
             WHERE o.topic = X'{topic_hex}' AND o.`partition` = {partition} FOR UPDATE",
            join(ids.iter())
        )
    };
    type Row = (
        i64,
        Option<u32>,
        Option<Decimal>,
        Option<String>,
        Option<u32>,
    );
    let rows: Vec<Row> = conn.query(sql).await?;
    let stored = rows.first().map(|r| r.0);
    let found = rows
        .into_iter()
        .filter_map(|(_, id, price, currency, inventory)| {
            Some((id?, price?, currency?, inventory?))
        })
        .collect();
    Ok((stored, commodities(found)?.into_iter().collect()))
}

/// Decide the open batch's orders again against the locked stock, and write round trip 3.
struct Decided {
    /// Round trip 3, ending with COMMIT.
    sql: String,
    outcomes: Vec<Outcome>,
    /// The batch's commodities as it leaves them.
    stock: HashMap<u32, Commodity>,
    corrected: usize,
    changed: usize,
    /// Decided against the view, which the stock UPDATE checks (`Open::left`).
    verified: bool,
}

fn decide_open(job: Job<'_, '_>, open: Open, state: &SettleState) -> Result<Decided, Failure> {
    let Job {
        topic,
        partition,
        batch,
        next_offset,
    } = job;
    let topic_hex = Hex(topic.as_bytes()).to_string();
    let Open {
        todo_from,
        guessed,
        settled_at,
        mut stock,
        left,
    } = open;
    let todo = &batch[todo_from..];
    let before: HashMap<u32, u32> = stock.iter().map(|(id, c)| (*id, c.inventory)).collect();
    let verified = left.is_some();
    let mut outcomes = Vec::with_capacity(todo.len());
    let mut sql = String::with_capacity(1024);
    let mut corrected = 0;
    for (s, g) in todo.iter().zip(&guessed) {
        // Verified: the guesses were made against this very stock.
        let d = if verified {
            *g
        } else {
            decide(s.order, &mut stock, s.rates)
                .with_context(|| format!("order {} at offset {}", s.order.order_id, s.offset))
                .map_err(Failure::Fatal)?
        };
        if d != *g {
            write!(
                sql,
                "UPDATE result SET success = {}, reason = {}, paid = {} WHERE order_id = '{}'; \
                 SET @c = @c + ROW_COUNT(); ",
                d.reason.is_none(),
                reason_sql(d.reason),
                d.paid,
                s.order.order_id.hyphenated()
            )
            .unwrap();
            corrected += 1;
        }
        outcomes.push(Outcome {
            order_id: s.order.order_id,
            initiator: s.order.initiator,
            epoch: s.epoch,
            reason: d.reason,
            paid: d.paid,
            accepted_at: s.order.accepted_at,
            settled_at,
        });
    }

    if let Some(left) = left {
        stock = left;
    }

    // 3. Everything else and COMMIT, in one round trip.
    // (id, inventory before, after): the commodities that change, or all of the batch's
    // when they were not locked (`verified`).
    let mut changed: Vec<(u32, u32, u32)> = stock
        .iter()
        .filter(|(id, c)| verified || before[id] != c.inventory)
        .map(|(id, c)| (*id, before[id], c.inventory))
        .collect();
    changed.sort_unstable();
    // Stock: the values before and after go into a per-connection MEMORY table, and
    // UPDATEs of commodity join it by primary key, each row only if it holds the value
    // before. Locked by `lock_rows`, every row does; else the UPDATE locks it, and a row
    // that does not (the view was stale) leaves the count short: no commit. The count
    // is of rows found, changed or not (`connect` sets CLIENT_FOUND_ROWS). commodity
    // comes first (STRAIGHT_JOIN), read by a range scan of the ids that
    // change, so each row is updated as it is read. Had the join started from the
    // MEMORY table, MariaDB would have noted every row in a temporary table and read
    // it again to update it (half again the statement's cost, by `perf`); had the
    // optimizer chosen, for large batches it would scan all of commodity, and an UPDATE
    // locks what it scans, other workers' rows included (deadlocks). Measured per row:
    // half the cost of `UPDATE … SET inventory = CASE id …` (its CASE is a linear
    // search); `INSERT … ON DUPLICATE KEY UPDATE` tries an insert first, and a join with
    // JSON_TABLE was slower still.
    if !changed.is_empty() {
        sql.push_str(STOCK_TABLE);
        sql.push_str(
            "DELETE FROM settle_stock; INSERT INTO settle_stock (id, was, inventory) VALUES ",
        );
        for (i, (id, was, inv)) in changed.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            write!(sql, "({id},{was},{inv})").unwrap();
        }
        sql.push_str("; SET @n = 0; ");
        // Under 1,000 ids per statement: MariaDB turns a longer IN list into a join
        // with a temporary table, and the row-by-row update is lost.
        for chunk in changed.chunks(IN_LIST_MAX) {
            write!(
                sql,
                "UPDATE commodity c STRAIGHT_JOIN settle_stock s ON s.id = c.id \
                 SET c.inventory = s.inventory WHERE c.id IN ({}) AND c.inventory = s.was; \
                 SET @n = @n + ROW_COUNT(); ",
                join(chunk.iter().map(|(id, ..)| id))
            )
            .unwrap();
        }
    }
    let mut delta: BTreeMap<Currency, (Decimal, u64)> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.reason.is_none()) {
        let e = delta.entry(o.initiator).or_default();
        e.0 += o.paid;
        e.1 += 1;
    }
    // The totals rows exist (prepare_partition); if one did not, inserting it would
    // still be right.
    if !delta.is_empty() {
        sql.push_str("INSERT INTO totals (`partition`, currency, total, orders) VALUES ");
        for (i, (c, (t, n))) in delta.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            write!(sql, "({partition},'{c}',{t},{n})").unwrap();
        }
        sql.push_str(
            " ON DUPLICATE KEY UPDATE total = total + VALUES(total), orders = orders + VALUES(orders); ",
        );
    }
    if let Some(c) = state.unrecorded {
        sql.push_str(&c.insert_sql());
        sql.push_str("; ");
    }
    // The next offset, written only if the checks hold (else NULL: an error). The row
    // exists and is locked (`lock_rows`).
    write!(
        sql,
        "INSERT INTO offsets (topic, `partition`, next_offset, updated_at) VALUES \
         (X'{topic_hex}', {partition}, IF(@c = {corrected} AND @n = {}, {next_offset}, NULL), {settled_at}) \
         ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset), updated_at = VALUES(updated_at); \
         COMMIT",
        changed.len()
    )
    .unwrap();
    let changed = changed.len();
    Ok(Decided {
        sql,
        outcomes,
        stock,
        corrected,
        changed,
        verified,
    })
}

/// Round trip 3: send `decided`'s statements and COMMIT.
async fn finish_on(
    conn: &mut mysql_async::Conn,
    partition: i32,
    decided: &Decided,
    commit_sent: &mut bool,
) -> Result<(), Failure> {
    *commit_sent = true;
    match conn.query_drop(decided.sql.as_str()).await {
        Ok(()) => Ok(()),
        Err(mysql_async::Error::Server(e)) => {
            // The server stopped at the failing statement: COMMIT did not run.
            *commit_sent = false;
            if e.code == ER_BAD_NULL_ERROR {
                conn.query_drop("ROLLBACK").await?;
                let (c, n): (Option<i64>, Option<i64>) =
                    conn.query_first("SELECT @c, @n").await?.unwrap_or_default();
                if decided.verified && c == Some(decided.corrected as i64) {
                    return Err(Failure::Stale(anyhow::anyhow!(
                        "partition {partition}: {n:?} of the batch's {} commodities held what \
                         the view said",
                        decided.changed
                    )));
                }
                return Err(Failure::Fatal(anyhow::anyhow!(
                    "settlement checks failed for partition {partition}: {c:?} results corrected \
                     of {}, {n:?} stock rows updated of {}",
                    decided.corrected,
                    decided.changed
                )));
            }
            Err(Failure::Retry(e.into()))
        }
        Err(e) => Err(e.into()),
    }
}

impl SettleState {
    /// After the commit of `decided`: the record it carried is written, and its stock is
    /// the view. Returns its outcomes.
    fn committed(&mut self, decided: Decided) -> Vec<Outcome> {
        self.unrecorded = None;
        if decided.verified {
            self.verified += 1;
            self.stale_penalty = 0;
        } else {
            self.locked_batches = self.locked_batches.saturating_sub(1);
        }
        self.stock.extend(decided.stock);
        decided.outcomes
    }
}

/// An order of a `Batch`, owned.
pub struct BatchOrder {
    pub offset: i64,
    pub epoch: u64,
    pub order: Order,
    pub rates: std::sync::Arc<RateTable>,
}

/// A partition's batch, owned, for `Settlement`: its orders that decoded, in offset
/// order, and the offset after its last message.
pub struct Batch {
    pub orders: Vec<BatchOrder>,
    pub next_offset: i64,
}

impl Batch {
    fn settling(&self) -> Vec<Settling<'_>> {
        self.orders
            .iter()
            .map(|o| Settling {
                offset: o.offset,
                epoch: o.epoch,
                order: &o.order,
                rates: &o.rates,
            })
            .collect()
    }
}

/// A partition's batches settled one after another, each in its own transaction, with
/// two transactions in flight: while a batch commits (round trip 3, on one connection),
/// the next one writes its results (round trip 1, on another, guessed against the stock
/// as the first leaves it) and then waits in MySQL for the offsets row the first holds;
/// it gets it when the first commits, and goes on only if the stored offset is then
/// exactly the first's next offset. If the first fails instead, the second rolls back
/// and both are settled again one at a time (`settle_batch`'s way).
pub struct Settlement {
    pool: Pool,
    topic: String,
    partition: i32,
    state: SettleState,
    /// The next batch, its transaction open on its connection (results written, rows
    /// locked), with its start time.
    open: Option<(Batch, mysql_async::Conn, Open)>,
    /// A batch taken whose overlapped start failed: settled next, the plain way.
    waiting: Option<Batch>,
}

impl Settlement {
    /// Settle `partition` of `topic` through `pool`, which must allow two connections:
    /// the second transaction in flight takes its own (with one, it would wait for ever).
    pub fn new(pool: Pool, topic: &str, partition: i32) -> Settlement {
        Settlement {
            pool,
            topic: topic.to_string(),
            partition,
            state: SettleState::default(),
            open: None,
            waiting: None,
        }
    }

    /// Batches committed from the worker's view, and views found stale, so far (see
    /// `SettleState::verified_batches`, `SettleState::stale_views`).
    pub fn view_counts(&self) -> (u64, u64) {
        (self.state.verified_batches(), self.state.stale_views())
    }

    /// Write the last batch's commit record now (see `SettleState::flush`).
    pub async fn flush(&mut self) -> Result<()> {
        self.state.flush(&self.pool).await
    }

    /// Close the pool's connections (rolling back a batch left open).
    pub async fn disconnect(self) -> Result<()> {
        drop(self.open);
        self.pool.disconnect().await?;
        Ok(())
    }

    /// Settle the partition's next batch (the one already open, else one from `pull`) and
    /// return its outcomes once committed; None when `pull` has none. `pull` is asked
    /// again while this batch commits: a batch it gives then is started at once and held
    /// open for the next call.
    pub async fn next(
        &mut self,
        mut pull: impl FnMut() -> Option<Batch>,
    ) -> Result<Option<Vec<Outcome>>> {
        let (batch, mut conn, open) = match self.open.take() {
            Some(open) => open,
            None => {
                let Some(batch) = self.waiting.take().or_else(&mut pull) else {
                    return Ok(None);
                };
                match self.begin(batch).await? {
                    Ok(open) => open,
                    Err(outcomes) => return Ok(Some(outcomes)),
                }
            }
        };
        let settling = batch.settling();
        let job = Job::new(&self.topic, self.partition, &settling, batch.next_offset);
        let started_at = open.settled_at;
        let decided = match decide_open(job, open, &self.state) {
            Ok(d) => d,
            Err(e) => {
                abandon(&mut conn).await;
                return Err(e.into_error());
            }
        };
        let then = pull();
        if then.is_some() {
            // The view the next batch guesses from: the stock as this batch leaves it.
            self.state
                .stock
                .extend(decided.stock.iter().map(|(id, c)| (*id, *c)));
        }
        let then_settling = then.as_ref().map(Batch::settling);
        let mut commit_sent = false;
        let partition = self.partition;
        let finishing = async {
            let done = finish_on(&mut conn, partition, &decided, &mut commit_sent).await;
            if done.is_err() {
                // Release the rows now: the next batch waits for them.
                abandon(&mut conn).await;
            }
            (done, now_ms())
        };
        let (pool, topic, state) = (&self.pool, &self.topic, &mut self.state);
        let starting = async {
            let (Some(then), Some(settling)) = (&then, &then_settling) else {
                return Ok(None);
            };
            let then_job = Job::new(topic, partition, settling, then.next_offset);
            let mut conn = pool.get_conn().await?;
            conn.reset_connection(true);
            let expect = Expect::Exactly(job.next_offset);
            match open_on(&mut conn, then_job, state, expect, false).await {
                Ok(Opening::Open(open)) => Ok(Some((conn, open))),
                Ok(Opening::Committed(_)) => {
                    // Not while the batch before commits (its offset is below this one's).
                    abandon(&mut conn).await;
                    Err(Failure::Retry(anyhow::anyhow!(
                        "the batch was committed already"
                    )))
                }
                Err(e) => {
                    abandon(&mut conn).await;
                    Err(e)
                }
            }
        };
        let ((done, committed_at), started) = tokio::join!(finishing, starting);
        if let Err(e) = done {
            if let Ok(Some((mut then_conn, _))) = started {
                abandon(&mut then_conn).await;
            }
            // The view holds this batch's decisions: undone.
            match e {
                Failure::Fatal(e) => return Err(e),
                Failure::Stale(e) => {
                    tracing::debug!(partition, "settling again under locks: {e:#}");
                    self.state.distrust(true);
                }
                Failure::Retry(e) => {
                    tracing::warn!(
                        partition,
                        orders = settling.len(),
                        "settlement transaction failed, settling it again: {e:#}"
                    );
                    self.state.distrust(false);
                }
            }
            self.waiting = then;
            return settle_with_retries(&self.pool, job, &mut self.state, started_at, commit_sent)
                .await
                .map(Some);
        }
        conn.reset_connection(false);
        let outcomes = self.state.committed(decided);
        self.state.unrecorded = Some(job.record(started_at, committed_at));
        match (then, started) {
            (Some(then), Ok(Some((then_conn, then_open)))) => {
                self.open = Some((then, then_conn, then_open));
            }
            (_, Err(Failure::Fatal(e))) => return Err(e),
            // Started but not opened: settled next, the plain way.
            (then, _) => self.waiting = then,
        }
        Ok(Some(outcomes))
    }

    /// Round trips 1 and 2 of a batch not started while the one before committed, with
    /// retries: Ok(Err(outcomes)) when it turned out committed already.
    async fn begin(
        &mut self,
        batch: Batch,
    ) -> Result<Result<(Batch, mysql_async::Conn, Open), Vec<Outcome>>> {
        let settling = batch.settling();
        let job = Job::new(&self.topic, self.partition, &settling, batch.next_offset);
        let mut backoff = Backoff::default();
        for attempt in 1.. {
            let mut conn = match self.pool.get_conn().await {
                Ok(c) => c,
                Err(e) => {
                    backoff.wait(job, attempt, &e.into()).await;
                    continue;
                }
            };
            conn.reset_connection(true);
            match open_on(
                &mut conn,
                job,
                &mut self.state,
                Expect::NotBeyondFirst,
                false,
            )
            .await
            {
                Ok(Opening::Open(open)) => return Ok(Ok((batch, conn, open))),
                Ok(Opening::Committed(outcomes)) => {
                    conn.reset_connection(false);
                    return Ok(Err(outcomes));
                }
                Err(Failure::Fatal(e)) => {
                    abandon(&mut conn).await;
                    return Err(e);
                }
                Err(Failure::Retry(e) | Failure::Stale(e)) => {
                    abandon(&mut conn).await;
                    backoff.wait(job, attempt, &e).await;
                }
            }
        }
        unreachable!()
    }
}

impl Failure {
    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Retry(e) | Failure::Stale(e) | Failure::Fatal(e) => e,
        }
    }
}
/// The columns a result row is written with, in the order `results_sql` and
/// `results_tsv` give them.
macro_rules! result_columns {
    () => {
        "(order_id, user_id, initiator, success, reason, paid, rate_version, epoch, items, \
         client_time, accepted_at, settled_at, `partition`, `offset`)"
    };
}

/// MySQL's "Duplicate entry … for key" and "Column … cannot be null".
const ER_DUP_ENTRY: u16 = 1062;
const ER_BAD_NULL_ERROR: u16 = 1048;
/// What a server with `local_infile` off answers LOAD DATA LOCAL (MariaDB 10.11 gives
/// 4166, MySQL 8 3948, older servers 1148).
const LOCAL_INFILE_REFUSED: [u16; 3] = [4166, 3948, 1148];

/// Write `todo`'s results, after the statements `prefix`, in one round trip. Ok(false)
/// when some of them exist already (part of the batch was committed before): the
/// caller rolls back.
///
/// As LOAD DATA LOCAL: the server parses tab-separated lines instead of SQL, about a
/// third less of its CPU per result than a multi-row INSERT (measured: 108,000 rows in
/// batches of 108). A server that refuses it (`local_infile` off) gets INSERTs from
/// then on.
async fn write_results(
    conn: &mut mysql_async::Conn,
    prefix: &str,
    todo: &[Settling<'_>],
    decisions: &[model::Decision],
    partition: i32,
    settled_at: i64,
    state: &mut SettleState,
) -> Result<bool, Failure> {
    let n = todo.len() as u64;
    if state.insert_results {
        return match conn
            .query_drop(format!(
                "{prefix}{}",
                results_sql(todo, decisions, partition, settled_at)
            ))
            .await
        {
            Ok(()) => Ok(conn.affected_rows() == n),
            Err(mysql_async::Error::Server(e)) if e.code == ER_DUP_ENTRY => Ok(false),
            Err(e) => Err(e.into()),
        };
    }
    let data = bytes::Bytes::from(results_tsv(todo, decisions, partition, settled_at));
    conn.set_infile_handler(async move {
        use futures_util::StreamExt as _;
        Ok(futures_util::stream::once(async move { Ok(data) }).boxed())
    });
    match conn.query_drop(format!("{prefix}{LOAD_RESULTS}")).await {
        Ok(()) => {}
        Err(mysql_async::Error::Server(e)) if LOCAL_INFILE_REFUSED.contains(&e.code) => {
            tracing::warn!("the server refuses LOAD DATA LOCAL ({e}): results go in as INSERTs");
            state.insert_results = true;
            return Err(Failure::Retry(e.into()));
        }
        Err(e) => return Err(e.into()),
    }
    // LOCAL: the server cannot stop the client's upload half way, so a row with a
    // duplicate key is skipped with a warning rather than failing the statement.
    if conn.affected_rows() < n {
        return Ok(false);
    }
    if conn.get_warnings() > 0 {
        let warnings: Vec<(String, u32, String)> = conn.query("SHOW WARNINGS").await?;
        return Err(Failure::Fatal(anyhow::anyhow!(
            "writing {n} results: {warnings:?}"
        )));
    }
    Ok(true)
}

/// Reads the rows of `results_tsv` (MySQL's defaults: tab-separated, `\` escapes,
/// `\N` is NULL; binary: the user id's bytes as they are).
const LOAD_RESULTS: &str = concat!(
    "LOAD DATA LOCAL INFILE 'results' INTO TABLE result CHARACTER SET binary ",
    result_columns!()
);

/// `todo`'s result rows as LOAD DATA input: one line each, fields separated by tabs. Only
/// the user id can hold a tab, newline, backslash or NUL: those are escaped.
fn results_tsv(
    todo: &[Settling<'_>],
    decisions: &[model::Decision],
    partition: i32,
    settled_at: i64,
) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(todo.len() * 160);
    for (s, d) in todo.iter().zip(decisions) {
        let ord = s.order;
        write!(out, "{}\t", ord.order_id.hyphenated()).unwrap();
        for &b in ord.user_id.as_bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                0 => out.extend_from_slice(b"\\0"),
                b => out.push(b),
            }
        }
        writeln!(
            out,
            "\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            ord.initiator.as_str(),
            u8::from(d.reason.is_none()),
            d.reason.map_or("\\N", |r| r.as_str()),
            d.paid,
            s.rates.version,
            s.epoch,
            items_text(ord),
            ord.time.map_or("\\N".into(), |t| t.to_string()),
            ord.accepted_at,
            settled_at,
            partition,
            s.offset,
        )
        .unwrap();
    }
    out
}

/// Decide `todo` in order against the worker's view of the stock `ids` (not changing
/// the view): the decisions, and the stock of `ids` they leave.
fn guess(
    todo: &[Settling<'_>],
    ids: &BTreeSet<u32>,
    state: &SettleState,
) -> Result<(Vec<model::Decision>, HashMap<u32, Commodity>), Failure> {
    let mut view: HashMap<u32, Commodity> = ids
        .iter()
        .filter_map(|id| state.stock.get(id).map(|c| (*id, *c)))
        .collect();
    let decisions = todo
        .iter()
        .map(|s| {
            decide(s.order, &mut view, s.rates)
                .with_context(|| format!("order {} at offset {}", s.order.order_id, s.offset))
                .map_err(Failure::Fatal)
        })
        .collect::<Result<_, _>>()?;
    Ok((decisions, view))
}

/// One multi-row insert of `todo`'s results, in text: one round trip whatever the
/// batch's size. Every value is a number, a validated code, or hex: nothing to escape.
fn results_sql(
    todo: &[Settling<'_>],
    decisions: &[model::Decision],
    partition: i32,
    settled_at: i64,
) -> String {
    let mut sql = String::with_capacity(256 + todo.len() * 220);
    sql.push_str(INSERT_RESULTS);
    for (i, (s, d)) in todo.iter().zip(decisions).enumerate() {
        let ord = s.order;
        if i > 0 {
            sql.push(',');
        }
        write!(
            sql,
            "('{}',X'{}','{}',{},{},{},{},{},'{}',{},{},{},{},{})",
            ord.order_id.hyphenated(),
            Hex(ord.user_id.as_bytes()),
            ord.initiator.as_str(),
            d.reason.is_none(),
            reason_sql(d.reason),
            d.paid,
            s.rates.version,
            s.epoch,
            items_text(ord),
            ord.time.map_or("NULL".into(), |t| t.to_string()),
            ord.accepted_at,
            settled_at,
            partition,
            s.offset,
        )
        .unwrap();
    }
    sql
}

/// The scratch table of a connection's stock update (temporary: private to the
/// connection; MEMORY: no undo or redo log). Creating a temporary table does not end
/// the transaction.
const STOCK_TABLE: &str = "CREATE TEMPORARY TABLE IF NOT EXISTS settle_stock \
    (id INT UNSIGNED NOT NULL PRIMARY KEY, was INT UNSIGNED NOT NULL, \
    inventory INT UNSIGNED NOT NULL) ENGINE=MEMORY;";

const INSERT_RESULTS: &str = concat!("INSERT INTO result ", result_columns!(), " VALUES ");

/// Bytes as hex digits, for an `X'…'` literal.
struct Hex<'a>(&'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

fn reason_sql(r: Option<Reason>) -> String {
    r.map_or("NULL".into(), |r| format!("'{}'", r.as_str()))
}

fn commodities(rows: Vec<(u32, Decimal, String, u32)>) -> Result<Vec<(u32, Commodity)>, Failure> {
    rows.into_iter()
        .map(|(id, price, currency, inventory)| {
            let currency = currency
                .parse()
                .map_err(|e| Failure::Fatal(anyhow::anyhow!("commodity {id}: {e}")))?;
            Ok((
                id,
                Commodity {
                    price,
                    currency,
                    inventory,
                },
            ))
        })
        .collect()
}

/// order_id, initiator, reason, paid, epoch, accepted_at, settled_at
type CommittedRow = (String, String, Option<String>, Decimal, u64, i64, i64);

/// The outcomes of `batch` as committed, read back from the result table.
async fn committed_outcomes(
    conn: &mut mysql_async::Conn,
    batch: &[Settling<'_>],
) -> Result<Vec<Outcome>, Failure> {
    if batch.is_empty() {
        return Ok(vec![]);
    }
    let ids = join(batch.iter().map(|s| format!("'{}'", s.order.order_id)));
    let rows: Vec<CommittedRow> = conn
        .query(format!(
            "SELECT order_id, initiator, reason, paid, epoch, accepted_at, settled_at FROM result WHERE order_id IN ({ids})"
        ))
        .await?;
    let fatal = |what: String| Failure::Fatal(anyhow::anyhow!(what));
    let mut out = Vec::with_capacity(rows.len());
    for (id, initiator, reason, paid, epoch, accepted_at, settled_at) in rows {
        out.push(Outcome {
            order_id: id.parse().map_err(|e| fatal(format!("result {id}: {e}")))?,
            initiator: initiator
                .parse()
                .map_err(|e| fatal(format!("result {id}: {e}")))?,
            epoch,
            reason: match reason.as_deref() {
                None => None,
                Some("unknown_item") => Some(Reason::UnknownItem),
                Some("insufficient_inventory") => Some(Reason::InsufficientInventory),
                Some(other) => return Err(fatal(format!("result {id}: unknown reason {other}"))),
            },
            paid,
            accepted_at,
            settled_at,
        });
    }
    if out.len() != batch.len() {
        return Err(fatal(format!(
            "offsets say {} orders were committed but {} results exist",
            batch.len(),
            out.len()
        )));
    }
    tracing::warn!(
        orders = out.len(),
        "a commit whose answer was lost had landed; its outcomes were read back"
    );
    Ok(out)
}

/// `id:number,id:number`, the form the result table keeps an order's items in.
pub fn items_text(order: &Order) -> String {
    let mut s = String::with_capacity(order.items.len() * 8);
    for (i, it) in order.items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write!(s, "{}:{}", it.id, it.number).unwrap();
    }
    s
}

/// The most values in one IN list of a stock UPDATE (see `decide_open`).
const IN_LIST_MAX: usize = 999;

fn join<T: std::fmt::Display>(it: impl Iterator<Item = T>) -> String {
    let mut s = String::new();
    for (i, v) in it.enumerate() {
        if i > 0 {
            s.push(',');
        }
        write!(s, "{v}").unwrap();
    }
    s
}
