//! Node labels, annotations and resource names, with the exact formats upstream KMM uses (KMM-COMPAT 7.3).
//!
//! `<ns>` and `<name>` are the Module's namespace and name. The part of a label key after `/` is at most 63
//! characters, which is why `len(ns) + len(name)` is limited to 41.

/// Domain of KMM's node labels.
pub const NODE_LABEL_DOMAIN: &str = "kmm.node.kubernetes.io";
/// Domain of KMM's beta (internal) node labels.
pub const BETA_NODE_LABEL_DOMAIN: &str = "beta.kmm.node.kubernetes.io";
/// Domain of kmm-rs extended resources (the kubelet refuses resources in the `kubernetes.io` domain).
pub const RESOURCE_DOMAIN: &str = "kmm.sigs.x-k8s.io";
/// Pod annotation naming the Modules a pod needs: `name` or `namespace/name`, comma-separated.
pub const POD_MODULES_ANNOTATION: &str = "kmm.sigs.x-k8s.io/modules";
/// Namespace label set while the namespace holds Modules (note `k8s.io`, as upstream).
pub const NAMESPACE_CONTAINS_MODULES_LABEL: &str = "kmm.node.k8s.io/contains-modules";
/// Finalizer on Modules.
pub const MODULE_FINALIZER: &str = "kmm.node.kubernetes.io/module-finalizer";
/// Label naming the Module of a workload.
pub const MODULE_NAME_LABEL: &str = "kmm.node.kubernetes.io/module.name";
/// Label naming the Module namespace of a cluster-scoped object.
pub const MODULE_NAMESPACE_LABEL: &str = "kmm.node.kubernetes.io/module.namespace";
/// Role of a workload (`device-plugin`, `dra`).
pub const ROLE_LABEL: &str = "kmm.node.kubernetes.io/role";
/// Label of the hub's ManifestWorks.
pub const MANAGED_CLUSTER_MODULE_NAME_LABEL: &str =
    "kmm.node.kubernetes.io/managedclustermodule.name";
/// ClusterClaim publishing a spoke's kernels.
pub const KERNEL_VERSIONS_CLUSTER_CLAIM: &str = "kernel-versions.kmm.node.kubernetes.io";
/// Maximum of `len(namespace) + len(name)` for a Module.
pub const MAX_COMBINED_NAME_LENGTH: usize = 41;

/// `kmm.node.kubernetes.io/<ns>.<name>.ready`: the kmod is loaded on the node.
pub fn kernel_module_ready(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_DOMAIN}/{namespace}.{name}.ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.version.ready`: the loaded version (value = version).
pub fn kernel_module_version_ready(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_DOMAIN}/{namespace}.{name}.version.ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.device-plugin-ready`: a device plugin pod on the node is ready.
pub fn device_plugin_ready(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_DOMAIN}/{namespace}.{name}.device-plugin-ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.dra-ready`: a DRA pod on the node is ready.
pub fn dra_ready(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_DOMAIN}/{namespace}.{name}.dra-ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.device-plugin-target`: the node is a schedulable target of the device plugin.
pub fn device_plugin_target(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_DOMAIN}/{namespace}.{name}.device-plugin-target")
}

/// `kmm.node.kubernetes.io/version-module.<ns>.<name>`: set by the user, the desired version on the node.
pub fn module_version(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_DOMAIN}/version-module.{namespace}.{name}")
}

/// `beta.kmm.node.kubernetes.io/version-worker-pod.<ns>.<name>`: gates loading of that version.
pub fn worker_pod_version(namespace: &str, name: &str) -> String {
    format!("{BETA_NODE_LABEL_DOMAIN}/version-worker-pod.{namespace}.{name}")
}

/// `beta.kmm.node.kubernetes.io/version-schedule-pod.<ns>.<name>`: gates device plugin scheduling for that version.
pub fn schedule_pod_version(namespace: &str, name: &str) -> String {
    format!("{BETA_NODE_LABEL_DOMAIN}/version-schedule-pod.{namespace}.{name}")
}

/// `kmm.node.kubernetes.io/<name>.ready`: the legacy label without namespace, removed when seen.
pub fn legacy_kernel_module_ready(name: &str) -> String {
    format!("{NODE_LABEL_DOMAIN}/{name}.ready")
}

/// `beta.kmm.node.kubernetes.io/<ns>.<name>.module-configured` (NodeModulesConfig label).
pub fn module_configured(namespace: &str, name: &str) -> String {
    format!("{BETA_NODE_LABEL_DOMAIN}/{namespace}.{name}.module-configured")
}

/// `beta.kmm.node.kubernetes.io/<ns>.<name>.module-in-use` (NodeModulesConfig label).
pub fn module_in_use(namespace: &str, name: &str) -> String {
    format!("{BETA_NODE_LABEL_DOMAIN}/{namespace}.{name}.module-in-use")
}

/// The default extended resource a Module's devices are advertised under: `kmm.sigs.x-k8s.io/<ns>.<name>`.
pub fn default_resource_name(namespace: &str, name: &str) -> String {
    format!("{RESOURCE_DOMAIN}/{namespace}.{name}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn label_formats_match_upstream() {
        let cases = [
            (
                kernel_module_ready("ns", "m"),
                "kmm.node.kubernetes.io/ns.m.ready",
            ),
            (
                kernel_module_version_ready("ns", "m"),
                "kmm.node.kubernetes.io/ns.m.version.ready",
            ),
            (
                device_plugin_ready("ns", "m"),
                "kmm.node.kubernetes.io/ns.m.device-plugin-ready",
            ),
            (
                dra_ready("ns", "m"),
                "kmm.node.kubernetes.io/ns.m.dra-ready",
            ),
            (
                device_plugin_target("ns", "m"),
                "kmm.node.kubernetes.io/ns.m.device-plugin-target",
            ),
            (
                module_version("ns", "m"),
                "kmm.node.kubernetes.io/version-module.ns.m",
            ),
            (
                worker_pod_version("ns", "m"),
                "beta.kmm.node.kubernetes.io/version-worker-pod.ns.m",
            ),
            (
                schedule_pod_version("ns", "m"),
                "beta.kmm.node.kubernetes.io/version-schedule-pod.ns.m",
            ),
            (
                legacy_kernel_module_ready("m"),
                "kmm.node.kubernetes.io/m.ready",
            ),
            (
                module_configured("ns", "m"),
                "beta.kmm.node.kubernetes.io/ns.m.module-configured",
            ),
            (
                module_in_use("ns", "m"),
                "beta.kmm.node.kubernetes.io/ns.m.module-in-use",
            ),
            (default_resource_name("ns", "m"), "kmm.sigs.x-k8s.io/ns.m"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn the_41_character_budget_fits_every_label_name() {
        let ns = "n".repeat(20);
        let name = "m".repeat(MAX_COMBINED_NAME_LENGTH - 20);
        for key in [
            schedule_pod_version(&ns, &name),
            worker_pod_version(&ns, &name),
            device_plugin_target(&ns, &name),
            kernel_module_version_ready(&ns, &name),
            device_plugin_ready(&ns, &name),
        ] {
            let (_, after) = key.split_once('/').unwrap();
            assert!(
                after.len() <= 63,
                "{key} is {} characters after the prefix",
                after.len()
            );
        }
    }
}
