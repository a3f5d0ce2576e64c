//! The `kmm-certs` command line.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::{Parser, Subcommand};

use crate::kube_ops::{self, KubeOpsError};
use crate::serving::{self, Bundle, ServingError};
use crate::signing::{self, SigningError};

/// Certificates of kmm-rs: the webhook's CA and serving certificate, and module signing keys.
#[derive(Debug, Parser)]
#[command(name = "kmm-certs", version)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "KMM_LOG_FORMAT",
        value_enum,
        default_value = "plain",
        global = true
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create (or keep, or renew) the webhook's CA and serving certificate.
    Create {
        /// Name of the webhook Service.
        #[arg(long, env = "KMM_SERVICE")]
        service: String,
        /// Namespace of the webhook Service.
        #[arg(long, env = "KMM_NAMESPACE")]
        namespace: String,
        /// Write ca.crt, tls.crt and tls.key into this directory (read from it too when no --secret is given).
        #[arg(long, env = "KMM_OUT_DIR", required_unless_present = "secret")]
        out_dir: Option<PathBuf>,
        /// Keep the pair in this kubernetes.io/tls Secret of the namespace (the source of truth when given).
        #[arg(long, env = "KMM_SECRET")]
        secret: Option<String>,
        /// Lifetime of new certificates in days; renewed within the last third.
        #[arg(long, env = "KMM_DAYS", default_value_t = 365)]
        days: u32,
    },
    /// Set the caBundle of webhook configurations (server-side apply, field manager kmm-certs).
    Patch {
        /// PEM CA bundle.
        #[arg(long, env = "KMM_CA")]
        ca: PathBuf,
        /// MutatingWebhookConfiguration to patch (repeatable).
        #[arg(long, env = "KMM_MUTATING", value_delimiter = ',')]
        mutating: Vec<String>,
        /// ValidatingWebhookConfiguration to patch (repeatable).
        #[arg(long, env = "KMM_VALIDATING", value_delimiter = ',')]
        validating: Vec<String>,
    },
    /// Create a module signing key pair (RSA PEM key, self-signed DER certificate), like `openssl req -x509 -new`.
    SigningKey {
        /// Private key output (PKCS#8 PEM).
        #[arg(long, env = "KMM_OUT_KEY")]
        out_key: PathBuf,
        /// Certificate output (DER).
        #[arg(long, env = "KMM_OUT_CERT")]
        out_cert: PathBuf,
        /// Subject common name.
        #[arg(long, env = "KMM_CN", default_value = signing::DEFAULT_CN)]
        cn: String,
        /// RSA key size.
        #[arg(long, env = "KMM_KEY_BITS", default_value_t = signing::DEFAULT_BITS)]
        bits: usize,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("failed to write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error(transparent)]
    Serving(#[from] ServingError),
    /// Signing key generation failed.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// A Kubernetes operation failed.
    #[error(transparent)]
    Kube(#[from] KubeOpsError),
    /// No Kubernetes client could be configured.
    #[error("failed to configure the Kubernetes client (in-cluster or kubeconfig)")]
    Client(#[source] kube::Error),
    /// `patch` without any configuration to patch.
    #[error("patch needs --mutating or --validating")]
    NothingToPatch,
}

fn read_opt(path: &Path) -> Result<Option<String>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CliError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads `ca.crt`, `tls.crt`, `tls.key` from a directory; `None` unless all three exist.
pub fn read_dir_bundle(dir: &Path) -> Result<Option<Bundle>, CliError> {
    let (ca, cert, key) = (
        read_opt(&dir.join("ca.crt"))?,
        read_opt(&dir.join("tls.crt"))?,
        read_opt(&dir.join("tls.key"))?,
    );
    Ok(match (ca, cert, key) {
        (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Some(Bundle {
            ca_pem,
            cert_pem,
            key_pem,
        }),
        _ => None,
    })
}

/// Writes a file atomically (temporary file + rename), with the given permissions.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| CliError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("kmm-certs-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Writes the bundle into a directory: key first, so a reader never sees a certificate without its key.
pub fn write_dir_bundle(dir: &Path, b: &Bundle) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|source| CliError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_atomic(&dir.join("tls.key"), b.key_pem.as_bytes(), 0o600)?;
    write_atomic(&dir.join("tls.crt"), b.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join("ca.crt"), b.ca_pem.as_bytes(), 0o644)
}

async fn client() -> Result<kube::Client, CliError> {
    kube::Client::try_default().await.map_err(CliError::Client)
}

/// Runs a command.
pub async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Create {
            service,
            namespace,
            out_dir,
            secret,
            days,
        } => {
            let existing = match (&secret, &out_dir) {
                (Some(name), _) => kube_ops::read_secret(client().await?, &namespace, name).await?,
                (None, Some(dir)) => read_dir_bundle(dir)?,
                (None, None) => None,
            };
            let (bundle, fresh) =
                serving::ensure(existing, &service, &namespace, days, SystemTime::now())?;
            if let Some(name) = &secret
                && fresh
            {
                kube_ops::apply_secret(client().await?, &namespace, name, &bundle).await?;
            }
            if let Some(dir) = &out_dir {
                write_dir_bundle(dir, &bundle)?;
            }
            tracing::info!(
                service,
                namespace,
                renewed = fresh,
                "webhook certificate ready"
            );
            Ok(())
        }
        Command::Patch {
            ca,
            mutating,
            validating,
        } => {
            if mutating.is_empty() && validating.is_empty() {
                return Err(CliError::NothingToPatch);
            }
            let ca_pem = std::fs::read_to_string(&ca).map_err(|source| CliError::Read {
                path: ca.clone(),
                source,
            })?;
            kube_ops::patch_ca_bundle(client().await?, &ca_pem, &mutating, &validating).await?;
            tracing::info!(?mutating, ?validating, "caBundle applied");
            Ok(())
        }
        Command::SigningKey {
            out_key,
            out_cert,
            cn,
            bits,
        } => {
            let key = signing::generate(&cn, bits)?;
            write_atomic(&out_key, key.key_pem.as_bytes(), 0o600)?;
            write_atomic(&out_cert, &key.cert_der, 0o644)?;
            tracing::info!(key = %out_key.display(), cert = %out_cert.display(), "signing key written");
            Ok(())
        }
    }
}
