//! The secrets every command reads: the admin token (`ingest.admin_token`,
//! `DTSS_ADMIN_TOKEN`, or the file `dtss up` generates) and the MySQL password
//! (in the URL, `DTSS_MYSQL_PASSWORD`, or the file `dtss services` generates). Every
//! secret the project makes is made here (`ensure_secret`).
//! Files holding a secret must be readable by their owner only; no secret is logged.

use std::path::Path;

use anyhow::{bail, Context, Result};
use model::Config;

/// Fill in what the config leaves out: the admin token from its file, the MySQL
/// password from the environment or its file. Called again by `dtss up` once the
/// local services have generated their password.
pub fn apply(cfg: &mut Config) -> Result<()> {
    if cfg.ingest.admin_token.is_none() {
        cfg.ingest.admin_token = read_secret(&cfg.admin_token_file())?;
    }
    let password = match std::env::var("DTSS_MYSQL_PASSWORD") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            let file = cfg.mysql_password_file();
            let secret = read_secret(&file)?;
            if secret.is_none() && cfg.mysql.password_file.is_some() {
                bail!("mysql.password_file: {} does not exist", file.display());
            }
            secret
        }
    };
    if let Some(p) = password {
        cfg.mysql.set_password(&p);
    }
    Ok(())
}

/// The secret in `file`, if it exists (it must be readable by its owner only).
pub fn read_secret(file: &Path) -> Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("{} is readable by others: chmod 600 it", file.display());
    }
    let token =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()))
}

/// A new random admin token (256 bits, hex) in `file`, created with mode 0600.
pub fn make_admin_token(file: &Path) -> Result<String> {
    make_secret(file, 32)
}

/// The secret in `file`, made first (`bytes` random bytes, hex, mode 0600) when the
/// file does not exist: the one way every secret of the project is made (the MySQL
/// password of `dtss`, Tansu's PostgreSQL password, the admin token).
pub fn ensure_secret(file: &Path, bytes: usize) -> Result<String> {
    match read_secret(file)? {
        Some(s) => Ok(s),
        None => {
            let s = make_secret(file, bytes)?;
            tracing::info!("generated a secret into {} (mode 0600)", file.display());
            Ok(s)
        }
    }
}

/// `bytes` random bytes as hex, written to the new file `file` (mode 0600; never
/// overwrites one).
fn make_secret(file: &Path, bytes: usize) -> Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let secret: String = (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    writeln!(f, "{secret}").with_context(|| format!("writing {}", file.display()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_generated_admin_token_is_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("dtss-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("admin-token");
        assert_eq!(read_secret(&file).unwrap(), None);
        let token = make_admin_token(&file).unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_secret(&file).unwrap(), Some(token.clone()));
        assert!(make_admin_token(&file).is_err(), "never overwritten");
        assert_ne!(make_admin_token(&dir.join("other")).unwrap(), token);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&file).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_mysql_password_comes_from_its_file() {
        let dir = std::env::temp_dir().join(format!("dtss-pw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text = "[cluster]\nprocesses = [\"127.0.0.1:1\"]\nworkers_per_process = 1\n\
                    [mysql]\nurl = \"mysql://dtss@127.0.0.1:3306/dtss\"\npassword_file = \"pw\"\n\
                    [currencies]\nbase = \"RMB\"\ninitial = { RMB = \"1\" }\n";
        let cfg = Config::parse_at(text, &dir.join("cluster.toml")).unwrap();
        let e = apply(&mut cfg.clone()).unwrap_err().to_string();
        assert!(
            e.contains("mysql.password_file") && e.contains("does not exist"),
            "{e}"
        );
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut with = cfg.clone();
        apply(&mut with).unwrap();
        assert_eq!(with.mysql.url, "mysql://dtss:s3cret@127.0.0.1:3306/dtss");
        assert!(!format!("{with:?}").contains("s3cret"), "never shown");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
