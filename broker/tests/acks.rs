//! Acknowledged means on disk, shown from outside the broker: the broker runs under
//! `strace`, producers pipeline batches to it, and the trace is checked so that every
//! answer sent on a producer's connection comes after an `fdatasync` that started once
//! every byte that connection's requests wrote had been written, and that ended before
//! the answer was sent.
//!
//! Each producer connection writes to its own partition, so what a connection's answers
//! must cover is exactly what was written to that partition's segments; the trace names
//! each connection by its port (`accept4`) and each segment by its path (`openat`, and
//! `fcntl` for the handle the sync uses).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dtss_broker::batch::{build, produce_answer, produce_request};
use dtss_broker::{Broker, Durability};

const PARTITIONS: usize = 4;
/// Requests a producer sends before reading their answers.
const WINDOW: usize = 16;
const ROUNDS: usize = 60;
const SERVE_ENV: &str = "DTSS_ACKS_SERVE";
/// `page-cache` to serve with `Durability::PageCache` (the check must then fail).
const DURABILITY_ENV: &str = "DTSS_ACKS_DURABILITY";

/// Not a test of its own: the broker process that `every_answer_follows_a_sync_covering_its_bytes`
/// runs under strace (this test binary again, with `DTSS_ACKS_SERVE` naming its folder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the broker process of the strace test"]
async fn broker_under_trace() {
    let Ok(dir) = std::env::var(SERVE_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let durability = match std::env::var(DURABILITY_ENV).as_deref() {
        Ok("page-cache") => Durability::PageCache,
        _ => Durability::Disk,
    };
    let broker = Broker::open_with(&dir.join("log"), "orders", PARTITIONS, durability).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ready = format!("{} {addr}", std::process::id());
    std::fs::write(dir.join("addr.tmp"), ready).unwrap();
    std::fs::rename(dir.join("addr.tmp"), dir.join("addr")).unwrap();
    broker.serve(listener, addr).await;
}

#[test]
fn every_answer_follows_a_sync_covering_its_bytes() {
    let checked = traced("disk");
    assert_eq!(checked.violations, Vec::<String>::new());
    assert!(
        checked.answers >= PARTITIONS * ROUNDS * WINDOW,
        "too few answers seen in the trace: {checked:?}"
    );
    assert!(checked.syncs > 0 && checked.bytes > 0, "{checked:?}");
}

/// The check is not blind: a broker answering from the page cache fails it.
#[test]
fn answers_from_the_page_cache_fail_the_check() {
    let checked = traced("page-cache");
    assert!(
        checked.violations.len() >= PARTITIONS * ROUNDS,
        "{checked:?}"
    );
}

/// Run producers against a broker under strace (`durability`: `disk` or `page-cache`)
/// and check its trace.
fn traced(durability: &str) -> Checked {
    assert!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace is not installed (apt-get install strace)"
    );
    let dir = std::env::temp_dir().join(format!("dtss-acks-{durability}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace");
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-ttt", "-T", "-xx", "-s", "65536", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=openat,fcntl,close,accept4,write,pwrite64,writev,sendto,sendmsg,fdatasync,fsync",
            "-e",
            "signal=none",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["broker_under_trace", "--exact", "--ignored", "--nocapture"])
        .env(SERVE_ENV, &dir)
        .env(DURABILITY_ENV, durability)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (pid, addr) = wait_for_address(&dir);
    let producers: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let addr = addr.clone();
            std::thread::spawn(move || produce(&addr, p as i32))
        })
        .collect();
    let ports: HashMap<u16, usize> = producers
        .into_iter()
        .enumerate()
        .map(|(p, h)| (h.join().unwrap(), p))
        .collect();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    strace.wait().unwrap();
    let checked = check(&std::fs::read_to_string(&trace).unwrap(), &ports);
    eprintln!(
        "{durability}: {} answers, {} syncs, {} bytes, {} violations",
        checked.answers,
        checked.syncs,
        checked.bytes,
        checked.violations.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
    checked
}

fn wait_for_address(dir: &Path) -> (u32, String) {
    for _ in 0..600 {
        if let Ok(s) = std::fs::read_to_string(dir.join("addr")) {
            let (pid, addr) = s.split_once(' ').unwrap();
            return (pid.parse().unwrap(), addr.to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the broker under strace never wrote its address");
}

/// Pipeline `ROUNDS` windows of `WINDOW` batches to `partition` on one connection,
/// checking every answer; returns the connection's local port.
fn produce(addr: &str, partition: i32) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    let port = s.local_addr().unwrap().port();
    let mut next = 0;
    for _ in 0..ROUNDS {
        let mut out = Vec::new();
        for i in 0..WINDOW {
            let value = format!("order {partition}-{i}");
            out.extend(produce_request(
                "orders",
                partition,
                &build(&[value.as_bytes()], -1, 0),
            ));
        }
        s.write_all(&out).unwrap();
        for _ in 0..WINDOW {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let mut answer = vec![0u8; i32::from_be_bytes(len) as usize];
            s.read_exact(&mut answer).unwrap();
            assert_eq!(produce_answer(&answer, "orders"), Some((0, next)));
            next += 1;
        }
    }
    port
}

/// What the check found.
#[derive(Debug, Default)]
struct Checked {
    answers: usize,
    syncs: usize,
    bytes: u64,
    violations: Vec<String>,
}

/// One system call of the trace, its unfinished and resumed halves joined.
struct Call<'a> {
    name: &'a str,
    args: String,
    ret: i64,
    start: f64,
    end: f64,
}

/// The calls of an `strace -f -ttt -T` trace, in the order their last half was seen.
fn calls(text: &str) -> Vec<Call<'_>> {
    let mut pending: HashMap<&str, (&str, &str, f64)> = HashMap::new();
    let mut out = vec![];
    for line in text.lines() {
        // `PID TIME CALL`; strace pads a short pid with spaces.
        let Some((pid, line)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            if let Some((name, args)) = head.split_once('(') {
                pending.insert(pid, (name, args, ts));
            }
            continue;
        }
        // A resumed half is stamped when the call returned; a whole line when it began.
        let (name, args, start, tail, resumed) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = r.split_once(" resumed>") else {
                continue;
            };
            let Some((_, first, start)) = pending.remove(pid) else {
                continue;
            };
            (name, format!("{first}{tail}"), start, tail, true)
        } else {
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            (name, args.to_string(), ts, args, false)
        };
        // strace pads short calls: `fdatasync(23)   = 0`.
        let Some((_, result)) = tail.rsplit_once(" = ") else {
            continue;
        };
        let mut result = result.split_whitespace();
        let Some(Ok(ret)) = result.next().map(str::parse::<i64>) else {
            continue;
        };
        let took = result
            .last()
            .and_then(|d| d.strip_prefix('<')?.strip_suffix('>')?.parse::<f64>().ok())
            .unwrap_or(0.0);
        out.push(Call {
            name,
            args,
            ret,
            start,
            end: if resumed { ts } else { ts + took },
        });
    }
    out
}

/// The first argument of a call, as a file descriptor.
fn fd(args: &str) -> Option<i64> {
    args.split([',', ')']).next()?.trim().parse().ok()
}

/// What was written to one segment, and how far syncs covered it.
#[derive(Default)]
struct SegmentFile {
    /// (time the write returned, bytes written to the file by then).
    writes: Vec<(f64, u64)>,
    written: u64,
    /// The bytes the file held once the batch at each base offset was written.
    ends: HashMap<i64, u64>,
    /// Bytes covered by a completed sync, and when that sync ended.
    synced: Vec<(f64, u64)>,
}

impl SegmentFile {
    /// Bytes written before `t` (writes that had returned).
    fn written_before(&self, t: f64) -> u64 {
        self.writes
            .iter()
            .take_while(|(end, _)| *end < t)
            .last()
            .map_or(0, |(_, n)| *n)
    }

    /// Bytes covered by syncs that ended before `t`.
    fn synced_before(&self, t: f64) -> u64 {
        self.synced
            .iter()
            .filter(|(end, _)| *end < t)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
    }
}

/// The bytes of every quoted string in a call's arguments (`strace -xx`: all `\xHH`).
fn data(args: &str) -> Vec<u8> {
    let mut out = vec![];
    for quoted in args.split('"').skip(1).step_by(2) {
        for hex in quoted.split("\\x").skip(1) {
            if let Ok(b) = u8::from_str_radix(&hex[..2.min(hex.len())], 16) {
                out.push(b);
            }
        }
    }
    out
}

/// A producer connection: the bytes sent on it that do not yet make a whole answer.
struct Connection {
    partition: usize,
    unsent: Vec<u8>,
}

impl Connection {
    /// Take `bytes` sent at one call; the base offsets of the answers it completed.
    fn sent(&mut self, bytes: &[u8]) -> Vec<i64> {
        self.unsent.extend_from_slice(bytes);
        let mut offsets = vec![];
        while self.unsent.len() >= 4 {
            let len = i32::from_be_bytes(self.unsent[..4].try_into().unwrap()) as usize;
            if self.unsent.len() < 4 + len {
                break;
            }
            let answer: Vec<u8> = self.unsent.drain(..4 + len).skip(4).collect();
            offsets.extend(produce_answer(&answer, "orders").map(|(_, o)| o));
        }
        offsets
    }
}

/// Check every answer on a producer connection (`ports`: client port → partition): the
/// batch it acknowledges was written, and a sync that began after that ended before the
/// answer was sent.
fn check(text: &str, ports: &HashMap<u16, usize>) -> Checked {
    let mut open: HashMap<i64, String> = HashMap::new(); // fd → segment path
    let mut sockets: HashMap<i64, Connection> = HashMap::new();
    let mut files: HashMap<String, SegmentFile> = HashMap::new();
    let mut answers: Vec<(usize, f64, i64)> = vec![];
    let mut checked = Checked::default();
    for c in calls(text) {
        let fd = fd(&c.args);
        match c.name {
            "openat" if c.ret >= 0 => {
                let path = decode_path(c.args.split('"').nth(1).unwrap_or_default());
                sockets.remove(&c.ret);
                open.remove(&c.ret);
                if path.ends_with(".log") {
                    open.insert(c.ret, path);
                }
            }
            "fcntl" if c.args.contains("F_DUPFD") && c.ret >= 0 => {
                if let Some(path) = fd.and_then(|f| open.get(&f)).cloned() {
                    open.insert(c.ret, path);
                }
            }
            "close" => {
                if let Some(f) = fd {
                    open.remove(&f);
                    sockets.remove(&f);
                }
            }
            "accept4" if c.ret >= 0 => {
                let port = c
                    .args
                    .split("htons(")
                    .nth(1)
                    .and_then(|s| s.split(')').next()?.parse::<u16>().ok());
                if let Some(&partition) = port.and_then(|port| ports.get(&port)) {
                    open.remove(&c.ret);
                    let unsent = vec![];
                    sockets.insert(c.ret, Connection { partition, unsent });
                }
            }
            "write" | "pwrite64" | "writev" | "sendto" | "sendmsg" if c.ret > 0 => {
                let Some(fd) = fd else { continue };
                let bytes = data(&c.args);
                if let Some(path) = open.get(&fd) {
                    let file = files.entry(path.clone()).or_default();
                    file.written += c.ret as u64;
                    file.writes.push((c.end, file.written));
                    if let Some(base) = bytes.get(..8) {
                        let base = i64::from_be_bytes(base.try_into().unwrap());
                        file.ends.insert(base, file.written);
                    }
                    checked.bytes += c.ret as u64;
                } else if let Some(conn) = sockets.get_mut(&fd) {
                    let sent = &bytes[..(c.ret as usize).min(bytes.len())];
                    for offset in conn.sent(sent) {
                        answers.push((conn.partition, c.start, offset));
                    }
                }
            }
            "fdatasync" | "fsync" if c.ret == 0 => {
                if let Some(path) = fd.and_then(|f| open.get(&f)) {
                    let file = files.entry(path.clone()).or_default();
                    let covered = file.written_before(c.start);
                    file.synced.push((c.end, covered));
                    checked.syncs += 1;
                }
            }
            _ => {}
        }
    }
    for (p, t, offset) in answers {
        checked.answers += 1;
        let suffix = format!("orders-{p}/");
        let file = files
            .iter()
            .find(|(path, f)| path.contains(&suffix) && f.ends.contains_key(&offset));
        let Some((path, file)) = file else {
            checked.violations.push(format!(
                "partition {p}: offset {offset} answered, never written"
            ));
            continue;
        };
        let (needed, synced) = (file.ends[&offset], file.synced_before(t));
        if synced < needed {
            checked.violations.push(format!(
                "partition {p} answered offset {offset} at {t:.6}: {path} synced to {synced} bytes of {needed}"
            ));
        }
    }
    checked
}

/// A path as `strace -xx` prints it (every byte `\xHH`).
fn decode_path(quoted: &str) -> String {
    let bytes = data(&format!("\"{quoted}\""));
    if bytes.is_empty() {
        quoted.to_string()
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `bytes` as `strace -xx` prints them.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\x{b:02x}")).collect()
}

#[test]
fn the_check_finds_an_answer_sent_before_its_sync() {
    let ports = HashMap::from([(40000u16, 0usize)]);
    let path = hex(b"/d/log/orders-0/00000000000000000000.log");
    let batch = hex(&build(&[b"one order"], -1, 0));
    // The answer to a produce of offset 0 (correlation id 7, as `produce_request` sends).
    let mut answer = vec![];
    answer.extend_from_slice(&7i32.to_be_bytes());
    answer.extend_from_slice(&1i32.to_be_bytes());
    answer.extend_from_slice(&6i16.to_be_bytes());
    answer.extend_from_slice(b"orders");
    answer.extend_from_slice(&1i32.to_be_bytes());
    answer.extend_from_slice(&0i32.to_be_bytes());
    answer.extend_from_slice(&0i16.to_be_bytes());
    answer.extend_from_slice(&0i64.to_be_bytes());
    let mut framed = (answer.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&answer);
    let (sent, n) = (hex(&framed), framed.len());
    let trace = |sync_start: &str, sync_end: &str| {
        format!(
            "1  1.000000 openat(AT_FDCWD, \"{path}\", O_RDWR) = 7 <0.000010>\n\
             1 1.100000 accept4(5, {{sa_family=AF_INET, sin_port=htons(40000), sin_addr=inet_addr(\"\\x31\")}}, [16], SOCK_CLOEXEC) = 9 <0.000010>\n\
             2 1.200000 write(7, \"{batch}\", 70) = 70 <0.000010>\n\
             3 1.300000 fcntl(7, F_DUPFD_CLOEXEC, 3) = 11 <0.000005>\n\
             3 {sync_start} fdatasync(11 <unfinished ...>\n\
             2 1.500000 sendto(9, \"{sent}\", {n}, MSG_NOSIGNAL, NULL, 0) = {n} <0.000010>\n\
             3 {sync_end} <... fdatasync resumed>) = 0 <0.000100>\n"
        )
    };
    // The sync ended at 1.6: the answer at 1.5 came too early.
    let early = check(&trace("1.400000", "1.600000"), &ports);
    assert_eq!((early.violations.len(), early.answers), (1, 1), "{early:?}");
    // A sync from 1.31 to 1.40 covered the answer at 1.5.
    let ok = check(&trace("1.310000", "1.400000"), &ports);
    assert_eq!(
        (ok.violations.len(), ok.answers, ok.syncs),
        (0, 1, 1),
        "{ok:?}"
    );
    // A sync that began before the write does not cover it.
    let stale = trace("1.150000", "1.400000").replace("1.300000 fcntl", "1.140000 fcntl");
    let stale = check(&stale, &ports);
    assert_eq!(stale.violations.len(), 1, "{stale:?}");
}
