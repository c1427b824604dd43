//! What the rate modifier counts, in the Prometheus text format (`render_metrics`;
//! `dtss rates run --metrics-listen` serves it):
//!
//! - `dtss_modifier_leader`: 1 while this modifier holds the lock and writes, else 0;
//! - `dtss_modifier_elections_total`: times it became the leader;
//! - `dtss_modifier_steps_total`: periods in which it stepped every rate;
//! - `dtss_modifier_failed_steps_total`: steps that failed (leadership given up);
//! - `dtss_modifier_rate{currency}`: the rate it last wrote.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use model::{Currency, Decimal};

pub(crate) static LEADER: AtomicBool = AtomicBool::new(false);
pub(crate) static ELECTIONS: AtomicU64 = AtomicU64::new(0);
pub(crate) static STEPS: AtomicU64 = AtomicU64::new(0);
pub(crate) static FAILED_STEPS: AtomicU64 = AtomicU64::new(0);
static RATES: Mutex<BTreeMap<String, Decimal>> = Mutex::new(BTreeMap::new());

pub(crate) fn wrote(c: Currency, rate: Decimal) {
    let mut rates = RATES.lock().unwrap_or_else(|p| p.into_inner());
    rates.insert(c.to_string(), rate);
}

/// The modifier's metrics, in the Prometheus text format.
pub fn render_metrics() -> String {
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut s = format!(
        "# TYPE dtss_modifier_leader gauge\n\
         dtss_modifier_leader {}\n\
         # TYPE dtss_modifier_elections_total counter\n\
         dtss_modifier_elections_total {}\n\
         # TYPE dtss_modifier_steps_total counter\n\
         dtss_modifier_steps_total {}\n\
         # TYPE dtss_modifier_failed_steps_total counter\n\
         dtss_modifier_failed_steps_total {}\n\
         # TYPE dtss_modifier_rate gauge\n",
        u8::from(LEADER.load(Ordering::Relaxed)),
        n(&ELECTIONS),
        n(&STEPS),
        n(&FAILED_STEPS),
    );
    let rates = RATES.lock().unwrap_or_else(|p| p.into_inner());
    for (c, r) in rates.iter() {
        writeln!(s, "dtss_modifier_rate{{currency=\"{c}\"}} {r}").unwrap();
    }
    s
}
