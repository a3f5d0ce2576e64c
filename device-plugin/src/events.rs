//! Kubernetes Events about this node's device plugin (cluster mode): a refused registration is reported on the Node
//! object (events.k8s.io/v1, namespace `default`, repeats folded into a series by kube's recorder).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tracing::warn;

use crate::metrics::Metrics;

/// Reason of the Event published when the kubelet refuses a registration.
pub const REASON_REGISTRATION_REFUSED: &str = "DevicePluginRegistrationRefused";

/// A handle to publish Events on this node; cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct NodeEvents {
    tx: mpsc::UnboundedSender<(String, String)>,
}

impl NodeEvents {
    /// Starts the publisher for node `node_name`; it ends when every handle is dropped.
    pub fn spawn(client: Client, node_name: &str, metrics: Metrics) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "kmm-device-plugin".into(),
                instance: Some(node_name.to_owned()),
            },
        );
        let node = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node_name.to_owned()),
            ..Default::default()
        };
        tokio::spawn(async move {
            while let Some((reason, note)) = rx.recv().await {
                let ev = Event {
                    type_: EventType::Warning,
                    reason,
                    note: Some(note),
                    action: "Register".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &node).await {
                    metrics.error("event");
                    warn!(error = %e, "failed to publish a node Event");
                }
            }
        });
        Self { tx }
    }

    /// Publishes a Warning Event with `reason` and `note`.
    pub fn warning(&self, reason: &str, note: String) {
        let _ = self.tx.send((reason.to_owned(), note));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    use http::{Request, Response};
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn refused_registration_becomes_a_warning_event_on_the_node() {
        let (svc, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
        let events = NodeEvents::spawn(Client::new(svc, "default"), "node1", Metrics::new());
        events.warning(
            REASON_REGISTRATION_REFUSED,
            "kubelet refused example-kubernetes.io/gpu: invalid".into(),
        );
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(
            req.uri().path(),
            "/apis/events.k8s.io/v1/namespaces/default/events"
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let ev: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reason"], REASON_REGISTRATION_REFUSED);
        assert_eq!(ev["regarding"]["kind"], "Node");
        assert_eq!(ev["regarding"]["name"], "node1");
        assert_eq!(ev["reportingController"], "kmm-device-plugin");
        assert!(
            ev["note"]
                .as_str()
                .unwrap()
                .contains("example-kubernetes.io/gpu")
        );
        send.send_response(
            Response::builder()
                .status(201)
                .body(kube::client::Body::from(body.to_vec()))
                .unwrap(),
        );
    }
}
