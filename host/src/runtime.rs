//! The runtime file a running gateway writes next to its store: its bound
//! addresses, its process id and an instance secret. The CLI reads it to find
//! the admin API, ignores it when its process is gone (a SIGKILL leaves it
//! behind), and — before it sends the admin token — has the admin API prove it
//! knows the instance secret, so the token never goes to another process that
//! took the port.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::Config;

/// The bound addresses of a running gateway.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Bound {
    /// Client-facing listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// TLS listener, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SocketAddr>,
}

/// What the runtime file holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Runtime {
    /// Where the gateway listens.
    #[serde(flatten)]
    pub bound: Bound,
    /// The gateway's process id.
    pub pid: u32,
    /// A random secret the admin API proves knowledge of (hex).
    pub instance: String,
}

/// Where a running gateway writes its runtime file (next to the store).
pub fn path(config: &Config) -> PathBuf {
    config.store.path.with_extension("runtime.json")
}

/// A new instance secret: 128 random bits, hex.
///
/// # Errors
/// When the OS random source fails.
pub fn new_instance_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Writes the runtime file, readable by its owner only (it holds the secret).
///
/// # Errors
/// When the file cannot be written.
pub fn write(path: &Path, runtime: &Runtime) -> std::io::Result<()> {
    let json = serde_json::to_vec(runtime).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("runtime.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&json)?;
    std::fs::rename(&tmp, path)
}

/// The runtime file of a gateway that is still running: `None` when there is
/// none, it does not parse, or its process is gone.
pub fn read_live(path: &Path) -> Option<Runtime> {
    let runtime: Runtime = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Path::new(&format!("/proc/{}", runtime.pid))
        .exists()
        .then_some(runtime)
}

/// The admin API's answer to a challenge: SHA-256 of the instance secret and
/// the challenger's nonce, hex.
pub fn proof(instance: &str, nonce: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(instance.as_bytes());
    hasher.update(b":");
    hasher.update(nonce.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_file_of_a_dead_process_is_ignored() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.runtime.json");
        let mut runtime = Runtime {
            bound: Bound {
                proxy: SocketAddr::from(([127, 0, 0, 1], 1)),
                admin: SocketAddr::from(([127, 0, 0, 1], 2)),
                tls: None,
            },
            pid: std::process::id(),
            instance: "secret".into(),
        };
        write(&path, &runtime)?;
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        assert!(read_live(&path).is_some(), "this process is alive");
        runtime.pid = u32::MAX;
        write(&path, &runtime)?;
        assert!(read_live(&path).is_none(), "no such process");
        Ok(())
    }

    #[test]
    fn proofs_depend_on_secret_and_nonce() {
        assert_eq!(proof("a", "n"), proof("a", "n"));
        assert_ne!(proof("a", "n"), proof("b", "n"));
        assert_ne!(proof("a", "n"), proof("a", "m"));
    }
}
