//! TLS for the admission port: rustls (ring provider, TLS 1.2 and 1.3, ALPN h2 and http/1.1) with a certificate
//! resolver behind an `ArcSwap`, so a new certificate is served from the next handshake on, without a restart and
//! without failing a request. [`CertStore::reload`] is driven by [`crate::watch::watch_dir`] on the parent
//! directories of the files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error("no private key in {path}")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is unusable or does not match the certificate.
    #[error("failed to use the key {key} with the certificate {cert}")]
    Certified {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause.
        source: rustls::Error,
    },
    /// The server configuration was refused.
    #[error("failed to configure TLS")]
    Config(#[source] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses a PEM certificate chain and key into a [`CertifiedKey`], checking that they match.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let der = rustls_pemfile::private_key(&mut &key_pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key.to_owned(),
        })?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|source| TlsError::Certified {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// The serving certificate, reloadable.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertStore {
    /// Loads the certificate and key; fails when they are unusable.
    pub fn open(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
        let ck = certified_key(&cert_pem, &key_pem, &cert_path, &key_path)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            current: ArcSwap::from_pointee(ck),
            loaded: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// Rereads the files; installs them when they changed and form a valid pair. Returns whether it swapped.
    ///
    /// A pair caught half-written (new certificate, old key) fails the key check and is retried on the next event
    /// or poll; the old certificate keeps being served meanwhile.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = (read(&self.cert_path)?, read(&self.key_path)?);
        let Ok(mut loaded) = self.loaded.lock() else {
            return Ok(false);
        };
        if loaded.0 == cert_pem && loaded.1 == key_pem {
            return Ok(false);
        }
        let ck = certified_key(&cert_pem, &key_pem, &self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(ck));
        *loaded = (cert_pem, key_pem);
        Ok(true)
    }

    /// The directories to watch: the parents of the certificate and key files.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let parent = |p: &Path| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned()
        };
        let mut dirs = vec![parent(&self.cert_path), parent(&self.key_path)];
        dirs.dedup();
        dirs
    }

    /// The certificate currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server configuration over a [`CertStore`].
pub fn server_config(store: Arc<CertStore>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// A CA-signed pair from kmm-certs (the code that makes the real ones).
    fn pair(service: &str) -> (String, String) {
        let b = kmm_certs::serving::generate(service, "ns", 30, std::time::SystemTime::now(), None)
            .unwrap();
        (b.cert_pem, b.key_pem)
    }

    #[test]
    fn reload_swaps_only_complete_matching_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = pair("one");
        let (c2, k2) = pair("two");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let store = CertStore::open(&cert, &key).unwrap();
        let first = store.current();
        assert!(!store.reload().unwrap(), "unchanged files: no swap");

        // Half-written: new certificate, old key. Refused, the old pair stays.
        std::fs::write(&cert, &c2).unwrap();
        assert!(matches!(store.reload(), Err(TlsError::Certified { .. })));
        assert!(Arc::ptr_eq(&first, &store.current()));

        std::fs::write(&key, &k2).unwrap();
        assert!(store.reload().unwrap());
        assert!(!Arc::ptr_eq(&first, &store.current()));
        assert_eq!(store.watch_dirs(), vec![dir.path().to_owned()]);

        std::fs::write(&cert, "garbage").unwrap();
        assert!(matches!(
            store.reload(),
            Err(TlsError::NoCertificate { .. })
        ));
    }
}
