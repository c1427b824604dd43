//! Placing one generated order: over HTTP (`POST /api/orders` on keep-alive
//! connections) or straight into Kafka through ingest's own producer code.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use model::{Config, Currency, Uuid};

pub(crate) enum Target {
    Http {
        client: Client<HttpConnector, Full<Bytes>>,
        url: hyper::Uri,
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
    /// 503, or the embedded broker's backlog guard: retry shortly.
    Busy,
    /// No answer (connection error, Kafka did not acknowledge): retry.
    Error,
    /// Any other HTTP status: not retried.
    Failed,
}

/// What placing orders took besides the 202s.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Tally {
    pub invalid: u64,
    pub busy: u64,
    pub errors: u64,
    pub failed: u64,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.invalid += o.invalid;
        self.busy += o.busy;
        self.errors += o.errors;
        self.failed += o.failed;
    }
}

impl Target {
    /// `base_url` like http://127.0.0.1:8080, keeping up to `connections` alive.
    pub fn http(base_url: &str, connections: usize) -> Result<Target> {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .build_http();
        let url: hyper::Uri = format!("{}/api/orders", base_url.trim_end_matches('/'))
            .parse()
            .with_context(|| format!("{base_url:?} is not a URL"))?;
        Ok(Target::Http { client, url })
    }

    pub async fn kafka(cfg: &Config, pool: sinks::Pool) -> Result<Target> {
        Ok(Target::Kafka {
            producer: ingest::OrderProducer::connect(cfg, pool).await?,
            currencies: cfg.currencies()?,
        })
    }

    pub async fn send(&self, body: &str) -> Answer {
        match self {
            Target::Http { client, url } => {
                let req = hyper::Request::post(url.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .expect("request");
                let resp = match client.request(req).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!("request failed: {e}");
                        return Answer::Error;
                    }
                };
                let status = resp.status().as_u16();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                match status {
                    202 => {
                        #[derive(serde::Deserialize)]
                        struct Accepted {
                            order_id: Uuid,
                        }
                        match serde_json::from_slice::<Accepted>(&bytes) {
                            Ok(a) => Answer::Accepted(a.order_id),
                            Err(_) => Answer::Failed,
                        }
                    }
                    503 => Answer::Busy,
                    400 | 413 => Answer::Invalid,
                    _ => Answer::Failed,
                }
            }
            Target::Kafka {
                producer,
                currencies,
            } => {
                let request = match model::validate_order(body.as_bytes(), currencies) {
                    Ok(r) => r,
                    Err(_) => return Answer::Invalid,
                };
                match producer.send(request).await {
                    Ok((id, _)) => Answer::Accepted(id),
                    Err(ingest::NotTaken::Backlog) => Answer::Busy,
                    Err(ingest::NotTaken::Kafka(_)) => Answer::Error,
                }
            }
        }
    }

    /// Send until the order is taken or refused, as a well-behaved client would: a
    /// 503 is retried after 50 ms, no answer after 100 ms. The id if it got a 202.
    pub async fn place(&self, body: &str, tally: &mut Tally) -> Option<Uuid> {
        loop {
            match self.send(body).await {
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Answer::Error => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Wait until everything sent is acknowledged (Kafka only; HTTP answers are acks).
    pub fn flush(&self) {
        if let Target::Kafka { producer, .. } = self {
            producer.flush(Duration::from_secs(10));
        }
    }
}
