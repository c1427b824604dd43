//! Metrics as every DTSS process serves them: Prometheus's text format 0.0.4 (what
//! `promtool check metrics` and every scraper read). `prometheus-client` encodes
//! OpenMetrics, where a counter family `x` has samples `x_total` and ends with `# EOF`;
//! `text_format` names the family `x_total` too and drops what 0.0.4 does not have.

use std::collections::HashSet;

/// OpenMetrics text from `prometheus-client` as Prometheus text format 0.0.4.
pub fn text_format(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        out.push_str(&renamed(line, &counters));
        out.push('\n');
    }
    out
}

/// A `# HELP` or `# TYPE` line of a counter family, named as its samples are.
fn renamed(line: &str, counters: &HashSet<&str>) -> String {
    for kind in ["# HELP ", "# TYPE "] {
        let Some(rest) = line.strip_prefix(kind) else {
            continue;
        };
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        if counters.contains(name) && !name.ends_with("_total") {
            return format!("{kind}{name}_total {tail}");
        }
    }
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_as_their_samples_and_eof_goes() {
        let om = "# HELP dtss_x Things seen.\n# TYPE dtss_x counter\ndtss_x_total{a=\"1\"} 3\n\
                  # HELP dtss_g A gauge.\n# TYPE dtss_g gauge\n# UNIT dtss_g seconds\ndtss_g 1\n# EOF\n";
        assert_eq!(
            text_format(om),
            "# HELP dtss_x_total Things seen.\n# TYPE dtss_x_total counter\ndtss_x_total{a=\"1\"} 3\n\
             # HELP dtss_g A gauge.\n# TYPE dtss_g gauge\ndtss_g 1\n"
        );
    }
}
