//! How a handler answers: JSON bodies, errors that name the field, 503s with
//! `Retry-After`, and MySQL reads bounded to a second for `/healthz` and `/metrics`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::json;

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Resp {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

pub(crate) fn error(status: StatusCode, field: &str, problem: impl Into<String>) -> Resp {
    let problem = problem.into();
    json(
        status,
        json!({"error": format!("{field}: {problem}"), "field": field, "problem": problem}),
    )
}

/// 503 with `Retry-After: 1`: a part behind ingest (`field`) cannot answer now.
pub(crate) fn unavailable(field: &str, problem: &str) -> Resp {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, field, problem);
    r.headers_mut()
        .insert(RETRY_AFTER, "1".parse().expect("static"));
    r
}

pub(crate) fn store_unavailable(e: anyhow::Error) -> Resp {
    tracing::warn!("query failed: {e:#}");
    unavailable("mysql", "result store unavailable")
}

/// MySQL's part of `/healthz` or `/metrics`, if it comes within a second (they answer
/// without it otherwise).
pub(crate) async fn from_db<T>(
    what: &str,
    read: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    match tokio::time::timeout(std::time::Duration::from_secs(1), read).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::debug!("reading {what}: {e:#}");
            None
        }
        Err(_) => None,
    }
}
