//! The Modules of the cluster, from a kube-rs reflector (one list, then a watch; reconnects with backoff).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt as _;
use kmm_api::Module;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use super::{Catalog, resource_index};
use crate::watch::Shutdown;

/// The reflector's store, with an index of the resources the Modules advertise, rebuilt on first use after the
/// store changed: a pod requesting a resource is not compared with every Module of the cluster.
#[derive(Debug)]
pub struct KubeCatalog {
    store: Store<Module>,
    /// Bumped after each watch event is applied to the store.
    generation: Arc<AtomicU64>,
    index: RwLock<ResourceIndex>,
}

#[derive(Debug, Default)]
struct ResourceIndex {
    /// The generation it was built at (`None`: never built).
    generation: Option<u64>,
    by_resource: HashMap<String, Vec<Arc<Module>>>,
}

impl Catalog for KubeCatalog {
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<Module>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    fn all(&self) -> Vec<Arc<Module>> {
        self.store.state()
    }

    fn advertising(&self, resource: &str) -> Vec<Arc<Module>> {
        // Read before the store: an index built from a newer store is only rebuilt once more.
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(index) = self.index.read()
            && index.generation == Some(generation)
        {
            return index.by_resource.get(resource).cloned().unwrap_or_default();
        }
        let by_resource = resource_index(self.store.state());
        let found = by_resource.get(resource).cloned().unwrap_or_default();
        if let Ok(mut index) = self.index.write() {
            *index = ResourceIndex {
                generation: Some(generation),
                by_resource,
            };
        }
        found
    }

    fn is_ready(&self) -> bool {
        Catalog::is_ready(&self.store)
    }
}

/// Starts the reflector: returns the catalog at once, and the future that fills it until shutdown.
pub fn reflect(
    client: Client,
    mut shutdown: Shutdown,
) -> (KubeCatalog, impl Future<Output = ()> + Send + 'static) {
    let (reader, writer) = reflector::store();
    let api: Api<Module> = Api::all(client);
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let generation = Arc::new(AtomicU64::new(0));
    let bump = Arc::clone(&generation);
    let task = async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                item = stream.next() => match item {
                    // The reflector applied the event to the store before handing it on.
                    Some(Ok(_)) => {
                        bump.fetch_add(1, Ordering::Release);
                    }
                    Some(Err(e)) => tracing::warn!(error = %crate::error_chain(&e), "Module watch failed; retrying"),
                    None => return,
                },
            }
        }
    };
    let catalog = KubeCatalog {
        store: reader,
        generation,
        index: RwLock::default(),
    };
    (catalog, task)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    use super::*;
    use crate::catalog::Catalog;

    fn module(ns: &str, name: &str, rv: &str) -> serde_json::Value {
        json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            "spec": {"selector": {}}
        })
    }

    #[tokio::test]
    async fn reflector_lists_then_watches_modules() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(mock, "default");
        let (trigger, shutdown) = Shutdown::new();
        let (store, task) = reflect(client, shutdown);
        assert!(store.advertising("kmm.sigs.x-k8s.io/ns2.b").is_empty());
        let task = tokio::spawn(task);
        assert!(!Catalog::is_ready(&store));

        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::GET);
        assert!(
            req.uri()
                .path()
                .ends_with("/apis/kmm.sigs.x-k8s.io/v1beta1/modules"),
            "{}",
            req.uri()
        );
        let list = json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "ModuleList",
            "metadata": {"resourceVersion": "10"},
            "items": [module("ns1", "a", "9")]
        });
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&list).unwrap(),
        )));

        let (req, send) = handle.next_request().await.unwrap();
        let query = req.uri().query().unwrap_or("");
        assert!(query.contains("watch=true"), "{query}");
        assert!(query.contains("resourceVersion=10"), "{query}");
        let mut added = module("ns2", "b", "11");
        added["spec"]["devices"] = json!({"slots": 2});
        let event = json!({"type": "ADDED", "object": added});
        let mut body = serde_json::to_vec(&event).unwrap();
        body.push(b'\n');
        send.send_response(Response::new(Body::from(body)));

        tokio::time::timeout(Duration::from_secs(5), async {
            while Catalog::get(&store, "ns2", "b").is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert!(Catalog::is_ready(&store));
        assert!(Catalog::get(&store, "ns1", "a").is_some());
        assert_eq!(Catalog::all(&store).len(), 2);
        // The resource index, built before the event (empty), is rebuilt once the event has been applied.
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.advertising("kmm.sigs.x-k8s.io/ns2.b").len() != 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert!(store.advertising("kmm.sigs.x-k8s.io/ns1.a").is_empty());

        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
