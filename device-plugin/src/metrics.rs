//! Prometheus metrics of the device plugin (text format on `/metrics`).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The plugin's metrics; cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    registrations: Family<Labels, Counter>,
    kubelet_restarts: Counter,
    devices: Family<Labels, Gauge>,
    allocations: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kmm_device_plugin");
        let registrations = Family::<Labels, Counter>::default();
        let kubelet_restarts = Counter::default();
        let devices = Family::<Labels, Gauge>::default();
        let allocations = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "registrations",
            "Registrations with the kubelet, by resource and result (ok, refused)",
            registrations.clone(),
        );
        registry.register(
            "kubelet_restarts",
            "Kubelet restarts seen (kubelet.sock re-created)",
            kubelet_restarts.clone(),
        );
        registry.register(
            "devices",
            "Devices advertised, by resource and health",
            devices.clone(),
        );
        registry.register(
            "allocations",
            "Containers allocated devices, by resource",
            allocations.clone(),
        );
        registry.register("errors", "Errors, by kind", errors.clone());
        Self {
            registry: Arc::new(Mutex::new(registry)),
            registrations,
            kubelet_restarts,
            devices,
            allocations,
            errors,
        }
    }

    /// A registration attempt ended; `ok` tells whether the kubelet accepted it.
    pub fn registration(&self, resource: &str, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.registrations
            .get_or_create(&vec![
                ("resource", resource.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    /// The kubelet restarted.
    pub fn kubelet_restart(&self) {
        self.kubelet_restarts.inc();
    }

    /// Devices of `resource` now.
    pub fn set_devices(&self, resource: &str, healthy: usize, unhealthy: usize) {
        for (health, n) in [("healthy", healthy), ("unhealthy", unhealthy)] {
            self.devices
                .get_or_create(&vec![
                    ("resource", resource.to_owned()),
                    ("health", health.to_owned()),
                ])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// `resource` is no longer offered.
    pub fn forget_resource(&self, resource: &str) {
        self.set_devices(resource, 0, 0);
    }

    /// One container was allocated devices of `resource`.
    pub fn allocation(&self, resource: &str) {
        self.allocations
            .get_or_create(&vec![("resource", resource.to_owned())])
            .inc();
    }

    /// An error of `kind` (e.g. `register`, `serve`, `allocate`, `modules`).
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = encode(&mut out, &registry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.registration("example.com/a", true);
        m.kubelet_restart();
        m.set_devices("example.com/a", 2, 1);
        m.allocation("example.com/a");
        m.error("register");
        let text = m.render();
        for line in [
            "kmm_device_plugin_registrations_total{resource=\"example.com/a\",result=\"ok\"} 1",
            "kmm_device_plugin_kubelet_restarts_total 1",
            "kmm_device_plugin_devices{resource=\"example.com/a\",health=\"healthy\"} 2",
            "kmm_device_plugin_devices{resource=\"example.com/a\",health=\"unhealthy\"} 1",
            "kmm_device_plugin_allocations_total{resource=\"example.com/a\"} 1",
            "kmm_device_plugin_errors_total{kind=\"register\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
