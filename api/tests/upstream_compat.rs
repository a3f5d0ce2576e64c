//! Compatibility with upstream KMM's published data (../shared/upstream-kmm): CRD property paths and example
//! Modules, read unchanged. Also checks kmm-rs's own examples under manifests/examples.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kmm_api::Module;
use kmm_api::documents::{Document, parse_documents};
use kmm_api::validation::{render, validate_managed_cluster_module, validate_module};
use serde_json::Value;

fn shared() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream-kmm");
    assert!(
        dir.is_dir(),
        "{} is missing: the shared material must sit beside the repository",
        dir.display()
    );
    dir
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every property path of a structural schema: `.spec.moduleLoader.container.kernelMappings[].regexp`.
fn property_paths(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let path = format!("{prefix}.{name}");
            out.insert(path.clone());
            property_paths(child, &path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        property_paths(items, &format!("{prefix}[]"), out);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        property_paths(extra, &format!("{prefix}{{}}"), out);
    }
}

fn schema_of_crd(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

fn compare_with_upstream(ours: Value, upstream_file: &str) {
    let text = std::fs::read_to_string(shared().join("crds").join(upstream_file)).unwrap();
    let upstream: Value = serde_norway::from_str(&text).unwrap();
    let mut want = BTreeSet::new();
    property_paths(schema_of_crd(&upstream), "", &mut want);
    let mut got = BTreeSet::new();
    property_paths(schema_of_crd(&ours), "", &mut got);
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        want.len() > 100,
        "upstream schema of {upstream_file} looks empty"
    );
    assert!(
        missing.is_empty(),
        "{upstream_file}: {} upstream paths missing in ours: {missing:#?}",
        missing.len()
    );
    for key in ["group", "scope"] {
        assert_eq!(
            ours["spec"][key], upstream["spec"][key],
            "{upstream_file}: spec.{key}"
        );
    }
    assert_eq!(
        ours["spec"]["names"]["kind"],
        upstream["spec"]["names"]["kind"]
    );
    assert_eq!(
        ours["spec"]["names"]["plural"],
        upstream["spec"]["names"]["plural"]
    );
    assert_eq!(
        ours["spec"]["versions"][0]["name"],
        upstream["spec"]["versions"][0]["name"]
    );
    assert!(
        ours["spec"]["versions"][0]["subresources"]["status"].is_object(),
        "status subresource"
    );
}

#[test]
fn module_crd_has_every_upstream_property_path() {
    compare_with_upstream(
        serde_json::to_value(kmm_api::crd::module_crd()).unwrap(),
        "kmm.sigs.x-k8s.io_modules.yaml",
    );
}

#[test]
fn managed_cluster_module_crd_has_every_upstream_property_path() {
    compare_with_upstream(
        serde_json::to_value(kmm_api::crd::managed_cluster_module_crd()).unwrap(),
        "hub.kmm.sigs.x-k8s.io_managedclustermodules.yaml",
    );
}

#[test]
fn module_crd_keeps_upstream_defaults_and_rules() {
    let crd = serde_json::to_value(kmm_api::crd::module_crd()).unwrap();
    let spec = &schema_of_crd(&crd)["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["selector"]));
    let rules = spec["x-kubernetes-validations"].as_array().unwrap();
    assert_eq!(
        rules[0]["rule"],
        "!(has(self.dra) && has(self.devicePlugin))"
    );
    assert_eq!(
        rules[0]["message"],
        "spec.dra and spec.devicePlugin are mutually exclusive"
    );
    let container = &spec["properties"]["moduleLoader"]["properties"]["container"];
    assert_eq!(
        container["properties"]["modprobe"]["properties"]["dirName"]["default"],
        "/opt"
    );
    // upstream says minItems 1 but ships a sample with `kernelMappings: []`: kmm-rs accepts it (see module.rs)
    assert!(
        container["properties"]["kernelMappings"]
            .get("minItems")
            .is_none()
    );
    assert_eq!(
        spec["properties"]["imageRepoSecret"]["properties"]["name"]["default"],
        ""
    );
    let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap();
    assert!(columns.iter().any(|c| c["name"] == "Loaded"));
}

fn check_examples(dir: &Path) -> usize {
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in docs {
            match doc {
                Document::Module(mut m) => {
                    m.metadata
                        .namespace
                        .get_or_insert_with(|| "default".to_owned());
                    // round trip: what we serialise reads back the same
                    let again: Module =
                        serde_json::from_value(serde_json::to_value(&*m).unwrap()).unwrap();
                    assert_eq!(again.spec, m.spec, "{}", path.display());
                    if let Err(e) = validate_module(&m, None) {
                        panic!(
                            "{}: Module {:?} rejected:\n{}",
                            path.display(),
                            m.metadata.name,
                            render(&e)
                        );
                    }
                    checked += 1;
                }
                Document::ManagedClusterModule(m) => {
                    if let Err(e) = validate_managed_cluster_module(&m) {
                        panic!(
                            "{}: ManagedClusterModule rejected:\n{}",
                            path.display(),
                            render(&e)
                        );
                    }
                    checked += 1;
                }
                Document::Other { .. } => {}
            }
        }
    }
    checked
}

#[test]
fn every_upstream_example_is_accepted_unchanged() {
    let checked = check_examples(&shared().join("examples"));
    // 4 Modules and 1 ManagedClusterModule at the studied commit
    assert!(checked >= 5, "only {checked} upstream objects checked");
}

#[test]
fn every_kmm_rs_example_is_accepted() {
    let checked = check_examples(&repo().join("manifests/examples"));
    assert!(checked >= 6, "only {checked} examples checked");
}
