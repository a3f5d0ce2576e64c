//! Where the webhook looks Modules up: a [`Catalog`] of the cluster's Modules.
//!
//! Two sources: a kube-rs reflector store ([`kube_source`], the normal case) and a directory of YAML files
//! ([`dir`], standalone mode). Handlers only see the trait, so they are tested with a [`StaticCatalog`].

pub mod dir;
pub mod kube_source;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kmm_api::{Module, devices};
use kube::runtime::reflector::{ObjectRef, Store};

/// Read access to the Modules of the cluster.
pub trait Catalog: Send + Sync {
    /// The Module `namespace/name`.
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<Module>>;
    /// Every Module.
    fn all(&self) -> Vec<Arc<Module>>;
    /// The Modules whose device section advertises the extended resource `resource`. The default looks at every
    /// Module; catalogs that can keep an index do.
    fn advertising(&self, resource: &str) -> Vec<Arc<Module>> {
        self.all()
            .into_iter()
            .filter(|m| advertised(m).as_deref() == Some(resource))
            .collect()
    }
    /// Whether the catalog has been filled once (readiness).
    fn is_ready(&self) -> bool;
}

/// The extended resource a Module advertises, if it has a device section.
pub fn advertised(m: &Module) -> Option<String> {
    m.spec
        .devices
        .as_ref()
        .map(|d| devices::resource_name(m.namespace_or_empty(), m.name_or_empty(), Some(d)))
}

/// The Modules by the resource they advertise.
pub fn resource_index(
    modules: impl IntoIterator<Item = Arc<Module>>,
) -> HashMap<String, Vec<Arc<Module>>> {
    let mut by_resource: HashMap<String, Vec<Arc<Module>>> = HashMap::new();
    for m in modules {
        if let Some(resource) = advertised(&m) {
            by_resource.entry(resource).or_default().push(m);
        }
    }
    by_resource
}

/// A fixed set of Modules, by namespace then name (looked up without building a key), with an index of the
/// resources they advertise (a pod requesting one is not compared with every Module).
#[derive(Clone, Debug, Default)]
pub struct StaticCatalog {
    modules: BTreeMap<String, BTreeMap<String, Arc<Module>>>,
    by_resource: HashMap<String, Vec<Arc<Module>>>,
}

impl StaticCatalog {
    /// A catalog of these Modules; a Module without namespace is put in `default`.
    pub fn new(modules: impl IntoIterator<Item = Module>) -> Self {
        let mut by_namespace: BTreeMap<String, BTreeMap<String, Arc<Module>>> = BTreeMap::new();
        for m in modules {
            let ns = m
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            let name = m.name_or_empty().to_owned();
            by_namespace
                .entry(ns)
                .or_default()
                .insert(name, Arc::new(m));
        }
        let by_resource = resource_index(by_namespace.values().flat_map(BTreeMap::values).cloned());
        Self {
            modules: by_namespace,
            by_resource,
        }
    }

    /// Number of Modules.
    pub fn len(&self) -> usize {
        self.modules.values().map(BTreeMap::len).sum()
    }

    /// Whether there are no Modules.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

impl Catalog for StaticCatalog {
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<Module>> {
        self.modules.get(namespace)?.get(name).cloned()
    }

    fn all(&self) -> Vec<Arc<Module>> {
        self.modules
            .values()
            .flat_map(BTreeMap::values)
            .cloned()
            .collect()
    }

    fn advertising(&self, resource: &str) -> Vec<Arc<Module>> {
        self.by_resource.get(resource).cloned().unwrap_or_default()
    }

    fn is_ready(&self) -> bool {
        true
    }
}

impl Catalog for Store<Module> {
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<Module>> {
        Store::get(self, &ObjectRef::new(name).within(namespace))
    }

    fn all(&self) -> Vec<Arc<Module>> {
        self.state()
    }

    fn is_ready(&self) -> bool {
        // The store is ready once the first full list has been applied.
        futures::FutureExt::now_or_never(self.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Answers `advertising` by looking at every Module, as a catalog without an index does.
    struct Unindexed(StaticCatalog);

    impl Catalog for Unindexed {
        fn get(&self, namespace: &str, name: &str) -> Option<Arc<Module>> {
            self.0.get(namespace, name)
        }
        fn all(&self) -> Vec<Arc<Module>> {
            self.0.all()
        }
        fn is_ready(&self) -> bool {
            true
        }
    }

    fn module(ns: &str, name: &str, devices: Option<serde_json::Value>) -> Module {
        let mut v = serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {}}
        });
        if let Some(d) = devices {
            v["spec"]["devices"] = d;
        }
        serde_json::from_value(v).unwrap()
    }

    /// The index answers exactly what a look at every Module answers: default names, declared names shared by
    /// several Modules, Modules without devices, unknown resources.
    #[test]
    fn the_resource_index_agrees_with_a_scan_of_every_module() {
        let catalog = StaticCatalog::new([
            module("a", "gpu", Some(serde_json::json!({"slots": 1}))),
            module(
                "b",
                "gpu",
                Some(serde_json::json!({"resourceName": "example.com/gpu", "slots": 2})),
            ),
            module(
                "c",
                "gpu",
                Some(serde_json::json!({"resourceName": "example.com/gpu", "slots": 2})),
            ),
            module("a", "plain", None),
        ]);
        let unindexed = Unindexed(catalog.clone());
        let names = |ms: Vec<Arc<Module>>| {
            let mut v: Vec<String> = ms
                .iter()
                .map(|m| format!("{}/{}", m.namespace_or_empty(), m.name_or_empty()))
                .collect();
            v.sort();
            v
        };
        for (resource, want) in [
            ("kmm.sigs.x-k8s.io/a.gpu", vec!["a/gpu"]),
            ("example.com/gpu", vec!["b/gpu", "c/gpu"]),
            ("kmm.sigs.x-k8s.io/a.plain", vec![]),
            ("kmm.sigs.x-k8s.io/b.gpu", vec![]),
            ("example.com/other", vec![]),
        ] {
            assert_eq!(names(catalog.advertising(resource)), want, "{resource}");
            assert_eq!(names(unindexed.advertising(resource)), want, "{resource}");
        }
    }
}
