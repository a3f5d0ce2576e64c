//! kmm-device-plugin: the kmm-rs node agent.
//!
//! One per node (DaemonSet). Its kubelet-facing half advertises the devices of loaded kernel modules over the
//! kubelet device plugin API v1beta1; its loading half (a later issue) reconciles the Modules that target the node
//! and drives the same [`inventory::Inventory`].
//!
//! How the parts fit:
//! - a Module source yields the Modules that target this node: [`standalone`] reads YAML files and matches the
//!   selector against `--node-labels`; [`cluster`] watches Modules and the node through the API server and matches
//!   selector and tolerations ([`matching`]). Both publish a `watch` channel of Modules, the only boundary the rest
//!   sees;
//! - [`offer`] turns a Module into an [`offer::Offer`] (validated `spec.devices`, resource name, kmod name);
//! - [`inventory`] reads `sys/module` and `dev` under `--host-root` and keeps per resource the device list with
//!   stable IDs, health and the grace period of vanished devices;
//! - [`agent`] runs the loop that refreshes the inventory (fs events + polling) and keeps one [`endpoint`] per
//!   resource: a gRPC server ([`service`]) on a unix socket in `--device-plugin-dir`, registered with the kubelet and
//!   re-registered when [`kubelet`] sees kubelet.sock re-created;
//! - [`events`] reports refused registrations as Events on the Node (cluster mode);
//! - [`health`] serves `/healthz`, `/readyz` and `/metrics` ([`metrics`]); [`cli`] holds the flags and [`run`] wires it
//!   all up for the binary.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod endpoint;
pub mod events;
pub mod fswatch;
pub mod glob;
pub mod health;
pub mod inventory;
pub mod kubelet;
pub mod matching;
pub mod metrics;
pub mod offer;
pub mod service;
pub mod standalone;
pub mod telemetry;
pub mod unix;

mod run;
pub use run::run;

/// The kubelet device plugin API v1beta1, generated at build time from the vendored proto (client and server).
pub mod api {
    #![allow(
        missing_docs,
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    tonic::include_proto!("v1beta1");

    /// The only API version the kubelet accepts from device plugins.
    pub const VERSION: &str = "v1beta1";
    /// The kubelet's registration socket, in the device plugin directory.
    pub const KUBELET_SOCKET: &str = "kubelet.sock";
    /// Health value the kubelet counts as healthy (anything else is unhealthy).
    pub const HEALTHY: &str = "Healthy";
    /// Health value of a device that is gone or whose module is not loaded.
    pub const UNHEALTHY: &str = "Unhealthy";
}
