//! Live views, kept by differential dataflow (docs/DESIGN.md, "Live views"): what the
//! committed outcomes add up to, maintained incrementally as orders settle and published
//! to ZooKeeper (`Config::views_path`) for ingest's `GET /api/views` and the console.
//!
//! ```text
//!            ┌▶ sales: (currency, minute) += paid, retracted when 60 min old ─▶ consolidate ──┐
//! outcomes ──┼▶ sold: commodity += units, retracted 5 min later ──────────────────────────────┼▶ worker 0 ─▶ ZooKeeper
//!            └▶ stock: (commodity, left) below the threshold ─▶ min per commodity ────────────┘   (≤ 1/s)
//! ```
//!
//! Worker 0 sums the units sold per commodity and ranks the top 10 itself: a count and
//! a top-10 reduce in differential replayed each commodity's five minutes of history
//! every second, tens of milliseconds in which that worker settled nothing.
//!
//! An update takes effect at its order's epoch rounded up to the next whole second, so the
//! views change at most once a second whatever `cluster.epoch_ms` is; a window's retraction
//! is the same update, negated, at the time the window has passed it. Worker 0 applies the
//! updates below the frontier and publishes what they add up to together with the epoch
//! they are complete up to. Sales and top commodities count what this run of the job
//! settled; stock starts from MySQL (stock only ever goes down, so the lowest value seen is
//! the current one).

use std::collections::btree_map::Entry;
use std::collections::{hash_map, BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::consolidation::{consolidate, consolidate_updates};
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use differential_dataflow::{AsCollection, VecCollection};
use model::{Config, Currency, Decimal};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sinks::Outcome;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concat;
use timely::dataflow::StreamVec;

use crate::status::Next;

/// Sales are kept per minute for this many minutes.
pub const SALES_MINUTES: u64 = 60;
/// Top commodities count the units sold in this window.
pub const TOP_WINDOW_MS: u64 = 5 * 60_000;
/// How many top commodities are listed.
pub const TOP: usize = 10;
/// Views move at most this often.
const STEP_MS: u64 = 1_000;

/// Paid and orders: the difference type of the sales view, so differential sums it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sales {
    paid: Decimal,
    orders: i64,
}

impl IsZero for Sales {
    fn is_zero(&self) -> bool {
        self.orders == 0 && self.paid.is_zero()
    }
}

impl Semigroup for Sales {
    /// Checked: a sum past Decimal's range (about 7.9·10^28, some million orders of the
    /// largest amount a result holds, in one minute) stays at the bound and is logged.
    fn plus_equals(&mut self, rhs: &Self) {
        self.paid = self.paid.checked_add(rhs.paid).unwrap_or_else(|| {
            tracing::error!("a sales view sum overflowed; it is wrong from here on");
            Decimal::MAX
        });
        self.orders = self.orders.saturating_add(rhs.orders);
    }
}

impl Monoid for Sales {
    fn zero() -> Self {
        Sales::default()
    }
}

impl Abelian for Sales {
    fn negate(&mut self) {
        self.paid = -self.paid;
        self.orders = -self.orders;
    }
}

/// The view times of epochs.
#[derive(Clone, Copy)]
struct Clock {
    epoch_ms: u64,
}

impl Clock {
    fn step(self) -> u64 {
        (STEP_MS / self.epoch_ms).max(1)
    }

    /// When an update for `epoch` takes effect: the next whole step.
    fn at(self, epoch: u64) -> u64 {
        epoch.div_ceil(self.step()).saturating_mul(self.step())
    }

    /// The minute (ms since the Unix epoch, rounded down) `epoch` falls in.
    fn minute(self, epoch: u64) -> u64 {
        epoch.saturating_mul(self.epoch_ms) / 60_000 * 60_000
    }

    /// When the minute starting at `minute_ms` leaves the sales window.
    fn minute_expires(self, minute_ms: u64) -> u64 {
        let ms = minute_ms.saturating_add((SALES_MINUTES + 1) * 60_000);
        self.at(ms / self.epoch_ms)
    }

    fn top_window(self) -> u64 {
        self.at(TOP_WINDOW_MS / self.epoch_ms)
    }

    /// Just past the last step before `frontier` (a time no later than it): what the
    /// views' collections hold their frontier at, so that it moves once a step.
    fn past_last_step(self, frontier: u64) -> u64 {
        match frontier {
            0 => 0,
            f => (f - 1) / self.step() * self.step() + 1,
        }
    }

    /// The last view time complete when the frontier is at `frontier`.
    fn complete(self, frontier: u64) -> u64 {
        frontier.saturating_sub(1) / self.step() * self.step()
    }
}

/// One change to a view, on its way to worker 0.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Row {
    /// Currency index (config order), minute, the change.
    Sales(u8, u64, Sales),
    /// Commodity, units sold (negative: leaving the window).
    Sold(u32, isize),
    /// Commodity, stock left, count.
    Low(u32, u32, isize),
}

/// Keep the views of `outcomes` and publish them from worker `index` 0; `low_at_start`:
/// worker 0's commodities already below the threshold (id, stock) when the job started.
pub fn views<'s>(
    outcomes: StreamVec<'s, u64, Outcome>,
    cfg: &Config,
    index: usize,
    low_at_start: Vec<(u32, u32)>,
) {
    let clock = Clock {
        epoch_ms: cfg.cluster.epoch_ms,
    };
    let currencies = cfg.currencies.all.clone();
    let threshold = cfg.catalogue.low_stock_below;
    let sales = sales(outcomes.clone(), clock, currencies.clone()).consolidate();
    // Summed per commodity and ranked by worker 0 (the module's header says why).
    let sold = sold(outcomes.clone(), clock);
    let low = stock(outcomes, clock, threshold, low_at_start)
        .reduce(|_, seen, out| out.push((*seen[0].0, 1isize)))
        .filter(move |(_, left)| *left < threshold);
    let rows = sales
        .inner
        .map(|((c, m), t, s)| (Row::Sales(c, m, s), t))
        .concat(sold.inner.map(|(c, t, units)| (Row::Sold(c, units), t)))
        .concat(low.inner.map(|((c, l), t, r)| (Row::Low(c, l, r), t)));
    let latest = (index == 0).then(|| spawn_publisher(cfg.clone()));
    let mut board = Board::new(clock, currencies, threshold);
    rows.sink(Exchange::new(|_| 0), "Views", move |(input, frontier)| {
        input.for_each(|_, data| board.stash(data.drain(..)));
        let open = frontier.frontier().first().copied();
        board.apply_below(open);
        if let Some(latest) = &latest {
            board.publish(latest, open.is_none());
        }
    });
}

/// Each successful order's paid, at its currency and minute.
fn sales<'s>(
    outcomes: StreamVec<'s, u64, Outcome>,
    clock: Clock,
    currencies: Vec<Currency>,
) -> VecCollection<'s, u64, (u8, u64), Sales> {
    updates(outcomes, clock, "Sales", Vec::new(), move |o, out| {
        let Some(c) = currencies.iter().position(|c| *c == o.initiator) else {
            return;
        };
        if o.reason.is_some() {
            return;
        }
        let minute = clock.minute(o.epoch);
        let s = Sales {
            paid: o.paid,
            orders: 1,
        };
        let mut gone = s.clone();
        gone.negate();
        let key = (c as u8, minute);
        out.push((key, clock.at(o.epoch), s));
        out.push((key, clock.minute_expires(minute), gone));
    })
}

/// Each successful order's units per commodity, for the top window.
fn sold<'s>(
    outcomes: StreamVec<'s, u64, Outcome>,
    clock: Clock,
) -> VecCollection<'s, u64, u32, isize> {
    updates(outcomes, clock, "Sold", Vec::new(), move |o, out| {
        if o.reason.is_some() {
            return;
        }
        let at = clock.at(o.epoch);
        for l in &o.lines {
            let units = l.units as isize;
            out.push((l.commodity, at, units));
            out.push((l.commodity, at.saturating_add(clock.top_window()), -units));
        }
    })
}

/// The stock each worker saw each commodity left at, below `threshold` (stock only goes
/// down: a commodity never leaves the view once in it), only its lowest kept.
fn stock<'s>(
    outcomes: StreamVec<'s, u64, Outcome>,
    clock: Clock,
    threshold: u32,
    at_start: Vec<(u32, u32)>,
) -> VecCollection<'s, u64, (u32, u32), isize> {
    let mut lowest: HashMap<u32, u32> = at_start.iter().copied().collect();
    let seed = at_start.into_iter().map(|cl| (cl, 0, 1)).collect();
    updates(outcomes, clock, "Stock", seed, move |o, out| {
        for l in &o.lines {
            let Some(left) = l.left.filter(|&left| left < threshold) else {
                continue;
            };
            let at = clock.at(o.epoch);
            match lowest.entry(l.commodity) {
                hash_map::Entry::Occupied(mut e) if left < *e.get() => {
                    out.push(((l.commodity, e.insert(left)), at, -1));
                    out.push(((l.commodity, left), at, 1));
                }
                hash_map::Entry::Occupied(_) => {}
                hash_map::Entry::Vacant(e) => {
                    e.insert(left);
                    out.push(((l.commodity, left), at, 1));
                }
            }
        }
    })
}

/// The updates `logic` makes of each outcome, as a collection; `seed` goes in at time 0.
/// No update is earlier than the outcome's own time (differential's invariant).
///
/// The collection moves in whole steps (`Clock::step`) however often epochs close: the
/// operator holds a capability just past the last step the input frontier has passed, so
/// the arrangements downstream seal and merge once a step rather than once an epoch. An
/// update for a later time (a view's next second, a window's retraction minutes ahead)
/// waits here, summed per time, until the input frontier reaches its time: handed on at
/// once, it would wait in differential's batchers, which go over everything waiting each
/// time the frontier moves.
fn updates<'s, D, R>(
    outcomes: StreamVec<'s, u64, Outcome>,
    clock: Clock,
    name: &str,
    seed: Vec<(D, u64, R)>,
    mut logic: impl FnMut(&Outcome, &mut Vec<(D, u64, R)>) + 'static,
) -> VecCollection<'s, u64, D, R>
where
    D: Ord + Clone + 'static,
    R: Semigroup + 'static,
{
    outcomes
        .unary_frontier::<CapacityContainerBuilder<Vec<(D, u64, R)>>, _, _, _>(
            Pipeline,
            name,
            move |cap, _info| {
                // Never after the input frontier or any waiting time.
                let mut held = Some(cap);
                let mut seed = Some(seed);
                let mut buf = Vec::new();
                let mut waiting: BTreeMap<u64, Waiting<D, R>> = BTreeMap::new();
                move |(input, frontier), output| {
                    let Some(h) = held.as_mut() else { return };
                    if let Some(seed) = seed.take() {
                        output.session(h).give_iterator(seed.into_iter());
                    }
                    input.for_each(|cap, data| {
                        let Some(t) = cap.retain_least(0).map(|c| *c.time()) else {
                            return;
                        };
                        for o in data.iter() {
                            logic(o, &mut buf);
                        }
                        // A hand-over's outcomes share few (key, second) pairs: summed
                        // here, far fewer updates wait and reach the arrangements.
                        consolidate_updates(&mut buf);
                        for (d, at, r) in buf.drain(..) {
                            waiting.entry(at.max(t)).or_default().push(d, r);
                        }
                    });
                    let open = frontier.frontier().first().copied();
                    while let Some(entry) = waiting.first_entry() {
                        if open.is_some_and(|f| *entry.key() > f) {
                            break;
                        }
                        let at = *entry.key();
                        let ups = entry.remove().take().into_iter().map(|(d, r)| (d, at, r));
                        output.session(&h.delayed(&at)).give_iterator(ups);
                    }
                    match open {
                        Some(f) => h.downgrade(&clock.past_last_step(f)),
                        None => held = None,
                    }
                }
            },
        )
        .as_collection()
}

/// The updates of one time waiting for the frontier, summed whenever they have doubled
/// since they last were (so they stay within twice their distinct keys).
struct Waiting<D, R> {
    updates: Vec<(D, R)>,
    summed: usize,
}

impl<D, R> Default for Waiting<D, R> {
    fn default() -> Self {
        Waiting {
            updates: Vec::new(),
            summed: 0,
        }
    }
}

impl<D: Ord, R: Semigroup> Waiting<D, R> {
    fn push(&mut self, d: D, r: R) {
        self.updates.push((d, r));
        if self.updates.len() >= (2 * self.summed).max(1024) {
            consolidate(&mut self.updates);
            self.summed = self.updates.len();
        }
    }

    fn take(mut self) -> Vec<(D, R)> {
        consolidate(&mut self.updates);
        self.updates
    }
}

/// What worker 0 has applied of the views, and what waits for the frontier.
struct Board {
    clock: Clock,
    currencies: Vec<Currency>,
    threshold: u32,
    pending: BTreeMap<u64, Vec<Row>>,
    sales: BTreeMap<(u8, u64), Sales>,
    /// Units sold in the window per commodity.
    sold: BTreeMap<u32, isize>,
    low: BTreeMap<(u32, u32), isize>,
    complete: Option<u64>,
    started_at: i64,
    last_publish: Option<Instant>,
    changed: bool,
}

impl Board {
    fn new(clock: Clock, currencies: Vec<Currency>, threshold: u32) -> Board {
        Board {
            clock,
            currencies,
            threshold,
            pending: BTreeMap::new(),
            sales: BTreeMap::new(),
            sold: BTreeMap::new(),
            low: BTreeMap::new(),
            complete: None,
            started_at: model::now_ms(),
            last_publish: None,
            changed: true,
        }
    }

    fn stash(&mut self, rows: impl Iterator<Item = (Row, u64)>) {
        for (row, t) in rows {
            self.pending.entry(t).or_default().push(row);
        }
    }

    /// Apply every update before `open` (all of them when the frontier is empty).
    fn apply_below(&mut self, open: Option<u64>) {
        while let Some(entry) = self.pending.first_entry() {
            if open.is_some_and(|f| *entry.key() >= f) {
                break;
            }
            for row in entry.remove() {
                self.apply(row);
            }
            self.changed = true;
        }
        let complete = open.map(|f| self.clock.complete(f));
        if complete.is_some() && complete != self.complete {
            self.complete = complete;
            self.changed = true;
        }
    }

    fn apply(&mut self, row: Row) {
        fn add<K: Ord>(map: &mut BTreeMap<K, isize>, k: K, r: isize) {
            match map.entry(k) {
                Entry::Occupied(mut e) => {
                    *e.get_mut() += r;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(r);
                }
            }
        }
        match row {
            Row::Sales(c, m, s) => {
                let e = self.sales.entry((c, m)).or_default();
                e.plus_equals(&s);
                if e.is_zero() {
                    self.sales.remove(&(c, m));
                }
            }
            Row::Sold(c, units) => add(&mut self.sold, c, units),
            Row::Low(c, l, r) => add(&mut self.low, (c, l), r),
        }
    }

    /// Hand the views to the publisher, at most once a second (and at the end).
    fn publish(&mut self, latest: &Latest, last: bool) {
        let due = self
            .last_publish
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(STEP_MS));
        if !(self.changed && (due || last)) {
            return;
        }
        self.changed = false;
        self.last_publish = Some(Instant::now());
        *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.document());
    }

    /// The `TOP` commodities with the most units sold in the window, most first (of equal
    /// units, the lower id first).
    fn top(&self) -> Vec<(u32, i64)> {
        let rank = |&(c, n): &(u32, i64)| (std::cmp::Reverse(n), c);
        let mut all: Vec<(u32, i64)> = self.sold.iter().map(|(&c, &n)| (c, n as i64)).collect();
        if all.len() > TOP {
            all.select_nth_unstable_by_key(TOP - 1, rank);
            all.truncate(TOP);
        }
        all.sort_unstable_by_key(rank);
        all
    }

    fn document(&self) -> Value {
        let sales: Vec<Value> = self
            .sales
            .iter()
            .map(|((c, m), s)| {
                let currency = self.currencies.get(*c as usize).map(|c| c.to_string());
                json!({"currency": currency, "minute": m, "paid": s.paid.to_string(), "orders": s.orders})
            })
            .collect();
        let top: Vec<Value> = self
            .top()
            .into_iter()
            .map(|(c, n)| json!({"id": c, "units": n}))
            .collect();
        let low: Vec<Value> = self
            .low
            .keys()
            .map(|(c, l)| json!({"id": c, "left": l}))
            .collect();
        json!({
            "complete_up_to_epoch": self.complete, "epoch_ms": self.clock.epoch_ms,
            "since": self.started_at, "published_at": model::now_ms(),
            "sales_minutes": SALES_MINUTES, "sales": sales,
            "top_window_ms": TOP_WINDOW_MS, "top": top,
            "low_stock_below": self.threshold, "low_stock": low,
        })
    }
}

/// The newest views, waiting for the publisher.
type Latest = Arc<Mutex<Option<Value>>>;

/// Start the thread that writes the newest views to ZooKeeper, once a second at most,
/// until the board is gone.
fn spawn_publisher(cfg: Config) -> Latest {
    let latest: Latest = Arc::default();
    let slot = latest.clone();
    let path = cfg.views_path();
    crate::status::spawn_writer(cfg, "views-publisher", path, move || {
        match slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(doc) => Next::Write(doc.to_string().into_bytes()),
            None if Arc::strong_count(&slot) == 1 => Next::End,
            None => Next::Skip,
        }
    });
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_times_round_up_to_whole_seconds_and_windows_end_after_them() {
        let c = Clock { epoch_ms: 10 };
        assert_eq!((c.at(0), c.at(1), c.at(100), c.at(101)), (0, 100, 100, 200));
        assert_eq!(c.minute(6_001), 60_000, "epoch 6001 is at 60.01 s");
        assert_eq!(c.minute_expires(60_000), c.at((60_000 + 61 * 60_000) / 10));
        assert!(c.minute_expires(c.minute(6_001)) > c.at(6_001));
        assert_eq!(c.top_window(), 30_000);
        assert_eq!(
            (c.complete(1), c.complete(100), c.complete(101)),
            (0, 0, 100)
        );
        assert_eq!(
            [0, 1, 100, 101, 150, 200, 201].map(|f| c.past_last_step(f)),
            [0, 1, 1, 101, 101, 101, 201],
            "the views' frontier moves once a second"
        );
        let slow = Clock { epoch_ms: 5_000 };
        assert_eq!(
            (slow.step(), slow.at(7)),
            (1, 7),
            "an epoch longer than a second"
        );
    }

    #[test]
    fn sales_add_and_cancel_exactly() {
        let mut a = Sales {
            paid: Decimal::new(1234, 2),
            orders: 1,
        };
        let mut b = a.clone();
        b.negate();
        a.plus_equals(&b);
        assert!(a.is_zero());
        let mut big = Sales {
            paid: Decimal::MAX,
            orders: 1,
        };
        big.plus_equals(&Sales {
            paid: Decimal::ONE,
            orders: 1,
        });
        assert_eq!(
            (big.paid, big.orders),
            (Decimal::MAX, 2),
            "checked, not a panic"
        );
    }

    #[test]
    fn the_board_applies_only_what_the_frontier_has_passed() {
        let mut b = Board::new(Clock { epoch_ms: 1_000 }, vec!["USD".parse().unwrap()], 10);
        b.stash(
            [
                (Row::Low(1, 5, 1), 3),
                (Row::Sold(2, 7), 3),
                (Row::Sold(2, -7), 9),
            ]
            .into_iter(),
        );
        b.apply_below(Some(3));
        assert!(b.low.is_empty() && b.complete == Some(2));
        b.apply_below(Some(4));
        assert_eq!(b.document()["top"], json!([{"id": 2, "units": 7}]));
        assert_eq!(b.document()["low_stock"], json!([{"id": 1, "left": 5}]));
        b.apply_below(None);
        assert_eq!(
            b.document()["top"],
            json!([]),
            "retracted when the window passed"
        );
    }

    #[test]
    fn later_updates_wait_until_the_frontier_reaches_their_time() {
        use timely::dataflow::operators::capture::{Capture, Event};
        use timely::dataflow::operators::{Input, Probe};
        let outcome = |epoch| Outcome {
            order_id: model::Uuid::nil(),
            initiator: "USD".parse().unwrap(),
            epoch,
            reason: None,
            paid: Decimal::ONE,
            accepted_at: 0,
            settled_at: 0,
            lines: vec![],
        };
        let sent_by = timely::execute_directly(move |worker| {
            let mut input = timely::dataflow::InputHandle::new();
            let (probe, captured) = worker.dataflow::<u64, _, _>(|scope| {
                let outcomes = scope.input_from(&mut input);
                // One update now and its retraction 100 later, as a window makes them.
                let clock = Clock { epoch_ms: 1_000 };
                let ups = updates(
                    outcomes,
                    clock,
                    "Test",
                    vec![(0u32, 0, 1isize)],
                    |o, out| {
                        out.push((7u32, o.epoch, 1isize));
                        out.push((7u32, o.epoch + 100, -1isize));
                    },
                );
                let (probe, stream) = ups.inner.probe();
                (probe, stream.capture())
            });
            // How many updates had gone out once the frontier stood past each time.
            let (mut sent_by, mut seen) = (Vec::new(), 0);
            for (t, epoch) in [(10, Some(10)), (20, Some(10)), (50, None), (110, None)] {
                input.advance_to(t);
                if let Some(e) = epoch {
                    input.send(outcome(e));
                }
                input.advance_to(t + 1);
                worker.step_while(|| probe.less_than(&(t + 1)));
                while let Ok(event) = captured.try_recv() {
                    if let Event::Messages(_, data) = event {
                        seen += data.len();
                    }
                }
                sent_by.push((t, seen));
            }
            sent_by
        });
        // The seed and the +1 of time 10 by 10; the second +1 (read at 20) by 20; both
        // retractions, summed into one update of time 110, only once the frontier is there.
        assert_eq!(sent_by, vec![(10, 2), (20, 3), (50, 3), (110, 4)]);
    }
}
