//! Where each process of `dtss up` serves its metrics: ports picked free at start (so
//! that two systems on one machine never collide), printed, and written as a Prometheus
//! file-based service discovery list (`prometheus-targets.json` in the data folder), which
//! `deploy/prometheus/one-machine.yml` reads. A restarted process keeps its port.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use model::Config;
use serde_json::json;

/// The file the targets are written to, in the data folder.
const TARGETS_FILE: &str = "prometheus-targets.json";

pub(crate) struct MetricsPorts {
    pub broker: u16,
    pub modifier: u16,
    /// One per worker process, in process order.
    pub workers: Vec<u16>,
    /// The file-based service discovery list.
    pub targets: PathBuf,
}

impl MetricsPorts {
    /// Pick a free loopback port for each process and write the targets file.
    pub fn pick(cfg: &Config, processes: usize, data: &Path) -> Result<MetricsPorts> {
        let ports = free_ports(processes + 2)?;
        let ports = MetricsPorts {
            broker: ports[0],
            modifier: ports[1],
            workers: ports[2..].to_vec(),
            targets: data.join(TARGETS_FILE),
        };
        ports.write_targets(cfg)?;
        Ok(ports)
    }

    /// Every process's metrics address, named by its role.
    fn named(&self, cfg: &Config) -> Vec<(String, String)> {
        let mut out = vec![("ingest".to_string(), cfg.ingest.listen.to_string())];
        if cfg.kafka.brokers.is_empty() {
            out.push(("broker".into(), format!("127.0.0.1:{}", self.broker)));
        }
        for (p, port) in self.workers.iter().enumerate() {
            out.push((format!("worker-{p}"), format!("127.0.0.1:{port}")));
        }
        out.push((
            "rate-modifier".into(),
            format!("127.0.0.1:{}", self.modifier),
        ));
        out
    }

    /// One line for the banner: `ingest http://…/metrics, broker :P, …`.
    pub fn describe(&self, cfg: &Config) -> String {
        self.named(cfg)
            .iter()
            .map(|(name, addr)| format!("{name} http://{addr}/metrics"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn write_targets(&self, cfg: &Config) -> Result<()> {
        let list: Vec<_> = self
            .named(cfg)
            .into_iter()
            .map(|(name, addr)| {
                let role = name.split('-').next().unwrap_or(&name).to_string();
                json!({"targets": [addr], "labels": {"job": "dtss", "process": name, "role": role}})
            })
            .collect();
        let tmp = self.targets.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&list)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.targets)
            .with_context(|| format!("writing {}", self.targets.display()))
    }
}

/// `n` distinct loopback ports free at this moment.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports for the metrics")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}
