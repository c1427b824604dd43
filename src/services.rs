//! `dtss services`: runs the project's own scripts/services.sh (embedded in the binary)
//! for the MariaDB (one server, or a Galera cluster when `mysql.urls` names several
//! nodes) and ZooKeeper named in the config, when they are on this machine.

use anyhow::{bail, Context, Result};
use model::Config;

const SCRIPT: &str = include_str!("../scripts/services.sh");

fn loopback(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]") || host.starts_with("127.")
}

pub fn run(cfg: &Config, action: &str) -> Result<()> {
    let mut nodes = vec![];
    for url in &cfg.mysql.urls {
        let opts = mysql_async::Opts::from_url(url).context("mysql.url does not parse")?;
        nodes.push((opts.ip_or_hostname().to_string(), opts.tcp_port()));
    }
    let first_zk = cfg
        .zookeeper
        .connect
        .split(['/', ','])
        .next()
        .unwrap_or_default();
    let (zk_host, zk_port) = first_zk.rsplit_once(':').unwrap_or((first_zk, "2181"));
    if !nodes.iter().all(|(h, _)| loopback(h)) || !loopback(zk_host) {
        tracing::info!("MySQL or ZooKeeper is not on this machine (see the config): not starting local services");
        return Ok(());
    }
    let mut script = std::process::Command::new("bash");
    script
        .arg("-c")
        .arg(SCRIPT)
        .arg("services.sh")
        .arg(action)
        .env("DTSS_HOME", cfg.data_dir())
        .env("DTSS_ZK_PORT", zk_port);
    if cfg.mysql.is_cluster() {
        // The script's Galera nodes listen on consecutive ports: base+1, base+2, …
        let base = nodes[0].1 - 1;
        let consecutive = nodes
            .iter()
            .enumerate()
            .all(|(i, (_, port))| *port as usize == base as usize + i + 1);
        if !consecutive {
            bail!(
                "mysql.urls: a local Galera cluster listens on consecutive ports (e.g. 3311, 3312, \
                 3313); start the nodes yourself, or use dtss up --no-services"
            );
        }
        script.env("DTSS_GALERA_PORT", base.to_string());
        if action == "up" {
            script.args(["--galera", &nodes.len().to_string()]);
        }
    } else {
        script.env("DTSS_MYSQL_PORT", nodes[0].1.to_string());
    }
    let status = script
        .status()
        .context("running bash for scripts/services.sh")?;
    if !status.success() {
        bail!("services {action} failed ({status}); see the messages above");
    }
    Ok(())
}
