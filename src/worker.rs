//! `dtss worker`: one timely process of the cluster.

use std::net::SocketAddr;

use anyhow::Result;
use model::Config;

/// Run process `process` of the cluster (default: the one entry of `cluster.processes`
/// this host owns) until SIGINT/SIGTERM, then settle what was read and return; its
/// metrics at `metrics_listen` when given.
pub fn run(cfg: Config, process: Option<usize>, metrics_listen: Option<SocketAddr>) -> Result<()> {
    if let Some(listen) = metrics_listen {
        crate::metrics::serve(listen, std::sync::Arc::new(dataflow::render_metrics))?;
    }
    let process = match process {
        Some(p) => p,
        None => own_process(&cfg)?,
    };
    dataflow::run(cfg, process, crate::signals::stop_flag())
}

/// The index of the one `cluster.processes` entry this host owns: the one whose
/// address it can bind (the port must be free, as timely is about to take it).
fn own_process(cfg: &Config) -> Result<usize> {
    let mine: Vec<usize> = cfg
        .cluster
        .processes
        .iter()
        .enumerate()
        .filter(|(_, addr)| std::net::TcpListener::bind(addr.as_str()).is_ok())
        .map(|(i, _)| i)
        .collect();
    match mine.as_slice() {
        [one] => {
            tracing::info!("this host is process {one} ({})", cfg.cluster.processes[*one]);
            Ok(*one)
        }
        [] => anyhow::bail!(
            "none of cluster.processes is an address of this host with a free port: pass --process N"
        ),
        many => anyhow::bail!(
            "cluster.processes entries {many:?} are all addresses of this host: pass --process N"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(processes: &str) -> Config {
        Config::parse(&format!(
            "[cluster]\nprocesses = [{processes}]\nworkers_per_process = 1\n\
             [currencies]\nbase = \"RMB\"\ninitial = {{ RMB = \"1\", USD = \"7.12\" }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_process_index_is_found_from_the_hosts_own_addresses() {
        // TEST-NET-1 is nobody's address; port 0 on loopback always binds.
        assert_eq!(
            own_process(&cfg(r#""192.0.2.1:2101", "127.0.0.1:0""#)).unwrap(),
            1
        );
        let none = own_process(&cfg(r#""192.0.2.1:2101""#))
            .unwrap_err()
            .to_string();
        assert!(none.contains("pass --process"), "{none}");
        let many = own_process(&cfg(r#""127.0.0.1:0", "127.0.0.1:0""#))
            .unwrap_err()
            .to_string();
        assert!(
            many.contains("[0, 1]") && many.contains("pass --process"),
            "{many}"
        );
    }
}
