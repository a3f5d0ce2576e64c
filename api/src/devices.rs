//! kmm-rs extension of the Module spec: what a loaded module offers to pods through the kubelet device plugin API.
//!
//! ```yaml
//! spec:
//!   devices:
//!     resourceName: example.com/gpu   # optional; default kmm.sigs.x-k8s.io/<ns>.<name>
//!     paths: ["/dev/simple_kmod*"]    # globs of device nodes; each match is one device
//!     shared: 4                       # optional; offer each device N times
//!     slots: 8                        # optional; with no paths: N plain slots
//!     env: [{name: SIMPLE_KMOD, value: "1"}]
//!     mounts: [{hostPath: /opt/lib, containerPath: /opt/lib, readOnly: true}]
//! ```
//! Upstream YAML stays valid (the field is optional) and upstream's `spec.devicePlugin` keeps its meaning.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The devices a loaded module offers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicesSpec {
    /// Extended resource name (`domain/name`); default `kmm.sigs.x-k8s.io/<ns>.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,

    /// Globs of device nodes (absolute paths under /dev); each match is one device, its ID derived from its path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,

    /// Offer each device this many times (IDs `<id>-0` .. `<id>-<N-1>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub shared: Option<u32>,

    /// Without paths: this many plain slots (drivers without a device node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub slots: Option<u32>,

    /// Environment variables added to containers by Allocate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<DeviceEnv>>,

    /// Host paths mounted into containers by Allocate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<DeviceMount>>,
}

/// An environment variable set by Allocate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DeviceEnv {
    /// Variable name.
    pub name: String,
    /// Variable value.
    #[serde(default)]
    pub value: String,
}

/// A mount added by Allocate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceMount {
    /// Absolute path on the host.
    pub host_path: String,
    /// Absolute path in the container.
    pub container_path: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// The resource name a Module advertises: its `devices.resourceName`, else `kmm.sigs.x-k8s.io/<ns>.<name>`.
pub fn resource_name(namespace: &str, name: &str, devices: Option<&DevicesSpec>) -> String {
    match devices.and_then(|d| d.resource_name.as_deref()) {
        Some(r) if !r.is_empty() => r.to_owned(),
        _ => format!("{}/{namespace}.{name}", crate::labels::RESOURCE_DOMAIN),
    }
}
