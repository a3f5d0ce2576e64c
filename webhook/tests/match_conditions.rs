//! The `matchConditions` CEL expression of the shipped MutatingWebhookConfiguration, evaluated with a CEL
//! interpreter (cel-rust) on pods: the API server calls the webhook only when it is true, so it must be true for
//! every pod the webhook would change or refuse, and may be false only for pods that need no driver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use kmm_webhook::catalog::StaticCatalog;
use kmm_webhook::mutate::{MutateConfig, PodView, mutate_pod};
use serde_json::{Value, json};

fn match_conditions() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/webhook/webhook-configurations.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] != "MutatingWebhookConfiguration" {
            continue;
        }
        for hook in v["webhooks"].as_array().unwrap() {
            for c in hook["matchConditions"].as_array().into_iter().flatten() {
                out.push(c["expression"].as_str().unwrap().to_owned());
            }
        }
    }
    out
}

fn eval(expr: &str, object: &Value) -> bool {
    let program = cel::Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut ctx = cel::Context::default();
    ctx.add_variable("object", object.clone()).unwrap();
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => b,
        other => panic!("{expr} on {object}: {other:?}"),
    }
}

fn pod(spec_extra: Value, annotations: Option<Value>) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "team"},
        "spec": {"containers": [{"name": "app", "image": "a"}]}});
    if let Some(a) = annotations {
        pod["metadata"]["annotations"] = a;
    }
    json_patch::merge(&mut pod, &spec_extra);
    pod
}

#[test]
fn the_match_condition_lets_through_every_pod_the_webhook_acts_on() {
    let conditions = match_conditions();
    assert_eq!(conditions.len(), 1, "one matchCondition on the pod webhook");
    let module: kmm_api::Module = serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
        "metadata": {"name": "simple", "namespace": "team"},
        "spec": {"selector": {}, "devices": {"resourceName": "example.com/gpu", "slots": 2},
            "moduleLoader": {"container": {"modprobe": {"moduleName": "simple_kmod"},
                "kernelMappings": [{"regexp": "^.+$", "containerImage": "reg/kmod:1"}]}}}
    }))
    .unwrap();
    let catalog = Arc::new(StaticCatalog::new([module]));
    let cfg = MutateConfig::new("loader:1");
    let limits = |r: Value| json!({"spec": {"containers": [{"name": "app", "image": "a", "resources": {"limits": r}}]}});
    let requests = |r: Value| json!({"spec": {"containers": [{"name": "app", "image": "a", "resources": {"requests": r}}]}});
    let init = |r: Value| json!({"spec": {"initContainers": [{"name": "i", "image": "a", "resources": {"limits": r}}]}});
    // (pod, whether the webhook must see it)
    let cases = [
        (pod(json!({}), None), false),
        (pod(json!({}), Some(json!({"other": "x"}))), false),
        (
            pod(limits(json!({"cpu": "1", "memory": "1Gi"})), None),
            false,
        ),
        (
            pod(
                json!({"spec": {"containers": [{"name": "app", "image": "a", "resources": {}}]}}),
                None,
            ),
            false,
        ),
        (
            pod(
                json!({}),
                Some(json!({"kmm.sigs.x-k8s.io/modules": "simple"})),
            ),
            true,
        ),
        (
            pod(
                json!({}),
                Some(json!({"kmm.sigs.x-k8s.io/modules": "nope"})),
            ),
            true,
        ),
        (
            pod(limits(json!({"kmm.sigs.x-k8s.io/team.simple": "1"})), None),
            true,
        ),
        (pod(requests(json!({"example.com/gpu": "1"})), None), true),
        (pod(init(json!({"example.com/gpu": "1"})), None), true),
        (pod(limits(json!({"nvidia.com/gpu": "1"})), None), true),
    ];
    for (object, must_see) in cases {
        let called = conditions.iter().all(|c| eval(c, &object));
        let view: PodView = serde_json::from_value(object.clone()).unwrap();
        let acts = match mutate_pod(&view, "team", catalog.as_ref(), &cfg) {
            Ok(patch) => !patch.0.is_empty(),
            Err(_) => true,
        };
        assert!(
            !acts || called,
            "the webhook acts on {object} but the API server would not call it"
        );
        assert_eq!(called, must_see, "{object}");
    }
}
