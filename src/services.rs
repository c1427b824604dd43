//! `dtss services`: runs the project's own scripts/services.sh (embedded in the binary)
//! for the MariaDB and ZooKeeper named in the config, when they are on this machine.

use anyhow::{bail, Context, Result};
use model::Config;

const SCRIPT: &str = include_str!("../scripts/services.sh");

fn loopback(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]") || host.starts_with("127.")
}

pub fn run(cfg: &Config, action: &str) -> Result<()> {
    let opts = mysql_async::Opts::from_url(&cfg.mysql.url).context("mysql.url does not parse")?;
    let first_zk = cfg
        .zookeeper
        .connect
        .split(['/', ','])
        .next()
        .unwrap_or_default();
    let (zk_host, zk_port) = first_zk.rsplit_once(':').unwrap_or((first_zk, "2181"));
    if !loopback(opts.ip_or_hostname()) || !loopback(zk_host) {
        tracing::info!("MySQL or ZooKeeper is not on this machine (see the config): not starting local services");
        return Ok(());
    }
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(SCRIPT)
        .arg("services.sh")
        .arg(action)
        .env("DTSS_HOME", cfg.data_dir())
        .env("DTSS_MYSQL_PORT", opts.tcp_port().to_string())
        .env("DTSS_ZK_PORT", zk_port)
        .status()
        .context("running bash for scripts/services.sh")?;
    if !status.success() {
        bail!("services {action} failed ({status}); see the messages above");
    }
    Ok(())
}
