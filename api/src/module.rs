//! The `Module` custom resource (`kmm.sigs.x-k8s.io/v1beta1`), field for field compatible with upstream KMM.
//!
//! Go distinguishes a nil list from an empty one in several places (in-tree lists, modulesLoadingOrder, rawArgs), so
//! list fields whose absence means something are `Option<Vec<_>>`. Go structs held by value (`registryTLS`,
//! `unsignedImageRegistryTLS`, `imageRepoSecret.name`) default to their zero value here too.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration, Volume, VolumeMount};
use k8s_openapi::api::resource::v1::{DeviceClassConfiguration, DeviceSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::devices::DevicesSpec;

/// Default of `modprobe.dirName`: the directory inside a kmod image that holds `lib/modules/<kernel>`.
pub const DEFAULT_DIR_NAME: &str = "/opt";

fn default_dir_name() -> String {
    DEFAULT_DIR_NAME.to_owned()
}

fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// ModuleSpec describes how the kernel module is built, loaded and used on the nodes it selects.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "Module",
    plural = "modules",
    namespaced,
    status = "ModuleStatus",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.moduleLoader.container.version","description":"kmod version (ordered upgrades)"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.moduleLoader.nodesMatchingSelectorNumber","description":"nodes matching the selector"}"#,
    printcolumn = r#"{"name":"Loaded","type":"integer","jsonPath":".status.moduleLoader.availableNumber","description":"nodes where the kmod is loaded"}"#,
    printcolumn = r#"{"name":"Devices","type":"integer","jsonPath":".status.devicePlugin.availableNumber","description":"nodes advertising the module's devices"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!(has(self.dra) && has(self.devicePlugin))").message("spec.dra and spec.devicePlugin are mutually exclusive"))]
#[serde(rename_all = "camelCase")]
pub struct ModuleSpec {
    /// Node labels (equality match, all of them). An empty map selects every node.
    pub selector: BTreeMap<String, String>,

    /// How the kernel module is found, built, signed and loaded. Absent: nothing is loaded (in-tree kmod mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_loader: Option<Box<ModuleLoaderSpec>>,

    /// A device plugin DaemonSet run where the module is loaded (upstream semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<Box<DevicePluginSpec>>,

    /// A DRA driver DaemonSet run where the module is loaded (Kubernetes 1.34 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<Box<DraSpec>>,

    /// Pull secret (a `kubernetes.io/dockerconfigjson` Secret) for the kmod, device plugin and DRA images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_secret: Option<LocalObjectReference>,

    /// Tolerations copied to every pod KMM runs for this Module, and used to decide which nodes are schedulable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Change this value to force images to be verified and rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rebuild_trigger_generation: Option<i64>,

    /// kmm-rs extension: the devices the loaded module offers to pods through the kubelet device plugin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DevicesSpec>,
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    /// Name of the referent.
    #[serde(default)]
    #[schemars(extend("default" = ""))]
    pub name: String,
}

/// How the kmod is loaded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoaderSpec {
    /// The kmod image and the modprobe settings.
    pub container: ModuleLoaderContainerSpec,

    /// Service account of the loading pods (`default` when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// The kmod image, the kernel mappings and how modprobe is run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoaderContainerSpec {
    /// How `modprobe` loads and unloads the module.
    pub modprobe: ModprobeSpec,

    /// Kernel mappings, tried in order; the first match wins.
    ///
    /// Upstream's CRD says `minItems: 1`, yet upstream's own sample Module has `kernelMappings: []`; kmm-rs accepts
    /// an empty list (such a Module targets no node) so that every upstream example applies unchanged.
    pub kernel_mappings: Vec<KernelMapping>,

    /// Default kmod image for mappings without one. Template variables are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,

    /// Pull policy of the kmod image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,

    /// Version of the kmod; setting it enables ordered upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Default build for every mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Box<Build>>,

    /// Default signing for every mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Box<Sign>>,

    /// TLS settings for the kmod image registry.
    #[serde(default, rename = "registryTLS")]
    pub registry_tls: TlsOptions,

    /// Deprecated: a single in-tree module to remove before loading. Use inTreeModulesToRemove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_module_to_remove: Option<String>,

    /// In-tree modules to remove before loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_modules_to_remove: Option<Vec<String>>,
}

/// One kernel mapping: which image (and build/sign settings) applies to which kernels.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelMapping {
    /// Exact match against the node kernel (with one trailing `+` trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,

    /// Go RE2 regular expression, unanchored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regexp: Option<String>,

    /// kmod image for this mapping; falls back to the container's containerImage when empty.
    #[serde(default)]
    pub container_image: String,

    /// Build settings, merged over the container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Box<Build>>,

    /// Sign settings, merged over the container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Box<Sign>>,

    /// Registry TLS settings; replace the container's when set.
    #[serde(
        default,
        rename = "registryTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub registry_tls: Option<TlsOptions>,

    /// Deprecated: a single in-tree module to remove before loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_module_to_remove: Option<String>,

    /// In-tree modules to remove before loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_modules_to_remove: Option<Vec<String>>,
}

/// How modprobe is invoked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModprobeSpec {
    /// The module to load. Optional only when rawArgs is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_name: Option<String>,

    /// `key=value` parameters passed on load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Vec<String>>,

    /// Root directory of `lib/modules/<kernel>` inside the image.
    #[serde(default = "default_dir_name")]
    #[schemars(extend("default" = "/opt"))]
    pub dir_name: String,

    /// Extra modprobe flags placed before the module name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ModprobeArgs>,

    /// The full modprobe argv; when set, everything else is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_args: Option<ModprobeArgs>,

    /// Directory in the image whose contents are copied to the host firmware directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_path: Option<String>,

    /// Soft dependencies: `[moduleName, dep1, dep2, ...]`, loaded in reverse order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_loading_order: Option<Vec<String>>,
}

impl Default for ModprobeSpec {
    fn default() -> Self {
        Self {
            module_name: None,
            parameters: None,
            dir_name: default_dir_name(),
            args: None,
            raw_args: None,
            firmware_path: None,
            modules_loading_order: None,
        }
    }
}

/// modprobe arguments for load and unload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ModprobeArgs {
    /// Arguments on load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub load: Option<Vec<String>>,

    /// Arguments on unload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub unload: Option<Vec<String>>,
}

/// An in-cluster build of the kmod image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    /// Build arguments (`--build-arg name=value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_args: Option<Vec<BuildArg>>,

    /// ConfigMap holding the Dockerfile under the key `dockerfile`.
    pub dockerfile_config_map: LocalObjectReference,

    /// Secrets mounted in the build at `/run/secrets/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<LocalObjectReference>>,

    /// TLS settings for the base images of the Dockerfile.
    #[serde(default, rename = "baseImageRegistryTLS")]
    pub base_image_registry_tls: TlsOptions,

    /// Parameters of the kaniko builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kaniko_params: Option<KanikoParams>,

    /// Node selector of the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
}

/// A build argument.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct BuildArg {
    /// Name of the argument.
    pub name: String,
    /// Value of the argument.
    pub value: String,
}

/// kaniko settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct KanikoParams {
    /// Tag (or digest) of the kaniko image to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Module signing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sign {
    /// Image to sign when there is no build. Kernel template variables are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned_image: Option<String>,

    /// TLS settings to pull the unsigned image.
    #[serde(default, rename = "unsignedImageRegistryTLS")]
    pub unsigned_image_registry_tls: TlsOptions,

    /// Secret holding the private key under the key `key`.
    pub key_secret: LocalObjectReference,

    /// Secret holding the certificate under the key `cert`.
    pub cert_secret: LocalObjectReference,

    /// Paths or globs of the files to sign; each starts with `dirName/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_to_sign: Option<Vec<String>>,
}

/// Registry TLS settings.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsOptions {
    /// Plain HTTP.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure: bool,

    /// Skip verification of the registry's certificate.
    #[serde(
        default,
        rename = "insecureSkipTLSVerify",
        skip_serializing_if = "is_false"
    )]
    pub insecure_skip_tls_verify: bool,
}

/// A container of a device plugin or DRA DaemonSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonContainerSpec {
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// Arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,

    /// Environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,

    /// Container image.
    pub image: String,

    /// Pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,

    /// Compute resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra volume mounts, appended to the default ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// A device plugin DaemonSet (upstream semantics).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginSpec {
    /// The device plugin container.
    pub container: CommonContainerSpec,

    /// An optional init container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<CommonContainerSpec>,

    /// Service account of the device plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Volumes; hostPath volumes must be under /dev, /sys, /var, /opt or /run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,

    /// Whether the service account token is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

/// A DRA driver DaemonSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DraSpec {
    /// The DRA driver container.
    pub container: CommonContainerSpec,

    /// An optional init container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<CommonContainerSpec>,

    /// Service account of the DRA pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Volumes; hostPath volumes must be under /dev, /sys, /var, /opt or /run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,

    /// Whether the service account token is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,

    /// The DRA driver name registered with the kubelet (a DNS-1123 subdomain).
    pub driver_name: String,

    /// DeviceClass resources to manage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_classes: Option<Vec<DeviceClassSpec>>,
}

/// A DeviceClass managed for a DRA driver.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DeviceClassSpec {
    /// The cluster-scoped DeviceClass name.
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub name: String,

    /// Selectors restricting which devices satisfy this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub selectors: Option<Vec<DeviceSelector>>,

    /// Per-device configuration passed to the DRA driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub config: Option<Vec<DeviceClassConfiguration>>,
}

/// Counters of a set of per-node workloads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetStatus {
    /// Number of schedulable nodes matching the selector.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nodes_matching_selector_number: i32,

    /// Number of nodes that should run it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub desired_number: i32,

    /// Number of nodes where it is available.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub available_number: i32,
}

/// Observed state of a Module.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// Loading counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_loader: Option<DaemonSetStatus>,

    /// Device plugin counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DaemonSetStatus>,

    /// DRA counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<DaemonSetStatus>,

    /// The imageRebuildTriggerGeneration last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rebuild_trigger_generation: Option<i64>,
}

impl Module {
    /// The namespace of the Module, or `""` when it has none (for example inside a ManagedClusterModule).
    pub fn namespace_or_empty(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("")
    }

    /// The name of the Module, or `""` when it has none.
    pub fn name_or_empty(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
}

impl ModuleSpec {
    /// The kmod name as `/sys/module` names it (`-` read as `_`), when the Module loads one by name.
    pub fn sys_module_name(&self) -> Option<String> {
        let loader = self.module_loader.as_ref()?;
        let name = loader.container.modprobe.module_name.as_deref()?;
        (!name.is_empty()).then(|| name.replace('-', "_"))
    }

    /// The Module's kmod version, when set and non-empty.
    pub fn version(&self) -> Option<&str> {
        self.module_loader
            .as_ref()
            .and_then(|l| l.container.version.as_deref())
            .filter(|v| !v.is_empty())
    }
}
