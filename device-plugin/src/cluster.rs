//! Cluster mode: Modules through a kube-rs watcher (all namespaces) and this node through a field-selected watch
//! (`metadata.name=<node>`), so label and taint changes apply at once. Publishes the Modules whose selector and
//! tolerations match the node ([`crate::matching`]) on a `watch` channel, the only thing the agent sees.
//!
//! Tested against kube-rs's mock service (tower-test): see the tests at the end of this file.

use std::collections::BTreeMap;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kmm_api::Module;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::matching::{NodeFacts, module_targets};
use crate::metrics::Metrics;

enum Update {
    Module(Box<watcher::Event<Module>>),
    Node(Box<watcher::Event<Node>>),
}

/// A watched set of objects, with the Init/InitApply/InitDone relist protocol.
struct Store<K> {
    live: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
}

impl<K: ResourceExt> Store<K> {
    fn new() -> Self {
        Self {
            live: BTreeMap::new(),
            relist: None,
        }
    }

    fn key(k: &K) -> String {
        format!("{}/{}", k.namespace().unwrap_or_default(), k.name_any())
    }

    /// Applies one event; true when the live set may have changed.
    fn apply(&mut self, ev: watcher::Event<K>) -> bool {
        match ev {
            watcher::Event::Apply(k) => {
                self.live.insert(Self::key(&k), k);
                true
            }
            watcher::Event::Delete(k) => {
                self.live.remove(&Self::key(&k));
                true
            }
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(k) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(Self::key(&k), k);
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    self.live = r;
                }
                true
            }
        }
    }
}

fn node_facts(node: &Node) -> NodeFacts {
    NodeFacts {
        labels: node.labels().clone(),
        taints: node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default(),
    }
}

/// `(namespace/name, resourceVersion)` of each Module: what tells the agent something changed.
fn fingerprint(modules: &[Module]) -> Vec<(String, Option<String>)> {
    modules
        .iter()
        .map(|m| {
            (
                format!("{}/{}", m.namespace_or_empty(), m.name_or_empty()),
                m.resource_version(),
            )
        })
        .collect()
}

/// Watches Modules and the node `node_name` until `shutdown` turns true, publishing the Modules targeting the node.
/// Until the node has been seen, no Module targets it. Watch errors are logged and retried with backoff.
pub fn spawn(
    client: Client,
    node_name: String,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<Vec<Module>> {
    let (tx, rx) = watch::channel(Vec::new());
    let modules = watcher(
        Api::<Module>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|r| r.map(|e| Update::Module(Box::new(e))));
    let nodes = watcher(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
    )
    .default_backoff()
    .map(|r| r.map(|e| Update::Node(Box::new(e))));
    let mut updates = Box::pin(stream::select(modules, nodes));
    tokio::spawn(async move {
        let mut module_store: Store<Module> = Store::new();
        let mut node_store: Store<Node> = Store::new();
        loop {
            let next = tokio::select! {
                n = updates.next() => n,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let changed = match next {
                None => break,
                Some(Err(e)) => {
                    metrics.error("watch");
                    warn!(error = %e, "watch failed; retrying");
                    false
                }
                Some(Ok(Update::Module(ev))) => module_store.apply(*ev),
                Some(Ok(Update::Node(ev))) => node_store.apply(*ev),
            };
            if !changed {
                continue;
            }
            let node = node_store
                .live
                .values()
                .find(|n| n.name_any() == node_name)
                .map(node_facts);
            let selected: Vec<Module> = match &node {
                Some(facts) => module_store
                    .live
                    .values()
                    .filter(|m| module_targets(m, facts))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            tx.send_if_modified(|cur| {
                if fingerprint(cur) == fingerprint(&selected) {
                    false
                } else {
                    info!(node = %node_name, modules = selected.len(), "Modules targeting this node changed");
                    debug!(modules = ?fingerprint(&selected));
                    *cur = selected;
                    true
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::time::Duration;

    use http::{Request, Response};
    use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
    use hyper::body::{Bytes, Frame};
    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    type MockBody = BoxBody<Bytes, Infallible>;

    fn full(v: &Value) -> MockBody {
        http_body_util::Full::new(Bytes::from(serde_json::to_vec(v).unwrap())).boxed()
    }

    fn module(name: &str, rv: &str, selector: Value, tolerations: Value) -> Value {
        json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
            "metadata": {"name": name, "namespace": "kmm", "resourceVersion": rv},
            "spec": {"selector": selector, "tolerations": tolerations, "devices": {"slots": 1}}
        })
    }

    fn node(rv: &str, labels: Value, taints: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node1", "resourceVersion": rv, "labels": labels},
            "spec": {"taints": taints}})
    }

    /// The API server side: answers lists from fixtures and keeps each watch open, fed by the test.
    struct FakeApi {
        watch_feeds: HashMap<&'static str, mpsc::UnboundedSender<Value>>,
    }

    fn serve_mock(
        mut handle: tower_test::mock::Handle<Request<kube::client::Body>, Response<MockBody>>,
        lists: HashMap<&'static str, Value>,
    ) -> (FakeApi, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (seen_tx, seen_rx) = mpsc::unbounded_channel();
        let mut feeds = HashMap::new();
        let mut feed_rx = HashMap::new();
        for kind in ["modules", "nodes"] {
            let (tx, rx) = mpsc::unbounded_channel::<Value>();
            feeds.insert(kind, tx);
            feed_rx.insert(kind, Some(rx));
        }
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let uri = req.uri().to_string();
                let _ = seen_tx.send(uri.clone());
                let kind = if uri.contains("/modules") {
                    "modules"
                } else {
                    "nodes"
                };
                if uri.contains("watch=true") {
                    // First watch of a kind gets the live feed; later re-watches stay open and silent.
                    let (tx, rx) = mpsc::unbounded_channel::<Result<Frame<Bytes>, Infallible>>();
                    if let Some(mut feed) = feed_rx.get_mut(kind).and_then(Option::take) {
                        tokio::spawn(async move {
                            while let Some(ev) = feed.recv().await {
                                let mut line = serde_json::to_vec(&ev).unwrap();
                                line.push(b'\n');
                                if tx.send(Ok(Frame::data(Bytes::from(line)))).is_err() {
                                    break;
                                }
                            }
                        });
                    } else {
                        std::mem::forget(tx);
                    }
                    let body = BodyExt::boxed(StreamBody::new(UnboundedReceiverStream::new(rx)));
                    send.send_response(Response::builder().status(200).body(body).unwrap());
                } else {
                    send.send_response(
                        Response::builder()
                            .status(200)
                            .body(full(&lists[kind]))
                            .unwrap(),
                    );
                }
            }
        });
        (FakeApi { watch_feeds: feeds }, seen_rx)
    }

    async fn next_value(rx: &mut watch::Receiver<Vec<Module>>) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        rx.borrow_and_update()
            .iter()
            .map(|m| m.name_or_empty().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn modules_follow_node_labels_taints_and_module_events() {
        let (svc, handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
        let client = Client::new(svc, "default");
        let lists = HashMap::from([
            (
                "modules",
                json!({"apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "ModuleList",
                "metadata": {"resourceVersion": "10"},
                "items": [
                    module("a", "1", json!({"gpu": "yes"}), json!([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}])),
                    module("b", "2", json!({"gpu": "yes"}), json!([])),
                    module("c", "3", json!({"gpu": "no"}), json!([])),
                ]}),
            ),
            (
                "nodes",
                json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "20"},
                    "items": [node("5", json!({"gpu": "yes"}), json!([]))]}),
            ),
        ]);
        let (api, mut seen) = serve_mock(handle, lists);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let mut rx = spawn(client, "node1".into(), Metrics::new(), stop_rx);

        // Both lists arrive (in either order); eventually a and b target the node.
        let mut names = next_value(&mut rx).await;
        while names != ["a", "b"] {
            names = next_value(&mut rx).await;
        }
        // The node watch is field-selected on our node.
        let mut uris = Vec::new();
        while let Ok(u) = seen.try_recv() {
            uris.push(u);
        }
        assert!(
            uris.iter().any(|u| u.starts_with("/api/v1/nodes?")
                && u.contains("fieldSelector=metadata.name%3Dnode1")),
            "{uris:?}"
        );

        // A NoSchedule taint: only a tolerates it.
        api.watch_feeds["nodes"]
            .send(json!({"type": "MODIFIED", "object": node("6", json!({"gpu": "yes"}), json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]))}))
            .unwrap();
        assert_eq!(next_value(&mut rx).await, ["a"]);

        // c now selects the node's labels and tolerates the taint.
        api.watch_feeds["modules"]
            .send(json!({"type": "MODIFIED", "object": module("c", "4", json!({"gpu": "yes"}), json!([{"operator": "Exists"}]))}))
            .unwrap();
        assert_eq!(next_value(&mut rx).await, ["a", "c"]);

        // The node loses the label: nothing targets it.
        api.watch_feeds["nodes"]
            .send(json!({"type": "MODIFIED", "object": node("7", json!({}), json!([]))}))
            .unwrap();
        assert!(next_value(&mut rx).await.is_empty());

        // a deleted, label back: c only.
        api.watch_feeds["modules"]
            .send(json!({"type": "DELETED", "object": module("a", "8", json!({"gpu": "yes"}), json!([]))}))
            .unwrap();
        api.watch_feeds["nodes"]
            .send(
                json!({"type": "MODIFIED", "object": node("9", json!({"gpu": "yes"}), json!([]))}),
            )
            .unwrap();
        let mut names = next_value(&mut rx).await;
        while names != ["b", "c"] {
            names = next_value(&mut rx).await;
        }
    }
}
