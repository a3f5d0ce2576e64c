//! The two Kubernetes writes of kmm-certs, each a server-side apply with the field manager [`FIELD_MANAGER`]:
//! the TLS Secret of the webhook, and the caBundle of its webhook configurations.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::serving::Bundle;

/// Field manager of every apply.
pub const FIELD_MANAGER: &str = "kmm-certs";

/// Why a Kubernetes operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeOpsError {
    /// Reading the Secret failed.
    #[error("failed to read Secret {namespace}/{name}")]
    ReadSecret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// Applying the Secret failed.
    #[error("failed to apply Secret {namespace}/{name}")]
    ApplySecret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// Reading a webhook configuration failed.
    #[error("failed to read {kind} {name}")]
    ReadWebhookConfiguration {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// Applying the caBundle failed.
    #[error("failed to apply the caBundle of {kind} {name}")]
    ApplyCaBundle {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// The cause.
        source: kube::Error,
    },
}

fn text(data: &BTreeMap<String, k8s_openapi::ByteString>, key: &str) -> String {
    data.get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

/// Reads the bundle from a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`, `ca.crt`); `None` when absent.
pub async fn read_secret(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Bundle>, KubeOpsError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|source| KubeOpsError::ReadSecret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    Ok(secret.and_then(|s| s.data).map(|data| Bundle {
        ca_pem: text(&data, "ca.crt"),
        cert_pem: text(&data, "tls.crt"),
        key_pem: text(&data, "tls.key"),
    }))
}

/// Applies the bundle as a `kubernetes.io/tls` Secret.
pub async fn apply_secret(
    client: Client,
    namespace: &str,
    name: &str,
    bundle: &Bundle,
) -> Result<(), KubeOpsError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(&bundle.cert_pem), "tls.key": b64(&bundle.key_pem), "ca.crt": b64(&bundle.ca_pem)}
    });
    let api: Api<Secret> = Api::namespaced(client, namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await
    .map_err(|source| KubeOpsError::ApplySecret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    Ok(())
}

/// Sets `clientConfig.caBundle` of every webhook of the named configurations (names read first, since the
/// webhooks list is a map keyed by name in server-side apply).
pub async fn patch_ca_bundle(
    client: Client,
    ca_pem: &str,
    mutating: &[String],
    validating: &[String],
) -> Result<(), KubeOpsError> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    for name in mutating {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let kind = "MutatingWebhookConfiguration";
        let current =
            api.get(name)
                .await
                .map_err(|source| KubeOpsError::ReadWebhookConfiguration {
                    kind,
                    name: name.clone(),
                    source,
                })?;
        let names: Vec<String> = current
            .webhooks
            .iter()
            .flatten()
            .map(|w| w.name.clone())
            .collect();
        apply_bundle(&api, kind, name, &names, &ca).await?;
    }
    for name in validating {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        let kind = "ValidatingWebhookConfiguration";
        let current =
            api.get(name)
                .await
                .map_err(|source| KubeOpsError::ReadWebhookConfiguration {
                    kind,
                    name: name.clone(),
                    source,
                })?;
        let names: Vec<String> = current
            .webhooks
            .iter()
            .flatten()
            .map(|w| w.name.clone())
            .collect();
        apply_bundle(&api, kind, name, &names, &ca).await?;
    }
    Ok(())
}

async fn apply_bundle<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    webhooks: &[String],
    ca: &str,
) -> Result<(), KubeOpsError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": webhooks.iter().map(|w| json!({"name": w, "clientConfig": {"caBundle": ca}})).collect::<Vec<_>>(),
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| KubeOpsError::ApplyCaBundle {
        kind,
        name: name.to_owned(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::Value;

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock() -> (Client, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(svc, "default"), handle)
    }

    async fn body_json(req: Request<Body>) -> Value {
        let bytes = req.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap()
    }

    fn assert_apply(req: &Request<Body>, path: &str) {
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(req.uri().path(), path);
        let q = req.uri().query().unwrap();
        assert!(
            q.contains("fieldManager=kmm-certs") && q.contains("force=true"),
            "{q}"
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/apply-patch+yaml"
        );
    }

    #[tokio::test]
    async fn secret_is_read_and_applied() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ns/secrets/tls");
            send.send_response(json_response(StatusCode::NOT_FOUND, &json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})));

            let (req, send) = handle.next_request().await.unwrap();
            assert_apply(&req, "/api/v1/namespaces/ns/secrets/tls");
            let body = body_json(req).await;
            assert_eq!(body["type"], "kubernetes.io/tls");
            let crt = base64::engine::general_purpose::STANDARD
                .decode(body["data"]["tls.crt"].as_str().unwrap())
                .unwrap();
            assert_eq!(crt, b"CERT");
            send.send_response(json_response(StatusCode::OK, &body));

            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::GET);
            send.send_response(json_response(StatusCode::OK, &json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "ns"},
                "data": {"tls.crt": "Q0VSVA==", "tls.key": "S0VZ", "ca.crt": "Q0E="}})));
        });
        assert_eq!(
            read_secret(client.clone(), "ns", "tls").await.unwrap(),
            None
        );
        let bundle = Bundle {
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        apply_secret(client.clone(), "ns", "tls", &bundle)
            .await
            .unwrap();
        assert_eq!(
            read_secret(client, "ns", "tls").await.unwrap(),
            Some(bundle)
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn ca_bundle_is_applied_to_every_webhook_by_name() {
        let (client, mut handle) = mock();
        let server = tokio::spawn(async move {
            for (kind, plural, name, hooks) in [
                (
                    "MutatingWebhookConfiguration",
                    "mutatingwebhookconfigurations",
                    "m",
                    vec!["pods.kmm.sigs.x-k8s.io"],
                ),
                (
                    "ValidatingWebhookConfiguration",
                    "validatingwebhookconfigurations",
                    "v",
                    vec!["modules.kmm.sigs.x-k8s.io", "namespaces.kmm.sigs.x-k8s.io"],
                ),
            ] {
                let path = format!("/apis/admissionregistration.k8s.io/v1/{plural}/{name}");
                let (req, send) = handle.next_request().await.unwrap();
                assert_eq!(req.method(), http::Method::GET);
                assert_eq!(req.uri().path(), path);
                let webhooks: Vec<Value> = hooks.iter().map(|h| json!({"name": h, "clientConfig": {"service": {"name": "s", "namespace": "n"}},
                    "sideEffects": "None", "admissionReviewVersions": ["v1"]})).collect();
                send.send_response(json_response(StatusCode::OK, &json!({
                    "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name}, "webhooks": webhooks})));

                let (req, send) = handle.next_request().await.unwrap();
                assert_apply(&req, &path);
                let body = body_json(req).await;
                assert_eq!(body["kind"], kind);
                let got: Vec<&str> = body["webhooks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w["name"].as_str().unwrap())
                    .collect();
                assert_eq!(got, hooks);
                for w in body["webhooks"].as_array().unwrap() {
                    assert_eq!(w["clientConfig"]["caBundle"], "UEVN", "base64 of PEM");
                    assert!(
                        w["clientConfig"].get("service").is_none(),
                        "only the caBundle is owned"
                    );
                }
                send.send_response(json_response(StatusCode::OK, &body));
            }
        });
        patch_ca_bundle(client, "PEM", &["m".into()], &["v".into()])
            .await
            .unwrap();
        server.await.unwrap();
    }
}
