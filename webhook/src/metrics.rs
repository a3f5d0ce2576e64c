//! Prometheus metrics of the webhook (served as text on the health port at `/metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A latency histogram recorded with atomics only: prometheus_client's `Histogram` takes a mutex for every
/// observation, which the admission threads would contend for on every request. Same exposition.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Arc<LatencyInner>);

#[derive(Debug)]
struct LatencyInner {
    /// Upper bounds, the last being +Inf.
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative).
    counts: Vec<AtomicU64>,
    /// Sum of the observations, in nanoseconds.
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// A histogram with these upper bounds (seconds) plus +Inf.
    pub fn new(bounds: impl Iterator<Item = f64>) -> Self {
        let mut bounds: Vec<f64> = bounds.collect();
        bounds.push(f64::INFINITY);
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(LatencyInner {
            bounds,
            counts,
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }))
    }

    /// Records one observation, in seconds.
    pub fn observe(&self, seconds: f64) {
        let inner = &self.0;
        let last = inner.counts.len().saturating_sub(1);
        let i = inner
            .bounds
            .iter()
            .position(|b| *b >= seconds)
            .unwrap_or(last);
        if let Some(c) = inner.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        inner
            .sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        inner.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .zip(&inner.counts)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        let sum = inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let count = inner.count.load(Ordering::Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

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
    pub latency: Family<EndpointLabels, LatencyHistogram>,
    /// TLS certificate reloads that swapped the certificate.
    pub cert_reloads: Counter,
    /// TLS certificate reloads that failed (the previous certificate stays).
    pub cert_reload_errors: Counter,
    /// The series of `requests` for [`ENDPOINTS`] x [`VERDICTS`], resolved once.
    known_requests: Vec<Counter>,
    /// The series of `latency` for [`ENDPOINTS`], resolved once.
    known_latency: Vec<LatencyHistogram>,
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
        let latency = Family::<EndpointLabels, LatencyHistogram>::new_with_constructor(|| {
            LatencyHistogram::new(exponential_buckets(0.000_01, 4.0, 10))
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
            r#"kmm_webhook_admission_duration_seconds_sum{endpoint="pod"} 0.003"#,
            r#"kmm_webhook_admission_duration_seconds_bucket{le="0.00016",endpoint="pod"} 0"#,
            r#"kmm_webhook_admission_duration_seconds_bucket{le="0.00256",endpoint="pod"} 2"#,
            r#"kmm_webhook_admission_duration_seconds_bucket{le="+Inf",endpoint="pod"} 2"#,
            r#"kmm_webhook_admission_duration_seconds_bucket{le="0.16384",endpoint="module"} 0"#,
            r#"kmm_webhook_admission_duration_seconds_bucket{le="0.65536",endpoint="module"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
