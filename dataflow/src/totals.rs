//! Totals by epoch (docs/DESIGN.md, "Totals"): successful `paid` summed per initiator currency, exchanged
//! so that currency i (config order) is reduced by worker i % peers; when an epoch
//! closes the cumulative totals are published with the epoch they are complete up to.
//! Cumulative totals start from what MySQL had committed when this run started.

use std::collections::BTreeMap;
use std::time::Duration;

use model::{Config, Currency, Decimal};
use sinks::{Outcome, TotalsSnapshot};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;

/// `initial`: the committed totals of every currency at start.
pub fn totals<'s>(
    outcomes: StreamVec<'s, u64, Outcome>,
    cfg: &Config,
    index: usize,
    peers: usize,
    initial: Vec<(Currency, Decimal, u64)>,
) {
    let currencies = cfg.currencies.all.clone();
    let owned: Vec<Currency> = currencies
        .iter()
        .enumerate()
        .filter(|(i, _)| i % peers == index)
        .map(|(_, c)| *c)
        .collect();
    let publisher = (!owned.is_empty())
        .then(|| sinks::spawn_publisher(cfg.clone(), Duration::from_millis(100)));
    let slot = move |c: &Currency| currencies.iter().position(|k| k == c).unwrap_or(0) as u64;
    let mut cumulative: BTreeMap<Currency, (Decimal, u64)> = owned
        .iter()
        .map(|c| {
            let (t, n) = initial
                .iter()
                .find(|(k, _, _)| k == c)
                .map(|(_, t, n)| (*t, *n))
                .unwrap_or((Decimal::ZERO, 0));
            (*c, (t, n))
        })
        .collect();
    outcomes
        .flat_map(|o| o.reason.is_none().then_some((o.initiator, o.paid)))
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(move |(c, _): &(Currency, Decimal)| slot(c)),
            "Totals",
            move |_cap, _info| {
                let mut stash: BTreeMap<u64, Vec<(Currency, Decimal)>> = BTreeMap::new();
                let mut published: Option<u64> = None;
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        if let Some(&t) = cap.least() {
                            stash.entry(t).or_default().append(data);
                        }
                    });
                    let open = frontier.frontier().first().copied();
                    let mut changed = false;
                    while let Some(entry) = stash.first_entry() {
                        if open.is_some_and(|f| *entry.key() >= f) {
                            break;
                        }
                        for (c, paid) in entry.remove() {
                            let e = cumulative.entry(c).or_insert((Decimal::ZERO, 0));
                            e.0 += paid;
                            e.1 += 1;
                            changed = true;
                        }
                    }
                    let Some(publisher) = &publisher else { return };
                    let complete = match open {
                        Some(f) => f.saturating_sub(1),
                        None => published.unwrap_or(0),
                    };
                    if changed || published.is_none_or(|p| complete > p) {
                        published = Some(complete);
                        let _ = publisher.send(TotalsSnapshot {
                            epoch: complete,
                            totals: cumulative.iter().map(|(c, (t, n))| (*c, *t, *n)).collect(),
                        });
                    }
                }
            },
        );
}
