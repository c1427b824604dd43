//! The operator's console: its endpoints answer and check their parameters, and in
//! headless Chromium (tests/console/console.mjs) a person can place an order, find it,
//! list a user's orders, watch the live numbers move under load and see an injected
//! rate in the chart, without the page asking anything of another origin.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{http, wait_for, Cluster, Spec};

#[test]
fn the_console_places_finds_and_watches_orders_in_a_real_browser() {
    let c = Cluster::start("console", Spec::default());

    let (s, page) = http(&c.listen, "GET", "/", None).expect("GET /");
    assert_eq!(s, 200);
    let page = page.as_str().expect("the page is text").to_string();
    assert!(page.contains("<title>DTSS console</title>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page names no other origin"
    );

    wait_for(Duration::from_secs(30), "the worker's status", || {
        let (s, v) = c.get("/api/status");
        s == 200 && v["processes"][0]["state"] == "running"
    });
    let (_, status) = c.get("/api/status");
    assert_eq!(status["processes"].as_array().unwrap().len(), 1);
    assert_eq!(status["dead_letters"], 0);

    let (s, v) = c.get("/api/catalogue?q=commodity-7&limit=3");
    assert_eq!(s, 200, "{v}");
    let found = v["commodities"].as_array().unwrap();
    assert_eq!(found.len(), 3);
    assert!(found
        .iter()
        .all(|r| r["name"].as_str().unwrap().contains("commodity-7")));
    let (s, v) = c.get("/api/catalogue?q=%25&limit=3");
    assert_eq!(
        (s, v["commodities"].as_array().unwrap().len()),
        (200, 0),
        "% is literal"
    );
    assert_eq!(c.get("/api/catalogue?limit=99").1["field"], "limit");
    assert_eq!(
        c.get("/api/rates/history?versions=0").1["field"],
        "versions"
    );
    // The first rate version is recorded by worker 0 once it has read the rates.
    wait_for(Duration::from_secs(10), "the first rate version", || {
        c.get("/api/rates/history").1["rates"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let (s, v) = c.get("/api/rates/history");
    assert!(
        s == 200 && !v["rates"].as_array().unwrap().is_empty(),
        "{v}"
    );

    let node_path = node_modules();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    let _ = std::fs::remove_dir_all(&shots);
    let st = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/console/console.mjs"
        ))
        .env("NODE_PATH", &node_path)
        .env("DTSS_URL", format!("http://{}", c.listen))
        .env("DTSS_TOKEN", "secret")
        .env("SHOTS", &shots)
        .status()
        .expect("run node");
    assert!(
        st.success(),
        "the browser test failed (screenshots in {})",
        shots.display()
    );
    for shot in ["console-rest.png", "console-load.png"] {
        let len = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(len > 10_000, "{shot} is a screenshot ({len} bytes)");
    }
    eprintln!("console screenshots: {}", shots.display());

    // What the page showed as settled is what MySQL holds.
    let placed: Vec<(String, String, bool)> =
        c.query("SELECT initiator, items, success FROM result WHERE user_id = 'console-user'");
    assert_eq!(placed, [("EUR".to_string(), "1:2".to_string(), true)]);
}

/// Where scripts/browser.sh installed playwright-core (it installs what is missing).
fn node_modules() -> String {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/browser.sh"))
        .output()
        .expect("run scripts/browser.sh");
    assert!(
        out.status.success(),
        "scripts/browser.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
