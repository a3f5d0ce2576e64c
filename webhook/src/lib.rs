//! kmm-webhook: the HTTPS admission server of kmm-rs.
//!
//! How the parts fit, from the wire inwards:
//! - [`server`] accepts TLS connections ([`tls`]: rustls with a certificate resolver that reloads on change) and
//!   serves HTTP/1.1 and HTTP/2 with hyper-util, closing connections whose request is too slow; [`health`] serves `/healthz`, `/readyz` and `/metrics` in plain
//!   HTTP on a separate port; [`watch`] carries the shutdown signal and the reload-on-change loop.
//! - [`router`] maps paths to [`admit::Endpoint`]s, enforces the body limit, logs and
//!   counts each request ([`metrics`]).
//! - [`review`] parses the `AdmissionReview` (well-formed Pod and Module reviews in one pass with [`scan`]) and writes
//!   the answer (the patch's base64 with [`b64`]); [`admit`] dispatches on the endpoint to pure
//!   handlers: [`validate`] (Module, ManagedClusterModule, Namespace, with kmm-api's rules) and [`mutate`] (Pods).
//! - [`catalog`] is where Modules are looked up: a kube-rs reflector, or a directory of YAML files (standalone).
//! - [`cli`] is the command line of the `kmm-webhook` binary; [`telemetry`] sets up tracing.

pub mod admit;
pub mod b64;
pub mod catalog;
pub mod cli;
pub mod metrics;
pub mod mutate;
pub mod review;
pub mod router;
pub mod scan;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod validate;
pub mod watch;

/// Renders an error and its sources on one line: `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
