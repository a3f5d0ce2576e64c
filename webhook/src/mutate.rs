//! Pod mutation: pods that need a kernel driver wait for it.
//!
//! A pod needs the Modules named by its `kmm.sigs.x-k8s.io/modules` annotation (`name` = a Module of the pod's
//! namespace, `namespace/name` otherwise; comma-separated) and the Modules advertising an extended resource that one
//! of its containers requests. For each such Module the patch
//! 1. adds `kmm.node.kubernetes.io/<ns>.<name>.ready Exists` to EVERY nodeSelectorTerm of the required node affinity
//!    (terms are ORed, so adding it to one term only would let the pod escape through another), creating the
//!    affinity objects with `add` of whole values when absent;
//! 2. for a versioned Module, also `kmm.node.kubernetes.io/<ns>.<name>.version.ready In [<version>]`;
//! 3. prepends an init container `kmm-wait-<name>` running `kmm-loader wait --module <kmod> [--version V]
//!    --timeout 300s` (covers the window between the label and a reload, e.g. during an ordered upgrade).
//!
//! Decisions:
//! - No volume is mounted: the init container only reads `/sys/module/<kmod>`, and sysfs is mounted read-only in
//!   every unprivileged container; `/sys/module` is not namespaced, so it shows the host's modules.
//! - Its resources are equal requests and limits (cpu 50m, memory 32Mi), so a Guaranteed pod stays Guaranteed.
//! - A Module without `moduleLoader` loads nothing (in-tree kmod): nobody sets its ready label, so the pod gets the
//!   Module's node selector as requirements instead, and no init container.
//! - A Module whose loader names no kmod (rawArgs only) gets the affinity but no init container (nothing to wait on).
//! - A Module that can never target a node is a denial, naming it: being deleted; a selector label no node can carry
//!   (invalid key or value); a moduleLoader without a usable kernel mapping (a mapping is usable when it has an
//!   image, its own or the container's, and either a literal with at least three `[.,-]` fields, the shape every
//!   kernel version has, or a regexp that compiles).
//!
//! The mutation is idempotent: requirements already present and init containers already named are left alone, so a
//! second pass over the output yields an empty patch (`reinvocationPolicy: IfNeeded`).

mod affinity;

use std::collections::BTreeSet;
use std::sync::Arc;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, NodeSelectorRequirement, Pod};
use kmm_api::labels::{
    POD_MODULES_ANNOTATION, RESOURCE_DOMAIN, kernel_module_ready, kernel_module_version_ready,
};
use kmm_api::mapping::{compile_go_regexp, kernel_fields};
use kmm_api::{Module, devices};
use serde_json::json;

use crate::catalog::Catalog;

/// How the init container is built.
#[derive(Clone, Debug)]
pub struct MutateConfig {
    /// Image holding `kmm-loader`.
    pub loader_image: String,
    /// Timeout passed to `kmm-loader wait`.
    pub wait_timeout: String,
}

impl MutateConfig {
    /// Config with the default timeout of 300s.
    pub fn new(loader_image: impl Into<String>) -> Self {
        Self {
            loader_image: loader_image.into(),
            wait_timeout: "300s".to_owned(),
        }
    }
}

/// Why a pod is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The pod names, or requests the resource of, a Module that does not exist.
    #[error("Module {namespace}/{name} ({origin}) does not exist")]
    UnknownModule {
        /// Namespace of the Module.
        namespace: String,
        /// Name of the Module.
        name: String,
        /// Where the reference came from.
        origin: String,
    },
    /// The annotation has an entry that is not `name` or `namespace/name`.
    #[error("annotation {POD_MODULES_ANNOTATION}: entry {entry:?} must be NAME or NAMESPACE/NAME")]
    BadAnnotation {
        /// The entry.
        entry: String,
    },
    /// More than one Module advertises the requested resource, none of them in the pod's namespace.
    #[error(
        "resource {resource} is advertised by several Modules ({modules}); name one in the {POD_MODULES_ANNOTATION} annotation of a pod in its namespace"
    )]
    AmbiguousResource {
        /// The resource.
        resource: String,
        /// The Modules, `ns/name` joined by `, `.
        modules: String,
    },
    /// The Module can never target a node.
    #[error("Module {namespace}/{name} cannot target any node: {reason}")]
    Untargetable {
        /// Namespace of the Module.
        namespace: String,
        /// Name of the Module.
        name: String,
        /// Why.
        reason: String,
    },
    /// The pod has no spec.
    #[error("the pod has no spec")]
    NoSpec,
}

fn key(m: &Module) -> (String, String) {
    (
        m.namespace_or_empty().to_owned(),
        m.name_or_empty().to_owned(),
    )
}

/// The Modules a pod needs, in a stable order (annotation order, then containers' resources), without duplicates.
pub fn needed_modules(
    pod: &Pod,
    namespace: &str,
    catalog: &dyn Catalog,
) -> Result<Vec<Arc<Module>>, Denial> {
    let mut out: Vec<Arc<Module>> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut push = |m: Arc<Module>, out: &mut Vec<Arc<Module>>| {
        if seen.insert(key(&m)) {
            out.push(m);
        }
    };

    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_MODULES_ANNOTATION));
    for entry in annotation.into_iter().flat_map(|a| a.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (ns, name) = match entry.split_once('/') {
            None => (namespace, entry),
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                (ns, name)
            }
            Some(_) => {
                return Err(Denial::BadAnnotation {
                    entry: entry.to_owned(),
                });
            }
        };
        let m = catalog.get(ns, name).ok_or_else(|| Denial::UnknownModule {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            origin: format!("annotation {POD_MODULES_ANNOTATION}"),
        })?;
        push(m, &mut out);
    }

    let resources = requested_resources(pod);
    if resources.is_empty() {
        return Ok(out);
    }
    let all = catalog.all();
    for resource in resources {
        let advertisers: Vec<&Arc<Module>> = all
            .iter()
            .filter(|m| {
                m.spec.devices.is_some()
                    && devices::resource_name(
                        m.namespace_or_empty(),
                        m.name_or_empty(),
                        m.spec.devices.as_ref(),
                    ) == resource
            })
            .collect();
        let local: Vec<&Arc<Module>> = advertisers
            .iter()
            .copied()
            .filter(|m| m.namespace_or_empty() == namespace)
            .collect();
        let chosen = if local.is_empty() { advertisers } else { local };
        match chosen.as_slice() {
            [m] => push(Arc::clone(m), &mut out),
            [] => {
                // The default name `kmm.sigs.x-k8s.io/<ns>.<name>` names its Module (namespaces have no dots).
                let Some(rest) = resource
                    .strip_prefix(RESOURCE_DOMAIN)
                    .and_then(|r| r.strip_prefix('/'))
                else {
                    continue;
                };
                let Some((ns, name)) = rest.split_once('.') else {
                    continue;
                };
                let m = catalog.get(ns, name).ok_or_else(|| Denial::UnknownModule {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    origin: format!("requested resource {resource}"),
                })?;
                push(m, &mut out);
            }
            many => {
                return Err(Denial::AmbiguousResource {
                    resource,
                    modules: many
                        .iter()
                        .map(|m| format!("{}/{}", m.namespace_or_empty(), m.name_or_empty()))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    Ok(out)
}

/// Extended resources (names with a `/`) requested or limited by any container or init container.
fn requested_resources(pod: &Pod) -> BTreeSet<String> {
    let Some(spec) = &pod.spec else {
        return BTreeSet::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.resources.as_ref())
        .flat_map(|r| r.requests.iter().flatten().chain(r.limits.iter().flatten()))
        .map(|(k, _)| k.clone())
        .filter(|k| k.contains('/'))
        .collect()
}

/// Whether a Module can ever target a node (see the module docs for the rule).
pub fn targetable(m: &Module) -> Result<(), String> {
    if m.metadata.deletion_timestamp.is_some() {
        return Err("it is being deleted".to_owned());
    }
    for (k, v) in &m.spec.selector {
        let errs = kmm_api::validation::qualified_name(k);
        if !errs.is_empty() {
            return Err(format!(
                "selector key {k:?} is not a valid label key: {}",
                errs.join("; ")
            ));
        }
        let errs = kmm_api::validation::label_value(v);
        if !errs.is_empty() {
            return Err(format!(
                "selector value {v:?} of {k:?} is not a valid label value: {}",
                errs.join("; ")
            ));
        }
    }
    let Some(loader) = &m.spec.module_loader else {
        return Ok(());
    };
    let container = &loader.container;
    let has_default_image = container
        .container_image
        .as_deref()
        .is_some_and(|i| !i.is_empty());
    let usable = container.kernel_mappings.iter().any(|km| {
        let has_image = !km.container_image.is_empty() || has_default_image;
        let literal_ok = km
            .literal
            .as_deref()
            .is_some_and(|l| !l.is_empty() && kernel_fields(l).len() >= 3);
        let regexp_ok = km
            .regexp
            .as_deref()
            .is_some_and(|r| !r.is_empty() && compile_go_regexp(r).is_ok());
        has_image && (literal_ok || regexp_ok)
    });
    if usable {
        Ok(())
    } else {
        Err("no kernel mapping is usable (each needs an image and a literal kernel version or a valid regexp)".to_owned())
    }
}

/// The node requirements for one Module.
fn requirements(m: &Module) -> Vec<NodeSelectorRequirement> {
    let (ns, name) = (m.namespace_or_empty(), m.name_or_empty());
    if m.spec.module_loader.is_none() {
        return m
            .spec
            .selector
            .iter()
            .map(|(k, v)| NodeSelectorRequirement {
                key: k.clone(),
                operator: "In".to_owned(),
                values: Some(vec![v.clone()]),
            })
            .collect();
    }
    let mut reqs = vec![NodeSelectorRequirement {
        key: kernel_module_ready(ns, name),
        operator: "Exists".to_owned(),
        values: None,
    }];
    if let Some(v) = m.spec.version() {
        reqs.push(NodeSelectorRequirement {
            key: kernel_module_version_ready(ns, name),
            operator: "In".to_owned(),
            values: Some(vec![v.to_owned()]),
        });
    }
    reqs
}

/// A DNS-1123 label of at most 63 characters.
fn container_name(parts: &[&str]) -> String {
    let mut s: String = format!("kmm-wait-{}", parts.join("-"))
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(63);
    s.trim_end_matches('-').to_owned()
}

/// The init container waiting for one Module's kmod, if it loads one by name.
fn wait_container(m: &Module, name: String, cfg: &MutateConfig) -> Option<serde_json::Value> {
    let kmod = m.spec.sys_module_name()?;
    let mut command = vec![
        "kmm-loader".to_owned(),
        "wait".to_owned(),
        "--module".to_owned(),
        kmod,
    ];
    if let Some(v) = m.spec.version() {
        command.extend(["--version".to_owned(), v.to_owned()]);
    }
    command.extend(["--timeout".to_owned(), cfg.wait_timeout.clone()]);
    let resources = json!({"cpu": "50m", "memory": "32Mi"});
    Some(json!({
        "name": name,
        "image": cfg.loader_image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "resources": {"requests": resources, "limits": resources},
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "terminationMessagePolicy": "FallbackToLogsOnError"
    }))
}

fn add(path: PointerBuf, value: serde_json::Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Builds the JSON Patch for a pod (empty when it needs nothing, or already has everything).
pub fn mutate_pod(
    pod: &Pod,
    namespace: &str,
    catalog: &dyn Catalog,
    cfg: &MutateConfig,
) -> Result<Patch, Denial> {
    let modules = needed_modules(pod, namespace, catalog)?;
    if modules.is_empty() {
        return Ok(Patch(Vec::new()));
    }
    let spec = pod.spec.as_ref().ok_or(Denial::NoSpec)?;
    for m in &modules {
        targetable(m).map_err(|reason| Denial::Untargetable {
            namespace: m.namespace_or_empty().to_owned(),
            name: m.name_or_empty().to_owned(),
            reason,
        })?;
    }

    let reqs: Vec<NodeSelectorRequirement> = modules.iter().flat_map(|m| requirements(m)).collect();
    let mut ops = affinity::ops(spec.affinity.as_ref(), &reqs);

    // Container names: kmm-wait-<name>, or kmm-wait-<ns>-<name> when two Modules share a name.
    let existing: BTreeSet<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c: &Container| c.name.as_str())
        .collect();
    let mut names = BTreeSet::new();
    let mut new_containers = Vec::new();
    for m in &modules {
        let short = container_name(&[m.name_or_empty()]);
        let name = if names.contains(&short) {
            container_name(&[m.namespace_or_empty(), m.name_or_empty()])
        } else {
            short
        };
        names.insert(name.clone());
        if existing.contains(name.as_str()) {
            continue;
        }
        if let Some(c) = wait_container(m, name, cfg) {
            new_containers.push(c);
        }
    }
    let base = PointerBuf::from_tokens(["spec", "initContainers"]);
    match &spec.init_containers {
        Some(list) if !list.is_empty() => {
            for (i, c) in new_containers.into_iter().enumerate() {
                ops.push(add(base.with_trailing_token(i), c));
            }
        }
        _ if !new_containers.is_empty() => {
            ops.push(add(base, serde_json::Value::Array(new_containers)))
        }
        _ => {}
    }
    Ok(Patch(ops))
}

#[cfg(test)]
mod tests;
