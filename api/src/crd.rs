//! The CustomResourceDefinitions of kmm-rs, as `cargo xtask codegen` writes them to `manifests/crds/`.
//!
//! They are the kube-derive CRDs of [`Module`] and [`ManagedClusterModule`], with the root `apiVersion`, `kind` and
//! `metadata` properties that controller-gen (upstream's generator) also declares.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::{ManagedClusterModule, Module};

fn prop(type_: &str, description: &str) -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some(type_.to_owned()),
        description: Some(description.to_owned()),
        ..Default::default()
    }
}

fn with_root_properties(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let props = root.properties.get_or_insert_with(Default::default);
        props.entry("apiVersion".to_owned()).or_insert_with(|| {
            prop(
                "string",
                "APIVersion defines the versioned schema of this representation of an object.",
            )
        });
        props.entry("kind".to_owned()).or_insert_with(|| {
            prop(
                "string",
                "Kind is a string value representing the REST resource this object represents.",
            )
        });
        props
            .entry("metadata".to_owned())
            .or_insert_with(|| prop("object", "Standard object metadata."));
    }
    crd
}

/// The Module CRD (`modules.kmm.sigs.x-k8s.io`).
pub fn module_crd() -> CustomResourceDefinition {
    with_root_properties(Module::crd())
}

/// The ManagedClusterModule CRD (`managedclustermodules.hub.kmm.sigs.x-k8s.io`).
pub fn managed_cluster_module_crd() -> CustomResourceDefinition {
    with_root_properties(ManagedClusterModule::crd())
}

/// Every CRD with the file name it is generated into.
pub fn all() -> [(&'static str, CustomResourceDefinition); 2] {
    [
        ("kmm.sigs.x-k8s.io_modules.yaml", module_crd()),
        (
            "hub.kmm.sigs.x-k8s.io_managedclustermodules.yaml",
            managed_cluster_module_crd(),
        ),
    ]
}
