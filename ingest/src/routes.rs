//! The handlers of the API's endpoints (`endpoint.rs` says which one a request names).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use model::{idempotency, validate_order, FieldError, Uuid};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::console;
use crate::endpoint::{Endpoint, UserQuery};
use crate::produce::NotTaken;
use crate::respond::{error, from_db, json, store_unavailable, unavailable, Resp};
use crate::state::State;

pub const MAX_BODY: usize = 64 * 1024;

/// 401 unless the request carries the admin token (`Authorization: Bearer T` or
/// `X-Admin-Token: T`).
fn admin(state: &State, req: &Request<Incoming>) -> Option<Resp> {
    let Some(token) = &state.admin_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "token",
            "the admin endpoints are off: no admin token is configured (ingest.admin_token, \
             DTSS_ADMIN_TOKEN, or the file dtss up writes into the data directory)",
        ));
    };
    let h = req.headers();
    let given = h
        .get("x-admin-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            h.get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    match given {
        // Exactly the token, compared in constant time.
        Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => None,
        Some(_) => Some(error(
            StatusCode::UNAUTHORIZED,
            "token",
            "wrong admin token",
        )),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "token",
            "admin token required (Authorization: Bearer …)",
        )),
    }
}

/// Answer one request.
pub async fn route(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let endpoint = Endpoint::decode(req.method(), &path);
    let name = endpoint.name();
    let resp = answer(state.clone(), endpoint, &path, req).await;
    let requests = &state.metrics.requests;
    requests.answered(name, resp.status().as_u16());
    resp
}

async fn answer(state: Arc<State>, endpoint: Endpoint, path: &str, req: Request<Incoming>) -> Resp {
    if endpoint.needs_admin() {
        if let Some(denied) = admin(&state, &req) {
            return denied;
        }
    }
    match endpoint {
        Endpoint::Submit => submit(state, req).await,
        Endpoint::ByUser => by_user(&state, req.uri().query().unwrap_or("")).await,
        Endpoint::Rates => get_rates(&state).await,
        Endpoint::PutRate(cur) => put_rate(state, &cur, req).await,
        Endpoint::Totals => get_totals(&state, None).await,
        Endpoint::Amount(cur) => get_totals(&state, Some(&cur)).await,
        Endpoint::Lookup(id) => lookup(&state, &id).await,
        Endpoint::Health => health(&state).await,
        Endpoint::Metrics => metrics(&state).await,
        Endpoint::Console => console::page(),
        Endpoint::Status => console::status(&state, state.metrics.snapshot(&state)).await,
        Endpoint::Catalogue => console::catalogue(&state, req.uri().query().unwrap_or("")).await,
        Endpoint::RateHistory => {
            console::rate_history(&state, req.uri().query().unwrap_or("")).await
        }
        Endpoint::Views => console::views(&state).await,
        Endpoint::MethodNotAllowed => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            format!("{} is not allowed on {path}", req.method()),
        ),
        Endpoint::NotFound => error(
            StatusCode::NOT_FOUND,
            "path",
            format!("no such endpoint: {path}"),
        ),
    }
}

/// Read a body of at most MAX_BODY bytes, or the error response.
async fn read_body(state: &State, req: Request<Incoming>) -> Result<Bytes, Resp> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        state.metrics.too_large.fetch_add(1, Ordering::Relaxed);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
            format!("larger than {MAX_BODY} bytes"),
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let timeout = state.cfg.ingest.body_timeout;
    let read = tokio::time::timeout(timeout, Limited::new(req.into_body(), MAX_BODY).collect());
    let Ok(read) = read.await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "body",
            format!("not received within {timeout:?}"),
        ));
    };
    match read {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "body",
            format!("could not be read: {e}"),
        )),
    }
}

async fn by_user(state: &State, query: &str) -> Resp {
    let q = match UserQuery::parse(query) {
        Ok(q) => q,
        Err((field, problem)) => return error(StatusCode::BAD_REQUEST, field, problem),
    };
    match sinks::results_by_user(&state.pool, &q.user_id, q.limit).await {
        Ok(rows) => json(
            StatusCode::OK,
            json!({"user_id": q.user_id, "results": rows}),
        ),
        Err(e) => store_unavailable(e),
    }
}

async fn get_rates(state: &State) -> Resp {
    let zk_rates = match rates::read_stored(&state.zk, &state.cfg).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("reading rates: {e:#}");
            return unavailable("zookeeper", "rates unavailable");
        }
    };
    let applied = sinks::latest_rates(&state.pool)
        .await
        .ok()
        .flatten()
        .map(|(v, _)| v);
    // A stored rate that fails the rule is shown as stored, with why the dataflow
    // refuses it.
    let rates: serde_json::Map<String, serde_json::Value> = zk_rates
        .iter()
        .map(|s| {
            let shown = match &s.rate {
                Ok(r) => json!({"rate": r.to_string(), "zk_version": s.version}),
                Err(why) => {
                    json!({"rate": s.text, "zk_version": s.version, "refused": why})
                }
            };
            (s.currency.to_string(), shown)
        })
        .collect();
    json(
        StatusCode::OK,
        json!({"base": state.cfg.currencies.base.to_string(), "rates": rates, "applied_version": applied}),
    )
}

async fn put_rate(state: Arc<State>, cur: &str, req: Request<Incoming>) -> Resp {
    let body = match read_body(&state, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body",
                format!("not valid JSON: {e}"),
            )
        }
    };
    let rate = match &v["rate"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Null => {
            return error(
                StatusCode::BAD_REQUEST,
                "rate",
                "is required, e.g. {\"rate\": \"7.12\"}",
            )
        }
        _ => return error(StatusCode::BAD_REQUEST, "rate", "must be a decimal string"),
    };
    let (c, r) = match rates::parse_injection(&state.cfg, cur, &rate) {
        Ok(x) => x,
        Err(fe) => return error(StatusCode::BAD_REQUEST, &fe.field, fe.problem),
    };
    let prices = match sinks::max_prices(&state.pool).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("checking an injected rate: {e:#}");
            return unavailable("mysql", "could not read the catalogue's prices");
        }
    };
    let current = match rates::read_rates(&state.zk, &state.cfg).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("checking an injected rate: {e:#}");
            return unavailable("zookeeper", "could not read the rates");
        }
    };
    if let Err(fe) = rates::check_payable(&prices, &current, c, r) {
        return error(StatusCode::BAD_REQUEST, &fe.field, fe.problem);
    }
    match rates::inject(&state.zk, &state.cfg, c, r).await {
        Ok(version) => json(
            StatusCode::OK,
            json!({"currency": c.to_string(), "rate": r.to_string(), "zk_version": version}),
        ),
        Err(e) => {
            tracing::warn!("injecting a rate: {e:#}");
            unavailable("zookeeper", "could not write the rate")
        }
    }
}

/// The totals the dataflow published (ZooKeeper), with the epoch they are complete
/// up to; `only`: one currency (`/amount/{CUR}`).
async fn get_totals(state: &State, only: Option<&str>) -> Resp {
    let published = match sinks::read_published(&state.cfg, &state.zk).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("reading totals: {e:#}");
            return unavailable("zookeeper", "totals unavailable");
        }
    };
    if let Some(cur) = only {
        return match published.iter().find(|(c, ..)| c.as_str() == cur) {
            Some((c, t, n, e)) => json(
                StatusCode::OK,
                json!({"currency": c.to_string(), "amount": t.to_string(), "orders": n, "complete_up_to_epoch": e}),
            ),
            None => error(
                StatusCode::NOT_FOUND,
                "currency",
                format!("{cur:?} is not a configured currency"),
            ),
        };
    }
    let epoch = published.iter().map(|(.., e)| *e).min().unwrap_or(0);
    let totals: Vec<serde_json::Value> = published
        .iter()
        .map(|(c, t, n, e)| json!({"currency": c.to_string(), "total": t.to_string(), "orders": n, "complete_up_to_epoch": e}))
        .collect();
    json(
        StatusCode::OK,
        json!({"totals": totals, "complete_up_to_epoch": epoch}),
    )
}

async fn submit(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let key = match idempotency_key(&req) {
        Ok(k) => k,
        Err(fe) => {
            state.metrics.invalid.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::BAD_REQUEST, &fe.field, fe.problem);
        }
    };
    let body = match read_body(&state, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = match validate_order(&body, &state.currencies) {
        Ok(r) => r,
        Err(fe) => {
            state.metrics.invalid.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::BAD_REQUEST, &fe.field, fe.problem);
        }
    };
    let handed = std::time::Instant::now();
    let sent = state.producer.send(request, key.as_deref()).await;
    let requests = &state.metrics.requests;
    requests.acknowledged(handed.elapsed().as_secs_f64());
    let counter = match &sent {
        Ok(_) => &state.metrics.accepted,
        Err(NotTaken::Unknown { .. }) => &state.metrics.unacknowledged,
        Err(_) => &state.metrics.unavailable,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match sent {
        Ok(t) => {
            let id = t.order_id.to_string();
            json(
                StatusCode::ACCEPTED,
                json!({"order_id": id, "id": id, "accepted_at": t.accepted_at}),
            )
        }
        Err(NotTaken::Backlog) => unavailable(
            "kafka",
            "too many unsettled orders in the order's partition; not enqueued, retry shortly",
        ),
        Err(NotTaken::Storage(why)) => {
            unavailable("kafka", &format!("{why}; not enqueued, retry shortly"))
        }
        Err(NotTaken::Kafka(e)) => unavailable(
            "kafka",
            &format!("Kafka did not take the order: {e}; not enqueued, retry shortly"),
        ),
        Err(NotTaken::Unknown { order_id, why }) => unknown(order_id, &why, key.is_some()),
    }
}

/// The request's `Idempotency-Key`, if it has one; one header, 1–128 visible ASCII
/// characters.
fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, FieldError> {
    let mut values = req.headers().get_all(idempotency::HEADER).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(FieldError::new(idempotency::HEADER, "must be sent once"));
    }
    idempotency::parse_key(first.as_bytes(), idempotency::HEADER).map(|k| Some(k.to_string()))
}

/// 504: the order was sent to Kafka but not acknowledged. It may settle: the client
/// learns its id, to ask for its result or to retry with the same key.
fn unknown(order_id: Uuid, why: &str, keyed: bool) -> Resp {
    let id = order_id.to_string();
    let retry = if keyed {
        "retry with the same Idempotency-Key (it gets this id, and the order settles at most once), or ask GET /api/orders/{id}"
    } else {
        "ask GET /api/orders/{id} before placing it again: a retry without an Idempotency-Key is a second order"
    };
    let problem =
        format!("sent, but Kafka did not acknowledge it ({why}): the order may be enqueued");
    json(
        StatusCode::GATEWAY_TIMEOUT,
        json!({"error": format!("kafka: {problem}"), "field": "kafka", "problem": problem,
               "order_id": id, "id": id, "retry": retry.replace("{id}", &id)}),
    )
}

async fn lookup(state: &State, id: &str) -> Resp {
    state.metrics.queries.fetch_add(1, Ordering::Relaxed);
    let Ok(uuid) = Uuid::parse_str(id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "order_id",
            format!("{id:?} is not a UUID"),
        );
    };
    match sinks::result_by_id(&state.pool, &uuid.hyphenated().to_string()).await {
        Ok(Some(row)) => json(
            StatusCode::OK,
            serde_json::to_value(row).expect("serialisable"),
        ),
        Ok(None) => json(
            StatusCode::NOT_FOUND,
            json!({"error": "order not settled (yet) or unknown", "order_id": uuid.to_string()}),
        ),
        Err(e) => {
            tracing::warn!("result query failed: {e:#}");
            unavailable("mysql", "result store unavailable")
        }
    }
}

/// 200 while ingest serves. The partitions that hold (a message of a newer wire format
/// than their workers read) are listed, with what to do: `"status": "held"`.
async fn health(state: &State) -> Resp {
    if let Some(why) = state.producer.storage_refusal() {
        let action =
            "free space on the broker's disk (or replace it): orders are taken again by themselves";
        return json(
            StatusCode::OK,
            json!({"status": "refusing", "why": why, "action": action}),
        );
    }
    let refused = refused_rates(state).await;
    let holds = sinks::holds(&state.pool, &state.cfg.kafka.topic);
    let holds = from_db("held partitions", holds).await.unwrap_or_default();
    if holds.is_empty() {
        let mut body = json!({"status": "ok"});
        if !refused.is_empty() {
            body["refused_rates"] = json!(refused);
        }
        return json(StatusCode::OK, body);
    }
    let held: Vec<_> = holds
        .iter()
        .map(|h| {
            json!({
                "partition": h.partition,
                "offset": h.offset,
                "format_version": h.format_version,
                "since": h.since,
                "action": format!(
                    "partition {} waits at offset {} for workers that read wire format {}: upgrade the workers",
                    h.partition, h.offset, h.format_version
                ),
            })
        })
        .collect();
    let mut body = json!({"status": "held", "held": held});
    if !refused.is_empty() {
        body["refused_rates"] = json!(refused);
    }
    json(StatusCode::OK, body)
}

/// The rates stored in ZooKeeper that the workers refuse (written past `PUT /api/rates`),
/// each with why and what to do; empty when ZooKeeper does not answer within a second.
async fn refused_rates(state: &State) -> Vec<serde_json::Value> {
    let read = rates::read_stored(&state.zk, &state.cfg);
    let Ok(Ok(stored)) = tokio::time::timeout(Duration::from_secs(1), read).await else {
        return vec![];
    };
    stored
        .into_iter()
        .filter_map(|s| {
            let why = s.rate.err()?;
            Some(json!({
                "currency": s.currency.to_string(),
                "stored": s.text,
                "why": why,
                "action": format!(
                    "settlement goes on at the table in force; set a valid rate with PUT /api/rates/{}",
                    s.currency
                ),
            }))
        })
        .collect()
}

async fn metrics(state: &State) -> Resp {
    let m = &state.metrics;
    let counts = sinks::poison_counts(&state.pool, &state.cfg.kafka.topic);
    let poisons = match from_db("dead letter counts", counts).await {
        Some((dead, skipped)) => format!(
            "# HELP dtss_dead_letters Messages of the topic kept as dead letters.\n\
             # TYPE dtss_dead_letters gauge\n\
             dtss_dead_letters {dead}\n\
             # HELP dtss_skipped_copies Keyed orders posted again and skipped as copies.\n\
             # TYPE dtss_skipped_copies gauge\n\
             dtss_skipped_copies {skipped}\n"
        ),
        None => String::new(),
    };
    let body = format!(
        "# HELP dtss_ingest_orders_total Orders posted, by what became of them.\n\
         # TYPE dtss_ingest_orders_total counter\n\
         dtss_ingest_orders_total{{outcome=\"accepted\"}} {}\n\
         dtss_ingest_orders_total{{outcome=\"invalid\"}} {}\n\
         dtss_ingest_orders_total{{outcome=\"too_large\"}} {}\n\
         dtss_ingest_orders_total{{outcome=\"unavailable\"}} {}\n\
         dtss_ingest_orders_total{{outcome=\"unacknowledged\"}} {}\n\
         # HELP dtss_ingest_queries_total Queries answered.\n\
         # TYPE dtss_ingest_queries_total counter\n\
         dtss_ingest_queries_total {}\n\
         # HELP dtss_ingest_unsettled_max The most unsettled orders in one partition.\n\
         # TYPE dtss_ingest_unsettled_max gauge\n\
         dtss_ingest_unsettled_max {}\n{poisons}{}",
        m.accepted.load(Ordering::Relaxed),
        m.invalid.load(Ordering::Relaxed),
        m.too_large.load(Ordering::Relaxed),
        m.unavailable.load(Ordering::Relaxed),
        m.unacknowledged.load(Ordering::Relaxed),
        m.queries.load(Ordering::Relaxed),
        state.producer.unsettled_max(),
        model::exposition::text_format(&m.requests.render()),
    );
    Response::builder()
        .header(CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
