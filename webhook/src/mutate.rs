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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, NodeSelectorRequirement, ResourceRequirements,
    SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kmm_api::Module;
use kmm_api::labels::{
    POD_MODULES_ANNOTATION, RESOURCE_DOMAIN, kernel_module_ready, kernel_module_version_ready,
};
use kmm_api::mapping::{compile_go_regexp, kernel_fields};
use serde::de::IgnoredAny;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::b64::{Encoder, SharedText, Sink};
use crate::catalog::Catalog;
use crate::scan::{Scan, once};

/// The parts of a Pod that the mutation reads. Decoding into it skips the rest of the object without building it
/// (the API server has already validated the Pod against its schema), which is most of the cost of a full
/// `k8s_openapi` Pod. Well-formed reviews are read by [`PodView::scan`] instead, to the same value.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PodView {
    /// `metadata`.
    #[serde(default)]
    pub metadata: PodMetaView,
    /// `spec`.
    #[serde(default)]
    pub spec: Option<PodSpecView>,
}

/// `metadata` of a [`PodView`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PodMetaView {
    /// `metadata.name` (empty with `generateName`).
    #[serde(default)]
    pub name: Option<String>,
    /// `metadata.namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `metadata.annotations`, when present: only the `kmm.sigs.x-k8s.io/modules` annotation is kept.
    #[serde(default)]
    pub annotations: Option<ModulesAnnotation>,
}

/// The `kmm.sigs.x-k8s.io/modules` annotation of an annotations map (whose values must all be strings, as in a
/// `map[string]string`); the other annotations are skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModulesAnnotation(pub Option<String>);

impl<'de> Deserialize<'de> for ModulesAnnotation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ModulesAnnotation;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut modules = None;
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    if key == POD_MODULES_ANNOTATION {
                        modules = Some(value);
                    }
                }
                Ok(ModulesAnnotation(modules))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// `spec` of a [`PodView`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PodSpecView {
    /// `spec.containers`.
    #[serde(default)]
    pub containers: Vec<ContainerView>,
    /// `spec.initContainers`.
    #[serde(rename = "initContainers", default)]
    pub init_containers: Option<Vec<ContainerView>>,
    /// `spec.affinity`, whole: the patch keeps every existing term.
    #[serde(default)]
    pub affinity: Option<Affinity>,
}

/// A container of a [`PodView`]: its name and the names of the resources it requests or limits.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ContainerView {
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `resources`.
    #[serde(default)]
    pub resources: Option<ResourcesView>,
}

/// `resources` of a [`ContainerView`]: only the extended resource names are kept.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ResourcesView {
    /// `requests`.
    #[serde(default)]
    pub requests: Option<ResourceNames>,
    /// `limits`.
    #[serde(default)]
    pub limits: Option<ResourceNames>,
}

/// The names of a `requests` or `limits` map that are extended resources (they contain a `/`), in map order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceNames(pub Vec<String>);

impl<'de> Deserialize<'de> for ResourceNames {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ResourceNames;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of quantities")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut names = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    if key.contains('/') {
                        names.push(key);
                    }
                }
                Ok(ResourceNames(names))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// The one-pass readers (see [`crate::scan`]): each reads exactly what the serde decoding above reads, or answers
/// `None` (a repeated field, `null` where serde refuses it, a string with escapes where the text is kept, a wrong
/// type) and the review goes through the serde path. `router::tests::the_fast_path_agrees_with_the_general_path`
/// and the `fast_path` fuzz target compare both.
impl PodView {
    /// Reads a Pod object.
    pub fn scan(s: &mut Scan<'_>) -> Option<PodView> {
        let mut pod = PodView::default();
        let mut seen = 0;
        s.object(|s, key| {
            match key {
                "metadata" => {
                    once(&mut seen, 0)?;
                    pod.metadata = PodMetaView::scan(s)?;
                }
                "spec" => {
                    once(&mut seen, 1)?;
                    if !s.null()? {
                        pod.spec = Some(PodSpecView::scan(s)?);
                    }
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(pod)
    }
}

impl PodMetaView {
    fn scan(s: &mut Scan<'_>) -> Option<PodMetaView> {
        let mut meta = PodMetaView::default();
        let mut seen = 0;
        s.object(|s, key| {
            match key {
                "name" => {
                    once(&mut seen, 0)?;
                    meta.name = s.opt_str()?.map(str::to_owned);
                }
                "namespace" => {
                    once(&mut seen, 1)?;
                    meta.namespace = s.opt_str()?.map(str::to_owned);
                }
                "annotations" => {
                    once(&mut seen, 2)?;
                    if !s.null()? {
                        let mut modules = None;
                        s.object(|s, key| {
                            if key == POD_MODULES_ANNOTATION {
                                modules = Some(s.str()?.to_owned());
                                Some(())
                            } else {
                                s.skip_str()
                            }
                        })?;
                        meta.annotations = Some(ModulesAnnotation(modules));
                    }
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(meta)
    }
}

impl PodSpecView {
    fn scan(s: &mut Scan<'_>) -> Option<PodSpecView> {
        let mut spec = PodSpecView::default();
        let mut seen = 0;
        let containers = |s: &mut Scan<'_>| s.list(ContainerView::scan);
        s.object(|s, key| {
            match key {
                "containers" => {
                    once(&mut seen, 0)?;
                    spec.containers = containers(s)?;
                }
                "initContainers" => {
                    once(&mut seen, 1)?;
                    if !s.null()? {
                        spec.init_containers = Some(containers(s)?);
                    }
                }
                "affinity" => {
                    once(&mut seen, 2)?;
                    if !s.null()? {
                        spec.affinity = Some(affinity::scan(s)?);
                    }
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(spec)
    }
}

impl ContainerView {
    fn scan(s: &mut Scan<'_>) -> Option<ContainerView> {
        let mut c = ContainerView::default();
        let mut seen = 0;
        s.object(|s, key| {
            match key {
                "name" => {
                    once(&mut seen, 0)?;
                    c.name = s.str()?.to_owned();
                }
                "resources" => {
                    once(&mut seen, 1)?;
                    if !s.null()? {
                        c.resources = Some(ResourcesView::scan(s)?);
                    }
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(c)
    }
}

impl ResourcesView {
    fn scan(s: &mut Scan<'_>) -> Option<ResourcesView> {
        let mut r = ResourcesView::default();
        let mut seen = 0;
        let names = |s: &mut Scan<'_>| {
            if s.null()? {
                return Some(None);
            }
            let mut names = Vec::new();
            s.object(|s, key| {
                if key.contains('/') {
                    names.push(key.to_owned());
                }
                s.skip()
            })?;
            Some(Some(ResourceNames(names)))
        };
        s.object(|s, key| {
            match key {
                "requests" => {
                    once(&mut seen, 0)?;
                    r.requests = names(s)?;
                }
                "limits" => {
                    once(&mut seen, 1)?;
                    r.limits = names(s)?;
                }
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(r)
    }
}

/// How the init container is built.
#[derive(Clone, Debug)]
pub struct MutateConfig {
    /// Image holding `kmm-loader`.
    pub loader_image: String,
    /// Timeout passed to `kmm-loader wait`.
    pub wait_timeout: String,
    /// What the mutation derives from each Module, shared by the clones of this config.
    prepared: Arc<PreparedCache>,
}

impl MutateConfig {
    /// Config with the default timeout of 300s.
    pub fn new(loader_image: impl Into<String>) -> Self {
        Self {
            loader_image: loader_image.into(),
            wait_timeout: "300s".to_owned(),
            prepared: Arc::default(),
        }
    }
}

/// What the mutation derives from one Module object and the config: the same for every pod, so computed once.
#[derive(Debug)]
struct Prepared {
    /// The Module it was derived from (held, so its address stays unique while cached).
    module: Arc<Module>,
    /// The config it was built with.
    loader_image: String,
    wait_timeout: String,
    /// [`targetable`].
    targetable: Result<(), String>,
    /// The node requirements, and each as JSON text.
    reqs: Vec<NodeSelectorRequirement>,
    reqs_json: Vec<Arc<SharedText>>,
    /// `kmm-wait-<name>`, and the init container with that name as JSON text (none when no kmod is named).
    short_name: String,
    wait_json: Option<Arc<SharedText>>,
}

impl Prepared {
    fn new(m: &Arc<Module>, cfg: &MutateConfig) -> Prepared {
        let reqs = requirements(m);
        let reqs_json = reqs
            .iter()
            .map(|r| SharedText::new(to_json_text(r)))
            .collect();
        let short_name = container_name(&[m.name_or_empty()]);
        let wait_json =
            wait_container(m, short_name.clone(), cfg).map(|c| SharedText::new(to_json_text(&c)));
        Prepared {
            module: Arc::clone(m),
            loader_image: cfg.loader_image.clone(),
            wait_timeout: cfg.wait_timeout.clone(),
            targetable: targetable(m),
            reqs,
            reqs_json,
            short_name,
            wait_json,
        }
    }
}

/// [`Prepared`] Modules by the address of the catalog's `Arc<Module>`: a Module changed in the catalog is a new
/// `Arc`, hence a new entry. Stale entries are dropped when the cache outgrows [`PREPARED_MAX`].
#[derive(Debug, Default)]
struct PreparedCache {
    map: RwLock<HashMap<usize, Arc<Prepared>, BuildAddressHasher>>,
}

/// Hashes the address keys of [`PreparedCache`]: the address itself, without its alignment bits, as the hash
/// (SipHash's flooding resistance is not needed for keys the process allocated; it cost a tenth of a pod's
/// mutation).
#[derive(Clone, Copy, Debug, Default)]
struct BuildAddressHasher;

impl std::hash::BuildHasher for BuildAddressHasher {
    type Hasher = AddressHasher;
    fn build_hasher(&self) -> AddressHasher {
        AddressHasher(0)
    }
}

/// See [`BuildAddressHasher`].
#[derive(Debug)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        // Spread the bits above the alignment over the whole word (hashbrown takes its control bits from the top).
        (self.0 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = n as u64;
    }
}

/// Entries kept before the cache is emptied (far above any cluster's number of Modules).
const PREPARED_MAX: usize = 4096;

impl PreparedCache {
    fn get(&self, m: &Arc<Module>, cfg: &MutateConfig) -> Arc<Prepared> {
        let key = Arc::as_ptr(m) as usize;
        let fresh = |p: &Prepared| {
            Arc::ptr_eq(&p.module, m)
                && p.loader_image == cfg.loader_image
                && p.wait_timeout == cfg.wait_timeout
        };
        if let Ok(map) = self.map.read()
            && let Some(p) = map.get(&key)
            && fresh(p)
        {
            return Arc::clone(p);
        }
        let p = Arc::new(Prepared::new(m, cfg));
        if let Ok(mut map) = self.map.write() {
            if map.len() >= PREPARED_MAX {
                map.clear();
            }
            map.insert(key, Arc::clone(&p));
        }
        p
    }
}

/// JSON text of a value that always serialises (k8s-openapi types, strings).
fn to_json_text(value: &impl Serialize) -> String {
    let mut buf = Vec::with_capacity(512);
    match serde_json::to_writer(&mut buf, value) {
        // serde_json writes UTF-8.
        Ok(()) => String::from_utf8(buf).unwrap_or_else(|_| "null".to_owned()),
        Err(_) => "null".to_owned(),
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

/// The Modules a pod needs, prepared, in a stable order (annotation order, then containers' resources), without
/// duplicates.
fn needed_modules(
    pod: &PodView,
    namespace: &str,
    catalog: &dyn Catalog,
    cfg: &MutateConfig,
) -> Result<Vec<Arc<Prepared>>, Denial> {
    let mut out: Vec<Arc<Prepared>> = Vec::new();
    let push = |m: &Arc<Module>, out: &mut Vec<Arc<Prepared>>| {
        let same = |p: &Arc<Prepared>| {
            p.module.namespace_or_empty() == m.namespace_or_empty()
                && p.module.name_or_empty() == m.name_or_empty()
        };
        if !out.iter().any(same) {
            out.push(cfg.prepared.get(m, cfg));
        }
    };

    let annotation = pod.metadata.annotations.as_ref().and_then(|a| a.0.as_ref());
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
        push(&m, &mut out);
    }

    let resources = requested_resources(pod);
    if resources.is_empty() {
        return Ok(out);
    }
    for resource in resources {
        let advertisers = catalog.advertising(resource);
        let local: Vec<&Arc<Module>> = advertisers
            .iter()
            .filter(|m| m.namespace_or_empty() == namespace)
            .collect();
        let chosen: Vec<&Arc<Module>> = if local.is_empty() {
            advertisers.iter().collect()
        } else {
            local
        };
        match chosen.as_slice() {
            [m] => push(m, &mut out),
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
                push(&m, &mut out);
            }
            many => {
                return Err(Denial::AmbiguousResource {
                    resource: resource.to_owned(),
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

/// Extended resources (names with a `/`) requested or limited by any container or init container, sorted, without
/// duplicates.
fn requested_resources(pod: &PodView) -> Vec<&str> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let mut names: Vec<&str> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.resources.as_ref())
        .flat_map(|r| r.requests.iter().chain(r.limits.iter()))
        .flat_map(|names| names.0.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
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
fn wait_container(m: &Module, name: String, cfg: &MutateConfig) -> Option<Container> {
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
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity("50m".to_owned())),
        ("memory".to_owned(), Quantity("32Mi".to_owned())),
    ]);
    Some(Container {
        name,
        image: Some(cfg.loader_image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(command),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    })
}

/// One `add` operation of a JSON Patch (the only operation the mutation needs), with its value already
/// serialised: the patch is written as text once, without building a `serde_json::Value` tree first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddOp {
    /// Where to add (an RFC 6901 pointer, tokens escaped).
    pub path: String,
    /// The value, as JSON text written by serde_json.
    value: Json,
}

/// JSON text: written for one patch, shared with a [`Prepared`] Module (an init container is 700 bytes that
/// every pod of the Module gets; its base64 is computed once), or an array of such values.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Json {
    Owned(String),
    Shared(Arc<SharedText>),
    Array(Vec<Json>),
}

impl Json {
    /// Writes the text (or, to an [`Encoder`], its base64).
    fn write(&self, out: &mut impl Sink) {
        match self {
            Json::Owned(s) => out.buf().extend_from_slice(s.as_bytes()),
            Json::Shared(s) => out.shared(s),
            Json::Array(items) => {
                out.buf().push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.buf().push(b',');
                    }
                    item.write(out);
                }
                out.buf().push(b']');
            }
        }
    }

    /// Length of the text.
    fn len(&self) -> usize {
        match self {
            Json::Owned(s) => s.len(),
            Json::Shared(s) => s.as_str().len(),
            Json::Array(items) => items.iter().map(|i| i.len() + 1).sum::<usize>() + 1,
        }
    }
}

impl AddOp {
    /// An `add` of `value` at `path`.
    pub fn new(path: String, value: &impl Serialize) -> AddOp {
        AddOp::raw(path, to_json_text(value))
    }

    /// An `add` of a value given as JSON text (written by serde_json from a value of the right type).
    fn raw(path: String, value: String) -> AddOp {
        AddOp {
            path,
            value: Json::Owned(value),
        }
    }

    /// [`AddOp::raw`] with text shared with a prepared Module.
    fn shared(path: String, value: &Arc<SharedText>) -> AddOp {
        AddOp {
            path,
            value: Json::Shared(Arc::clone(value)),
        }
    }

    /// The value, as JSON text.
    pub fn value(&self) -> String {
        let mut out = Vec::with_capacity(self.value.len());
        self.value.write(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Serialize for AddOp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.value();
        let value: &RawValue = serde_json::from_str(&text).map_err(serde::ser::Error::custom)?;
        let mut op = s.serialize_struct("AddOp", 3)?;
        op.serialize_field("op", "add")?;
        op.serialize_field("path", self.path.as_str())?;
        op.serialize_field("value", value)?;
        op.end()
    }
}

/// A JSON Patch (RFC 6902) made of `add` operations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Patch(pub Vec<AddOp>);

impl Patch {
    /// The patch document, as JSON: written directly, the values being JSON text already.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json_len());
        self.write(&mut out);
        out
    }

    /// Base64 of [`Patch::to_json`], appended to `out`: the shared values (init containers) are copied from their
    /// precomputed base64, only the rest is encoded.
    pub fn to_base64(&self, out: &mut Vec<u8>) {
        let mut e = Encoder::new(out);
        self.write(&mut e);
        e.finish();
    }

    /// Writes the patch document.
    fn write(&self, out: &mut impl Sink) {
        out.buf().push(b'[');
        for (i, op) in self.0.iter().enumerate() {
            let buf = out.buf();
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(b"{\"op\":\"add\",\"path\":");
            crate::review::push_json_str(buf, &op.path);
            buf.extend_from_slice(b",\"value\":");
            op.value.write(out);
            out.buf().push(b'}');
        }
        out.buf().push(b']');
    }

    /// Length of [`Patch::to_json`], at most.
    pub fn json_len(&self) -> usize {
        self.0
            .iter()
            .map(|op| op.value.len() + op.path.len() + 40)
            .sum::<usize>()
            + 2
    }

    /// The same patch as a `json_patch::Patch`, to apply it.
    pub fn to_json_patch(&self) -> Result<json_patch::Patch, serde_json::Error> {
        serde_json::from_slice(&self.to_json())
    }
}

/// Builds the JSON Patch for a pod (empty when it needs nothing, or already has everything).
pub fn mutate_pod(
    pod: &PodView,
    namespace: &str,
    catalog: &dyn Catalog,
    cfg: &MutateConfig,
) -> Result<Patch, Denial> {
    let modules = needed_modules(pod, namespace, catalog, cfg)?;
    if modules.is_empty() {
        return Ok(Patch(Vec::new()));
    }
    let spec = pod.spec.as_ref().ok_or(Denial::NoSpec)?;
    for p in &modules {
        if let Err(reason) = &p.targetable {
            return Err(Denial::Untargetable {
                namespace: p.module.namespace_or_empty().to_owned(),
                name: p.module.name_or_empty().to_owned(),
                reason: reason.clone(),
            });
        }
    }

    let reqs: Vec<(&NodeSelectorRequirement, &Arc<SharedText>)> = modules
        .iter()
        .flat_map(|p| p.reqs.iter().zip(p.reqs_json.iter()))
        .collect();
    let mut ops = affinity::ops(spec.affinity.as_ref(), &reqs);

    // Container names: kmm-wait-<name>, or kmm-wait-<ns>-<name> when two Modules share a name.
    let existing = |name: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .any(|c: &ContainerView| c.name == name)
    };
    let mut names: Vec<std::borrow::Cow<'_, str>> = Vec::with_capacity(modules.len());
    let mut new_containers: Vec<Json> = Vec::new();
    for p in &modules {
        let name = if names.iter().any(|n| *n == p.short_name) {
            let long = container_name(&[p.module.namespace_or_empty(), p.module.name_or_empty()]);
            if !existing(&long) {
                new_containers.extend(
                    wait_container(&p.module, long.clone(), cfg)
                        .map(|c| Json::Owned(to_json_text(&c))),
                );
            }
            std::borrow::Cow::Owned(long)
        } else {
            if !existing(&p.short_name) {
                new_containers.extend(p.wait_json.as_ref().map(|j| Json::Shared(Arc::clone(j))));
            }
            std::borrow::Cow::Borrowed(p.short_name.as_str())
        };
        names.push(name);
    }
    match &spec.init_containers {
        Some(list) if !list.is_empty() => {
            for (i, value) in new_containers.into_iter().enumerate() {
                ops.push(AddOp {
                    path: format!("/spec/initContainers/{i}"),
                    value,
                });
            }
        }
        _ if !new_containers.is_empty() => {
            ops.push(AddOp {
                path: "/spec/initContainers".to_owned(),
                value: Json::Array(new_containers),
            });
        }
        _ => {}
    }
    Ok(Patch(ops))
}

/// A JSON array of values given as JSON text.
fn json_array<S: AsRef<str>>(items: &[S]) -> String {
    let len: usize = items.iter().map(|i| i.as_ref().len() + 1).sum();
    let mut out = String::with_capacity(len + 2);
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.as_ref());
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests;
