//! The `kmm-webhook` command line and the wiring of its parts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kmm_api::validation::KubeVersion;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admit::Context;
use crate::catalog::Catalog;
use crate::catalog::dir::{DirCatalog, DirError};
use crate::metrics::Metrics;
use crate::mutate::MutateConfig;
use crate::router::{AppState, HealthState, admission, health};
use crate::server::{ServeOptions, serve_tls};
use crate::telemetry::LogFormat;
use crate::tls::{CertStore, TlsError, server_config};
use crate::watch::{Shutdown, watch_dir};

/// Admission webhook of kmm-rs: validates Modules, ManagedClusterModules and namespace deletions; makes pods that
/// need a kernel driver wait for it.
#[derive(Debug, Parser)]
#[command(name = "kmm-webhook", version)]
pub struct Args {
    /// Address of the HTTPS admission port.
    #[arg(long, env = "KMM_LISTEN", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,
    /// PEM certificate chain of the serving certificate (reloaded on change).
    #[arg(long, env = "KMM_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate (reloaded on change).
    #[arg(long, env = "KMM_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Address of the plain-HTTP port serving /healthz, /readyz and /metrics.
    #[arg(long, env = "KMM_HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    pub health_listen: SocketAddr,
    /// Image of the injected `kmm-wait-*` init containers (holds `kmm-loader`).
    #[arg(long, env = "KMM_LOADER_IMAGE")]
    pub loader_image: String,
    /// Standalone mode: read Modules from the YAML files of this directory instead of the API server.
    #[arg(long, env = "KMM_MODULES_FROM")]
    pub modules_from: Option<PathBuf>,
    /// Interval of the polling fallback for certificate and Modules-directory changes, e.g. 10s, 500ms.
    #[arg(long, env = "KMM_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Time allowed for in-flight requests after SIGTERM.
    #[arg(long, env = "KMM_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Time a client gets for the TLS handshake, and then for each request from its first byte to its answer (slow
    /// clients are dropped).
    #[arg(long, env = "KMM_CLIENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub client_timeout: Duration,
    /// Log format.
    #[arg(long, env = "KMM_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

/// Parses `500ms`, `10s`, `5m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 10s, 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    }
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The serving certificate is unusable.
    #[error("failed to set up TLS")]
    Tls(#[from] TlsError),
    /// A port could not be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The Modules directory could not be read.
    #[error("failed to load Modules")]
    Modules(#[from] DirError),
    /// No Kubernetes client could be configured.
    #[error("failed to configure the Kubernetes client (in-cluster or kubeconfig)")]
    Kube(#[source] kube::Error),
    /// Signal handlers could not be installed.
    #[error("failed to install the signal handlers")]
    Signal(#[source] std::io::Error),
}

fn kube_version(info: &k8s_openapi::apimachinery::pkg::version::Info) -> Option<KubeVersion> {
    let digits = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    };
    Some(KubeVersion {
        major: digits(&info.major)?,
        minor: digits(&info.minor)?,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// Runs the webhook until SIGTERM or SIGINT, then drains and returns.
pub async fn run(args: Args) -> Result<(), RunError> {
    let store = CertStore::open(&args.tls_cert, &args.tls_key)?;
    let acceptor = TlsAcceptor::from(Arc::new(server_config(Arc::clone(&store))?));
    let (trigger, shutdown) = Shutdown::new();
    let metrics = Arc::new(Metrics::new());

    for dir in store.watch_dirs() {
        let (store, metrics) = (Arc::clone(&store), Arc::clone(&metrics));
        let reload = move || match store.reload() {
            Ok(true) => {
                metrics.cert_reloads.inc();
                tracing::info!("reloaded the TLS certificate");
            }
            Ok(false) => {}
            Err(e) => {
                metrics.cert_reload_errors.inc();
                tracing::warn!(error = %crate::error_chain(&e), "failed to reload the TLS certificate; keeping the current one");
            }
        };
        tokio::spawn(watch_dir(
            dir,
            args.reload_interval,
            reload,
            shutdown.clone(),
        ));
    }

    let (catalog, kube_version): (Arc<dyn Catalog>, Option<KubeVersion>) = match &args.modules_from
    {
        Some(dir) => {
            let catalog = DirCatalog::open(dir)?;
            tokio::spawn(Arc::clone(&catalog).run(args.reload_interval, shutdown.clone()));
            (catalog, None)
        }
        None => {
            let client = kube::Client::try_default().await.map_err(RunError::Kube)?;
            let version = match client.apiserver_version().await {
                Ok(info) => kube_version(&info),
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "failed to read the cluster version; DRA gate skipped");
                    None
                }
            };
            let (store, task) = crate::catalog::kube_source::reflect(client, shutdown.clone());
            tokio::spawn(task);
            (Arc::new(store), version)
        }
    };

    let listener = bind(args.listen).await?;
    let health_listener = bind(args.health_listen).await?;
    for (what, l) in [
        ("admission (https)", &listener),
        ("health (http)", &health_listener),
    ] {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "listening for {what}");
            println!("listening {what} {addr}");
        }
    }

    let ready = {
        let (catalog, shutdown) = (Arc::clone(&catalog), shutdown.clone());
        Arc::new(move || catalog.is_ready() && !shutdown.is_triggered())
    };
    let health_app = health(HealthState {
        metrics: Arc::clone(&metrics),
        ready,
    });
    let mut health_shutdown = shutdown.clone();
    let health_task = tokio::spawn(async move {
        let served = axum::serve(health_listener, health_app)
            .with_graceful_shutdown(async move { health_shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "health server failed");
        }
    });

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
        trigger.trigger();
    });

    let state = AppState {
        ctx: Context {
            catalog,
            mutate: MutateConfig::new(args.loader_image.clone()),
            kube_version,
        },
        metrics,
    };
    let opts = ServeOptions {
        drain_timeout: args.drain_timeout,
        handshake_timeout: args.client_timeout,
        request_timeout: args.client_timeout,
    };
    let drained = serve_tls(listener, acceptor, admission(state), shutdown, opts).await;
    let _ = health_task.await;
    tracing::info!(drained, "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn durations_and_versions() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3h").is_err());
        let info = k8s_openapi::apimachinery::pkg::version::Info {
            major: "1".into(),
            minor: "31+".into(),
            ..Default::default()
        };
        assert_eq!(
            kube_version(&info),
            Some(KubeVersion {
                major: 1,
                minor: 31
            })
        );
    }
}
