//! The bench's senders: one task per connection, each placing generated orders on the
//! open loop's timetable (`--rate`) or as fast as answered, until the load ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use model::Config;

use super::timetable::{scheduled_at, timetable_len};
use super::{BenchOptions, Clock, Live, Sent};
use crate::send::{Sender, Tally, Target};
use crate::OrderGen;

/// Run every sender to the end of the load: what each order did, and the tally of
/// answers other than 202.
pub(super) async fn send_all(
    cfg: &Config,
    opts: &BenchOptions,
    clock: Clock,
    target: &Arc<Target>,
    live: &Arc<Live>,
) -> Result<(Vec<Sent>, Tally)> {
    let names: Vec<String> = cfg.currencies.all.iter().map(|c| c.to_string()).collect();
    let next = Arc::new(AtomicU64::new(0));
    let conns = opts.connections.max(1);
    let mut tasks = vec![];
    for k in 0..conns {
        let seed = opts.seed.wrapping_mul(1_000_003).wrapping_add(k as u64);
        let mut gen = OrderGen::new(seed, cfg.catalogue.items, names.clone());
        if let Some(s) = opts.zipf {
            gen = gen.with_zipf(s)?;
        }
        if opts.contended {
            gen = gen.contended();
        }
        let loop_ = Loop {
            sender: target.sender(),
            gen,
            live: live.clone(),
            next: next.clone(),
            rate: opts.rate,
            clock,
            // Closed loop: connection k joins at k/conns of the ramp.
            join_after: Duration::from_secs_f64(clock.ramp_s * k as f64 / conns as f64),
        };
        tasks.push(tokio::spawn(loop_.run()));
    }
    let (mut sent, mut tally) = (Vec::new(), Tally::default());
    for t in tasks {
        let (out, t) = t.await.context("a sender panicked")?;
        sent.extend(out);
        tally.add(t);
    }
    Ok((sent, tally))
}

/// One sender's loop.
struct Loop {
    sender: Sender,
    gen: OrderGen,
    live: Arc<Live>,
    /// The next order of the timetable to place (shared by the senders).
    next: Arc<AtomicU64>,
    rate: Option<f64>,
    clock: Clock,
    join_after: Duration,
}

impl Loop {
    async fn run(mut self) -> (Vec<Sent>, Tally) {
        let mut out = Vec::new();
        let mut tally = Tally::default();
        if self.rate.is_none() {
            tokio::time::sleep(self.join_after).await;
        }
        while let Some(due) = self.next_due().await {
            let body = self.gen.next_body();
            self.live.sent.fetch_add(1, Ordering::Relaxed);
            let id = self.sender.place(&body, &mut tally).await;
            if tally.abandoned > 0 {
                break;
            }
            let now = Instant::now();
            if id.is_some() {
                self.live.accepted.fetch_add(1, Ordering::Relaxed);
            }
            out.push(Sent {
                due_ms: self.clock.ms_since_start(due),
                done_ms: self.clock.ms_since_start(now),
                ack_us: now.duration_since(due).as_micros().min(u32::MAX as u128) as u32,
                id,
            });
        }
        (out, tally)
    }

    /// When the next order is due (waiting for it on the open loop), or None when the
    /// load is over.
    async fn next_due(&mut self) -> Option<Instant> {
        let Clock {
            ramp_s, steady_s, ..
        } = self.clock;
        match self.rate {
            Some(r) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                if i >= timetable_len(r, ramp_s, steady_s) {
                    return None;
                }
                let due = self.clock.at(scheduled_at(i, r, ramp_s));
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => {
                let now = Instant::now();
                (now.duration_since(self.clock.start).as_secs_f64() < self.clock.end_of_load_s())
                    .then_some(now)
            }
        }
    }
}
