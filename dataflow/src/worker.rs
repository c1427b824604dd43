//! One timely worker's wiring: its MySQL handles, its partition's Kafka reader, the
//! sources, the settle operator and the totals, and the loop that steps them.
//!
//! ```text
//!  Kafka partition = worker index ──reader thread──▶ order_source ─┐
//!  ZooKeeper watches (worker 0) ──rate feed──▶ rate_source ─broadcast─┴▶ settle ──▶ totals
//!                                                                  │     └─▶ views
//!                                                 settlement thread ──▶ MySQL
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use model::{Config, Currency, Decimal};
use timely::dataflow::operators::vec::Broadcast;
use timely::worker::Worker;

use crate::db::Db;
use crate::kafka::{spawn_reader, Checks, Hold, Read};
use crate::sources::{order_source, rate_source};
use crate::stats::Stats;

/// What every worker of a process is given.
pub struct WorkerContext {
    pub cfg: Config,
    pub bootstrap: String,
    pub stop: Arc<AtomicBool>,
}

/// Run worker `worker.index()` until its sources stop.
pub fn run_worker(worker: &mut Worker, ctx: WorkerContext) -> Result<()> {
    let cfg = ctx.cfg.clone();
    let index = worker.index();
    let partition = index as i32;
    let db = Rc::new(Db::connect(&cfg)?);
    let (start, next_epoch) = prepare(&db, &cfg, partition)?;
    let caught_up = Arc::new(AtomicBool::new(false));
    let (order_tx, order_rx) = crossbeam_channel::bounded::<Vec<Read>>(8);
    let (rate_tx, rate_rx) = crossbeam_channel::unbounded::<Vec<(Currency, Decimal)>>();
    let stats = Rc::new(RefCell::new(Stats::default()));
    let initial_totals = committed_totals(&db)?;
    let low_at_start = if index == 0 {
        db.block_on(sinks::low_stock(&db.pool, cfg.catalogue.low_stock_below))?
    } else {
        vec![]
    };
    let peers = worker.peers();

    let (order_wake, rate_wake) = worker.dataflow::<u64, _, _>(|scope| {
        let (orders, order_wake) = order_source(
            scope,
            &cfg,
            order_rx,
            ctx.stop.clone(),
            caught_up.clone(),
            next_epoch,
        );
        let (rates, rate_wake) =
            rate_source(scope, &cfg, index, rate_rx, db.clone(), ctx.stop.clone());
        let outcomes =
            crate::handover::settle(orders, rates.broadcast(), &cfg, partition, stats.clone())?;
        crate::views::views(outcomes.clone(), &cfg, index, low_at_start);
        crate::totals::totals(outcomes, &cfg, index, peers, initial_totals);
        anyhow::Ok((order_wake, rate_wake))
    })?;

    let topic = cfg.kafka.topic.clone();
    let wake = move || {
        let _ = order_wake.activate();
    };
    let checks = Checks {
        currencies: cfg.currencies.all.clone(),
        on_hold: Box::new(record_hold(
            cfg.mysql.urls.clone(),
            topic.clone(),
            partition,
        )),
        max_unsettled: cfg.cluster.max_unsettled_per_worker,
    };
    let reader = spawn_reader(
        ctx.bootstrap.clone(),
        topic,
        partition,
        start,
        order_tx,
        wake,
        ctx.stop.clone(),
        caught_up,
        checks,
    )?;
    if index == 0 {
        let max_prices = db.block_on(sinks::max_prices(&db.pool))?;
        rates::spawn_rate_feed(cfg.clone(), max_prices, move |table| {
            rate_tx.send(table).is_ok() && rate_wake.activate().is_ok()
        });
    }

    let mut last_report = Instant::now();
    while worker.step_or_park(Some(Duration::from_millis(cfg.cluster.epoch_ms))) {
        if last_report.elapsed() >= Duration::from_secs(10) {
            stats.borrow().log(partition, last_report.elapsed());
            *stats.borrow_mut() = Stats::default();
            last_report = Instant::now();
        }
    }
    let _ = reader.join();
    Ok(())
}

/// Make the partition's rows in MySQL and return its stored position: the offset where
/// reading starts, and the least epoch an order read from there may go to.
fn prepare(db: &Db, cfg: &Config, partition: i32) -> Result<(i64, u64)> {
    let topic = &cfg.kafka.topic;
    db.block_on(sinks::prepare_partition(
        &db.pool,
        topic,
        partition,
        &cfg.currencies.all,
    ))?;
    db.block_on(sinks::load_position(&db.pool, topic, partition))
        .context("loading the stored offset")
}

/// What the reader calls when the partition holds: the hold recorded in MySQL (where
/// ingest's `/healthz` reads it), from the reader's thread.
fn record_hold(urls: Vec<String>, topic: String, partition: i32) -> impl Fn(Hold) + Send {
    move |(offset, version)| {
        let done = ore::current_thread_runtime()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async {
                    let pool = sinks::connect(&urls, 1)?;
                    sinks::record_hold(&pool, &topic, partition, offset, version).await?;
                    pool.disconnect().await?;
                    anyhow::Ok(())
                })
            });
        if let Err(e) = done {
            tracing::warn!(partition, "recording the hold for /healthz: {e:#}");
        }
    }
}

/// The committed totals at start (before any epoch of this run can close).
fn committed_totals(db: &Db) -> Result<Vec<(Currency, Decimal, u64)>> {
    Ok(db
        .block_on(sinks::totals(&db.pool))?
        .into_iter()
        .filter_map(|t| Some((t.currency.parse().ok()?, t.total, t.orders)))
        .collect())
}
