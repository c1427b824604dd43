//! `--set key=value`: one key of the config overridden for one command, checked like the
//! file; the environment's secrets still come after it; `dtss up` hands the overrides to
//! every process it starts.

mod common;

use std::time::Duration;

use common::{free_port, http, http_with, wait_for, Cluster, Spec};

#[test]
fn a_set_is_checked_like_the_file_and_a_bad_one_says_what_to_fix() {
    let c = Cluster::configure("setcheck", Spec::default());
    let bad = c
        .run(&["--set", "cluster.max_unsettled_per_worker=5", "init"])
        .unwrap_err();
    assert!(
        bad.contains("cluster.max_unsettled_per_worker: 5 is below 1000"),
        "{bad}"
    );
    let malformed = c.run(&["--set", "kafka.topic", "init"]).unwrap_err();
    assert!(malformed.contains("not KEY=VALUE"), "{malformed}");
    let not_section = c.run(&["--set", "kafka.topic.x=1", "init"]).unwrap_err();
    assert!(
        not_section.contains("kafka.topic is not a section"),
        "{not_section}"
    );
}

#[test]
fn a_set_overrides_the_file_and_the_environment_overrides_a_set_secret() {
    let mut c = Cluster::configure("setprecedence", Spec::default());
    c.run(&["init"]).expect("dtss init");
    c.start_broker();
    let listen = format!("127.0.0.1:{}", free_port());
    let set_listen = format!("ingest.listen={listen}");
    c.ingest = Some(c.spawn_env(
        "ingest",
        &[
            "--set",
            &set_listen,
            "--set",
            "ingest.admin_token=\"from-set\"",
            "ingest",
        ],
        &[("DTSS_ADMIN_TOKEN", "from-environment")],
    ));
    wait_for(Duration::from_secs(60), "ingest on the --set port", || {
        http(&listen, "GET", "/healthz", None).is_ok_and(|(s, _)| s == 200)
    });
    assert!(
        http(&c.listen, "GET", "/healthz", None).is_err(),
        "ingest also listens on the file's port"
    );
    let totals = |token: &str| {
        let bearer = format!("Bearer {token}");
        http_with(
            &listen,
            "GET",
            "/api/totals",
            None,
            &[("Authorization", &bearer)],
        )
        .unwrap()
        .0
    };
    assert_eq!(totals("from-environment"), 200);
    assert_eq!(totals("from-set"), 401);
}

#[test]
fn dtss_up_hands_its_overrides_to_every_process() {
    let c = Cluster::configure("setup", Spec::default());
    let listen = format!("127.0.0.1:{}", free_port());
    let out = std::process::Command::new(common::BIN)
        .args(["up", "--no-services", "--load", "200", "--exit-after-load"])
        .args(["--set", &format!("ingest.listen={listen}")])
        .arg("--config")
        .arg(&c.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("http://{listen}")), "{stdout}");
    assert!(stdout.contains("settled 200/200"), "{stdout}");
}
