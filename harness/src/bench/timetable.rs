//! The open loop's timetable: when each order is due.

/// When order `i` is due, in seconds from the start: the rate rises linearly from 0 to
/// `rate` over `ramp` seconds, then stays.
pub fn scheduled_at(i: u64, rate: f64, ramp: f64) -> f64 {
    let ramp_orders = rate * ramp / 2.0;
    let x = i as f64;
    if ramp > 0.0 && x < ramp_orders {
        (2.0 * ramp * x / rate).sqrt()
    } else {
        ramp + (x - ramp_orders) / rate
    }
}

/// How many orders the timetable holds.
pub fn timetable_len(rate: f64, ramp: f64, steady: f64) -> u64 {
    (rate * ramp / 2.0 + rate * steady).floor() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timetable_ramps_linearly_then_holds_the_rate() {
        let (rate, ramp, steady) = (1000.0, 4.0, 6.0);
        let n = timetable_len(rate, ramp, steady);
        assert_eq!(n, 2000 + 6000);
        let mut per_second = [0u64; 10];
        for i in 0..n {
            let t = scheduled_at(i, rate, ramp);
            assert!(t >= 0.0 && t < ramp + steady, "order {i} due at {t}");
            per_second[t as usize] += 1;
        }
        // During the ramp second s holds about rate × (s + ½) / ramp orders.
        for (s, got) in per_second.iter().take(4).enumerate() {
            let want = rate * (s as f64 + 0.5) / ramp;
            assert!(
                (*got as f64 - want).abs() <= 2.0,
                "second {s}: {got} vs {want}"
            );
        }
        for got in &per_second[4..] {
            assert!((*got as f64 - rate).abs() <= 1.0, "steady second: {got}");
        }
        // Due times never go backwards.
        assert!((1..n).all(|i| scheduled_at(i, rate, ramp) >= scheduled_at(i - 1, rate, ramp)));
        // Without a ramp the timetable starts at full rate.
        assert_eq!(scheduled_at(0, 500.0, 0.0), 0.0);
        assert!((scheduled_at(500, 500.0, 0.0) - 1.0).abs() < 1e-9);
    }
}
