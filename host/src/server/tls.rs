//! The TLS listener's certificate: loaded from PEM files, handed to every
//! handshake by a resolver that always serves the current one, and reloaded
//! when either file changes (polled every [`POLL`], so an atomic rename, a
//! rewrite in place and a Kubernetes secret's symlink swap are all seen). A
//! pair that does not load — unreadable, malformed, or a key that does not
//! match the certificate, as while only one of the two files has been
//! replaced — is logged and counted, and the previous certificate keeps
//! serving. ALPN offers `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TlsConfig;
use crate::metrics::{Metrics, OutcomeLabels};

/// How often the certificate files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// What identifies a version of a file without reading it.
type Stamp = Option<(u64, SystemTime)>;

/// The certificate served now, and where it comes from.
#[derive(Debug)]
pub struct Certificate {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The files' stamps when they were last loaded (or failed to load).
    seen: Mutex<(Stamp, Stamp)>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificate {
    /// Loads the configured pair.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or a key that does not match.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, String> {
        let seen = (stamp(&config.cert_file), stamp(&config.key_file));
        let key = load_pair(&config.cert_file, &config.key_file)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(key),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            seen: Mutex::new(seen),
        }))
    }

    /// The acceptor of the TLS listener: TLS 1.2 and 1.3, no client
    /// certificates, ALPN `h2` then `http/1.1`.
    ///
    /// # Errors
    /// When rustls rejects the configuration.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reloads the pair if either file changed since it was last looked at;
    /// `None` when neither did.
    fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some(
            load_pair(&self.cert_file, &self.key_file).map(|key| self.current.store(Arc::new(key))),
        )
    }

    /// Watches the files until `shutdown`, swapping in each new pair that loads.
    pub fn watch(
        self: Arc<Self>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) {
        tracker.spawn(async move {
            let mut every = tokio::time::interval(POLL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = every.tick() => {}
                }
                let outcome = match self.reload_if_changed() {
                    None => continue,
                    Some(Ok(())) => {
                        tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                        "reloaded"
                    }
                    Some(Err(e)) => {
                        tracing::error!(cert = %self.cert_file.display(), error = %e, "TLS certificate not reloaded; the previous one keeps serving");
                        "failed"
                    }
                };
                metrics
                    .tls_reloads
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc();
            }
        });
    }
}

/// A file's size and modification time, following symlinks.
fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Reads a certificate chain and its private key and checks that they match.
fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let cert_pem = read(cert_file)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate", cert_file.display()));
    }
    let key_pem = read(key_file)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{}: {e}", key_file.display()))?
        .ok_or_else(|| format!("{}: no PEM private key", key_file.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("{} and {}: {e}", cert_file.display(), key_file.display()))?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), String> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()])
                .map_err(|e| e.to_string())?;
        let (cert_file, key_file) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(&key_file, signing_key.serialize_pem()).map_err(|e| e.to_string())?;
        Ok((cert_file, key_file))
    }

    #[test]
    fn a_mismatched_or_broken_pair_keeps_the_previous_certificate() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (cert_file, key_file) = pair(dir.path(), "a")?;
        let config = TlsConfig {
            listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        };
        let certificate = Certificate::load(&config)?;
        let first = certificate.current.load_full();
        assert!(certificate.reload_if_changed().is_none(), "nothing changed");
        // Only the certificate replaced: the old key does not match it.
        let (other_cert, other_key) = pair(dir.path(), "b")?;
        std::fs::copy(&other_cert, &cert_file).map_err(|e| e.to_string())?;
        let refused = certificate.reload_if_changed();
        assert!(matches!(refused, Some(Err(_))), "{refused:?}");
        assert!(Arc::ptr_eq(&first, &certificate.current.load_full()));
        // Then the key: the new pair loads.
        std::fs::copy(&other_key, &key_file).map_err(|e| e.to_string())?;
        assert_eq!(certificate.reload_if_changed(), Some(Ok(())));
        assert!(!Arc::ptr_eq(&first, &certificate.current.load_full()));
        std::fs::write(&cert_file, "garbage").map_err(|e| e.to_string())?;
        assert!(matches!(certificate.reload_if_changed(), Some(Err(_))));
        Ok(())
    }
}
