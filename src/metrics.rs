//! `--metrics-listen ADDR`: a process's metrics in the Prometheus text format at
//! `GET /metrics` (any other path: 404), served from a thread of its own so that a
//! process without a runtime (the timely worker) can have it too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What a process renders its metrics with.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serve `render()` at `http://{listen}/metrics` until the process ends.
pub fn serve(listen: SocketAddr, render: Render) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("--metrics-listen {listen}: cannot listen there"))?;
    listener.set_nonblocking(true)?;
    ore::spawn_on_runtime("metrics", move || accept(listener, render));
    tracing::info!("metrics at http://{listen}/metrics");
    Ok(())
}

async fn accept(listener: std::net::TcpListener, render: Render) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::warn!("metrics listener: {e}"),
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        let service = hyper::service::service_fn(move |req| answer(req, render.clone()));
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    render: Render,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, kind, body) = if req.uri().path() == "/metrics" {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            model::exposition::text_format(&render()),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"path: only /metrics is served here","field":"path"}"#.to_string(),
        )
    };
    Ok(Response::builder()
        .status(status)
        .header(CONTENT_TYPE, kind)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response"))
}
