//! Debian packages a service needs, installed with `apt-get` when missing (`apt-get
//! update` first; the machine's root runs this).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::server::log;

/// A package and how to tell it is there: a file it installs, or a command on PATH.
pub(crate) struct Need {
    pub package: &'static str,
    pub file: &'static str,
}

impl Need {
    fn present(&self) -> bool {
        if self.file.starts_with('/') {
            return Path::new(self.file).exists();
        }
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(self.file).is_file())
        })
    }
}

pub(crate) const MARIADB: Need = Need {
    package: "mariadb-server",
    file: "mariadbd",
};
pub(crate) const GALERA: [Need; 2] = [
    Need {
        package: "galera-4",
        file: "/usr/lib/galera/libgalera_smm.so",
    },
    Need {
        package: "rsync",
        file: "rsync",
    },
];
pub(crate) const ZOOKEEPER: [Need; 2] = [
    Need {
        package: "zookeeper",
        file: "/usr/share/java/zookeeper.jar",
    },
    Need {
        package: "libslf4j-java",
        file: "/usr/share/java/slf4j-simple.jar",
    },
];

/// Install every package of `needs` that is missing, in one `apt-get install`.
pub(crate) fn install_missing(needs: &[&Need], log_file: &Path) -> Result<()> {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|n| !n.present())
        .map(|n| n.package)
        .collect();
    install(&missing, log_file)
}

/// `apt-get install` these packages (after `apt-get update`); nothing when none.
pub(crate) fn install(missing: &[&str], log_file: &Path) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    log(&format!("installing {} (apt-get)", missing.join(" ")));
    let apt = |args: &[&str]| {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("running apt-get (is this Debian, and are you root?)")?;
        std::fs::write(log_file, [&out.stdout[..], &out.stderr[..]].concat())?;
        if !out.status.success() {
            bail!(
                "apt-get {} failed:\n{}",
                args.join(" "),
                super::server::tail(log_file, 30)
            );
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(missing);
    apt(&install)
}
