//! Admission rules for Modules, ManagedClusterModules, Namespaces and PreflightValidations.
//!
//! The rules are upstream KMM's webhook rules (KMM-COMPAT section 2), with the same meaning and key phrases in the
//! messages. Upstream stops at the first violation; kmm-rs reports all of them, each with the field path it concerns,
//! in upstream's order, so upstream's message is always among them (the first one, in most cases).

mod names;

use std::collections::HashSet;
use std::fmt;

use k8s_openapi::api::core::v1::{Toleration, Volume};

use crate::devices::DevicesSpec;
use crate::labels::{MAX_COMBINED_NAME_LENGTH, NAMESPACE_CONTAINS_MODULES_LABEL};
use crate::mapping::{compile_go_regexp, kernel_fields};
use crate::module::{Module, ModuleLoaderContainerSpec, ModuleSpec, Sign};
use crate::{ManagedClusterModule, mcm::ManagedClusterModuleSpec};

pub use names::{
    clean_path, dns1123_subdomain, extended_resource_name, label_value, qualified_name,
};

/// One violation: the field it concerns and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.moduleLoader.container.kernelMappings[0].regexp`.
    pub path: String,
    /// What is wrong, in upstream's words where upstream has a rule.
    pub message: String,
}

impl FieldError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Joins violations into one message, one per line (the webhook's denial message).
pub fn render(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Kubernetes version of the cluster, when known (it gates `spec.dra`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

/// The first Kubernetes version with DRA v1.
pub const MIN_KUBE_FOR_DRA: KubeVersion = KubeVersion {
    major: 1,
    minor: 34,
};

/// Allowed roots of hostPath volumes in `devicePlugin` and `dra`.
pub const ALLOWED_HOST_PATH_PREFIXES: [&str; 5] = ["/dev", "/sys", "/var", "/opt", "/run"];

/// Validates a Module on CREATE.
pub fn validate_module(module: &Module, kube: Option<KubeVersion>) -> Result<(), Vec<FieldError>> {
    into_result(module_errors(
        module.name_or_empty(),
        module.namespace_or_empty(),
        &module.spec,
        kube,
    ))
}

/// Validates a Module on UPDATE: the CREATE rules, plus `version` may not go from empty to set or back.
pub fn validate_module_update(
    old: &Module,
    new: &Module,
    kube: Option<KubeVersion>,
) -> Result<(), Vec<FieldError>> {
    let mut errors = version_transition_errors(&old.spec, &new.spec);
    errors.extend(module_errors(
        new.name_or_empty(),
        new.namespace_or_empty(),
        &new.spec,
        kube,
    ));
    into_result(errors)
}

/// Validates a ManagedClusterModule on CREATE: the Module rules on `spec.moduleSpec`, without name, namespace or
/// cluster version (as upstream: the hub cannot know the spokes' versions).
pub fn validate_managed_cluster_module(mcm: &ManagedClusterModule) -> Result<(), Vec<FieldError>> {
    into_result(mcm_errors(&mcm.spec))
}

/// Validates a ManagedClusterModule on UPDATE.
pub fn validate_managed_cluster_module_update(
    old: &ManagedClusterModule,
    new: &ManagedClusterModule,
) -> Result<(), Vec<FieldError>> {
    let mut errors = version_transition_errors(&old.spec.module_spec, &new.spec.module_spec);
    errors.extend(module_errors("", "", &new.spec.module_spec, None));
    into_result(under_module_spec(errors))
}

/// The namespace-deletion guard: a namespace labelled as holding Modules may not be deleted.
pub fn validate_namespace_deletion<'a>(
    mut labels: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<(), FieldError> {
    if labels.any(|(k, _)| k == NAMESPACE_CONTAINS_MODULES_LABEL) {
        return Err(FieldError::new(
            format!("metadata.labels[{NAMESPACE_CONTAINS_MODULES_LABEL}]"),
            "namespace contains one or more Module resources; delete those before deleting the namespace",
        ));
    }
    Ok(())
}

/// PreflightValidation's `spec.kernelVersion` rule: non-empty and at least three fields split on `[.,-]`.
pub fn validate_preflight_kernel_version(kernel_version: &str) -> Result<(), FieldError> {
    if kernel_version.is_empty() {
        return Err(FieldError::new(
            "spec.kernelVersion",
            "kernelVersion cannot be empty",
        ));
    }
    if kernel_fields(kernel_version).len() < 3 {
        return Err(FieldError::new(
            "spec.kernelVersion",
            format!("invalid kernelVersion {kernel_version}"),
        ));
    }
    Ok(())
}

fn into_result(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn mcm_errors(spec: &ManagedClusterModuleSpec) -> Vec<FieldError> {
    under_module_spec(module_errors("", "", &spec.module_spec, None))
}

/// Re-roots Module paths (`spec.x`) under a ManagedClusterModule's `spec.moduleSpec.x`.
fn under_module_spec(mut errors: Vec<FieldError>) -> Vec<FieldError> {
    for e in &mut errors {
        e.path = e.path.replacen("spec.", "spec.moduleSpec.", 1);
    }
    errors
}

fn version_transition_errors(old: &ModuleSpec, new: &ModuleSpec) -> Vec<FieldError> {
    let (Some(old_loader), Some(new_loader)) = (&old.module_loader, &new.module_loader) else {
        return Vec::new();
    };
    let old_set = old_loader
        .container
        .version
        .as_deref()
        .is_some_and(|v| !v.is_empty());
    let new_set = new_loader
        .container
        .version
        .as_deref()
        .is_some_and(|v| !v.is_empty());
    if old_set == new_set {
        return Vec::new();
    }
    vec![FieldError::new(
        "spec.moduleLoader.container.version",
        "cannot update to or from an empty version; please delete the Module and create it again",
    )]
}

/// Every rule of upstream's `validateModule`, in its order, collecting all violations.
fn module_errors(
    name: &str,
    namespace: &str,
    spec: &ModuleSpec,
    kube: Option<KubeVersion>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();

    let combined = name.len() + namespace.len();
    if combined > MAX_COMBINED_NAME_LENGTH {
        errors.push(FieldError::new(
            "metadata.name",
            format!(
                "module name and namespace have a combined length of {combined} characters, which exceeds the \
                 maximum of {MAX_COMBINED_NAME_LENGTH} when version is set (node label names derived from them \
                 would exceed 63 characters)"
            ),
        ));
    }

    if let Some(tolerations) = &spec.tolerations {
        errors.extend(toleration_errors(tolerations));
    }

    if let Some(dra) = &spec.dra {
        errors.extend(dra_errors(dra, kube));
        errors.extend(host_path_errors(
            "spec.dra",
            "failed to validate DRA volumes",
            dra.volumes.as_deref(),
        ));
    }
    if let Some(dp) = &spec.device_plugin {
        errors.extend(host_path_errors(
            "spec.devicePlugin",
            "failed to validate device plugin volumes",
            dp.volumes.as_deref(),
        ));
    }
    if spec.dra.is_some() && spec.device_plugin.is_some() {
        errors.push(FieldError::new(
            "spec",
            "spec.dra and spec.devicePlugin are mutually exclusive",
        ));
    }

    if let Some(devices) = &spec.devices {
        errors.extend(devices_errors(devices));
    }

    let Some(loader) = &spec.module_loader else {
        return errors;
    };
    let container = &loader.container;
    errors.extend(container_errors(container));
    errors.extend(modprobe_errors(container));
    errors.extend(files_to_sign_errors(container));
    errors
}

fn toleration_errors(tolerations: &[Toleration]) -> Vec<FieldError> {
    const PREFIX: &str = "failed to validate Module's tolerations";
    let mut errors = Vec::new();
    for (i, t) in tolerations.iter().enumerate() {
        let path = format!("spec.tolerations[{i}]");
        let idx = format!("Toleration[{i}]");
        let mut push = |field: &str, msg: String| {
            errors.push(FieldError::new(
                format!("{path}{field}"),
                format!("{PREFIX}: {idx} {msg}"),
            ));
        };
        let key = t.key.as_deref().unwrap_or("");
        let operator = t.operator.as_deref().unwrap_or("");
        let value = t.value.as_deref().unwrap_or("");
        let effect = t.effect.as_deref().unwrap_or("");

        if !key.is_empty() {
            let errs = qualified_name(key);
            if !errs.is_empty() {
                push(".key", format!("invalid key '{key}': {}", errs.join("; ")));
            }
        }
        if key.is_empty() && operator != "Exists" {
            push(
                ".operator",
                "operator must be 'Exists' when key is empty".to_owned(),
            );
        }
        if t.toleration_seconds.is_some() && effect != "NoExecute" {
            push(
                ".effect",
                "effect must be 'NoExecute' when tolerationSeconds is set".to_owned(),
            );
        }
        match operator {
            "Equal" | "" => {
                let errs = label_value(value);
                if !errs.is_empty() {
                    push(
                        ".value",
                        format!(
                            "invalid value '{value}' for Equal operator {}",
                            errs.join("; ")
                        ),
                    );
                }
            }
            "Exists" => {
                if !value.is_empty() {
                    push(
                        ".value",
                        "value must be empty when operator is 'Exists'".to_owned(),
                    );
                }
            }
            other => push(
                ".operator",
                format!("invalid operator '{other}', allowed values are ['Equal', 'Exists']"),
            ),
        }
        if !effect.is_empty() && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
        {
            push(
                ".effect",
                format!(
                    "invalid effect '{effect}', allowed values are ['NoSchedule', 'PreferNoSchedule', 'NoExecute']"
                ),
            );
        }
    }
    errors
}

fn dra_errors(dra: &crate::module::DraSpec, kube: Option<KubeVersion>) -> Vec<FieldError> {
    const PREFIX: &str = "failed to validate DRA";
    let mut errors = Vec::new();
    if let Some(v) = kube
        && v < MIN_KUBE_FOR_DRA
    {
        errors.push(FieldError::new(
            "spec.dra",
            format!(
                "{PREFIX}: spec.dra requires Kubernetes {}.{} or later; current cluster version is {}.{}",
                MIN_KUBE_FOR_DRA.major, MIN_KUBE_FOR_DRA.minor, v.major, v.minor
            ),
        ));
    }
    if dra.driver_name.is_empty() {
        errors.push(FieldError::new(
            "spec.dra.driverName",
            format!("{PREFIX}: spec.dra.driverName is required"),
        ));
    } else {
        let errs = dns1123_subdomain(&dra.driver_name);
        if !errs.is_empty() {
            errors.push(FieldError::new(
                "spec.dra.driverName",
                format!(
                    "{PREFIX}: spec.dra.driverName {:?} is not a valid DNS subdomain: {}",
                    dra.driver_name,
                    errs.join("; ")
                ),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (i, dc) in dra.device_classes.iter().flatten().enumerate() {
        let path = format!("spec.dra.deviceClasses[{i}].name");
        if dc.name.is_empty() {
            errors.push(FieldError::new(
                &path,
                format!("{PREFIX}: spec.dra.deviceClasses[{i}].name is required"),
            ));
            continue;
        }
        let errs = dns1123_subdomain(&dc.name);
        if !errs.is_empty() {
            errors.push(FieldError::new(
                &path,
                format!(
                    "{PREFIX}: spec.dra.deviceClasses[{i}].name {:?} is not a valid DNS subdomain: {}",
                    dc.name,
                    errs.join("; ")
                ),
            ));
        }
        if !seen.insert(dc.name.as_str()) {
            errors.push(FieldError::new(
                &path,
                format!(
                    "{PREFIX}: spec.dra.deviceClasses[{i}].name {:?} is a duplicate",
                    dc.name
                ),
            ));
        }
    }
    errors
}

fn host_path_errors(field: &str, prefix: &str, volumes: Option<&[Volume]>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, vol) in volumes.unwrap_or_default().iter().enumerate() {
        let Some(host_path) = &vol.host_path else {
            continue;
        };
        let cleaned = clean_path(&host_path.path);
        let allowed = ALLOWED_HOST_PATH_PREFIXES
            .iter()
            .any(|p| cleaned == *p || cleaned.starts_with(&format!("{p}/")));
        if !allowed {
            errors.push(FieldError::new(
                format!("{field}.volumes[{i}].hostPath.path"),
                format!(
                    "{prefix}: {field}.volumes[{i}]: hostPath {:?} is not allowed; only /dev, /sys, /var, /opt and \
                     /run paths are permitted",
                    host_path.path
                ),
            ));
        }
    }
    errors
}

fn image_format_error(image: &str) -> Option<String> {
    (!image.contains(':') && !image.contains('@')).then(|| {
        format!(
            "failed to validate kernel mappings: failed to validate image format: container image must explicitely \
             set a tag or digest; got: {image}"
        )
    })
}

fn container_errors(container: &ModuleLoaderContainerSpec) -> Vec<FieldError> {
    const PREFIX: &str = "failed to validate kernel mappings";
    const BASE: &str = "spec.moduleLoader.container";
    let mut errors = Vec::new();
    let container_single = container
        .in_tree_module_to_remove
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    let container_list = container.in_tree_modules_to_remove.is_some();

    if container_list && container_single {
        errors.push(FieldError::new(
            format!("{BASE}.inTreeModulesToRemove"),
            format!(
                "{PREFIX}: only one of the Container's fields: InTreeModulesToRemove or InTreeModuleToRemove can be \
                 defined"
            ),
        ));
    }
    let container_image = container.container_image.as_deref().unwrap_or("");
    if !container_image.is_empty()
        && let Some(msg) = image_format_error(container_image)
    {
        errors.push(FieldError::new(format!("{BASE}.containerImage"), msg));
    }

    for (idx, km) in container.kernel_mappings.iter().enumerate() {
        // Paths are only formatted for an error: most Modules have none.
        let path = || format!("{BASE}.kernelMappings[{idx}]");
        let regexp = km.regexp.as_deref().unwrap_or("");
        let literal = km.literal.as_deref().unwrap_or("");
        if !regexp.is_empty() && !literal.is_empty() {
            errors.push(FieldError::new(
                path(),
                format!("{PREFIX}: regexp and literal are mutually exclusive properties at kernelMappings[{idx}]"),
            ));
        }
        if regexp.is_empty() && literal.is_empty() {
            errors.push(FieldError::new(
                path(),
                format!("{PREFIX}: regexp or literal must be set at kernelMappings[{idx}]"),
            ));
        }
        if let Err(e) = compile_go_regexp(regexp) {
            errors.push(FieldError::new(
                format!("{}.regexp", path()),
                format!(
                    "{PREFIX}: invalid regexp at index {idx}: {}",
                    one_line(&e.to_string())
                ),
            ));
        }
        if km.container_image.is_empty() {
            if container_image.is_empty() {
                errors.push(FieldError::new(
                    format!("{}.containerImage", path()),
                    format!("{PREFIX}: missing spec.moduleLoader.container.kernelMappings[{idx}].containerImage"),
                ));
            }
        } else if let Some(msg) = image_format_error(&km.container_image) {
            errors.push(FieldError::new(format!("{}.containerImage", path()), msg));
        }
        let km_single = km
            .in_tree_module_to_remove
            .as_deref()
            .is_some_and(|s| !s.is_empty());
        let km_list = km.in_tree_modules_to_remove.is_some();
        if km_list && km_single {
            errors.push(FieldError::new(
                format!("{}.inTreeModulesToRemove", path()),
                format!(
                    "{PREFIX}: only one of the KernelMapping fields: InTreeModulesToRemove or InTreeModuleToRemove \
                     can be defined"
                ),
            ));
        }
        if (km_list && container_single) || (km_single && container_list) {
            errors.push(FieldError::new(
                format!("{}.inTreeModulesToRemove", path()),
                format!(
                    "{PREFIX}: only one type if field (InTreeModuleToRemove or InTreeModulesToRemove) can be defined \
                     in KenrelMapping or Container"
                ),
            ));
        }
    }
    errors
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn modprobe_errors(container: &ModuleLoaderContainerSpec) -> Vec<FieldError> {
    const PREFIX: &str = "failed to validate modprobe";
    const BASE: &str = "spec.moduleLoader.container.modprobe";
    let modprobe = &container.modprobe;
    let mut errors = Vec::new();
    let module_name = modprobe.module_name.as_deref().unwrap_or("");
    let name_set = !module_name.is_empty();
    let raw_load = modprobe
        .raw_args
        .as_ref()
        .is_some_and(|r| r.load.as_ref().is_some_and(|l| !l.is_empty()));
    let raw_unload = modprobe
        .raw_args
        .as_ref()
        .is_some_and(|r| r.unload.as_ref().is_some_and(|l| !l.is_empty()));

    if name_set {
        if raw_load || raw_unload {
            errors.push(FieldError::new(
                format!("{BASE}.rawArgs"),
                format!("{PREFIX}: rawArgs cannot be set when moduleName is set"),
            ));
        }
    } else if !raw_load || !raw_unload {
        errors.push(FieldError::new(
            format!("{BASE}.rawArgs"),
            format!("{PREFIX}: load and unload rawArgs must be set when moduleName is unset"),
        ));
    }

    if let Some(order) = &modprobe.modules_loading_order {
        let path = format!("{BASE}.modulesLoadingOrder");
        if order.len() < 2 {
            errors.push(FieldError::new(
                &path,
                format!(
                    "{PREFIX}: if a loading order is defined, at least two values must be defined"
                ),
            ));
        }
        if !name_set {
            errors.push(FieldError::new(
                &path,
                format!("{PREFIX}: if a loading order is defined, moduleName must be set"),
            ));
        }
        if order.first().map(String::as_str) != Some(module_name) {
            errors.push(FieldError::new(
                format!("{path}[0]"),
                format!(
                    "{PREFIX}: if a loading order is defined, the first element must be moduleName"
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, m) in order.iter().enumerate() {
            if !seen.insert(m.as_str()) {
                errors.push(FieldError::new(
                    format!("{path}[{i}]"),
                    format!("{PREFIX}: {m:?}: duplicate value in the loading order list"),
                ));
            }
        }
    }
    errors
}

fn sign_errors(sign: Option<&Sign>, dir_name: &str, path: &str, label: &str) -> Vec<FieldError> {
    let Some(sign) = sign else { return Vec::new() };
    let files = sign.files_to_sign.as_deref().unwrap_or_default();
    if files.is_empty() {
        return vec![FieldError::new(
            format!("{path}.filesToSign"),
            format!("{label}: filesToSign is required when Sign is set"),
        )];
    }
    let prefix = format!("{dir_name}/");
    files
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.starts_with(&prefix))
        .map(|(i, f)| {
            FieldError::new(
                format!("{path}.filesToSign[{i}]"),
                format!("{label}: filesToSign[{f:?}] must be under dirName {dir_name:?}"),
            )
        })
        .collect()
}

fn files_to_sign_errors(container: &ModuleLoaderContainerSpec) -> Vec<FieldError> {
    let dir_name = container.modprobe.dir_name.as_str();
    let mut errors = sign_errors(
        container.sign.as_deref(),
        dir_name,
        "spec.moduleLoader.container.sign",
        "global Sign",
    );
    for (idx, km) in container.kernel_mappings.iter().enumerate() {
        if km.sign.is_none() {
            continue;
        }
        errors.extend(sign_errors(
            km.sign.as_deref(),
            dir_name,
            &format!("spec.moduleLoader.container.kernelMappings[{idx}].sign"),
            &format!("kernelMappings[{idx}].Sign"),
        ));
    }
    errors
}

/// Rules of the kmm-rs `spec.devices` extension.
pub fn devices_errors(devices: &DevicesSpec) -> Vec<FieldError> {
    const BASE: &str = "spec.devices";
    let mut errors = Vec::new();
    if let Some(name) = &devices.resource_name {
        let errs = extended_resource_name(name);
        if !errs.is_empty() {
            errors.push(FieldError::new(
                format!("{BASE}.resourceName"),
                format!("invalid resource name {name:?}: {}", errs.join("; ")),
            ));
        }
    }
    let has_paths = devices.paths.as_ref().is_some_and(|p| !p.is_empty());
    match (has_paths, devices.slots.is_some()) {
        (true, true) => errors.push(FieldError::new(
            BASE,
            "paths and slots are mutually exclusive: give device node globs, or a number of plain slots",
        )),
        (false, false) => errors.push(FieldError::new(
            BASE,
            "one of paths or slots must be set: device node globs, or a number of plain slots",
        )),
        _ => {}
    }
    for (i, p) in devices.paths.iter().flatten().enumerate() {
        let path = format!("{BASE}.paths[{i}]");
        if !p.starts_with('/') {
            errors.push(FieldError::new(
                &path,
                format!("{p:?} must be an absolute path (e.g. /dev/simple_kmod*)"),
            ));
        } else if let Err(e) = globset::Glob::new(p) {
            errors.push(FieldError::new(&path, format!("invalid glob {p:?}: {e}")));
        }
    }
    if devices.shared == Some(0) {
        errors.push(FieldError::new(
            format!("{BASE}.shared"),
            "must be at least 1",
        ));
    }
    if devices.slots == Some(0) {
        errors.push(FieldError::new(
            format!("{BASE}.slots"),
            "must be at least 1",
        ));
    }
    let mut env_names = HashSet::new();
    for (i, env) in devices.env.iter().flatten().enumerate() {
        let errs = names::env_var_name(&env.name);
        if !errs.is_empty() {
            errors.push(FieldError::new(
                format!("{BASE}.env[{i}].name"),
                format!(
                    "invalid environment variable name {:?}: {}",
                    env.name,
                    errs.join("; ")
                ),
            ));
        }
        if !env_names.insert(env.name.as_str()) {
            errors.push(FieldError::new(
                format!("{BASE}.env[{i}].name"),
                format!("duplicate name {:?}", env.name),
            ));
        }
    }
    for (i, m) in devices.mounts.iter().flatten().enumerate() {
        for (field, value) in [
            ("hostPath", &m.host_path),
            ("containerPath", &m.container_path),
        ] {
            if !value.starts_with('/') {
                errors.push(FieldError::new(
                    format!("{BASE}.mounts[{i}].{field}"),
                    format!("{value:?} must be an absolute path"),
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests;
