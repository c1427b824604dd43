//! Placing one generated order: over HTTP (`POST /api/orders` on keep-alive
//! connections) or straight into Kafka through ingest's own producer code.
//!
//! Every order gets an idempotency key of its own (unless `Target::without_keys`), which
//! its every retry carries: a retry after no answer or a 504 is the same order, and a
//! run's accepted ids are exactly the orders that settle.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use model::{Config, Currency, Uuid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where orders go and how they are named; shared by the senders, each of which has its
/// own connection.
pub(crate) struct Target {
    to: To,
    /// The keys' prefix (unique to the run) and the number of keys handed out; None: no keys.
    keys: Option<(String, AtomicU64)>,
}

enum To {
    Http {
        /// host:port to connect to.
        addr: String,
        /// The request line and the headers but for the key and the length.
        head: String,
    },
    Kafka {
        producer: ingest::OrderProducer,
        currencies: Vec<Currency>,
    },
}

/// How one attempt went.
pub(crate) enum Answer {
    Accepted(Uuid),
    /// 400 or 413 (or, direct to Kafka, refused by validation).
    Invalid,
    /// 503, or the embedded broker's backlog guard: not enqueued, retry shortly.
    Busy,
    /// 504 (sent, not acknowledged): the order may settle; retry with its key.
    Unknown,
    /// No answer (connection error, Kafka certainly did not take it): retry.
    Error,
    /// Any other HTTP status: not retried.
    Failed,
}

/// How long one order is retried (503s, no answer) before the sender gives up on the
/// system: a server that stays down must not keep a load run waiting for ever.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// What placing orders took besides the 202s.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Tally {
    pub invalid: u64,
    pub busy: u64,
    /// 504s, each retried with the order's key.
    pub unknown: u64,
    pub errors: u64,
    pub failed: u64,
    /// Orders given up after `PATIENCE` of retries; a sender stops after one.
    pub abandoned: u64,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.invalid += o.invalid;
        self.busy += o.busy;
        self.unknown += o.unknown;
        self.errors += o.errors;
        self.failed += o.failed;
        self.abandoned += o.abandoned;
    }
}

impl Target {
    /// `base_url` like http://127.0.0.1:8080.
    pub fn http(base_url: &str) -> Result<Target> {
        let url: hyper::Uri = format!("{}/api/orders", base_url.trim_end_matches('/'))
            .parse()
            .with_context(|| format!("{base_url:?} is not a URL"))?;
        anyhow::ensure!(
            url.scheme_str() == Some("http"),
            "{base_url:?}: only http:// URLs are supported"
        );
        let authority = url
            .authority()
            .with_context(|| format!("{base_url:?} names no host"))?;
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\n",
            url.path()
        );
        Ok(Target::keyed(To::Http { addr, head }))
    }

    pub async fn kafka(cfg: &Config, pool: sinks::Pool) -> Result<Target> {
        Ok(Target::keyed(To::Kafka {
            producer: ingest::OrderProducer::connect(cfg, pool).await?,
            currencies: cfg.currencies.all.clone(),
        }))
    }

    /// Keys `{run}-{n}`: `run` is unique to this run (a UUIDv7's hex).
    fn keyed(to: To) -> Target {
        let run = Uuid::now_v7().simple().to_string();
        Target {
            to,
            keys: Some((run, AtomicU64::new(0))),
        }
    }

    /// The target sending orders without idempotency keys (a retry is then a new order).
    pub fn without_keys(mut self) -> Target {
        self.keys = None;
        self
    }

    /// A new order's key, if orders get keys.
    fn next_key(&self) -> Option<String> {
        let (run, n) = self.keys.as_ref()?;
        Some(format!("{run}-{}", n.fetch_add(1, Ordering::Relaxed)))
    }

    /// A sender of its own (over HTTP: one keep-alive connection, opened when first used).
    pub fn sender(self: &Arc<Self>) -> Sender {
        Sender {
            target: self.clone(),
            http: Http::default(),
            patience: PATIENCE,
        }
    }

    /// Wait until everything sent is acknowledged (Kafka only; HTTP answers are acks).
    pub fn flush(&self) {
        if let To::Kafka { producer, .. } = &self.to {
            producer.flush(Duration::from_secs(10));
        }
    }
}

/// Places orders one at a time. Over HTTP it writes each request whole and reads the
/// answer on the same task (HTTP/1.1 keep-alive, the answer parsed by `httparse`,
/// its body by Content-Length, which ingest always sends): no pool, no second task
/// and no channel per request as with hyper's pooled client. The load generator shares
/// the machine with the system it measures: at full speed it spent 12 µs of CPU per
/// order this way, against 25 with hyper's client.
pub(crate) struct Sender {
    target: Arc<Target>,
    http: Http,
    patience: Duration,
}

/// A sender's HTTP connection (None until first used, and after a failure or a
/// `Connection: close`), the request being written and what was read of answers.
#[derive(Default)]
struct Http {
    conn: Option<TcpStream>,
    out: Vec<u8>,
    inb: Vec<u8>,
}

impl Sender {
    /// One attempt at placing `body`, named by `key`.
    pub async fn send(&mut self, body: &str, key: Option<&str>) -> Answer {
        match &self.target.to {
            To::Http { addr, head } => match self.http.exchange(addr, head, key, body).await {
                Ok((status, answer)) => match status {
                    202 => {
                        #[derive(serde::Deserialize)]
                        struct Accepted {
                            order_id: Uuid,
                        }
                        match serde_json::from_slice::<Accepted>(&answer) {
                            Ok(a) => Answer::Accepted(a.order_id),
                            Err(_) => Answer::Failed,
                        }
                    }
                    503 => Answer::Busy,
                    // 502: a proxy in front (nginx) lost the replica mid-request; like
                    // a 504, the order may or may not have been taken.
                    502 | 504 => Answer::Unknown,
                    400 | 413 => Answer::Invalid,
                    _ => Answer::Failed,
                },
                Err(Fault::Io(e)) => {
                    tracing::debug!("request failed: {e:#}");
                    Answer::Error
                }
                Err(Fault::Unreadable(e)) => {
                    tracing::warn!("an answer this load generator cannot read: {e:#}");
                    Answer::Failed
                }
            },
            To::Kafka {
                producer,
                currencies,
            } => {
                let request = match model::validate_order(body.as_bytes(), currencies) {
                    Ok(r) => r,
                    Err(_) => return Answer::Invalid,
                };
                match producer.send(request, key).await {
                    Ok(taken) => Answer::Accepted(taken.order_id),
                    Err(ingest::NotTaken::Backlog | ingest::NotTaken::Storage(_)) => Answer::Busy,
                    Err(ingest::NotTaken::Kafka(_)) => Answer::Error,
                    Err(ingest::NotTaken::Unknown { .. }) => Answer::Unknown,
                }
            }
        }
    }

    /// Send until the order is taken or refused, as a well-behaved client would, every
    /// attempt with the order's key: a 503 is retried after 50 ms, a 502, 504 or no answer
    /// after 100 ms, for up to `PATIENCE`; then the order counts as abandoned (the caller
    /// should stop: the system is not taking orders). The id if it got a 202.
    pub async fn place(&mut self, body: &str, tally: &mut Tally) -> Option<Uuid> {
        let first = Instant::now();
        let key = self.target.next_key();
        loop {
            let pause = match self.send(body, key.as_deref()).await {
                Answer::Accepted(id) => return Some(id),
                Answer::Invalid => {
                    tally.invalid += 1;
                    return None;
                }
                Answer::Failed => {
                    tally.failed += 1;
                    return None;
                }
                Answer::Busy => {
                    tally.busy += 1;
                    Duration::from_millis(50)
                }
                Answer::Unknown => {
                    tally.unknown += 1;
                    Duration::from_millis(100)
                }
                Answer::Error => {
                    tally.errors += 1;
                    Duration::from_millis(100)
                }
            };
            if first.elapsed() + pause > self.patience {
                tally.abandoned += 1;
                return None;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

impl Http {
    /// POST `body`; the answer's status and body. After an error the connection is
    /// dropped (the next exchange opens another).
    async fn exchange(
        &mut self,
        addr: &str,
        head: &str,
        key: Option<&str>,
        body: &str,
    ) -> Result<(u16, Vec<u8>), Fault> {
        let answer = self.round_trip(addr, head, key, body).await;
        if answer.is_err() {
            self.conn = None;
        }
        answer
    }

    async fn round_trip(
        &mut self,
        addr: &str,
        head: &str,
        key: Option<&str>,
        body: &str,
    ) -> Result<(u16, Vec<u8>), Fault> {
        if self.conn.is_none() {
            let c = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            c.set_nodelay(true).context("TCP_NODELAY")?;
            self.conn = Some(c);
            self.inb.clear();
        }
        let conn = self.conn.as_mut().expect("connected");
        self.out.clear();
        self.out.extend_from_slice(head.as_bytes());
        if let Some(key) = key {
            write!(self.out, "idempotency-key: {key}\r\n").expect("writing to a Vec");
        }
        write!(self.out, "content-length: {}\r\n\r\n", body.len()).expect("writing to a Vec");
        self.out.extend_from_slice(body.as_bytes());
        conn.write_all(&self.out).await.context("writing")?;
        // The head, then the body by its length.
        let (status, head_len, body_len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let parsed = resp
                .parse(&self.inb)
                .map_err(|e| Fault::Unreadable(e.into()))?;
            if let httparse::Status::Complete(n) = parsed {
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value)
                };
                let len = header("content-length")
                    .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        Fault::Unreadable(anyhow::anyhow!(
                            "no Content-Length with a number (ingest always sends one)"
                        ))
                    })?;
                let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
                break (resp.code.unwrap_or(0), n, len, close);
            }
            read_more(conn, &mut self.inb).await?;
        };
        while self.inb.len() < head_len + body_len {
            read_more(conn, &mut self.inb).await?;
        }
        let answer = self.inb[head_len..head_len + body_len].to_vec();
        self.inb.drain(..head_len + body_len);
        if close {
            self.conn = None;
        }
        Ok((status, answer))
    }
}

/// Why an exchange got no answer: the connection failed (retried), or the answer was
/// not HTTP/1.1 with a Content-Length (not retried: it would fail again).
enum Fault {
    Io(anyhow::Error),
    Unreadable(anyhow::Error),
}

impl From<anyhow::Error> for Fault {
    fn from(e: anyhow::Error) -> Fault {
        Fault::Io(e)
    }
}

/// Read what has arrived onto `buf`; an error if the peer closed.
async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    buf.reserve(4096);
    let n = conn.read_buf(buf).await.context("reading the answer")?;
    anyhow::ensure!(n > 0, "the server closed the connection");
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// Read one request (head and body by its Content-Length) from `conn`.
    async fn request(conn: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("content-length")
                    .parse()
                    .unwrap();
                if buf.len() >= end + 4 + len {
                    return text;
                }
            }
            assert!(conn.read_buf(&mut buf).await.unwrap() > 0, "client hung up");
        }
    }

    #[tokio::test]
    async fn split_answers_closed_connections_and_unreadable_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let id = Uuid::now_v7();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            // First connection: a 202 written in three pieces, then a 503 that closes.
            let (mut c, _) = listener.accept().await.unwrap();
            seen.push(request(&mut c).await);
            let body = format!("{{\"order_id\":\"{id}\"}}");
            let answer = format!(
                "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let (a, b) = answer.split_at(20);
            let (b, d) = b.split_at(b.len() - 5);
            for part in [a, b, d] {
                c.write_all(part.as_bytes()).await.unwrap();
                c.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen.push(request(&mut c).await);
            c.write_all(b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
            drop(c);
            // Second connection: a 400, then the server hangs up without answering.
            let (mut c, _) = listener.accept().await.unwrap();
            seen.push(request(&mut c).await);
            c.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            seen.push(request(&mut c).await);
            drop(c);
            // Third connection: a chunked answer, which the load generator cannot read.
            let (mut c, _) = listener.accept().await.unwrap();
            seen.push(request(&mut c).await);
            c.write_all(
                b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
            seen
        });
        let target = Arc::new(Target::http(&format!("http://{addr}/")).unwrap());
        let mut sender = target.sender();
        assert!(
            matches!(sender.send("{\"a\":1}", Some("k-1")).await, Answer::Accepted(got) if got == id)
        );
        assert!(matches!(sender.send("{}", None).await, Answer::Busy));
        // The server said close: a new connection for the next order.
        assert!(matches!(
            sender.send("{\"b\":2}", None).await,
            Answer::Invalid
        ));
        assert!(matches!(sender.send("{}", None).await, Answer::Error));
        // Not retried: placing it fails at once.
        let mut tally = Tally::default();
        assert_eq!(sender.place("{}", &mut tally).await, None);
        assert_eq!((tally.failed, tally.errors), (1, 0));
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 5);
        assert!(
            seen[0].starts_with(&format!(
                "POST /api/orders HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\nidempotency-key: k-1\r\ncontent-length: 7\r\n\r\n"
            )),
            "{:?}",
            seen[0]
        );
        assert!(seen[0].ends_with("{\"a\":1}"), "{:?}", seen[0]);
        assert!(seen[2].ends_with("{\"b\":2}"), "{:?}", seen[2]);
    }

    /// Place one order at `addr` with a patience of 450 ms; it must be abandoned.
    async fn place_impatiently(addr: std::net::SocketAddr) -> Tally {
        let target = Arc::new(Target::http(&format!("http://{addr}")).unwrap());
        let mut sender = target.sender();
        sender.patience = Duration::from_millis(450);
        let mut tally = Tally::default();
        let placed = tokio::time::timeout(Duration::from_secs(5), sender.place("{}", &mut tally));
        assert_eq!(placed.await.expect("gave up within its patience"), None);
        assert_eq!(tally.abandoned, 1);
        tally
    }

    #[tokio::test]
    async fn a_sender_gives_up_on_a_system_that_takes_no_orders() {
        // Nothing listens here once the listener is dropped: every attempt is refused.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let tally = place_impatiently(addr).await;
        assert!(tally.errors >= 3, "retried every 100 ms: {tally:?}");

        // A server that answers 503 to everything is alive but takes nothing.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            loop {
                request(&mut c).await;
                c.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}")
                    .await
                    .unwrap();
            }
        });
        let tally = place_impatiently(addr).await;
        assert!(tally.busy >= 5, "retried every 50 ms: {tally:?}");
    }

    #[test]
    fn only_http_urls_are_taken() {
        let e = Target::http("https://example.com").err().unwrap();
        assert!(e.to_string().contains("only http://"), "{e}");
        assert!(Target::http("not a url at all").is_err());
    }
}
