//! A bench report as people would rather see it: a terminal table and a self-contained
//! HTML page with SVG plots (throughput and latency over time, the latency
//! distribution, Kafka lag per partition).

use std::fmt::Write as _;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::bench::{BenchReport, Percentiles, Second};

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The figures of one run (or the medians of several) as a terminal table.
pub fn table(r: &BenchReport) -> String {
    let mut s = String::new();
    let o = &r.options;
    let mode = match o.rate {
        Some(rate) => format!("open loop at {rate} orders/s"),
        None => "max throughput (closed loop)".to_string(),
    };
    let _ = writeln!(
        s,
        "{mode} → {}, {} connections, ramp {} s, steady {} s, {} partitions{}",
        r.target,
        o.connections,
        o.ramp_s,
        o.steady_s,
        r.partitions,
        if r.rate_changes > 0 {
            format!(", {} rate changes", r.rate_changes)
        } else {
            String::new()
        }
    );
    counts_lines(&mut s, r);
    latency_lines(&mut s, r);
    s
}

/// What happened to the orders, and the throughput.
fn counts_lines(s: &mut String, r: &BenchReport) {
    let c = &r.counts;
    let reasons: Vec<String> = c.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        s,
        "orders: sent {}, accepted {}, settled {} (succeeded {}, rejected {}), unsettled {}, invalid {}, other statuses {}",
        c.sent,
        c.accepted,
        c.settled,
        c.succeeded,
        if reasons.is_empty() { "0".into() } else { reasons.join(", ") },
        c.unsettled,
        c.invalid,
        c.failed
    );
    let _ = writeln!(
        s,
        "retries: 503 {}, 502/504 {}, no answer {}; copies skipped (duplicates prevented) {}, dead letters {}; idempotency keys {}",
        c.busy_retried,
        c.unacknowledged_retried,
        c.errors_retried,
        c.copies_skipped,
        c.dead_letters,
        if r.options.keys { "on" } else { "off" }
    );
    let _ = writeln!(
        s,
        "late (read after their epoch had closed, settled in the next open one): {} ({:.2} %)",
        c.late,
        late_pct(r)
    );
    if c.commit_time_unknown > 0 {
        let _ = writeln!(
            s,
            "{} settled orders had no commit record in settle_batches: their latency ends at settled_at",
            c.commit_time_unknown
        );
    }
    let t = &r.throughput;
    let _ = writeln!(
        s,
        "throughput (orders/s, steady phase): offered {:.0}, accepted {:.0}, settled {:.0}; end to end over the run {:.0}",
        t.offered_per_s, t.accepted_per_s, t.settled_per_s, t.end_to_end_per_s
    );
}

/// The latency table, the slowest transactions and the CPU use.
fn latency_lines(s: &mut String, r: &BenchReport) {
    let o = &r.options;
    let _ = writeln!(
        s,
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms, steady phase)", "p50", "p90", "p99", "p99.9", "max", "count"
    );
    let row = |s: &mut String, name: &str, p: &Percentiles| {
        let _ = writeln!(
            s,
            "{name:<28} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            p.p50, p.p90, p.p99, p.p999, p.max, p.count
        );
    };
    let ack_name = if o.rate.is_some() {
        "ack (from scheduled time)"
    } else {
        "ack"
    };
    row(s, ack_name, &r.ack_ms);
    row(s, "accepted → committed", &r.e2e_ms);
    row(s, "settlement transaction", &r.transactions_ms);
    if !r.slowest_transactions.is_empty() {
        let slowest: Vec<String> = r
            .slowest_transactions
            .iter()
            .map(|t| format!("{:.0} ms at {:.1} s ({} orders)", t.ms, t.t_s, t.orders))
            .collect();
        let _ = writeln!(s, "slowest settlement transactions: {}", slowest.join(", "));
    }
    if let Some(f) = &r.floor {
        let _ = writeln!(
            s,
            "floor, same steady phase: fsynced commit p50 {:.2} / p99 {:.2} ms, Kafka round trip p50 {:.2} / p99 {:.2} ms; accepted → committed p99 = {:.1} × commit p99",
            f.commit_ms.p50,
            f.commit_ms.p99,
            f.kafka_round_trip_ms.p50,
            f.kafka_round_trip_ms.p99,
            r.e2e_ms.p99 / f.commit_ms.p99.max(0.001)
        );
    }
    if let Some(c) = r.cpu {
        let _ = writeln!(
            s,
            "CPU in the steady phase (whole machine): {:.0} % busy, {:.0} % taken by the hypervisor (steal)",
            c.busy_pct, c.steal_pct
        );
    }
}

type Figure = dyn Fn(&BenchReport) -> f64;

/// Late orders, as a share of those settled.
fn late_pct(r: &BenchReport) -> f64 {
    100.0 * r.counts.late as f64 / r.counts.settled.max(1) as f64
}

/// The medians over several runs, one line per figure.
pub fn medians(runs: &[BenchReport]) -> String {
    // The median, and every run's figure in the order of the runs.
    let med = |f: &dyn Fn(&BenchReport) -> f64| {
        let v: Vec<f64> = runs.iter().map(f).collect();
        let mut sorted = v.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        (sorted[sorted.len() / 2], v)
    };
    let figures: [(&str, &Figure); 12] = [
        ("accepted orders/s (steady)", &|r| {
            r.throughput.accepted_per_s
        }),
        ("settled orders/s (steady)", &|r| r.throughput.settled_per_s),
        ("end-to-end orders/s (run)", &|r| {
            r.throughput.end_to_end_per_s
        }),
        ("ack p50 ms", &|r| r.ack_ms.p50),
        ("ack p99 ms", &|r| r.ack_ms.p99),
        ("accepted→committed p50 ms", &|r| r.e2e_ms.p50),
        ("accepted→committed p99 ms", &|r| r.e2e_ms.p99),
        ("accepted→committed max ms", &|r| r.e2e_ms.max),
        ("settlement transaction p99 ms", &|r| r.transactions_ms.p99),
        ("late orders %", &late_pct),
        ("floor: fsynced commit p99 ms", &|r| {
            r.floor.as_ref().map_or(f64::NAN, |f| f.commit_ms.p99)
        }),
        ("floor: Kafka round trip p99", &|r| {
            r.floor
                .as_ref()
                .map_or(f64::NAN, |f| f.kafka_round_trip_ms.p99)
        }),
    ];
    let mut s = format!(
        "medians of {} runs (each run's figure in run order):\n",
        runs.len()
    );
    for (name, f) in figures {
        let (m, all) = med(f);
        let all: Vec<String> = all.iter().map(|v| format!("{v:.1}")).collect();
        let _ = writeln!(s, "  {name:<28} {m:>10.1}   (runs: {})", all.join(", "));
    }
    s
}

/// A self-contained HTML page for one run.
pub fn html(r: &BenchReport) -> anyhow::Result<String> {
    let xmax = (r.timeline.len() as f64).max(1.0);
    let mut plots = vec![
        throughput_plot(r, xmax)?,
        latency_plot(r, xmax)?,
        distribution_plot(r)?,
    ];
    if !r.lag.is_empty() {
        plots.push(lag_plot(r, xmax)?);
    }
    let json = serde_json::to_string_pretty(r)?;
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>DTSS bench</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>\
         </head><body><h1>DTSS bench</h1><pre>{}</pre>",
        esc(&table(r))
    );
    for p in plots {
        page.push_str("<div>");
        page.push_str(&p);
        page.push_str("</div>");
    }
    let _ = write!(
        page,
        "<details><summary>every figure (JSON)</summary><pre>{}</pre></details></body></html>",
        esc(&json)
    );
    Ok(page)
}

type Series<'a> = Vec<(&'a str, Vec<(f64, f64)>)>;

fn throughput_plot(r: &BenchReport, xmax: f64) -> anyhow::Result<String> {
    let series = |f: &dyn Fn(&Second) -> u64| -> Vec<(f64, f64)> {
        r.timeline
            .iter()
            .map(|s| (s.t as f64 + 0.5, f(s) as f64))
            .collect()
    };
    let tput: Series = vec![
        ("offered", series(&|s| s.offered)),
        ("accepted (202)", series(&|s| s.accepted)),
        ("settled", series(&|s| s.settled)),
    ];
    let ymax = tput
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let title = "Throughput per second";
    svg(
        title,
        "seconds since start",
        "orders/s",
        0f64..xmax,
        0f64..ymax * 1.1,
        &tput,
        |x| format!("{x:.0}"),
    )
}

fn latency_plot(r: &BenchReport, xmax: f64) -> anyhow::Result<String> {
    let lat = |f: &dyn Fn(&Second) -> f64| -> Vec<(f64, f64)> {
        r.timeline
            .iter()
            .map(|s| (s.t as f64 + 0.5, f(s)))
            .filter(|p| p.1 > 0.0)
            .collect()
    };
    let lats: Series = vec![
        ("ack p50", lat(&|s| s.ack_p50_ms)),
        ("ack p99", lat(&|s| s.ack_p99_ms)),
        ("accepted→committed p50", lat(&|s| s.e2e_p50_ms)),
        ("accepted→committed p99", lat(&|s| s.e2e_p99_ms)),
    ];
    let (lo, hi) = bounds(&lats);
    let title = "Latency percentiles per second (ms, log scale; ack by due second, end to end by acceptance second)";
    svg(
        title,
        "seconds since start",
        "ms",
        0f64..xmax,
        (lo..hi).log_scale(),
        &lats,
        |x| format!("{x:.0}"),
    )
}

/// The percentile spectrum: x = −log10(1 − q), labelled as percentiles.
fn distribution_plot(r: &BenchReport) -> anyhow::Result<String> {
    let spectrum = |d: &[(f64, f64)]| -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = d
            .iter()
            .filter(|(q, _)| *q < 1.0)
            .map(|(q, ms)| (-(1.0 - q).log10(), ms.max(0.001)))
            .collect();
        if let (Some(last), Some((_, max))) = (out.last().copied(), d.last()) {
            out.push((last.0 + 0.1, max.max(0.001)));
        }
        out
    };
    let dist: Series = vec![
        ("ack", spectrum(&r.ack_distribution)),
        ("accepted→committed", spectrum(&r.e2e_distribution)),
    ];
    let (lo, hi) = bounds(&dist);
    let dx = dist
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let label = |x: &f64| {
        let q = 100.0 * (1.0 - 10f64.powf(-x));
        format!("{q:.*}%", (x.floor() as usize).saturating_sub(1).min(4))
    };
    let title = "Latency distribution, steady phase (ms, log scale)";
    svg(
        title,
        "percentile",
        "ms",
        0f64..dx,
        (lo..hi).log_scale(),
        &dist,
        label,
    )
}

fn lag_plot(r: &BenchReport, xmax: f64) -> anyhow::Result<String> {
    let names: Vec<String> = (0..r.partitions)
        .map(|p| format!("partition {p}"))
        .collect();
    let lag: Series = names
        .iter()
        .enumerate()
        .map(|(p, name)| {
            let points = r
                .lag
                .iter()
                .map(|s| (s.t_s, s.partitions.get(p).copied().unwrap_or(0) as f64));
            (name.as_str(), points.collect())
        })
        .collect();
    let ymax = lag
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let xmax = r.lag.last().map(|s| s.t_s).unwrap_or(1.0).max(xmax);
    let title = "Kafka lag per partition (orders in Kafka not yet settled)";
    svg(
        title,
        "seconds since start",
        "orders",
        0f64..xmax,
        0f64..ymax * 1.1,
        &lag,
        |x| format!("{x:.0}"),
    )
}

fn bounds(series: &[(&str, Vec<(f64, f64)>)]) -> (f64, f64) {
    let vals = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1));
    let lo = vals.clone().fold(f64::MAX, f64::min);
    let hi = vals.fold(0.0, f64::max);
    if lo > hi {
        (0.1, 10.0)
    } else {
        ((lo / 2.0).max(0.001), (hi * 2.0).max(lo * 4.0))
    }
}

fn svg<Y>(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x: std::ops::Range<f64>,
    y: Y,
    series: &[(&str, Vec<(f64, f64)>)],
    x_label: impl Fn(&f64) -> String,
) -> anyhow::Result<String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (960, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&x_label)
            .draw()
            .map_err(plot_err)?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(buf)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e:?}")
}
