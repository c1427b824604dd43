use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use model::{validate_order, Config, Currency, Uuid};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sinks::Pool;

use crate::backlog::Backlog;

pub const MAX_BODY: usize = 64 * 1024;

pub struct State {
    pub cfg: Config,
    pub currencies: Vec<Currency>,
    pub producer: FutureProducer,
    pub pool: Pool,
    pub backlog: Arc<Backlog>,
    pub metrics: Metrics,
}

#[derive(Default)]
pub struct Metrics {
    accepted: AtomicU64,
    invalid: AtomicU64,
    too_large: AtomicU64,
    unavailable: AtomicU64,
    queries: AtomicU64,
}

pub type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, body: serde_json::Value) -> Resp {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn error(status: StatusCode, field: &str, problem: impl Into<String>) -> Resp {
    let problem = problem.into();
    json(
        status,
        json!({"error": format!("{field}: {problem}"), "field": field, "problem": problem}),
    )
}

fn unavailable(problem: &str) -> Resp {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "kafka", problem);
    r.headers_mut()
        .insert(RETRY_AFTER, "1".parse().expect("static"));
    r
}

pub async fn route(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::POST, ["api", "orders"]) | (&Method::POST, ["order"]) => submit(state, req).await,
        (&Method::GET, ["api", "orders", id]) | (&Method::GET, ["order", id]) => {
            lookup(&state, id).await
        }
        (&Method::GET, ["healthz"]) => json(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, ["metrics"]) => metrics(&state),
        (_, ["api", "orders"]) | (_, ["order"]) | (_, ["api", "orders", _]) | (_, ["order", _]) => {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                format!("{} is not allowed on {path}", req.method()),
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "path",
            format!("no such endpoint: {path}"),
        ),
    }
}

async fn submit(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        state.metrics.too_large.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
            format!("larger than {MAX_BODY} bytes"),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            state.metrics.too_large.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body",
                format!("larger than {MAX_BODY} bytes"),
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body",
                format!("could not be read: {e}"),
            )
        }
    };
    let request = match validate_order(&body, &state.currencies) {
        Ok(r) => r,
        Err(fe) => {
            state.metrics.invalid.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::BAD_REQUEST, &fe.field, fe.problem);
        }
    };
    if state.backlog.full() {
        state.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
        return unavailable("too many unsettled orders for the embedded broker; retry shortly");
    }
    let order_id = Uuid::now_v7();
    let accepted_at = model::now_ms();
    let order = request.accept(order_id, accepted_at);
    let payload = model::wire::encode(&order);
    let key = order_id.as_bytes();
    let record = FutureRecord::to(&state.cfg.kafka.topic)
        .key(&key[..])
        .payload(&payload);
    match state.producer.send(record, Duration::from_secs(5)).await {
        Ok(delivery) => {
            state.backlog.produced(delivery.partition, delivery.offset);
            state.metrics.accepted.fetch_add(1, Ordering::Relaxed);
            json(
                StatusCode::ACCEPTED,
                json!({"order_id": order_id.to_string(), "id": order_id.to_string(), "accepted_at": accepted_at}),
            )
        }
        Err((e, _)) => {
            tracing::warn!("Kafka did not take order {order_id}: {e}");
            state.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
            unavailable(&format!("Kafka did not acknowledge the order: {e}"))
        }
    }
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
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "mysql",
                "result store unavailable",
            );
            r.headers_mut()
                .insert(RETRY_AFTER, "1".parse().expect("static"));
            r
        }
    }
}

fn metrics(state: &State) -> Resp {
    let m = &state.metrics;
    let body = format!(
        "# TYPE dtss_ingest_orders_total counter\n\
         dtss_ingest_orders_total{{outcome=\"accepted\"}} {}\n\
         dtss_ingest_orders_total{{outcome=\"invalid\"}} {}\n\
         dtss_ingest_orders_total{{outcome=\"too_large\"}} {}\n\
         dtss_ingest_orders_total{{outcome=\"unavailable\"}} {}\n\
         # TYPE dtss_ingest_queries_total counter\n\
         dtss_ingest_queries_total {}\n\
         # TYPE dtss_ingest_unsettled_max gauge\n\
         dtss_ingest_unsettled_max {}\n",
        m.accepted.load(Ordering::Relaxed),
        m.invalid.load(Ordering::Relaxed),
        m.too_large.load(Ordering::Relaxed),
        m.unavailable.load(Ordering::Relaxed),
        m.queries.load(Ordering::Relaxed),
        state.backlog.worst().max(0),
    );
    Response::builder()
        .header(CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
