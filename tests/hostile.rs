//! Hostile clients: slow or idle connections are cut off by ingest's timeouts, a flood
//! of idle sockets does not keep a real client from its 202, past the connection cap a
//! new connection gets a quick 503, and the admin endpoints take only the right token.
//! Real processes; see tests/common.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Cluster, Spec};

const ORDER: &str = r#"{"user_id": "u-1", "initiator": "RMB", "items": [{"id": 1, "number": 1}]}"#;

/// How long until the server closes `s` (reading and dropping whatever it sends), and
/// what it sent; None if it is still open after `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some((start.elapsed(), String::from_utf8_lossy(&got).into())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some((start.elapsed(), String::from_utf8_lossy(&got).into())),
        }
    }
    None
}

#[test]
fn slow_and_idle_clients_are_cut_off_by_their_timeouts() {
    let c = Cluster::start(
        "timeouts",
        Spec {
            ingest: "header_read_timeout_ms = 1000\nbody_timeout_ms = 1000",
            ..Spec::default()
        },
    );
    // Headers begun and never finished.
    let mut slow_header = TcpStream::connect(&c.listen).unwrap();
    slow_header
        .write_all(b"POST /api/orders HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A body promised and never sent in full.
    let mut slow_body = TcpStream::connect(&c.listen).unwrap();
    write!(
        slow_body,
        "POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"user_id\""
    )
    .unwrap();
    // A keep-alive connection that asks once, then sits idle.
    let mut idle = TcpStream::connect(&c.listen).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(&c.listen).unwrap();

    let limit = Duration::from_secs(10);
    let (t, _) = closed_within(&mut slow_header, limit).expect("slow headers cut off");
    eprintln!("slow headers: closed after {t:?}");
    let (t, answer) = closed_within(&mut slow_body, limit).expect("slow body cut off");
    eprintln!("slow body: closed after {t:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""field":"body""#), "{answer}");
    let (t, answer) = closed_within(&mut idle, limit).expect("idle keep-alive cut off");
    eprintln!("idle keep-alive: closed after {t:?}");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "it was answered first: {answer}"
    );
    let (t, _) = closed_within(&mut silent, limit).expect("a silent connection cut off");
    eprintln!("silent connection: closed after {t:?}");
    // And a real client is served as ever.
    assert_eq!(c.post(ORDER).0, 202);
}

#[test]
fn thousands_of_idle_sockets_do_not_keep_an_order_from_its_202() {
    let c = Cluster::start("idle", Spec::default());
    let idle: Vec<TcpStream> = (0..5000)
        .map(|_| TcpStream::connect(&c.listen).unwrap())
        .collect();
    // Half of them with headers begun.
    for s in idle.iter().step_by(2) {
        let _ = (&*s).write_all(b"POST /api/orders HTTP/1.1\r\n");
    }
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let (s, v) = c.post(ORDER);
    let took = start.elapsed();
    eprintln!(
        "with {} idle connections open, an order got its {s} in {took:?}",
        idle.len()
    );
    assert_eq!(s, 202, "{v}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    c.wait_result(v["order_id"].as_str().unwrap());
    drop(idle);
}

#[test]
fn past_the_connection_cap_a_new_connection_gets_a_quick_503() {
    let c = Cluster::start(
        "cap",
        Spec {
            ingest: "max_connections = 20",
            ..Spec::default()
        },
    );
    let held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&c.listen).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        let start = Instant::now();
        let (s, v) = common::http(&c.listen, "POST", "/api/orders", Some(ORDER)).unwrap();
        let took = start.elapsed();
        assert_eq!((s, v["field"].as_str()), (503, Some("connection")), "{v}");
        assert!(
            took < Duration::from_secs(5),
            "answered at once, not held: {took:?}"
        );
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.post(ORDER).0, 202, "served again once they are gone");
}

#[test]
fn the_admin_endpoints_take_only_the_right_token() {
    let c = Cluster::start("admin", Spec::default());
    let get = |headers: &[(&str, &str)]| {
        common::http_with(&c.listen, "GET", "/api/totals", None, headers)
            .unwrap()
            .0
    };
    assert_eq!(get(&[]), 401, "no token");
    assert_eq!(get(&[("Authorization", "Bearer wrong")]), 401);
    assert_eq!(
        get(&[("Authorization", "Bearer dtss-admin")]),
        401,
        "the old default"
    );
    assert_eq!(get(&[("Authorization", "Bearer   secret")]), 401, "padded");
    assert_eq!(get(&[("Authorization", "Bearer secre")]), 401, "a prefix");
    assert_eq!(get(&[("Authorization", "Bearer secrets")]), 401, "longer");
    assert_eq!(get(&[("Authorization", "Bearer secret")]), 200);
    assert_eq!(get(&[("X-Admin-Token", "secret")]), 200);
    // The totals of one currency are public.
    assert_eq!(c.get("/amount/RMB").0, 200);
}

#[test]
fn without_a_token_the_admin_endpoints_are_off() {
    let c = Cluster::start(
        "noadmin",
        Spec {
            ingest: "admin_token = \"\"",
            ..Spec::default()
        },
    );
    for headers in [
        vec![],
        vec![("Authorization", "Bearer ")],
        vec![("X-Admin-Token", "")],
    ] {
        let (s, v) = common::http_with(&c.listen, "GET", "/api/totals", None, &headers).unwrap();
        assert_eq!(
            (s, v["field"].as_str()),
            (403, Some("token")),
            "{headers:?}: {v}"
        );
    }
    assert_eq!(c.post(ORDER).0, 202, "orders are taken as ever");
}

#[test]
fn the_dtss_user_of_the_local_mariadb_has_no_file_or_global_privileges() {
    common::services();
    let pool = mysql_async::Pool::new(common::mysql_url(3306, "").as_str());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    use mysql_async::prelude::Queryable;
    let (outfile, global, root) = rt.block_on(async {
        let mut conn = pool.get_conn().await.unwrap();
        let outfile = conn
            .query_drop("SELECT 1 INTO OUTFILE '/tmp/dtss-outfile-test'")
            .await;
        let global = conn.query_drop("SET GLOBAL max_connections = 999").await;
        drop(conn);
        pool.disconnect().await.unwrap();
        let root = mysql_async::Conn::from_url("mysql://root@127.0.0.1:3306/").await;
        (outfile, global, root.map(|_| ()))
    });
    let e = outfile.unwrap_err().to_string();
    assert!(e.contains("FILE"), "SELECT … INTO OUTFILE refused: {e}");
    assert!(!std::path::Path::new("/tmp/dtss-outfile-test").exists());
    assert!(global.is_err(), "SET GLOBAL refused");
    assert!(root.is_err(), "root is not reachable over TCP");
    // MariaDB runs as the mysql OS user, when every folder above its data directory
    // lets others through (else `dtss services` warns and runs it as root).
    use std::os::unix::fs::PermissionsExt as _;
    let reachable = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if !reachable {
        eprintln!("the repository is not searchable by others: MariaDB runs as root here");
        return;
    }
    let pid = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.dtss/services/mariadb/mysqld.pid"
    ))
    .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        !uid.split_whitespace().skip(1).any(|u| u == "0"),
        "not root: {uid}"
    );
}

#[test]
fn a_rate_that_would_make_an_order_unpayable_is_refused() {
    // The dearest line: 10^11 USD. At the initial rates the largest order (10^8 units
    // paid in yen) is ≈ 1.5 × 10^21; with the yen at a tenth it would pass 10^22.
    let c = Cluster::start(
        "payable",
        Spec {
            catalogue: Some("id,name,price,currency,inventory\n1,gem,100000000000,USD,10\n"),
            ..Spec::default()
        },
    );
    let put = |body: &str| c.admin("PUT", "/api/rates/JPY", Some(body));
    let (s, v) = put(r#"{"rate":"0.0048"}"#);
    assert_eq!((s, v["field"].as_str()), (400, Some("rate")), "{v}");
    assert!(v["problem"].as_str().unwrap().contains("10^22"), "{v}");
    let err = c.run(&["rates", "set", "JPY=0.0048"]).unwrap_err();
    assert!(err.contains("10^22"), "{err}");
    assert_eq!(
        put(r#"{"rate":"0.05"}"#).0,
        200,
        "a rate that keeps it payable"
    );
}
