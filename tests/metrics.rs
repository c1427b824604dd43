//! Metrics from every process: what ingest, a worker, the broker and the rate modifier
//! (`--metrics-listen`) expose agrees with what MySQL holds, and every metric the Grafana
//! dashboard in deploy/grafana names appears in a live scrape of the process its name says.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{free_port, http, wait_for, Cluster, Spec};

/// The metric text at `addr`'s `/metrics`.
fn scrape(addr: &str) -> String {
    match http(addr, "GET", "/metrics", None).expect("GET /metrics") {
        (200, serde_json::Value::String(text)) => text,
        other => panic!("GET {addr}/metrics answered {other:?}"),
    }
}

/// The sum of every sample of `name` whose labels hold all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|want| rest.contains(want))
        })
        .map(|(_, v)| v.parse::<f64>().expect("a number"))
        .sum()
}

/// The names of the series in a scrape (`name` of `name{labels} value`).
fn names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every `dtss_…` metric name in the dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = include_str!("../deploy/grafana/dtss.json");
    let dashboard: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    let mut found = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("dtss_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                found.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    found
}

#[test]
fn every_process_reports_metrics_that_agree_with_mysql_and_the_dashboard() {
    let mut c = Cluster::configure("metrics", Spec::default());
    c.run(&["init"]).expect("dtss init");
    let broker_metrics = format!("127.0.0.1:{}", free_port());
    let addr = c.dir.join("data/broker.addr");
    c.broker = Some(c.spawn("broker", &["broker", "--metrics-listen", &broker_metrics]));
    wait_for(Duration::from_secs(30), "broker address", || addr.exists());
    let modifier_metrics = format!("127.0.0.1:{}", free_port());
    let mut modifier = c.spawn(
        "modifier",
        &[
            "rates",
            "run",
            "--period-ms",
            "200",
            "--metrics-listen",
            &modifier_metrics,
        ],
    );
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    c.workers.lock().unwrap()[0] = Some(c.spawn(
        "worker-0",
        &[
            "worker",
            "--process",
            "0",
            "--metrics-listen",
            &worker_metrics,
        ],
    ));
    c.start_ingest();

    let mut accepted = vec![];
    for i in 0..40 {
        let item = if i == 7 { 999_999 } else { 1 + i % 50 };
        let (s, v) = c.post(&format!(
            r#"{{"user_id":"m-{i}","initiator":"RMB","items":[{{"id":{item},"number":1}}]}}"#
        ));
        assert_eq!(s, 202, "{v}");
        accepted.push(v["order_id"].as_str().unwrap().to_string());
    }
    let (s, _) = c.post(r#"{"user_id":"m","initiator":"RMB","items":[]}"#);
    assert_eq!(s, 400);
    c.wait_results(40, Duration::from_secs(60));

    let ingest = scrape(&c.listen);
    let submitted = r#"route="submit""#;
    assert_eq!(
        sum(
            &ingest,
            "dtss_ingest_requests_total",
            &[submitted, r#"status="202""#]
        ),
        40.0
    );
    assert_eq!(
        sum(
            &ingest,
            "dtss_ingest_requests_total",
            &[submitted, r#"status="400""#]
        ),
        1.0
    );
    assert_eq!(sum(&ingest, "dtss_ingest_ack_seconds_count", &[]), 40.0);

    // Offsets are committed with the next batch or after 100 ms idle, the lag read every
    // second: wait for them.
    let succeeded = c.count("SELECT COUNT(*) FROM result WHERE success") as f64;
    let mut worker = String::new();
    wait_for(
        Duration::from_secs(10),
        "worker metrics of 40 orders",
        || {
            worker = scrape(&worker_metrics);
            sum(&worker, "dtss_worker_committed_offset", &[]) == 40.0
                && names(&worker).contains("dtss_worker_lag")
        },
    );
    assert_eq!(sum(&worker, "dtss_worker_lag", &[]), 0.0, "all read");
    let settled = "dtss_worker_settled_orders_total";
    assert_eq!(
        sum(&worker, settled, &[r#"outcome="succeeded""#]),
        succeeded
    );
    assert_eq!(sum(&worker, settled, &[r#"outcome="unknown_item""#]), 1.0);
    assert_eq!(sum(&worker, "dtss_worker_batch_orders_sum", &[]), 40.0);
    assert!(
        sum(&worker, "dtss_worker_rate_version", &[]) >= 1.0,
        "{worker}"
    );

    let broker = scrape(&broker_metrics);
    let produced = r#"api="Produce""#;
    assert!(sum(&broker, "dtss_broker_requests_total", &[produced]) >= 1.0);
    assert!(sum(&broker, "dtss_broker_requests_total", &[r#"api="Fetch""#]) >= 1.0);
    assert!(
        sum(&broker, "dtss_broker_connections", &[]) >= 2.0,
        "ingest and worker"
    );
    assert_eq!(
        sum(&broker, "dtss_broker_log_end_offset", &[]),
        40.0,
        "the 40 accepted orders (the one refused by validation never reached Kafka): {broker}"
    );

    let mut modifier_text = String::new();
    wait_for(Duration::from_secs(30), "the modifier's steps", || {
        modifier_text = scrape(&modifier_metrics);
        sum(&modifier_text, "dtss_modifier_steps_total", &[]) >= 2.0
    });
    assert_eq!(sum(&modifier_text, "dtss_modifier_leader", &[]), 1.0);
    assert_eq!(
        sum(&modifier_text, "dtss_modifier_elections_total", &[]),
        1.0
    );
    let (s, rates) = c.get("/api/rates");
    assert_eq!(s, 200);
    let zk_usd: f64 = rates["rates"]["USD"]["rate"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let written = sum(&modifier_text, "dtss_modifier_rate", &[r#"currency="USD""#]);
    assert!(
        written > 0.0 && (written - zk_usd).abs() / zk_usd < 0.05,
        "{written} vs {zk_usd}"
    );
    Cluster::terminate(&mut modifier);

    let (ingest, worker) = (names(&ingest), names(&worker));
    let (broker, modifier) = (names(&broker), names(&modifier_text));
    let dashboard = dashboard_metrics();
    assert!(dashboard.len() >= 10, "{dashboard:?}");
    for name in &dashboard {
        let scraped = match name.split('_').nth(1) {
            Some("worker") => &worker,
            Some("broker") => &broker,
            Some("modifier") => &modifier,
            _ => &ingest,
        };
        assert!(
            scraped.contains(name),
            "the dashboard's {name} is in no live scrape"
        );
    }
    c.check_invariants(&accepted);
}

/// `promtool ARGS`, with `stdin` on its standard input: Ok(output) or Err(output).
fn promtool(args: &[&str], stdin: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn the_prometheus_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["one-machine.yml", "three-hosts.yml"] {
        let path = format!("{root}/deploy/prometheus/{file}");
        promtool(&["check", "config", &path], "").unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn under_dtss_up_every_process_serves_metrics_that_promtool_accepts() {
    let c = Cluster::configure("upmetrics", Spec::default());
    let mut up = std::process::Command::new(common::BIN)
        .args(["up", "--no-services", "--config"])
        .arg(&c.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(up.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("metrics:") {
        let mut line = String::new();
        use std::io::BufRead;
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "dtss up ended: {banner}"
        );
        banner += &line;
    }
    let targets = c.dir.join("data/prometheus-targets.json");
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&targets).unwrap()).unwrap();
    let mut seen = BTreeSet::new();
    for t in list.as_array().unwrap() {
        let (addr, process) = (t["targets"][0].as_str().unwrap(), &t["labels"]["process"]);
        assert!(banner.contains(addr), "{addr} not printed: {banner}");
        let text = scrape(addr);
        assert!(text.contains("# TYPE dtss_"), "{process}: {text}");
        promtool(&["check", "metrics"], &text).unwrap_or_else(|e| panic!("{process}: {e}"));
        seen.insert(process.as_str().unwrap().to_string());
    }
    let want = ["broker", "ingest", "rate-modifier", "worker-0"];
    assert_eq!(seen, want.iter().map(|s| s.to_string()).collect());
    // The one-machine scrape config reads this file: valid with it there too.
    let config = c.dir.join("prometheus.yml");
    let one = std::fs::read_to_string(format!(
        "{}/deploy/prometheus/one-machine.yml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    std::fs::write(
        &config,
        one.replace(
            "../../.dtss/prometheus-targets.json",
            targets.to_str().unwrap(),
        ),
    )
    .unwrap();
    let checked = promtool(&["check", "config", config.to_str().unwrap()], "").unwrap();
    assert!(!checked.contains("WARNING"), "{checked}");
    // SIGINT stops it all.
    unsafe { libc::kill(up.id() as i32, libc::SIGINT) };
    assert!(up.wait().unwrap().success());
}
