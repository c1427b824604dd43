//! `dtss campaign`: the fault campaign. On the three hosts of `scripts/hosts.sh` (made
//! fresh first), each fault ROUNDS times under steady load through nginx, every round
//! ending with a strict check over every order accepted so far. Prints one table:
//!
//!   fault | rounds | accepted | settled | lost | duplicated | recovery p50 | max | restarted p50
//!
//! recovery: from the fault until every partition has committed twice more (the cluster
//! back and settling everywhere); restarted: from the fault until the last process the
//! supervisors restarted was started again. Results under `<home>/campaign/<unix ms>/`.

mod fault;
mod hosts;
mod table;
mod watch;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use model::Config;

use crate::proc::append;
use fault::Fault;
use hosts::Hosts;
use table::Round;

/// When the fault comes, from the start of a round's load.
const FAULT_AT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct CampaignArgs {
    /// Rounds of each fault.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Seconds of load per round (the fault comes 10 s in; more than 15).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(16..))]
    steady: u64,
    /// Orders per second.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Where the hosts' nginx listens.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    url: String,
    /// The network-namespace plumbing.
    #[arg(long, default_value = "scripts/hosts.sh")]
    hosts_script: PathBuf,
    /// Where the hosts and the results live.
    #[arg(long, env = "DTSS_HOME", default_value = ".dtss")]
    home: PathBuf,
    /// The faults, in order (default: all seven).
    #[arg(value_enum)]
    faults: Vec<Fault>,
}

/// Run the campaign; Ok(false) if any round lost or duplicated an order or did not
/// recover.
pub fn run(a: CampaignArgs) -> Result<bool> {
    let hosts = Hosts::new(&a.hosts_script, &a.home)?;
    let faults = match a.faults.is_empty() {
        true => Fault::ALL.to_vec(),
        false => a.faults.clone(),
    };
    let out = hosts
        .dir()
        .with_file_name("campaign")
        .join(model::now_ms().to_string());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    log(&format!("fresh hosts (results in {})", out.display()));
    hosts.run(&["down"]).ok();
    let _ = std::fs::remove_dir_all(hosts.dir());
    hosts.run(&["up"])?;
    let config = hosts.config()?;
    let cfg = crate::read_config(&config, &[])?;
    let runtime = ore::current_thread_runtime()?;
    let result = runtime.block_on(campaign(&a, &faults, &hosts, &cfg, &config, &out));
    hosts.run(&["down"]).ok();
    result
}

async fn campaign(
    a: &CampaignArgs,
    faults: &[Fault],
    hosts: &Hosts,
    cfg: &Config,
    config: &Path,
    out: &Path,
) -> Result<bool> {
    let pool = sinks::connect(&cfg.mysql.urls, 1)?;
    let cpu0 = harness::cpu_ticks();
    let mut rounds = vec![];
    std::fs::write(out.join("rounds.tsv"), Round::TSV_HEADER)?;
    for f in faults {
        for r in 1..=a.rounds {
            let ctx = RoundCtx {
                a,
                hosts,
                cfg,
                config,
                out,
                pool: &pool,
            };
            let round = ctx.round(*f, r).await?;
            append(&out.join("rounds.tsv"), &round.tsv())?;
            rounds.push(round);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    let steal = harness::cpu_ticks()
        .zip(cpu0)
        .map(|(b, a)| 100.0 * (b.1 - a.1) as f64 / (b.2 - a.2).max(1) as f64);
    let names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
    let t = table::markdown(&names, &rounds, steal);
    print!("{t}");
    std::fs::write(out.join("table.md"), &t)?;
    Ok(!rounds.iter().any(Round::failed))
}

struct RoundCtx<'a> {
    a: &'a CampaignArgs,
    hosts: &'a Hosts,
    cfg: &'a Config,
    config: &'a Path,
    out: &'a Path,
    pool: &'a sinks::Pool,
}

impl RoundCtx<'_> {
    async fn round(&self, f: Fault, r: u32) -> Result<Round> {
        let dir = self.out.join(format!("{}-{r}", f.name()));
        std::fs::create_dir_all(&dir)?;
        log(&format!(
            "{}, round {r} of {}: {} orders/s for {} s, the fault {} s in",
            f.name(),
            self.a.rounds,
            self.a.rate,
            self.a.steady,
            FAULT_AT.as_secs()
        ));
        let mut bench = self.bench(&dir)?;
        tokio::time::sleep(FAULT_AT + Duration::from_secs(1)).await;
        let (t0, t0_ms) = (Instant::now(), model::now_ms());
        let fault_log = dir.join("fault.log");
        let cut = f.inject(self.hosts, &self.cfg.zookeeper.connect, &fault_log);
        if let Err(e) = &cut {
            log(&format!("the fault failed: {e:#}"));
        }
        let recovery = watch::recovery(self.pool, &self.cfg.kafka.topic, t0).await;
        let bench_done = tokio::task::spawn_blocking(move || bench.wait());
        bench_done.await?.context("waiting for the bench")?;
        if let Ok(Some(mut c)) = cut {
            c.wait()?;
        }
        let restarted = watch::restarted(&self.hosts.dir(), t0_ms);
        let round = self.verdict(f, r, &dir, recovery, restarted).await?;
        if round.failed() {
            log(&format!(
                "round failed: see {} (check.log, bench.log)",
                dir.display()
            ));
        }
        Ok(round)
    }

    /// The bench for this round, through nginx, in the background.
    fn bench(&self, dir: &Path) -> Result<std::process::Child> {
        let logf = std::fs::File::create(dir.join("bench.log"))?;
        let a = self.a;
        Command::new(self.hosts.bin())
            .args(["bench", "--config"])
            .arg(self.config)
            .args([
                "--url",
                &a.url,
                "--rate",
                &a.rate.to_string(),
                "--connections",
                "64",
            ])
            .args(["--duration", &a.steady.to_string(), "--ramp", "1", "--out"])
            .arg(dir.join("bench"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("starting the bench")
    }

    /// The round's counts, and the strict check over every order accepted so far.
    async fn verdict(
        &self,
        f: Fault,
        r: u32,
        dir: &Path,
        recovery: Option<Duration>,
        restarted: Duration,
    ) -> Result<Round> {
        let counts = bench_counts(&dir.join("bench/run-1.json"));
        let accepted_now =
            std::fs::read_to_string(dir.join("bench/accepted.txt")).unwrap_or_default();
        let all = self.out.join("accepted-all.txt");
        append(&all, &accepted_now)?;
        let ids: Vec<String> = std::fs::read_to_string(&all)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect();
        let verdicts = harness::check(self.cfg, Some(&ids), Duration::from_secs(10)).await?;
        let detail: String = verdicts
            .iter()
            .map(|v| {
                format!(
                    "{} {}: {}\n",
                    if v.ok { "PASS" } else { "FAIL" },
                    v.name,
                    v.detail
                )
            })
            .collect();
        std::fs::write(dir.join("check.log"), &detail)?;
        let round = Round {
            fault: f.name(),
            round: r,
            accepted: counts.map(|c| c.0),
            settled: counts.map(|c| c.1),
            lost: table::count_in(&detail, " accepted orders have no result"),
            duplicated: table::count_in(&detail, " results for orders never accepted"),
            recovery,
            restarted,
            check_passed: verdicts.iter().all(|v| v.ok),
        };
        log(&format!(
            "  accepted {}, settled {}, lost {}, duplicated {}, recovered in {} ms, restarted in {} ms, check {}",
            round.accepted.map_or("-".into(), |n| n.to_string()),
            round.settled.map_or("-".into(), |n| n.to_string()),
            round.lost,
            round.duplicated,
            recovery.map_or(-1, |d| d.as_millis() as i64),
            restarted.as_millis(),
            if round.check_passed { "PASS" } else { "FAIL" }
        ));
        Ok(round)
    }
}

/// (accepted, settled) from a bench's JSON report.
fn bench_counts(report: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(report).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let c = v.get("counts")?;
    Some((c.get("accepted")?.as_u64()?, c.get("settled")?.as_u64()?))
}

fn log(line: &str) {
    eprintln!("[campaign] {line}");
}
