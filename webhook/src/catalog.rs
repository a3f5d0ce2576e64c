//! Where the webhook looks Modules up: a [`Catalog`] of the cluster's Modules.
//!
//! Two sources: a kube-rs reflector store ([`kube_source`], the normal case) and a directory of YAML files
//! ([`dir`], standalone mode). Handlers only see the trait, so they are tested with a [`StaticCatalog`].

pub mod dir;
pub mod kube_source;

use std::collections::BTreeMap;
use std::sync::Arc;

use kmm_api::Module;
use kube::runtime::reflector::{ObjectRef, Store};

/// Read access to the Modules of the cluster.
pub trait Catalog: Send + Sync {
    /// The Module `namespace/name`.
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<Module>>;
    /// Every Module.
    fn all(&self) -> Vec<Arc<Module>>;
    /// Whether the catalog has been filled once (readiness).
    fn is_ready(&self) -> bool;
}

/// A fixed set of Modules, by namespace then name (looked up without building a key).
#[derive(Clone, Debug, Default)]
pub struct StaticCatalog {
    modules: BTreeMap<String, BTreeMap<String, Arc<Module>>>,
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
        Self {
            modules: by_namespace,
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
