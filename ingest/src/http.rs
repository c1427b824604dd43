use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use model::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::produce::OrderProducer;
use crate::routes::route;
use crate::state::{Metrics, State};

/// Serve the HTTP API on `listen` until `shutdown` resolves, then finish in-flight
/// requests (up to 10 s) and return. An error when the Kafka producer failed for good
/// (no order can be taken any more): the supervisor starts ingest again.
pub async fn serve(
    cfg: Config,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    sinks::ensure_schema(&cfg.mysql.urls).await?;
    let pool = sinks::connect(&cfg.mysql.urls, 16)?.prefer(cfg.ingest.mysql_node);
    let producer = OrderProducer::connect(&cfg, pool.clone()).await?;
    if cfg.mysql.is_cluster() {
        tracing::info!("reading MySQL through node {} first", pool.active_node());
    }

    let zk = rates::connect(&cfg, Duration::from_secs(30)).await?;
    let state = Arc::new(State {
        zk,
        admin_token: cfg.ingest.admin_token.clone(),
        currencies: cfg.currencies.all.clone(),
        cfg,
        producer,
        pool,
        metrics: Metrics::default(),
    });
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} (ingest.listen / --listen): is it in use?")
    })?;
    tracing::info!("ingest listening on http://{listen}");
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let failed = state.producer.failed();
    tokio::pin!(failed);
    let mut fatal = None;
    let slots = Arc::new(Semaphore::new(state.cfg.ingest.max_connections));
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => { backoff.reset(); s }
                    Err(e) => { backoff.wait(&e).await; continue; }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = graceful.watch(connection(&state, stream));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection ended: {e}");
                    }
                    drop(slot);
                });
            }
            _ = &mut shutdown => break,
            why = &mut failed => {
                tracing::error!("{why}: stopping ingest, to be started again");
                fatal = Some(why);
                break;
            }
        }
    }
    drop(listener);
    tracing::info!("ingest shutting down; finishing in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("in-flight requests did not finish in 10 s"),
    }
    state.producer.flush(Duration::from_secs(5));
    match fatal {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(()),
    }
}

/// One client connection, HTTP/1.1 with keep-alive. The header-read timeout bounds both
/// a client slow to send a request's headers and a keep-alive connection idle between
/// requests (hyper starts it whenever it waits for a request); the body timeout is
/// `routes::read_body`'s.
fn connection(
    state: &Arc<State>,
    stream: TcpStream,
) -> impl hyper_util::server::graceful::GracefulConnection<Error = hyper::Error> {
    let state = state.clone();
    let timeout = state.cfg.ingest.header_read_timeout;
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(true)
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(state, req).await) }
            }),
        )
}

/// A connection past `ingest.max_connections`: answered 503 at once and closed.
async fn refuse(mut stream: TcpStream) {
    let problem = "too many connections open; retry shortly";
    let body = serde_json::json!({
        "error": format!("connection: {problem}"),
        "field": "connection",
        "problem": problem,
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
    // Read what the client sends for a moment before closing: closing with its request
    // unread would reset the connection, and the client might never see the 503.
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
}

/// The wait after a failed accept (out of file descriptors, say): 10 ms, doubling up to
/// 1 s while it keeps failing, so the loop does not spin.
struct AcceptBackoff(Duration);

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff(Duration::from_millis(10))
    }
}

impl AcceptBackoff {
    async fn wait(&mut self, e: &std::io::Error) {
        tracing::warn!("accept failed, waiting {:?}: {e}", self.0);
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
    }

    fn reset(&mut self) {
        self.0 = Duration::from_millis(10);
    }
}
