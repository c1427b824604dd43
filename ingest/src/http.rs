use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use model::Config;
use tokio::net::TcpListener;

use crate::produce::OrderProducer;
use crate::routes::{route, Metrics, State};

/// Serve the HTTP API on `listen` until `shutdown` resolves, then finish in-flight
/// requests (up to 10 s) and return. An error when the Kafka producer failed for good
/// (no order can be taken any more): the supervisor starts ingest again.
pub async fn serve(
    cfg: Config,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    sinks::ensure_schema(&cfg.mysql.url).await?;
    let pool = sinks::connect(&cfg.mysql.url, 16)?;
    let producer = OrderProducer::connect(&cfg, pool.clone()).await?;

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
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => { tracing::warn!("accept failed: {e}"); continue; }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let conn = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, std::convert::Infallible>(route(state, req).await) }
                        }),
                    );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection ended: {e}");
                    }
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
