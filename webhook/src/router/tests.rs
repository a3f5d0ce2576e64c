#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::catalog::StaticCatalog;
use crate::mutate::MutateConfig;

fn state() -> AppState {
    let module: kmm_api::Module = serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
        "metadata": {"name": "simple", "namespace": "team"},
        "spec": {"selector": {}, "moduleLoader": {"container": {
            "modprobe": {"moduleName": "simple_kmod"},
            "kernelMappings": [{"regexp": "^.+$", "containerImage": "reg/kmod:1"}]}}}
    }))
    .unwrap();
    AppState {
        ctx: Context {
            catalog: Arc::new(StaticCatalog::new([module])),
            mutate: MutateConfig::new("loader:1"),
            kube_version: None,
        },
        metrics: Arc::new(Metrics::new()),
    }
}

fn review(uid: &str, kind: (&str, &str, &str), op: &str, object: Value, old: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
            "resource": {"group": kind.0, "version": kind.1, "resource": "x"},
            "operation": op, "namespace": "team", "userInfo": {}, "object": object, "oldObject": old, "dryRun": false}
    }))
    .unwrap()
}

async fn post_to(router: Router, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

const MODULE: (&str, &str, &str) = ("kmm.sigs.x-k8s.io", "v1beta1", "Module");

fn bad_module() -> Value {
    json!({"apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module", "metadata": {"name": "m"},
        "spec": {"selector": {}, "moduleLoader": {"container": {"modprobe": {},
            "kernelMappings": [{"regexp": "(", "containerImage": "x:1"}]}}}})
}

#[tokio::test]
async fn every_path_and_alias_answers_with_the_request_uid() {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": {"kmm.node.k8s.io/contains-modules": ""}}});
    let mcm = json!({"apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1", "kind": "ManagedClusterModule", "metadata": {"name": "m"},
        "spec": {"spokeNamespace": "s", "selector": {}, "moduleSpec": bad_module()["spec"].clone()}});
    let cases = [
        (
            "/validate-module",
            review("a", MODULE, "CREATE", bad_module(), Value::Null),
            false,
        ),
        (
            "/validate-kmm-sigs-x-k8s-io-v1beta1-module?timeout=10s",
            review("b", MODULE, "CREATE", bad_module(), Value::Null),
            false,
        ),
        (
            "/validate-managedclustermodule",
            review(
                "c",
                ("hub.kmm.sigs.x-k8s.io", "v1beta1", "ManagedClusterModule"),
                "CREATE",
                mcm.clone(),
                Value::Null,
            ),
            false,
        ),
        (
            "/validate-hub-kmm-sigs-x-k8s-io-v1beta1-managedclustermodule",
            review(
                "d",
                ("hub.kmm.sigs.x-k8s.io", "v1beta1", "ManagedClusterModule"),
                "CREATE",
                mcm,
                Value::Null,
            ),
            false,
        ),
        (
            "/validate-namespace",
            review(
                "e",
                ("", "v1", "Namespace"),
                "DELETE",
                Value::Null,
                ns.clone(),
            ),
            false,
        ),
        (
            "/validate--v1-namespace?timeout=5s",
            review("f", ("", "v1", "Namespace"), "DELETE", Value::Null, ns),
            false,
        ),
        (
            "/mutate-pod",
            review(
                "g",
                ("", "v1", "Pod"),
                "CREATE",
                json!({"metadata": {}, "spec": {"containers": [{"name": "a"}]}}),
                Value::Null,
            ),
            true,
        ),
    ];
    let router = admission(state());
    for (path, body, allowed) in cases {
        let uid = serde_json::from_slice::<Value>(&body).unwrap()["request"]["uid"].clone();
        let (status, body) = post_to(router.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["response"]["uid"], uid, "{path}");
        assert_eq!(v["response"]["allowed"], allowed, "{path}: {v}");
        if !allowed {
            assert_eq!(v["response"]["status"]["code"], 403, "{path}");
        }
    }
}

#[tokio::test]
async fn mutate_pod_returns_a_base64_json_patch_and_never_patches_delete() {
    let pod = json!({"metadata": {"annotations": {"kmm.sigs.x-k8s.io/modules": "simple"}}, "spec": {"containers": [{"name": "a"}]}});
    let (status, body) = post_to(
        admission(state()),
        "/mutate-pod",
        review("p", ("", "v1", "Pod"), "CREATE", pod.clone(), Value::Null),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(v["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    assert_eq!(patch[0]["path"], "/spec/affinity");
    assert_eq!(patch[1]["path"], "/spec/initContainers");

    let (_, body) = post_to(
        admission(state()),
        "/mutate-pod",
        review("q", ("", "v1", "Pod"), "DELETE", Value::Null, pod),
    )
    .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());
}

#[tokio::test]
async fn bad_input_gets_well_formed_errors() {
    let router = admission(state());
    let (status, body) = post_to(router.clone(), "/validate-module", b"{oops".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("failed to parse the AdmissionReview"));

    let (status, _) = post_to(
        router.clone(),
        "/validate-module",
        br#"{"request": {}}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Known uid, wrong object kind: an AdmissionReview with allowed false and code 400.
    let (status, body) = post_to(
        router.clone(),
        "/validate-module",
        review("w", ("", "v1", "Pod"), "CREATE", json!({}), Value::Null),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["uid"], "w");
    assert_eq!(v["response"]["allowed"], false);
    assert_eq!(v["response"]["status"]["code"], 400);

    let huge = vec![b' '; BODY_LIMIT + 1];
    let (status, _) = post_to(router.clone(), "/validate-module", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let resp = router
        .clone()
        .oneshot(
            http::Request::get("/validate-module")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = post_to(router, "/nope", vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_routes_and_metrics() {
    let st = state();
    let ready = Arc::new(AtomicBool::new(false));
    let r2 = Arc::clone(&ready);
    let health_router = health(HealthState {
        metrics: Arc::clone(&st.metrics),
        ready: Arc::new(move || r2.load(Ordering::SeqCst)),
    });
    let get = |path: &'static str| {
        let h = health_router.clone();
        async move {
            let resp = h
                .oneshot(http::Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            (
                status,
                String::from_utf8(
                    resp.into_body()
                        .collect()
                        .await
                        .unwrap()
                        .to_bytes()
                        .to_vec(),
                )
                .unwrap(),
            )
        }
    };
    assert_eq!(get("/healthz").await.0, StatusCode::OK);
    assert_eq!(get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    ready.store(true, Ordering::SeqCst);
    assert_eq!(get("/readyz").await.0, StatusCode::OK);

    post_to(
        admission(st.clone()),
        "/validate-module",
        review("m", MODULE, "CREATE", bad_module(), Value::Null),
    )
    .await;
    let (status, text) = get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(
            r#"kmm_webhook_admission_requests_total{endpoint="module",verdict="denied"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("kmm_webhook_admission_duration_seconds_bucket"),
        "{text}"
    );
}

/// A Pod review as the API server sends it for a ReplicaSet's pod (compact, every field in its place).
const API_SERVER_POD_REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"dryRun":false,"kind":{"group":"","kind":"Pod","version":"v1"},"namespace":"team","object":{"apiVersion":"v1","kind":"Pod","metadata":{"annotations":{"kmm.sigs.x-k8s.io/modules":"simple"},"generateName":"app-7d9c8b6f5-","labels":{"app":"app","pod-template-hash":"7d9c8b6f5"},"namespace":"team","ownerReferences":[{"apiVersion":"apps/v1","controller":true,"kind":"ReplicaSet","name":"app-7d9c8b6f5","uid":"2b7e1f0a-0000-4000-8000-000000000001"}]},"spec":{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/arch","operator":"In","values":["amd64"]}]}]}}},"containers":[{"image":"registry.example/app:1.0","name":"app","resources":{"limits":{"cpu":"500m","kmm.sigs.x-k8s.io/team.simple":"1","memory":"128Mi"},"requests":{"cpu":"100m","memory":"64Mi"}},"volumeMounts":[{"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount","name":"kube-api-access","readOnly":true}]}],"dnsPolicy":"ClusterFirst","restartPolicy":"Always","serviceAccountName":"default","volumes":[{"name":"kube-api-access","projected":{"sources":[{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}}]}}]}},"operation":"CREATE","options":{"apiVersion":"meta.k8s.io/v1","kind":"CreateOptions"},"requestKind":{"group":"","kind":"Pod","version":"v1"},"resource":{"group":"","resource":"pods","version":"v1"},"uid":"1b4e28ba-2fa1-11d2-883f-0016d3cca428","userInfo":{"groups":["system:serviceaccounts","system:authenticated"],"uid":"u","username":"system:serviceaccount:kube-system:replicaset-controller"}}}"#;

/// The one-pass reading of Pods and Modules answers exactly like the general path (parse, then decode), and hands
/// everything it cannot read to it.
#[test]
fn the_fast_path_agrees_with_the_general_path() {
    use crate::admit::{admit, fast};
    let ctx = state().ctx;
    let pod = |annotations: Value, limits: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "team", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "a", "resources": {"limits": limits}}]}})
    };
    let module = |name: &str, mapping: Value| {
        json!({"apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"selector": {}, "moduleLoader": {"container": {
                "modprobe": {"moduleName": "simple_kmod"}, "kernelMappings": [mapping]}}}})
    };
    let good = json!({"regexp": "^.+$", "containerImage": "reg/kmod:1"});
    let bad = json!({"regexp": "(", "containerImage": "reg/kmod:1"});
    let pod_kind = ("", "v1", "Pod");
    let module_kind = ("kmm.sigs.x-k8s.io", "v1beta1", "Module");
    let cases: Vec<(Endpoint, Vec<u8>, bool)> = vec![
        (
            Endpoint::Pod,
            review(
                "a",
                pod_kind,
                "CREATE",
                pod(json!({"kmm.sigs.x-k8s.io/modules": "simple"}), json!({})),
                Value::Null,
            ),
            true,
        ),
        (
            Endpoint::Pod,
            review(
                "b",
                pod_kind,
                "CREATE",
                pod(json!({}), json!({"kmm.sigs.x-k8s.io/team.simple": "1"})),
                Value::Null,
            ),
            true,
        ),
        (
            Endpoint::Pod,
            review(
                "c",
                pod_kind,
                "CREATE",
                pod(json!({"x": "y"}), json!({"cpu": "1"})),
                Value::Null,
            ),
            true,
        ),
        (
            Endpoint::Pod,
            review(
                "d",
                pod_kind,
                "CREATE",
                pod(json!({"kmm.sigs.x-k8s.io/modules": "nope"}), json!({})),
                Value::Null,
            ),
            true,
        ),
        (
            Endpoint::Pod,
            review("e", pod_kind, "CREATE", Value::Null, Value::Null),
            true,
        ),
        (
            Endpoint::Pod,
            review(
                "f",
                pod_kind,
                "DELETE",
                Value::Null,
                pod(json!({}), json!({})),
            ),
            true,
        ),
        (
            Endpoint::Pod,
            review(
                "g",
                module_kind,
                "CREATE",
                module("m", good.clone()),
                Value::Null,
            ),
            true,
        ),
        // Not a Pod, not an object: the general path explains.
        (
            Endpoint::Pod,
            review(
                "h",
                pod_kind,
                "CREATE",
                json!({"spec": {"containers": 3}}),
                Value::Null,
            ),
            false,
        ),
        (
            Endpoint::Pod,
            review("i", pod_kind, "CREATE", json!("pod"), Value::Null),
            false,
        ),
        (
            Endpoint::Module,
            review(
                "j",
                module_kind,
                "CREATE",
                module("m", good.clone()),
                Value::Null,
            ),
            true,
        ),
        (
            Endpoint::Module,
            review(
                "k",
                module_kind,
                "CREATE",
                module("m", bad.clone()),
                Value::Null,
            ),
            true,
        ),
        (
            Endpoint::Module,
            review(
                "l",
                module_kind,
                "UPDATE",
                module("m", good.clone()),
                module("m", bad),
            ),
            true,
        ),
        (
            Endpoint::Module,
            review(
                "m",
                module_kind,
                "UPDATE",
                module("m", good.clone()),
                json!(1),
            ),
            false,
        ),
        (
            Endpoint::Module,
            review("n", module_kind, "CREATE", json!({"spec": 1}), Value::Null),
            false,
        ),
        (
            Endpoint::Module,
            review(
                "o",
                pod_kind,
                "CREATE",
                pod(json!({}), json!({})),
                Value::Null,
            ),
            false,
        ),
        (
            Endpoint::Module,
            review("p", module_kind, "NOPE", module("m", good), Value::Null),
            false,
        ),
        // The API server's usual Pod review: every skipped field, escapes in skipped strings.
        (
            Endpoint::Pod,
            API_SERVER_POD_REVIEW.as_bytes().to_vec(),
            true,
        ),
        (
            Endpoint::Pod,
            review(
                "r",
                pod_kind,
                "CREATE",
                json!({"metadata": {"namespace": "team", "annotations": {"kmm.sigs.x-k8s.io/modules": "simple", "note": "a\"b\\c\u{e9}"}},
                    "spec": {"containers": [{"name": "app", "command": ["sh", "-c", "x && y"]}],
                        "affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1}]}}}}),
                Value::Null,
            ),
            true,
        ),
        // Indented JSON and repeated envelope fields: the general path reads them.
        (
            Endpoint::Pod,
            serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&review(
                "s",
                pod_kind,
                "CREATE",
                pod(json!({"kmm.sigs.x-k8s.io/modules": "simple"}), json!({})),
                Value::Null,
            )).unwrap()).unwrap(),
            false,
        ),
        (
            Endpoint::Pod,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"t","uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{}}}"#.to_vec(),
            false,
        ),
        (
            Endpoint::Namespace,
            review(
                "q",
                ("", "v1", "Namespace"),
                "DELETE",
                Value::Null,
                json!({"metadata": {"name": "x"}}),
            ),
            false,
        ),
    ];
    for (endpoint, body, takes_fast) in cases {
        let general = match crate::review::parse(&body) {
            Ok(req) => Some(admit(endpoint, &req, &ctx)),
            Err(_) => None,
        };
        match fast(endpoint, &body, &ctx) {
            Some((_, verdict)) => {
                assert!(takes_fast, "{}", String::from_utf8_lossy(&body));
                assert_eq!(Some(verdict), general, "{}", String::from_utf8_lossy(&body));
            }
            None => assert!(!takes_fast, "{}", String::from_utf8_lossy(&body)),
        }
    }
}
