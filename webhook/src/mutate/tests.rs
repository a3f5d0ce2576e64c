#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};

use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::catalog::StaticCatalog;

fn module(v: Value) -> Module {
    serde_json::from_value(v).unwrap()
}

fn loader_module(ns: &str, name: &str, version: Option<&str>) -> Module {
    let mut container = json!({
        "modprobe": {"moduleName": "simple-kmod"},
        "kernelMappings": [{"regexp": "^.+$", "containerImage": "reg/kmod:${KERNEL_FULL_VERSION}"}]
    });
    if let Some(v) = version {
        container["version"] = json!(v);
    }
    module(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"node-role.kubernetes.io/worker": ""}, "moduleLoader": {"container": container}}
    }))
}

fn catalog() -> StaticCatalog {
    let mut with_devices = loader_module("drivers", "gpu", None);
    with_devices.spec.devices = Some(
        serde_json::from_value(json!({"resourceName": "example.com/gpu", "slots": 4})).unwrap(),
    );
    let in_tree = module(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
        "metadata": {"name": "intree", "namespace": "team"},
        "spec": {"selector": {"feature.node.kubernetes.io/ice": "true"}}
    }));
    let raw_args = module(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
        "metadata": {"name": "raw", "namespace": "team"},
        "spec": {"selector": {}, "moduleLoader": {"container": {
            "modprobe": {"rawArgs": {"load": ["-v", "x"], "unload": ["-rv", "x"]}},
            "kernelMappings": [{"literal": "6.1.0-30-amd64", "containerImage": "reg/x:1"}]
        }}}
    }));
    let no_mapping = module(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
        "metadata": {"name": "broken", "namespace": "team"},
        "spec": {"selector": {}, "moduleLoader": {"container": {
            "modprobe": {"moduleName": "x"},
            "kernelMappings": [{"regexp": "(unclosed", "containerImage": "reg/x:1"}, {"literal": "6.1", "containerImage": "reg/x:1"}]
        }}}
    }));
    let mut deleting = loader_module("team", "going", None);
    deleting.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
    StaticCatalog::new([
        loader_module("team", "simple", None),
        loader_module("team", "versioned", Some("1.2.3")),
        loader_module("other", "simple", None),
        with_devices,
        in_tree,
        raw_args,
        no_mapping,
        deleting,
    ])
}

fn pod(v: Value) -> Value {
    let mut base = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "app-", "namespace": "team"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    });
    json_patch::merge(&mut base, &v);
    base
}

fn cfg() -> MutateConfig {
    MutateConfig::new("registry.example/kmm-loader:0.1")
}

/// Mutates, applies the patch, checks that a second pass yields nothing, and returns the mutated pod.
fn mutate_apply(pod_json: &Value) -> (Value, Patch) {
    let cat = catalog();
    let _: Pod = serde_json::from_value(pod_json.clone()).unwrap();
    let pod: PodView = serde_json::from_value(pod_json.clone()).unwrap();
    let patch = mutate_pod(&pod, "team", &cat, &cfg()).unwrap();
    let mut out = pod_json.clone();
    json_patch::patch(&mut out, &patch.to_json_patch().unwrap())
        .unwrap_or_else(|e| panic!("patch {patch:?} does not apply: {e}"));
    // The result must still be a valid Pod, and a second pass must be a no-op.
    let _: Pod = serde_json::from_value(out.clone()).unwrap();
    let again: PodView = serde_json::from_value(out.clone()).unwrap();
    let second = mutate_pod(&again, "team", &cat, &cfg()).unwrap();
    assert!(second.0.is_empty(), "second pass is not empty: {second:?}");
    (out, patch)
}

fn terms(p: &Value) -> &Vec<Value> {
    p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array()
        .unwrap()
}

const READY: &str = "kmm.node.kubernetes.io/team.simple.ready";

#[test]
fn pod_without_driver_needs_no_patch() {
    let cases = [
        pod(json!({})),
        pod(json!({"metadata": {"annotations": {"other": "x"}}})),
        pod(
            json!({"spec": {"containers": [{"name": "app", "image": "a", "resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "1"}}}]}}),
        ),
        pod(json!({"metadata": {"annotations": {POD_MODULES_ANNOTATION: " , "}}})),
    ];
    for p in cases {
        let pod: PodView = serde_json::from_value(p.clone()).unwrap();
        let patch = mutate_pod(&pod, "team", &catalog(), &cfg()).unwrap();
        assert!(patch.0.is_empty(), "{p}: {patch:?}");
    }
}

#[test]
fn annotation_creates_affinity_and_init_container_from_nothing() {
    let (out, patch) = mutate_apply(&pod(
        json!({"metadata": {"annotations": {POD_MODULES_ANNOTATION: "simple"}}}),
    ));
    // Whole objects are added when absent: exactly two operations.
    assert_eq!(patch.0.len(), 2, "{patch:?}");
    assert_eq!(
        terms(&out),
        &vec![json!({"matchExpressions": [{"key": READY, "operator": "Exists"}]})]
    );
    let init = &out["spec"]["initContainers"][0];
    assert_eq!(init["name"], "kmm-wait-simple");
    assert_eq!(init["image"], "registry.example/kmm-loader:0.1");
    assert_eq!(
        init["command"],
        json!([
            "kmm-loader",
            "wait",
            "--module",
            "simple_kmod",
            "--timeout",
            "300s"
        ])
    );
    let sc = &init["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(init["resources"]["requests"], init["resources"]["limits"]);
    assert!(init.get("volumeMounts").is_none());
    // The result parses as a Pod with the typed fields we expect.
    let typed: Pod = serde_json::from_value(out).unwrap();
    assert_eq!(typed.spec.unwrap().init_containers.unwrap().len(), 1);
}

#[test]
fn every_term_gets_the_requirements_and_user_terms_are_kept() {
    let user = pod(json!({
        "metadata": {"annotations": {POD_MODULES_ANNOTATION: "team/versioned, simple"}},
        "spec": {
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
                {"matchExpressions": [{"key": READY, "operator": "Exists"}]}
            ]}}, "podAntiAffinity": {}},
            "initContainers": [{"name": "setup", "image": "busybox"}]
        }
    }));
    let (out, _) = mutate_apply(&user);
    let t = terms(&out);
    assert_eq!(t.len(), 3, "no term dropped, none added");
    let version_req = json!({"key": "kmm.node.kubernetes.io/team.versioned.version.ready", "operator": "In", "values": ["1.2.3"]});
    let vready =
        json!({"key": "kmm.node.kubernetes.io/team.versioned.ready", "operator": "Exists"});
    let sready = json!({"key": READY, "operator": "Exists"});
    for term in t {
        let exprs = term["matchExpressions"].as_array().unwrap();
        for want in [&vready, &version_req, &sready] {
            assert_eq!(exprs.iter().filter(|e| *e == want).count(), 1, "{term}");
        }
    }
    assert_eq!(t[0]["matchExpressions"][0]["key"], "zone");
    assert_eq!(t[1]["matchFields"][0]["key"], "metadata.name");
    assert!(out["spec"]["affinity"].get("podAntiAffinity").is_some());
    let names: Vec<&str> = out["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["kmm-wait-versioned", "kmm-wait-simple", "setup"],
        "prepended, in order"
    );
    assert_eq!(
        out["spec"]["initContainers"][0]["command"],
        json!([
            "kmm-loader",
            "wait",
            "--module",
            "simple_kmod",
            "--version",
            "1.2.3",
            "--timeout",
            "300s"
        ])
    );
}

#[test]
fn partial_affinity_objects_are_completed() {
    let with = |affinity: Value| {
        pod(
            json!({"metadata": {"annotations": {POD_MODULES_ANNOTATION: "simple"}}, "spec": {"affinity": affinity}}),
        )
    };
    for affinity in [
        json!({}),
        json!({"podAffinity": {}}),
        json!({"nodeAffinity": {}}),
        json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}]}}),
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}),
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": []}]}}}),
    ] {
        let (out, _) = mutate_apply(&with(affinity.clone()));
        assert_eq!(
            terms(&out).last().unwrap()["matchExpressions"]
                .as_array()
                .unwrap()
                .last()
                .unwrap(),
            &json!({"key": READY, "operator": "Exists"}),
            "{affinity}"
        );
        if affinity["nodeAffinity"]
            .get("preferredDuringSchedulingIgnoredDuringExecution")
            .is_some()
        {
            assert!(
                out["spec"]["affinity"]["nodeAffinity"]
                    .get("preferredDuringSchedulingIgnoredDuringExecution")
                    .is_some()
            );
        }
    }
}

#[test]
fn extended_resources_select_modules() {
    // devices.resourceName of a Module in another namespace (the only advertiser).
    let (out, _) = mutate_apply(&pod(
        json!({"spec": {"containers": [{"name": "app", "image": "a",
        "resources": {"limits": {"example.com/gpu": "1"}}}]}}),
    ));
    assert_eq!(
        terms(&out)[0]["matchExpressions"][0]["key"],
        "kmm.node.kubernetes.io/drivers.gpu.ready"
    );
    assert_eq!(out["spec"]["initContainers"][0]["name"], "kmm-wait-gpu");

    // The default resource name of a Module without devices, requested by an init container.
    let (out, _) = mutate_apply(&pod(
        json!({"spec": {"initContainers": [{"name": "i", "image": "a",
        "resources": {"requests": {"kmm.sigs.x-k8s.io/team.simple": "1"}, "limits": {"kmm.sigs.x-k8s.io/team.simple": "1"}}}]}}),
    ));
    assert_eq!(terms(&out)[0]["matchExpressions"][0]["key"], READY);
    assert_eq!(out["spec"]["initContainers"][0]["name"], "kmm-wait-simple");
    assert_eq!(out["spec"]["initContainers"][1]["name"], "i");
}

#[test]
fn same_name_in_two_namespaces_gets_distinct_containers() {
    let (out, _) = mutate_apply(&pod(
        json!({"metadata": {"annotations": {POD_MODULES_ANNOTATION: "simple,other/simple,team/simple"}}}),
    ));
    let names: Vec<&str> = out["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kmm-wait-simple", "kmm-wait-other-simple"]);
    assert_eq!(
        terms(&out)[0]["matchExpressions"].as_array().unwrap().len(),
        2
    );
}

#[test]
fn in_tree_and_raw_args_modules() {
    let (out, _) = mutate_apply(&pod(
        json!({"metadata": {"annotations": {POD_MODULES_ANNOTATION: "intree,raw"}}}),
    ));
    assert_eq!(
        terms(&out)[0]["matchExpressions"],
        json!([
            {"key": "feature.node.kubernetes.io/ice", "operator": "In", "values": ["true"]},
            {"key": "kmm.node.kubernetes.io/team.raw.ready", "operator": "Exists"}
        ])
    );
    assert!(
        out["spec"].get("initContainers").is_none(),
        "nothing to wait on"
    );
}

#[test]
fn denials_name_the_module() {
    let cases = [
        (
            "missing",
            "Module team/missing (annotation kmm.sigs.x-k8s.io/modules) does not exist",
        ),
        (
            "nowhere/simple",
            "Module nowhere/simple (annotation kmm.sigs.x-k8s.io/modules) does not exist",
        ),
        ("a/b/c", "entry \"a/b/c\" must be NAME or NAMESPACE/NAME"),
        ("/x", "entry \"/x\" must be NAME or NAMESPACE/NAME"),
        (
            "broken",
            "Module team/broken cannot target any node: no kernel mapping is usable",
        ),
        (
            "going",
            "Module team/going cannot target any node: it is being deleted",
        ),
    ];
    for (annotation, want) in cases {
        let p: PodView = serde_json::from_value(pod(
            json!({"metadata": {"annotations": {POD_MODULES_ANNOTATION: annotation}}}),
        ))
        .unwrap();
        let err = mutate_pod(&p, "team", &catalog(), &cfg())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{annotation}: {err}");
    }
    let p: PodView = serde_json::from_value(pod(
        json!({"spec": {"containers": [{"name": "a", "image": "a",
        "resources": {"limits": {"kmm.sigs.x-k8s.io/team.nope": "1"}}}]}}),
    ))
    .unwrap();
    let err = mutate_pod(&p, "team", &catalog(), &cfg())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "Module team/nope (requested resource kmm.sigs.x-k8s.io/team.nope) does not exist"
    );
}

#[test]
fn ambiguous_resource_is_denied_unless_one_is_local() {
    let mut a = loader_module("ns1", "a", None);
    a.spec.devices =
        Some(serde_json::from_value(json!({"resourceName": "example.com/x", "slots": 1})).unwrap());
    let mut b = loader_module("ns2", "b", None);
    b.spec.devices = a.spec.devices.clone();
    let cat = StaticCatalog::new([a, b]);
    let p: PodView = serde_json::from_value(pod(
        json!({"spec": {"containers": [{"name": "a", "image": "a",
        "resources": {"limits": {"example.com/x": "1"}}}]}}),
    ))
    .unwrap();
    let err = mutate_pod(&p, "team", &cat, &cfg()).unwrap_err();
    assert!(
        matches!(&err, Denial::AmbiguousResource { modules, .. } if modules == "ns1/a, ns2/b"),
        "{err}"
    );
    let patch = mutate_pod(&p, "ns2", &cat, &cfg()).unwrap();
    let text = serde_json::to_string(&patch).unwrap();
    // The hand-written document is the serde one.
    let direct: Value = serde_json::from_slice(&patch.to_json()).unwrap();
    assert_eq!(direct, serde_json::from_str::<Value>(&text).unwrap());
    assert!(
        text.contains("ns2.b.ready") && !text.contains("ns1.a"),
        "{text}"
    );
}

#[test]
fn targetable_rule() {
    assert!(targetable(&loader_module("a", "b", None)).is_ok());
    let mut bad_selector = loader_module("a", "b", None);
    bad_selector
        .spec
        .selector
        .insert("not a key".into(), "v".into());
    assert!(
        targetable(&bad_selector)
            .unwrap_err()
            .contains("not a valid label key")
    );
    let mut bad_value = loader_module("a", "b", None);
    bad_value
        .spec
        .selector
        .insert("k".into(), "white space".into());
    assert!(
        targetable(&bad_value)
            .unwrap_err()
            .contains("not a valid label value")
    );
    let mut no_image = loader_module("a", "b", None);
    no_image
        .spec
        .module_loader
        .as_mut()
        .unwrap()
        .container
        .kernel_mappings[0]
        .container_image = String::new();
    assert!(targetable(&no_image).is_err());
    no_image
        .spec
        .module_loader
        .as_mut()
        .unwrap()
        .container
        .container_image = Some("reg/d:1".into());
    assert!(
        targetable(&no_image).is_ok(),
        "the container's image is the default"
    );
    let mut empty = loader_module("a", "b", None);
    empty
        .spec
        .module_loader
        .as_mut()
        .unwrap()
        .container
        .kernel_mappings
        .clear();
    assert!(targetable(&empty).is_err());
}

#[test]
fn container_names_are_dns_labels_of_at_most_63() {
    assert_eq!(container_name(&["my.mod"]), "kmm-wait-my-mod");
    let long = container_name(&["n".repeat(30).as_str(), "m".repeat(40).as_str()]);
    assert_eq!(long.len(), 63);
    assert!(
        long.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    );
    assert!(!container_name(&[&format!("{}.x", "a".repeat(53))]).ends_with('-'));
}

/// The per-Module cache follows the catalog: a changed Module (a new object under the same name) and another
/// config give a new patch, not the one derived earlier; one config shared by many catalogs stays bounded.
#[test]
fn prepared_modules_follow_module_changes_and_config() {
    let shared = cfg();
    let p: PodView = serde_json::from_value(pod(
        json!({"metadata": {"annotations": {POD_MODULES_ANNOTATION: "versioned"}}}),
    ))
    .unwrap();
    let text = |cat: &StaticCatalog, cfg: &MutateConfig| {
        String::from_utf8(mutate_pod(&p, "team", cat, cfg).unwrap().to_json()).unwrap()
    };
    let v1 = StaticCatalog::new([loader_module("team", "versioned", Some("1.0"))]);
    let first = text(&v1, &shared);
    assert!(first.contains(r#""--version","1.0""#), "{first}");
    assert_eq!(text(&v1, &shared), first);
    let v2 = StaticCatalog::new([loader_module("team", "versioned", Some("2.0"))]);
    let second = text(&v2, &shared);
    assert!(second.contains(r#""--version","2.0""#), "{second}");
    assert!(second.contains(r#""values":["2.0"]"#), "{second}");
    assert!(!second.contains("1.0"), "{second}");
    // Same Module objects, other config (clones share the cache).
    let mut other = shared.clone();
    other.loader_image = "mirror.example/kmm-loader:0.2".to_owned();
    other.wait_timeout = "60s".to_owned();
    let third = text(&v2, &other);
    assert!(third.contains("mirror.example/kmm-loader:0.2"), "{third}");
    assert!(third.contains(r#""--timeout","60s""#), "{third}");
    assert!(text(&v2, &shared).contains("registry.example/kmm-loader:0.1"));
    for _ in 0..(PREPARED_MAX + 10) {
        let cat = StaticCatalog::new([loader_module("team", "versioned", Some("3.0"))]);
        assert!(text(&cat, &shared).contains(r#""values":["3.0"]"#));
    }
    let len = shared.prepared.map.read().unwrap().len();
    assert!(len <= PREPARED_MAX, "{len}");
}

/// The one-pass reader reads every Pod it accepts exactly as serde does, accepts the usual shapes, and leaves the
/// rest (repeated fields, `null` where serde refuses it, escapes in kept text, indented JSON, ...) to serde.
#[test]
fn scanned_pods_equal_their_serde_reading() {
    let affinity = |a: Value| json!({"spec": {"containers": [{"name": "c"}], "affinity": a}});
    let term =
        json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]});
    // (object text, whether the reader must accept it)
    let cases: Vec<(String, bool)> = vec![
        (r#"{}"#.to_owned(), true),
        (r#"{"metadata":{},"spec":null}"#.to_owned(), true),
        (
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "app-", "namespace": "team", "name": null,
                    "labels": {"a": "b"}, "annotations": {"x": "y\n\"z\"", "kmm.sigs.x-k8s.io/modules": "simple, other/gpu"},
                    "ownerReferences": [{"controller": true, "uid": "u", "blockOwnerDeletion": false}]},
                "spec": {"containers": [
                    {"name": "app", "image": "reg/app:1", "command": ["sh", "-c", "a && b > /c"], "ports": [{"containerPort": 8080}],
                        "resources": {"limits": {"cpu": "500m", "example.com/gpu": "1", "memory": "1Gi"},
                            "requests": {"example.com/gpu": 1, "kmm.sigs.x-k8s.io/team.simple": "1"}}},
                    {"name": "side", "resources": null}],
                    "initContainers": [{"name": "kmm-wait-simple", "resources": {"requests": null}}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term, {}]}}},
                    "securityContext": {"runAsUser": 1000, "fsGroup": -1, "x": 1.5e-3, "y": [true, false, null, []]},
                    "volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607}}]}}]}})
            .to_string(),
            true,
        ),
        (
            affinity(json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": null}}})).to_string(),
            true,
        ),
        (
            affinity(json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": null, "preferredDuringSchedulingIgnoredDuringExecution": null}, "podAffinity": null})).to_string(),
            true,
        ),
        (
            affinity(json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": null, "operator": "Exists", "values": null}]}]}}})).to_string(),
            true,
        ),
        // Shapes read by serde_json inside the reader: still accepted.
        (
            affinity(json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone"}]},
                "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": term}]}})).to_string(),
            true,
        ),
        (
            affinity(json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}})).to_string(),
            true,
        ),
        (
            affinity(json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zo\"ne", "operator": "In", "values": ["a\\b"]}]}]}}})).to_string(),
            true,
        ),
        // Left to serde.
        (r#"{"metadata":null}"#.to_owned(), false),
        (r#"{"metadata":{"name":"a","name":"b"}}"#.to_owned(), false),
        (r#"{"spec":{"containers":null}}"#.to_owned(), false),
        (r#"{"spec":{"containers":[{"name":null}]}}"#.to_owned(), false),
        (r#"{"spec":{"containers":[{"name":"a\"b"}]}}"#.to_owned(), false),
        (r#"{"spec":{"containers":[{"name":"a"}],"containers":[]}}"#.to_owned(), false),
        (r#"{"metadata":{"annotations":{"kmm.sigs.x-k8s.io/modules":"a\u002cb"}}}"#.to_owned(), false),
        (r#"{"metadata":{"annotations":{"a":1}}}"#.to_owned(), false),
        (r#"{"spec":{"containers":[{"name":"a","resources":{"limits":{"x\/y":"1"}}}]}}"#.to_owned(), false),
        ("{\n  \"metadata\": {}\n}".to_owned(), false),
        (affinity(json!({"nodeAffinity": 3})).to_string(), false),
        (r#"{"spec":{"containers":[]},}"#.to_owned(), false),
        (r#"{"spec":{"containers":[{"name":"a"}]}} x"#.to_owned(), false),
    ];
    for (text, accepted) in cases {
        let serde = serde_json::from_str::<PodView>(&text);
        let mut scan = crate::scan::Scan::new(&text);
        let scanned = scan
            .as_mut()
            .and_then(PodView::scan)
            .filter(|_| scan.as_ref().is_some_and(crate::scan::Scan::at_end));
        assert_eq!(scanned.is_some(), accepted, "{text}");
        if let Some(pod) = scanned {
            assert_eq!(Some(pod), serde.ok(), "{text}");
        }
    }
}
