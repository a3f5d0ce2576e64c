//! Plain-HTTP health and metrics: `/healthz` (the process runs), `/readyz` (every offered resource is registered
//! with the kubelet), `/metrics` (Prometheus text).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::metrics::Metrics;

/// Errors of the health server.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Binding the listen address failed.
    #[error("failed to listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("failed to serve health and metrics")]
    Serve(#[source] std::io::Error),
}

/// Which resources are registered with the kubelet.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<String, bool>>>);

impl Readiness {
    /// Records whether `resource` is registered.
    pub fn set(&self, resource: &str, registered: bool) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(resource.to_owned(), registered);
        }
    }

    /// Whether `resource` is registered.
    pub fn get(&self, resource: &str) -> bool {
        self.0
            .lock()
            .map(|m| m.get(resource).copied().unwrap_or(false))
            .unwrap_or(false)
    }

    /// Forgets `resource` (no longer offered).
    pub fn remove(&self, resource: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(resource);
        }
    }

    /// The resources not registered (empty: ready).
    pub fn unregistered(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, r)| !**r)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The health router (tested with `tower::ServiceExt::oneshot`).
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, readiness })
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let missing = s.readiness.unregistered();
    if missing.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not registered with the kubelet: {}\n", missing.join(", ")),
        )
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Binds `addr` and serves until `shutdown` turns true. Logs the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), HealthError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Listen { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    info!(addr = %local, "health and metrics listening");
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
        .map_err(HealthError::Serve)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn get(r: &Router, path: &str) -> (StatusCode, String) {
        let resp = r
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_registration_and_metrics_render() {
        let metrics = Metrics::new();
        let readiness = Readiness::default();
        let r = router(metrics.clone(), readiness.clone());
        assert_eq!(get(&r, "/healthz").await.0, StatusCode::OK);
        readiness.set("example.com/a", false);
        let (code, body) = get(&r, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("example.com/a"));
        readiness.set("example.com/a", true);
        assert_eq!(get(&r, "/readyz").await.0, StatusCode::OK);
        metrics.kubelet_restart();
        let (code, body) = get(&r, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            body.contains("kmm_device_plugin_kubelet_restarts_total 1"),
            "{body}"
        );
    }
}
