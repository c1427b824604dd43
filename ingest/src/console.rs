//! The operator's console (docs/DESIGN.md, "Console"): the page at `/`, one HTML file
//! inside the binary that talks only to this origin, and the three read-only endpoints it
//! needs beyond the API's: `/api/status` (what every timely process last said about
//! itself, dead letters, totals), `/api/catalogue?q=` (search to pick items),
//! `/api/rates/history?versions=` (the chart of recent rate versions) and `/api/views`
//! (the job's live views, `dataflow/src/views.rs`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use model::Config;
use serde_json::{json, Value};
use zookeeper_client as zk;

use crate::respond::{error, from_db, json, store_unavailable, unavailable, Resp};
use crate::state::State;

const PAGE: &str = include_str!("console.html");

/// A process that has not published for this long is shown as "stale".
const STALE_MS: i64 = 5_000;
/// At most this many process documents are read (a ZooKeeper folder is not trusted).
const MAX_PROCESSES: usize = 1_024;

/// `GET /`: the page. Its policy lets it load and fetch nothing from anywhere else.
pub fn page() -> Resp {
    Response::builder()
        .header(CONTENT_TYPE, "text/html; charset=utf-8")
        .header(CACHE_CONTROL, "no-cache")
        .header(
            CONTENT_SECURITY_POLICY,
            "default-src 'none'; connect-src 'self'; img-src 'self' data:; \
             style-src 'unsafe-inline'; script-src 'unsafe-inline'; form-action 'none'; \
             base-uri 'none'; frame-ancestors 'none'",
        )
        .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
        .expect("valid response")
}

/// `GET /api/status`.
pub async fn status(state: &State, ingest: Value) -> Resp {
    let now = model::now_ms();
    let published = match read_processes(&state.zk, &state.cfg).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("reading process status: {e:#}");
            return unavailable("zookeeper", "process status unavailable");
        }
    };
    let processes = expected(&state.cfg, published, now);
    let poisons = from_db(
        "dead letter counts",
        sinks::poison_counts(&state.pool, &state.cfg.kafka.topic),
    )
    .await;
    let totals = match sinks::read_published(&state.cfg, &state.zk).await {
        Ok(t) => t
            .iter()
            .map(|(c, t, n, e)| json!({"currency": c.to_string(), "total": t.to_string(), "orders": n, "complete_up_to_epoch": e}))
            .collect(),
        Err(e) => {
            tracing::debug!("reading totals: {e:#}");
            vec![]
        }
    };
    json(
        StatusCode::OK,
        json!({
            "now": now,
            "epoch_ms": state.cfg.cluster.epoch_ms,
            "processes": processes,
            "dead_letters": poisons.map(|(d, _)| d),
            "skipped_copies": poisons.map(|(_, s)| s),
            "totals": totals,
            "ingest": ingest,
        }),
    )
}

/// Each configured process's last document, `"state": "down"` for those without one and
/// `"stale"` for those that stopped publishing.
fn expected(cfg: &Config, mut published: Vec<(usize, Value)>, now: i64) -> Vec<Value> {
    (0..cfg.cluster.processes.len())
        .map(|i| {
            let address = &cfg.cluster.processes[i];
            match published.iter().position(|(p, _)| *p == i) {
                Some(at) => {
                    let (_, mut doc) = published.swap_remove(at);
                    let age = now - doc["published_at"].as_i64().unwrap_or(0);
                    if age > STALE_MS {
                        doc["state"] = json!("stale");
                    }
                    doc["address"] = json!(address);
                    doc
                }
                None => {
                    json!({"process": i, "address": address, "state": "down", "partitions": []})
                }
            }
        })
        .collect()
}

/// `GET /api/views`: the live views as the job last published them, with their age;
/// `{"views": null}` while none are published (the job not running, or starting).
pub async fn views(state: &State) -> Resp {
    let doc = match read_doc(&state.zk, &state.cfg.views_path()).await {
        Ok(doc) => doc.unwrap_or(Value::Null),
        Err(e) => {
            tracing::warn!("reading the live views: {e:#}");
            return unavailable("zookeeper", "live views unavailable");
        }
    };
    let age = doc["published_at"].as_i64().map(|t| model::now_ms() - t);
    json(StatusCode::OK, json!({"views": doc, "age_ms": age}))
}

/// The documents under `Config::workers_path()`, by process index.
async fn read_processes(client: &zk::Client, cfg: &Config) -> anyhow::Result<Vec<(usize, Value)>> {
    let dir = cfg.workers_path();
    let names = match client.list_children(&dir).await {
        Ok(n) => n,
        Err(zk::Error::NoNode) => return Ok(vec![]),
        Err(e) => return Err(e.into()),
    };
    let mut out = vec![];
    for name in names.iter().take(MAX_PROCESSES) {
        let Ok(process) = name.parse::<usize>() else {
            continue;
        };
        if let Some(doc) = read_doc(client, &format!("{dir}/{name}")).await? {
            out.push((process, doc));
        }
    }
    Ok(out)
}

/// The JSON object a job's process published at `path`: None when there is none (or
/// what is there is not a JSON object); an error when ZooKeeper does not answer in 1 s.
async fn read_doc(client: &zk::Client, path: &str) -> anyhow::Result<Option<Value>> {
    match tokio::time::timeout(Duration::from_secs(1), client.get_data(path)).await {
        Ok(Ok((data, _))) => match serde_json::from_slice::<Value>(&data) {
            Ok(doc) if doc.is_object() => Ok(Some(doc)),
            _ => {
                tracing::debug!("{path} does not hold a JSON object");
                Ok(None)
            }
        },
        Ok(Err(zk::Error::NoNode)) => Ok(None),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("reading {path}"))),
        Err(_) => anyhow::bail!("reading {path}: no answer within 1 s"),
    }
}

/// The parameters of `/api/catalogue?q=…&limit=…`: q at most 64 characters, limit 1–50.
pub fn catalogue_query(query: &str) -> Result<(String, u32), (&'static str, &'static str)> {
    let mut text = String::new();
    let mut limit = 20;
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        match k {
            "q" => text = crate::endpoint::percent_decode(v),
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=50).contains(&n) => limit = n,
                _ => return Err(("limit", "must be an integer from 1 to 50")),
            },
            _ => {}
        }
    }
    if text.chars().count() > 64 {
        return Err(("q", "must be at most 64 characters"));
    }
    Ok((text, limit))
}

/// `GET /api/catalogue?q=…&limit=…`.
pub async fn catalogue(state: &State, query: &str) -> Resp {
    let (text, limit) = match catalogue_query(query) {
        Ok(q) => q,
        Err((field, problem)) => return error(StatusCode::BAD_REQUEST, field, problem),
    };
    match sinks::search_catalogue(&state.pool, &text, limit).await {
        Ok(rows) => json(StatusCode::OK, json!({"q": text, "commodities": rows})),
        Err(e) => store_unavailable(e),
    }
}

/// `GET /api/rates/history?versions=…` (1–200, 50 by default).
pub async fn rate_history(state: &State, query: &str) -> Resp {
    let mut versions = 50;
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k == "versions" {
            match v.parse::<u32>() {
                Ok(n) if (1..=200).contains(&n) => versions = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "versions",
                        "must be an integer from 1 to 200",
                    )
                }
            }
        }
    }
    match sinks::recent_rates(&state.pool, versions).await {
        Ok(rows) => json(StatusCode::OK, json!({"rates": rows})),
        Err(e) => store_unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_query_is_bounded() {
        assert_eq!(catalogue_query(""), Ok((String::new(), 20)));
        assert_eq!(
            catalogue_query("q=red+mug&limit=5"),
            Ok(("red mug".into(), 5))
        );
        assert_eq!(catalogue_query("limit=0").unwrap_err().0, "limit");
        assert_eq!(catalogue_query("limit=51").unwrap_err().0, "limit");
        let long = format!("q={}", "x".repeat(65));
        assert_eq!(catalogue_query(&long).unwrap_err().0, "q");
    }

    #[test]
    fn processes_without_a_fresh_document_are_down_or_stale() {
        let mut cfg = Config::parse(include_str!("../../cluster.toml")).unwrap();
        cfg.cluster.processes = vec!["h1:1".into(), "h2:1".into(), "h3:1".into()];
        let published = vec![
            (
                2,
                json!({"process": 2, "state": "running", "published_at": 9_000}),
            ),
            (
                0,
                json!({"process": 0, "state": "running", "published_at": 1_000}),
            ),
        ];
        let all = expected(&cfg, published, 10_000);
        let states: Vec<&str> = all.iter().map(|p| p["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["stale", "down", "running"]);
        assert_eq!(all[1]["address"], "h2:1");
    }
}
