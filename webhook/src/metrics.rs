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

/// The endpoints and verdicts whose series exist from the start (and are counted without a label lookup).
pub const ENDPOINTS: [&str; 4] = ["module", "managedclustermodule", "namespace", "pod"];
/// See [`ENDPOINTS`].
pub const VERDICTS: [&str; 4] = ["allowed", "patched", "denied", "error"];

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
    /// The series of `requests` for [`ENDPOINTS`] x [`VERDICTS`], resolved once.
    known_requests: Vec<Counter>,
    /// The series of `latency` for [`ENDPOINTS`], resolved once.
    known_latency: Vec<Histogram>,
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
        // A counter or histogram handle shares its value with the family's series.
        let known_requests = ENDPOINTS
            .iter()
            .flat_map(|e| VERDICTS.iter().map(move |v| (e, v)))
            .map(|(e, v)| {
                requests
                    .get_or_create(&RequestLabels {
                        endpoint: (*e).to_owned(),
                        verdict: (*v).to_owned(),
                    })
                    .clone()
            })
            .collect();
        let known_latency = ENDPOINTS
            .iter()
            .map(|e| {
                latency
                    .get_or_create(&EndpointLabels {
                        endpoint: (*e).to_owned(),
                    })
                    .clone()
            })
            .collect();
        Self {
            registry,
            requests,
            latency,
            cert_reloads,
            cert_reload_errors,
            known_requests,
            known_latency,
        }
    }

    /// Counts one request.
    pub fn observe(&self, endpoint: &str, verdict: &str, seconds: f64) {
        let e = ENDPOINTS.iter().position(|k| *k == endpoint);
        let v = VERDICTS.iter().position(|k| *k == verdict);
        if let (Some(e), Some(v)) = (e, v)
            && let (Some(c), Some(h)) = (
                self.known_requests.get(e * VERDICTS.len() + v),
                self.known_latency.get(e),
            )
        {
            c.inc();
            h.observe(seconds);
            return;
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn known_and_other_series_are_counted_and_exposed() {
        let m = Metrics::new();
        m.observe("pod", "patched", 0.001);
        m.observe("pod", "patched", 0.002);
        m.observe("module", "denied", 0.5);
        m.observe("other", "odd", 0.1);
        let text = m.encode();
        for line in [
            r#"kmm_webhook_admission_requests_total{endpoint="pod",verdict="patched"} 2"#,
            r#"kmm_webhook_admission_requests_total{endpoint="module",verdict="denied"} 1"#,
            r#"kmm_webhook_admission_requests_total{endpoint="namespace",verdict="allowed"} 0"#,
            r#"kmm_webhook_admission_requests_total{endpoint="other",verdict="odd"} 1"#,
            r#"kmm_webhook_admission_duration_seconds_count{endpoint="pod"} 2"#,
            r#"kmm_webhook_admission_duration_seconds_count{endpoint="other"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
