//! Prometheus metrics of the webhook (served as text on the health port at `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an admission request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Endpoint (`module`, `managedclustermodule`, `namespace`, `pod`).
    pub endpoint: String,
    /// `allowed`, `patched`, `denied` or `error` (HTTP 400).
    pub verdict: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Endpoint.
    pub endpoint: String,
}

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Admission requests answered, by endpoint and verdict.
    pub requests: Family<RequestLabels, Counter>,
    /// Handling latency (body parsed to response serialised), by endpoint.
    pub latency: Family<EndpointLabels, Histogram>,
    /// TLS certificate reloads that swapped the certificate.
    pub cert_reloads: Counter,
    /// TLS certificate reloads that failed (the previous certificate stays).
    pub cert_reload_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kmm_webhook");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests answered, by endpoint and verdict",
            requests.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_01, 4.0, 10))
        });
        registry.register(
            "admission_duration_seconds",
            "Time to handle an admission request, from body to response",
            latency.clone(),
        );
        let cert_reloads = Counter::default();
        registry.register(
            "tls_certificate_reloads",
            "TLS certificate reloads that installed a new certificate",
            cert_reloads.clone(),
        );
        let cert_reload_errors = Counter::default();
        registry.register(
            "tls_certificate_reload_errors",
            "TLS certificate reloads that failed (the previous certificate stays)",
            cert_reload_errors.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            cert_reloads,
            cert_reload_errors,
        }
    }

    /// Counts one request.
    pub fn observe(&self, endpoint: &str, verdict: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                verdict: verdict.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
