//! The HTTP routes of the admission port, and the plain-HTTP health routes.
//!
//! Every admission path takes POST with an AdmissionReview body (at most [`BODY_LIMIT`]; larger bodies get 413, like
//! the API server's own limit). Query strings (the API server appends `?timeout=10s`) are ignored. The time a client
//! gets to send a request is enforced per connection by [`crate::server`].

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;

use crate::admit::{Context, Endpoint, Outcome, handle};
use crate::metrics::Metrics;

/// Largest accepted body: 3 MiB, the API server's request limit.
pub const BODY_LIMIT: usize = 3 * 1024 * 1024;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    /// Handler context.
    pub ctx: Context,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The admission routes.
pub fn admission(state: AppState) -> Router {
    let mut router = Router::new();
    for (endpoint, path, alias) in Endpoint::ROUTES {
        let route =
            post(move |State(state): State<AppState>, body: Bytes| review(endpoint, state, body));
        router = router.route(path, route.clone());
        if let Some(alias) = alias {
            router = router.route(alias, route);
        }
    }
    router
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

async fn review(endpoint: Endpoint, state: AppState, body: Bytes) -> Response {
    let start = Instant::now();
    let outcome = handle(endpoint, &body, &state.ctx);
    let elapsed = start.elapsed();
    let latency_us = elapsed.as_micros() as u64;
    match outcome {
        Outcome::Review {
            request,
            uid,
            verdict,
            body,
        } => {
            let verdict_label = verdict.label();
            state
                .metrics
                .observe(endpoint.as_str(), verdict_label, elapsed.as_secs_f64());
            let (kind, op, ns, name, dry_run) = match &request {
                Some(r) => (
                    r.kind.kind.as_str(),
                    r.operation.as_str(),
                    r.namespace.as_deref().unwrap_or(""),
                    r.name.as_str(),
                    r.dry_run,
                ),
                None => ("", "", "", "", false),
            };
            if verdict.allowed {
                tracing::info!(uid = %uid, endpoint = endpoint.as_str(), kind, operation = op, namespace = ns, name,
                    dry_run, verdict = verdict_label, latency_us, "admission");
            } else {
                tracing::info!(uid = %uid, endpoint = endpoint.as_str(), kind, operation = op, namespace = ns, name,
                    dry_run, verdict = verdict_label, code = verdict.code,
                    message = verdict.message.as_deref().unwrap_or(""), latency_us, "admission");
            }
            ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Outcome::BadRequest(message) => {
            state
                .metrics
                .observe(endpoint.as_str(), "error", elapsed.as_secs_f64());
            tracing::warn!(endpoint = endpoint.as_str(), error = %message, latency_us, "bad admission request");
            (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
        }
    }
}

/// What the health port reports.
#[derive(Clone)]
pub struct HealthState {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Whether the webhook can answer (Modules loaded, not shutting down).
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn health(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<HealthState>| async move {
                if (s.ready)() {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<HealthState>| async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.encode(),
                )
            }),
        )
        .with_state(state)
}

#[cfg(test)]
mod tests;
