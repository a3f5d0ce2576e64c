#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};

use super::*;
use crate::review::{Gvk, Operation, Request};

fn request(
    kind: (&str, &str, &str),
    op: Operation,
    object: Option<Value>,
    old: Option<Value>,
) -> Request {
    Request {
        uid: "u".into(),
        kind: Gvk {
            group: kind.0.into(),
            version: kind.1.into(),
            kind: kind.2.into(),
        },
        operation: op,
        name: String::new(),
        namespace: Some("team".into()),
        object: object.map(|v| serde_json::value::to_raw_value(&v).unwrap()),
        old_object: old.map(|v| serde_json::value::to_raw_value(&v).unwrap()),
        dry_run: false,
    }
}

const MODULE: (&str, &str, &str) = ("kmm.sigs.x-k8s.io", "v1beta1", "Module");

fn module_json(name: &str, version: Option<&str>, regexp: &str) -> Value {
    let mut container = json!({
        "modprobe": {"moduleName": "m"},
        "kernelMappings": [{"regexp": regexp, "containerImage": "reg/m:1"}]
    });
    if let Some(v) = version {
        container["version"] = json!(v);
    }
    json!({"apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
           "metadata": {"name": name}, "spec": {"selector": {}, "moduleLoader": {"container": container}}})
}

#[test]
fn module_create_lists_all_violations_with_paths() {
    let ok = module(
        &request(
            MODULE,
            Operation::Create,
            Some(module_json("m", None, "^6\\.")),
            None,
        ),
        None,
    );
    assert_eq!(ok, Verdict::allow());

    let mut bad = module_json(&"x".repeat(40), None, "(");
    bad["spec"]["tolerations"] = json!([{"operator": "Bogus"}]);
    let v = module(&request(MODULE, Operation::Create, Some(bad), None), None);
    assert!(!v.allowed);
    assert_eq!(v.code, 403);
    let msg = v.message.unwrap();
    // The namespace comes from the request: 40 + len("team") > 41.
    for path in [
        "metadata.name:",
        "spec.tolerations[0].operator:",
        "spec.moduleLoader.container.kernelMappings[0].regexp:",
    ] {
        assert!(msg.contains(path), "{path} missing in {msg}");
    }
    assert!(msg.lines().count() >= 3, "{msg}");
}

#[test]
fn module_update_rejects_version_transitions() {
    let v = module(
        &request(
            MODULE,
            Operation::Update,
            Some(module_json("m", Some("1"), "^6")),
            Some(module_json("m", None, "^6")),
        ),
        None,
    );
    assert!(!v.allowed);
    assert!(v.message.unwrap().starts_with(
        "spec.moduleLoader.container.version: cannot update to or from an empty version"
    ));
    let v = module(
        &request(
            MODULE,
            Operation::Update,
            Some(module_json("m", Some("2"), "^6")),
            Some(module_json("m", Some("1"), "^6")),
        ),
        None,
    );
    assert!(v.allowed);
}

#[test]
fn dra_needs_kube_134_when_known() {
    let mut m = module_json("m", None, "^6");
    m["spec"]["dra"] = json!({"container": {"image": "dra:1"}, "driverName": "gpu.example.com"});
    let req = request(MODULE, Operation::Create, Some(m), None);
    assert!(module(&req, None).allowed);
    assert!(
        module(
            &req,
            Some(KubeVersion {
                major: 1,
                minor: 34
            })
        )
        .allowed
    );
    let v = module(
        &req,
        Some(KubeVersion {
            major: 1,
            minor: 31,
        }),
    );
    assert!(
        v.message
            .unwrap()
            .contains("spec.dra requires Kubernetes 1.34")
    );
}

#[test]
fn malformed_and_wrong_kind_objects_are_bad_requests() {
    let v = module(
        &request(
            MODULE,
            Operation::Create,
            Some(json!({"spec": {"selector": 5}})),
            None,
        ),
        None,
    );
    assert_eq!(v.code, 400);
    assert!(
        v.message
            .unwrap()
            .contains("request.object is not a valid Module")
    );
    let v = module(&request(MODULE, Operation::Create, None, None), None);
    assert_eq!(v.message.as_deref(), Some("request.object is missing"));
    let v = module(
        &request(("", "v1", "Pod"), Operation::Create, Some(json!({})), None),
        None,
    );
    assert_eq!(v.code, 400);
    assert!(v.message.unwrap().contains("got v1/Pod"));
    // DELETE is not registered; answered allowed without a patch.
    assert_eq!(
        module(
            &request(
                MODULE,
                Operation::Delete,
                None,
                Some(module_json("m", None, "("))
            ),
            None
        ),
        Verdict::allow()
    );
}

#[test]
fn managed_cluster_module_paths_are_prefixed() {
    let kind = ("hub.kmm.sigs.x-k8s.io", "v1beta1", "ManagedClusterModule");
    let mcm = |regexp: &str| {
        json!({"apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1", "kind": "ManagedClusterModule",
        "metadata": {"name": "x".repeat(60)},
        "spec": {"spokeNamespace": "s", "selector": {}, "moduleSpec": module_json("ignored", None, regexp)["spec"].clone()}})
    };
    assert!(
        managed_cluster_module(&request(kind, Operation::Create, Some(mcm("^6")), None)).allowed,
        "no length rule"
    );
    let v = managed_cluster_module(&request(kind, Operation::Create, Some(mcm("(")), None));
    assert!(
        v.message
            .unwrap()
            .starts_with("spec.moduleSpec.moduleLoader.container.kernelMappings[0].regexp:")
    );
    let v = managed_cluster_module(&request(
        kind,
        Operation::Update,
        Some(mcm("(")),
        Some(mcm("^6")),
    ));
    assert!(!v.allowed);
}

#[test]
fn namespace_deletion_guard() {
    let kind = ("", "v1", "Namespace");
    let ns = |labels: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": labels}});
    let v = namespace(&request(
        kind,
        Operation::Delete,
        None,
        Some(ns(json!({"kmm.node.k8s.io/contains-modules": ""}))),
    ));
    assert_eq!(v.code, 403);
    assert_eq!(
        v.message.as_deref(),
        Some(
            "namespace contains one or more Module resources; delete those before deleting the namespace"
        )
    );
    assert!(
        namespace(&request(
            kind,
            Operation::Delete,
            None,
            Some(ns(json!({"a": "b"})))
        ))
        .allowed
    );
    assert!(namespace(&request(kind, Operation::Create, Some(ns(json!({}))), None)).allowed);
    assert_eq!(
        namespace(&request(kind, Operation::Delete, None, None)).code,
        400
    );
}
