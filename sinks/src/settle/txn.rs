//! The settlement transaction's round trips (drawn in `mod.rs`) and its retry policy:
//! a database problem is retried with backoff, a stale view is settled again under
//! locks, and a batch that cannot be settled stops the caller.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::{Conn, Pool};
use anyhow::Result;
use model::idempotency::Digest;
use model::{now_ms, Commodity, Decimal, Decision, Reason, Uuid};
use mysql_async::prelude::*;

use super::batch::Batch;
use super::plan::{plan, Open, Plan};
use super::record::Committed;
use super::view::SettleState;
use super::{sql, DeadLetter, Line, Outcome, ReadyOrder, Skipped};

/// MySQL's "Duplicate entry … for key" and "Column … cannot be null".
const ER_DUP_ENTRY: u16 = 1062;
const ER_BAD_NULL_ERROR: u16 = 1048;
/// What a server with `local_infile` off answers LOAD DATA LOCAL (MariaDB 10.11 gives
/// 4166, MySQL 8 3948, older servers 1148).
const LOCAL_INFILE_REFUSED: [u16; 3] = [4166, 3948, 1148];

pub(super) enum Failure {
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

impl Failure {
    pub(super) fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Retry(e) | Failure::Stale(e) | Failure::Fatal(e) => e,
        }
    }
}

/// How long a step of a transaction (one to three round trips) may take before its node
/// counts as silent (powered off, partitioned: no answer and no reset): the step fails
/// like a lost connection (retried, and on a cluster the next node is used).
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a ROLLBACK after a failed step may take before the connection is given up.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(3);

/// `step`, failed as a lost connection (a Retry) if no answer comes within
/// `STEP_TIMEOUT`; the caller's `abandon` then finds the node silent too and leaves it
/// (`Conn::fail_over`).
pub(super) async fn within<T>(
    step: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(STEP_TIMEOUT, step).await {
        Ok(done) => done,
        Err(_) => Err(Failure::Retry(silent())),
    }
}

fn fatal(what: String) -> Failure {
    Failure::Fatal(anyhow::anyhow!(what))
}

/// The wait before another attempt: 20 ms, doubling up to 2 s.
pub(super) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(20))
    }
}

impl Backoff {
    /// Say why attempt `attempt` at `target` failed, and wait.
    pub(super) async fn wait(&mut self, target: Target<'_>, attempt: u32, e: &anyhow::Error) {
        tracing::warn!(
            partition = target.partition,
            attempt,
            orders = target.batch.len(),
            "settlement transaction failed, retrying in {:?}: {e:#}",
            self.0
        );
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}

/// One batch and where it goes: its partition, and the offset to store with it.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// Its orders, each id once.
    pub batch: &'a [ReadyOrder],
    pub dead: &'a [DeadLetter],
    pub skipped: &'a [Skipped],
    pub next_offset: i64,
    pub next_epoch: u64,
}

impl<'a> Target<'a> {
    pub(super) fn of(topic: &'a str, partition: i32, batch: &'a Batch) -> Self {
        Target {
            topic,
            partition,
            batch: &batch.orders,
            dead: &batch.dead,
            skipped: &batch.skipped,
            next_offset: batch.next_offset,
            next_epoch: batch.next_epoch,
        }
    }

    /// The offset of its first message.
    fn first_offset(&self) -> i64 {
        let orders = self.batch.first().map(|s| s.offset);
        let dead = self.dead.iter().map(|d| d.offset).min();
        let skipped = self.skipped.iter().map(|s| s.offset).min();
        [orders, dead, skipped]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next_offset)
    }

    /// Its commit record.
    pub(super) fn record(&self, started_at: i64, committed_at: i64) -> Committed {
        Committed {
            partition: self.partition,
            first_offset: self.first_offset(),
            next_offset: self.next_offset,
            orders: self.batch.len() as u32,
            started_at,
            committed_at,
        }
    }

    fn ids(&self) -> BTreeSet<u32> {
        self.batch
            .iter()
            .flat_map(|s| s.order.items.iter().map(|it| it.id))
            .collect()
    }
}

/// `settle_batch`, for a batch that may have been committed already by an attempt whose
/// answer was lost (`commit_sent`): then its outcomes are read back and reported.
pub(super) async fn settle_with_retries(
    pool: &Pool,
    target: Target<'_>,
    state: &mut SettleState,
    started_at: i64,
    mut commit_sent: bool,
) -> Result<Vec<Outcome>> {
    let mut backoff = Backoff::default();
    for attempt in 1.. {
        match attempt_batch(pool, target, state, &mut commit_sent).await {
            Ok(out) => {
                if commit_sent {
                    state.unrecorded = Some(target.record(started_at, now_ms()));
                }
                return Ok(out);
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => backoff.wait(target, attempt, &e).await,
            Err(Failure::Stale(e)) => {
                tracing::debug!(
                    partition = target.partition,
                    "settling again under locks: {e:#}"
                );
                state.distrust(true);
            }
        }
    }
    unreachable!()
}

/// A connection whose transaction failed: rolled back. If even that fails, it keeps its
/// reset on (when it is dropped the pool resets it, or discards it if that fails too).
/// If the rollback or a read after it fails (a cluster node that lost its cluster
/// refuses queries), the process fails over to another node of a cluster.
pub(super) async fn abandon(conn: &mut Conn) {
    let rollback = tokio::time::timeout(ROLLBACK_TIMEOUT, conn.query_drop("ROLLBACK")).await;
    if !matches!(rollback, Ok(Ok(()))) {
        // Dropped with its reset on: the pool rolls it back, or closes it.
        conn.fail_over();
        return;
    }
    conn.reset_connection(false);
    let alive = tokio::time::timeout(ROLLBACK_TIMEOUT, conn.query_drop("SELECT 1")).await;
    if !matches!(alive, Ok(Ok(()))) {
        // Its answer may still come: the pool resets the connection, or closes it,
        // rather than give the next user an answer to a question it did not ask.
        conn.reset_connection(true);
        conn.fail_over();
    }
}

fn silent() -> anyhow::Error {
    anyhow::anyhow!("MySQL gave no answer within {STEP_TIMEOUT:?} (a silent node)")
}

/// A connection for a settlement transaction. The transaction is begun and ended by
/// statements inside multi-statements, which mysql_async does not track: should the
/// future using it be dropped half way, the pool must reset the connection (rolling
/// back) rather than hand on an open transaction.
pub(super) async fn transaction_conn(pool: &Pool) -> Result<Conn, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    conn.reset_connection(true);
    Ok(conn)
}

async fn attempt_batch(
    pool: &Pool,
    target: Target<'_>,
    state: &mut SettleState,
    commit_sent: &mut bool,
) -> Result<Vec<Outcome>, Failure> {
    let mut conn = transaction_conn(pool).await?;
    let out = within(settle_on(&mut conn, target, state, commit_sent)).await;
    match &out {
        Ok(_) => conn.reset_connection(false),
        Err(_) => abandon(&mut conn).await,
    }
    out
}

/// The whole transaction on `conn`: round trips 1 and 2 (`open_on`), the plan, round
/// trip 3 (`finish_on`). Checks that need a row count are made by the server (strict
/// mode): the next offset is written only if every correction and stock update touched
/// one row.
async fn settle_on(
    conn: &mut mysql_async::Conn,
    target: Target<'_>,
    state: &mut SettleState,
    commit_sent: &mut bool,
) -> Result<Vec<Outcome>, Failure> {
    let open = match open_on(conn, target, state, Expect::NotBeyondFirst, *commit_sent).await? {
        Opening::Open(open) => open,
        Opening::Committed(outcomes) => return Ok(outcomes),
    };
    let decided = decide_open(target, open, state)?;
    finish_on(conn, target.partition, &decided, commit_sent, None).await?;
    Ok(state.committed(decided.plan))
}

/// A planned batch and its round trip 3, with the stock rows it loads (if it does).
pub(super) struct Decided {
    pub plan: Plan,
    pub sql: String,
    pub stock_tsv: Option<bytes::Bytes>,
}

/// Plan an open batch and write its round trip 3 (with the last batch's commit record,
/// if it is not written yet).
pub(super) fn decide_open(
    target: Target<'_>,
    open: Open,
    state: &SettleState,
) -> Result<Decided, Failure> {
    let settled_at = open.settled_at;
    let todo = open.todo(target.batch);
    let (skipped, conflicts) = open.copies_in(target.batch, target.skipped);
    let dead = [target.dead, &conflicts].concat();
    let plan = plan(&todo, open, &dead, skipped).map_err(Failure::Fatal)?;
    let rows = if state.insert_results {
        sql::Rows::Inserted
    } else {
        sql::Rows::Loaded
    };
    let sql = sql::finish(
        &plan,
        target.topic,
        target.partition,
        (target.next_offset, target.next_epoch),
        settled_at,
        state.unrecorded.as_ref(),
        rows,
    );
    let stock_tsv = (rows == sql::Rows::Loaded && !plan.stock_changes.is_empty())
        .then(|| sql::stock_tsv(&plan.stock_changes).into());
    Ok(Decided {
        plan,
        sql,
        stock_tsv,
    })
}

/// What the stored offset must be for a batch to go on.
#[derive(Clone, Copy)]
pub(super) enum Expect {
    /// At most the batch's first offset (nothing of it committed): the batch is the
    /// first this process settles since it started, or the one before is done.
    NotBeyondFirst,
    /// Exactly this: the `next_offset` of the batch before, committing meanwhile.
    /// Anything else means that batch did not commit, and this one must wait for it.
    Exactly(i64),
}

pub(super) enum Opening {
    Open(Open),
    /// Committed before, by an attempt whose answer was lost: its outcomes.
    Committed(Vec<Outcome>),
}

/// Round trips 1 and 2 of the transaction. With `Expect::Exactly` a batch whose
/// results exist already is not settled the slow way: a Retry.
pub(super) async fn open_on(
    conn: &mut mysql_async::Conn,
    target: Target<'_>,
    state: &mut SettleState,
    expect: Expect,
    commit_sent: bool,
) -> Result<Opening, Failure> {
    let ids = target.ids();
    let verified = state.trusts(&ids);
    // Commodities the view lacks are read without locks (first batches only), and the
    // batch locks them.
    let unseen = state.unseen(&ids);
    if !unseen.is_empty() {
        let rows: Vec<mysql_async::Row> = conn.query(sql::read_commodities(&unseen)).await?;
        state.stock.extend(commodities(typed(rows)?)?);
    }
    let settled_at = now_ms();
    let written = write_guesses(conn, target, &ids, state, expect, commit_sent, settled_at).await?;
    let Todo {
        from: todo_from,
        copies,
        guessed,
        left,
    } = match written {
        Written::Todo(todo) => todo,
        Written::Committed(outcomes) => return Ok(Opening::Committed(outcomes)),
    };
    let first_todo = target
        .batch
        .get(todo_from)
        .map_or(target.next_offset, |s| s.offset);
    let (stored, stock) = lock_batch(conn, target, &ids, verified, state).await?;
    check_stored(target.partition, stored, first_todo, expect)?;
    Ok(Opening::Open(Open {
        todo_from,
        copies,
        guessed,
        settled_at,
        stock,
        left: verified.then_some(left),
    }))
}

/// Round trip 1's outcome: the results written, or the batch found committed already.
enum Written {
    Todo(Todo),
    Committed(Vec<Outcome>),
}

/// The results written: of the batch from index `from` on, but for `copies` (orders
/// whose id already had a result), with their decisions and the stock they leave.
struct Todo {
    from: usize,
    copies: HashMap<Uuid, Option<Digest>>,
    guessed: Vec<Decision>,
    left: HashMap<u32, Commodity>,
}

/// Round trip 1: begin and write the results as guessed. The new result rows are no
/// other transaction's. If some exist, part of the batch was committed before: the slow
/// way locks the offsets row and writes only what lies at or above the stored offset.
async fn write_guesses(
    conn: &mut mysql_async::Conn,
    target: Target<'_>,
    ids: &BTreeSet<u32>,
    state: &mut SettleState,
    expect: Expect,
    commit_sent: bool,
    settled_at: i64,
) -> Result<Written, Failure> {
    let Target {
        partition, batch, ..
    } = target;
    let all: Vec<&ReadyOrder> = batch.iter().collect();
    let (guessed, left) = state.guess(&all, ids);
    let begin = format!("{}; ", sql::BEGIN);
    if !batch.is_empty()
        && write_results(conn, &begin, &all, &guessed, partition, settled_at, state).await?
    {
        let todo = Todo {
            from: 0,
            copies: HashMap::new(),
            guessed,
            left,
        };
        return Ok(Written::Todo(todo));
    }
    if !batch.is_empty() {
        tracing::debug!(
            partition,
            "part of the batch was committed before, or some of its orders were"
        );
        conn.query_drop("ROLLBACK").await?;
        if let Expect::Exactly(_) = expect {
            return Err(Failure::Retry(anyhow::anyhow!(
                "partition {partition}: results of the batch exist already"
            )));
        }
    }
    conn.query_drop(sql::BEGIN).await?;
    let stored: Option<i64> = conn
        .query_first(sql::lock_offset(target.topic, partition))
        .await?;
    let Some(stored) = stored else {
        return Err(no_offsets_row(target));
    };
    if target.next_offset <= stored {
        conn.query_drop("ROLLBACK").await?;
        // Committed already. By an earlier attempt of this call whose answer was lost:
        // its outcomes were never reported, so read them back. Otherwise it was
        // reported before (or by another run), and reporting it again would count twice.
        if !commit_sent {
            return Ok(Written::Committed(vec![]));
        }
        return committed_outcomes(conn, target)
            .await
            .map(Written::Committed);
    }
    let from = batch.partition_point(|s| s.offset < stored);
    // Orders at or above the stored offset whose id has a result are copies of orders
    // settled before (a producer retry, a re-produce, a replay): skipped.
    let copies = settled_ids(conn, &batch[from..]).await?;
    let todo: Vec<&ReadyOrder> = batch[from..]
        .iter()
        .filter(|s| !copies.contains_key(&s.order.order_id))
        .collect();
    let (guessed, left) = state.guess(&todo, ids);
    if !todo.is_empty()
        && !write_results(conn, "", &todo, &guessed, partition, settled_at, state).await?
    {
        return Err(Failure::Retry(anyhow::anyhow!(
            "partition {partition}: results appeared for orders at or above the stored offset {stored}"
        )));
    }
    Ok(Written::Todo(Todo {
        from,
        copies,
        guessed,
        left,
    }))
}

/// The ids of `orders` that have a result, with the digest it was settled with.
async fn settled_ids(
    conn: &mut mysql_async::Conn,
    orders: &[ReadyOrder],
) -> Result<HashMap<Uuid, Option<Digest>>, Failure> {
    if orders.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, Option<Vec<u8>>)> = conn.query(sql::existing_results(orders)).await?;
    rows.into_iter()
        .map(|(id, digest)| {
            let parsed = id.parse().map_err(|e| fatal(format!("result {id}: {e}")))?;
            let digest = digest
                .map(|d| Digest::try_from(d.as_slice()))
                .transpose()
                .map_err(|_| fatal(format!("result {id}: a digest that is not 16 bytes")))?;
            Ok((parsed, digest))
        })
        .collect()
}

/// Round trip 2: lock the offsets row and the commodities (in id order), or only the
/// offsets row when the stock UPDATE checks the view (`verified`). The stored offset,
/// and the batch's commodities as locked (or as the view has them).
async fn lock_batch(
    conn: &mut mysql_async::Conn,
    target: Target<'_>,
    ids: &BTreeSet<u32>,
    verified: bool,
    state: &SettleState,
) -> Result<(i64, HashMap<u32, Commodity>), Failure> {
    let none = BTreeSet::new();
    let lock = if verified { &none } else { ids };
    type Row = (
        i64,
        Option<u32>,
        Option<Decimal>,
        Option<String>,
        Option<u32>,
    );
    let rows: Vec<mysql_async::Row> = conn
        .query(sql::lock_rows(target.topic, target.partition, lock.iter()))
        .await?;
    let rows: Vec<Row> = typed(rows)?;
    let Some(stored) = rows.first().map(|r| r.0) else {
        return Err(no_offsets_row(target));
    };
    let found = rows
        .into_iter()
        .filter_map(|(_, id, price, currency, inventory)| {
            Some((id?, price?, currency?, inventory?))
        })
        .collect();
    let mut stock: HashMap<u32, Commodity> = commodities(found)?.into_iter().collect();
    if verified {
        stock.extend(ids.iter().map(|id| (*id, state.stock[id])));
    }
    Ok((stored, stock))
}

/// The stored offset against what the batch expects of it.
fn check_stored(
    partition: i32,
    stored: i64,
    first_todo: i64,
    expect: Expect,
) -> Result<(), Failure> {
    match expect {
        Expect::NotBeyondFirst if stored > first_todo => Err(fatal(format!(
            "partition {partition}: the stored offset {stored} lies beyond the batch's first \
             unsettled order at {first_todo}, yet its results did not exist"
        ))),
        Expect::Exactly(want) if stored != want => Err(Failure::Retry(anyhow::anyhow!(
            "partition {partition}: the stored offset is {stored}, not {want}: the batch \
             before did not commit"
        ))),
        _ => Ok(()),
    }
}

fn no_offsets_row(target: Target<'_>) -> Failure {
    fatal(format!(
        "offsets row ({}, {}) is missing: run prepare_partition first",
        target.topic, target.partition
    ))
}

/// Round trip 3: send `decided`'s statements, ending with COMMIT. A failed check (the next offset written as
/// NULL) is a stale view when only the stock UPDATE's count fell short of a batch
/// settled from the view; any other failed check is fatal. `read` is told when the
/// server asks for the stock lines (dropped unasked when there are none).
pub(super) async fn finish_on(
    conn: &mut mysql_async::Conn,
    partition: i32,
    decided: &Decided,
    commit_sent: &mut bool,
    read: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), Failure> {
    let plan = &decided.plan;
    match &decided.stock_tsv {
        Some(lines) => upload(conn, lines.clone(), read),
        // Nothing for the server to ask for: say so now, not once the statements end.
        None => drop(read),
    }
    *commit_sent = true;
    let e = match conn.query_drop(decided.sql.as_str()).await {
        Ok(()) => return Ok(()),
        Err(mysql_async::Error::Server(e)) => e,
        Err(e) => return Err(e.into()),
    };
    // The server stopped at the failing statement: COMMIT did not run.
    *commit_sent = false;
    if e.code != ER_BAD_NULL_ERROR {
        return Err(Failure::Retry(e.into()));
    }
    conn.query_drop("ROLLBACK").await?;
    let (c, n): (Option<i64>, Option<i64>) =
        conn.query_first("SELECT @c, @n").await?.unwrap_or_default();
    let (corrected, changed) = (plan.corrections.len(), plan.stock_changes.len());
    if plan.verified && c == Some(corrected as i64) {
        return Err(Failure::Stale(anyhow::anyhow!(
            "partition {partition}: {n:?} of the batch's {changed} commodities held what the view said"
        )));
    }
    Err(fatal(format!(
        "settlement checks failed for partition {partition}: {c:?} results corrected of \
         {corrected}, {n:?} stock rows updated of {changed}"
    )))
}

/// Write `todo`'s results, after the statements `prefix`, in one round trip. Ok(false)
/// when some of them exist already (part of the batch was committed before): the
/// caller rolls back.
///
/// As LOAD DATA LOCAL: the server parses tab-separated lines instead of SQL, about a
/// third less of its CPU per result than a multi-row INSERT. A server that refuses it
/// (`local_infile` off) gets INSERTs from then on.
async fn write_results(
    conn: &mut mysql_async::Conn,
    prefix: &str,
    todo: &[&ReadyOrder],
    decisions: &[Decision],
    partition: i32,
    settled_at: i64,
    state: &mut SettleState,
) -> Result<bool, Failure> {
    let n = todo.len() as u64;
    if state.insert_results {
        let insert = sql::results_insert(todo, decisions, partition, settled_at);
        return match conn.query_drop(format!("{prefix}{insert}")).await {
            Ok(()) => Ok(conn.affected_rows() == n),
            Err(mysql_async::Error::Server(e)) if e.code == ER_DUP_ENTRY => Ok(false),
            Err(e) => Err(e.into()),
        };
    }
    upload(
        conn,
        sql::results_tsv(todo, decisions, partition, settled_at).into(),
        None,
    );
    match conn
        .query_drop(format!("{prefix}{}", sql::LOAD_RESULTS))
        .await
    {
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
        return Err(fatal(format!("writing {n} results: {warnings:?}")));
    }
    Ok(true)
}

/// `lines` as what the next LOAD DATA LOCAL on `conn` reads; `read` is told when the
/// server asks for them.
fn upload(
    conn: &mut mysql_async::Conn,
    lines: bytes::Bytes,
    read: Option<tokio::sync::oneshot::Sender<()>>,
) {
    conn.set_infile_handler(async move {
        use futures_util::StreamExt as _;
        if let Some(read) = read {
            let _ = read.send(());
        }
        Ok(futures_util::stream::once(async move { Ok(lines) }).boxed())
    });
}

/// Rows as `T`. A row of another shape is the answer to another question (a connection
/// whose earlier query was abandoned half way): the attempt is retried, not the process
/// brought down.
fn typed<T: mysql_async::prelude::FromRow>(rows: Vec<mysql_async::Row>) -> Result<Vec<T>, Failure> {
    rows.into_iter()
        .map(|row| {
            mysql_async::from_row_opt(row).map_err(|e| {
                Failure::Retry(anyhow::anyhow!(
                    "a row of another shape than asked for: {e}"
                ))
            })
        })
        .collect()
}

fn commodities(rows: Vec<(u32, Decimal, String, u32)>) -> Result<Vec<(u32, Commodity)>, Failure> {
    rows.into_iter()
        .map(|(id, price, currency, inventory)| {
            let currency = currency
                .parse()
                .map_err(|e| fatal(format!("commodity {id}: {e}")))?;
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

/// order_id, initiator, reason, paid, epoch, accepted_at, settled_at, items
type CommittedRow = (
    String,
    String,
    Option<String>,
    Decimal,
    u64,
    i64,
    i64,
    String,
);

/// The outcomes of `target`'s orders as committed, read back from the result table:
/// the results of its orders at its own offsets (not a copy's original).
async fn committed_outcomes(
    conn: &mut mysql_async::Conn,
    target: Target<'_>,
) -> Result<Vec<Outcome>, Failure> {
    let batch = target.batch;
    if batch.is_empty() {
        return Ok(vec![]);
    }
    let rows: Vec<CommittedRow> = conn
        .query(sql::committed_results(batch, target.partition))
        .await?;
    let out = rows
        .into_iter()
        .map(outcome_of)
        .collect::<Result<Vec<_>, _>>()?;
    if out.len() > batch.len() {
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

fn outcome_of(row: CommittedRow) -> Result<Outcome, Failure> {
    let (id, initiator, reason, paid, epoch, accepted_at, settled_at, items) = row;
    let bad = |e: &dyn std::fmt::Display| fatal(format!("result {id}: {e}"));
    let lines = sql::parse_items_text(&items)
        .ok_or_else(|| bad(&format!("items {items:?} are not id:number,…")))?
        .into_iter()
        .map(|(commodity, units)| Line {
            commodity,
            units,
            left: None,
        })
        .collect();
    Ok(Outcome {
        order_id: id.parse().map_err(|e| bad(&e))?,
        initiator: initiator.parse().map_err(|e| bad(&e))?,
        epoch,
        reason: reason
            .as_deref()
            .map(str::parse::<Reason>)
            .transpose()
            .map_err(|e| bad(&e))?,
        paid,
        accepted_at,
        settled_at,
        lines,
    })
}
