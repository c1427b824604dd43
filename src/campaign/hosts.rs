//! The three hosts the campaign runs on: `scripts/hosts.sh`, which keeps only the
//! namespace plumbing and the processes' placement; the campaign asks it to make the
//! hosts, kill a role, cut a host off, and where the cluster's config is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

pub struct Hosts {
    script: PathBuf,
    home: PathBuf,
    bin: PathBuf,
}

impl Hosts {
    pub fn new(script: &Path, home: &Path) -> Result<Hosts> {
        if !script.is_file() {
            bail!(
                "no hosts script at {}: run from the repository's folder, or pass --hosts-script",
                script.display()
            );
        }
        let bin = std::env::current_exe().context("finding the dtss binary")?;
        let home = std::path::absolute(home).context("resolving the home folder")?;
        Ok(Hosts {
            script: script.to_path_buf(),
            home,
            bin,
        })
    }

    /// Where the hosts keep their state and logs.
    pub fn dir(&self) -> PathBuf {
        self.home.join("hosts")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(&self.script)
            .args(args)
            .env("DTSS_HOME", &self.home)
            .env("DTSS_BIN", &self.bin);
        c
    }

    /// Run `hosts.sh ARGS…` to the end, its output on ours (progress for the user).
    pub fn run(&self, args: &[&str]) -> Result<()> {
        let status = self
            .command(args)
            .status()
            .with_context(|| format!("running {} {}", self.script.display(), args.join(" ")))?;
        if !status.success() {
            bail!(
                "{} {} failed ({status})",
                self.script.display(),
                args.join(" ")
            );
        }
        Ok(())
    }

    /// Start `hosts.sh ARGS…` without waiting, its output appended to `log`.
    pub fn spawn(&self, args: &[&str], log: &Path) -> Result<Child> {
        let out = crate::proc::open_log(log)?;
        let err = out.try_clone()?;
        self.command(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} {}", self.script.display(), args.join(" ")))
    }

    /// The cluster's config file, as the script wrote it.
    pub fn config(&self) -> Result<PathBuf> {
        let out = self.command(&["config"]).output()?;
        if !out.status.success() {
            bail!("{} config failed", self.script.display());
        }
        Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
    }

    /// The dtss binary the hosts run (this one).
    pub fn bin(&self) -> &Path {
        &self.bin
    }
}
