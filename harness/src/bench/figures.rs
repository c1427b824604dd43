//! The measured quantities every part of a bench run shares: latency histograms and
//! their percentiles and spectrum, CPU use, and Kafka lag samples.

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds, in milliseconds.
    pub(super) fn of_us(h: &Histogram<u64>) -> Percentiles {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LagSample {
    pub t_s: f64,
    /// High watermark − committed offset, per partition.
    pub partitions: Vec<i64>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct CpuUse {
    pub busy_pct: f64,
    pub steal_pct: f64,
}

/// (quantile, ms) at 0, 0.5, 0.75, 0.875, … up to the maximum: the percentile spectrum.
pub(super) fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return vec![];
    }
    let mut out = vec![];
    let mut tail = 1.0f64;
    while tail > 1e-6 {
        let q = 1.0 - tail;
        out.push((q, h.value_at_quantile(q) as f64 / 1000.0));
        if h.len() as f64 * tail < 1.0 {
            break;
        }
        tail /= 10f64.powf(0.1);
    }
    out.push((1.0, h.max() as f64 / 1000.0));
    out
}

/// A histogram of latencies in microseconds, up to an hour.
pub(super) fn latency_us() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds")
}
