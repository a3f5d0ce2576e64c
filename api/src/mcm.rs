//! The `ManagedClusterModule` custom resource (`hub.kmm.sigs.x-k8s.io/v1beta1`, cluster-scoped).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::module::{ModuleSpec, is_zero};

/// A Module to create in the selected managed (spoke) clusters.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "hub.kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "ManagedClusterModule",
    plural = "managedclustermodules",
    status = "ManagedClusterModuleStatus",
    printcolumn = r#"{"name":"Spoke Namespace","type":"string","jsonPath":".spec.spokeNamespace"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.numberDesired"}"#,
    printcolumn = r#"{"name":"Applied","type":"integer","jsonPath":".status.numberApplied"}"#,
    printcolumn = r#"{"name":"Degraded","type":"integer","jsonPath":".status.numberDegraded"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterModuleSpec {
    /// The Module spec created in each selected cluster.
    #[serde(default)]
    pub module_spec: ModuleSpec,

    /// Namespace of the Module in the spoke clusters.
    pub spoke_namespace: String,

    /// ManagedCluster labels selecting the clusters.
    pub selector: BTreeMap<String, String>,
}

/// Counts of ManifestWorks.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterModuleStatus {
    /// ManifestWorks to be applied.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub number_desired: i32,
    /// ManifestWorks applied.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub number_applied: i32,
    /// ManifestWorks that could not be applied.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub number_degraded: i32,
}
