//! The Modules of the cluster, from a kube-rs reflector (one list, then a watch; reconnects with backoff).

use futures::StreamExt as _;
use kmm_api::Module;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use crate::watch::Shutdown;

/// Starts the reflector: returns the store at once, and the future that fills it until shutdown.
pub fn reflect(
    client: Client,
    mut shutdown: Shutdown,
) -> (Store<Module>, impl Future<Output = ()> + Send + 'static) {
    let (reader, writer) = reflector::store();
    let api: Api<Module> = Api::all(client);
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let task = async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                item = stream.next() => match item {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(error = %crate::error_chain(&e), "Module watch failed; retrying"),
                    None => return,
                },
            }
        }
    };
    (reader, task)
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
        let event = json!({"type": "ADDED", "object": module("ns2", "b", "11")});
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

        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
