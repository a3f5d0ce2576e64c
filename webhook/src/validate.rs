//! Validating handlers: Modules, ManagedClusterModules and the namespace-deletion guard. The rules are kmm-api's;
//! this module only decodes the objects and turns violations into verdicts.

use k8s_openapi::api::core::v1::Namespace;
use kmm_api::validation::{self, KubeVersion};
use kmm_api::{ManagedClusterModule, Module};
use serde::de::DeserializeOwned;

use crate::review::{Operation, Request, Verdict};

/// Decodes `request.object` (or `oldObject`) as `T`; a missing or malformed object is a 400 verdict.
/// The answer when `request.<field>` is absent.
pub(crate) fn missing(field: &str) -> Verdict {
    Verdict::bad_request(format!("request.{field} is missing"))
}

pub(crate) fn decode<T: DeserializeOwned>(
    value: Option<&serde_json::value::RawValue>,
    field: &str,
    kind: &str,
) -> Result<T, Verdict> {
    let value = value.ok_or_else(|| missing(field))?;
    serde_json::from_str(value.get())
        .map_err(|e| Verdict::bad_request(format!("request.{field} is not a valid {kind}: {e}")))
}

fn with_request_identity(mut m: Box<Module>, req: &Request) -> Box<Module> {
    if m.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        m.metadata.namespace = req.namespace.clone();
    }
    if m.metadata.name.as_deref().unwrap_or("").is_empty() && !req.name.is_empty() {
        m.metadata.name = Some(req.name.clone());
    }
    m
}

fn verdict(result: Result<(), Vec<validation::FieldError>>) -> Verdict {
    match result {
        Ok(()) => Verdict::allow(),
        Err(errors) => Verdict::deny(validation::render(&errors)),
    }
}

/// `Module` CREATE and UPDATE (other operations are allowed: they are not registered).
pub fn module(req: &Request, kube: Option<KubeVersion>) -> Verdict {
    module_with(req, kube, || {
        decode::<Box<Module>>(req.object.as_deref(), "object", "Module")
    })
}

/// [`module`], given how to get the new object (decoded only when the kind and operation call for it). The Module
/// is boxed: it is a large struct, and moving it by value through the decoder cost more than a fifth of a request.
pub fn module_with(
    req: &Request,
    kube: Option<KubeVersion>,
    object: impl FnOnce() -> Result<Box<Module>, Verdict>,
) -> Verdict {
    if !req.kind.is("kmm.sigs.x-k8s.io", "v1beta1", "Module") {
        return Verdict::bad_request(format!(
            "this endpoint validates kmm.sigs.x-k8s.io/v1beta1 Module objects, got {}",
            req.kind
        ));
    }
    match req.operation {
        Operation::Create => match object() {
            Ok(new) => verdict(validation::validate_module(
                &with_request_identity(new, req),
                kube,
            )),
            Err(v) => v,
        },
        Operation::Update => {
            let new = match object() {
                Ok(m) => with_request_identity(m, req),
                Err(v) => return v,
            };
            let old = match decode::<Box<Module>>(req.old_object.as_deref(), "oldObject", "Module")
            {
                Ok(m) => with_request_identity(m, req),
                Err(v) => return v,
            };
            verdict(validation::validate_module_update(&old, &new, kube))
        }
        Operation::Delete | Operation::Connect => Verdict::allow(),
    }
}

/// `ManagedClusterModule` CREATE and UPDATE.
pub fn managed_cluster_module(req: &Request) -> Verdict {
    if !req
        .kind
        .is("hub.kmm.sigs.x-k8s.io", "v1beta1", "ManagedClusterModule")
    {
        return Verdict::bad_request(format!(
            "this endpoint validates hub.kmm.sigs.x-k8s.io/v1beta1 ManagedClusterModule objects, got {}",
            req.kind
        ));
    }
    const KIND: &str = "ManagedClusterModule";
    match req.operation {
        Operation::Create => {
            match decode::<ManagedClusterModule>(req.object.as_deref(), "object", KIND) {
                Ok(new) => verdict(validation::validate_managed_cluster_module(&new)),
                Err(v) => v,
            }
        }
        Operation::Update => {
            let new = match decode::<ManagedClusterModule>(req.object.as_deref(), "object", KIND) {
                Ok(m) => m,
                Err(v) => return v,
            };
            let old = match decode::<ManagedClusterModule>(
                req.old_object.as_deref(),
                "oldObject",
                KIND,
            ) {
                Ok(m) => m,
                Err(v) => return v,
            };
            verdict(validation::validate_managed_cluster_module_update(
                &old, &new,
            ))
        }
        Operation::Delete | Operation::Connect => Verdict::allow(),
    }
}

/// Namespace DELETE: refused while the namespace is labelled as holding Modules.
pub fn namespace(req: &Request) -> Verdict {
    if !req.kind.is("", "v1", "Namespace") {
        return Verdict::bad_request(format!(
            "this endpoint validates v1 Namespace objects, got {}",
            req.kind
        ));
    }
    if req.operation != Operation::Delete {
        return Verdict::allow();
    }
    let ns = match decode::<Namespace>(req.old_object.as_deref(), "oldObject", "Namespace") {
        Ok(ns) => ns,
        Err(v) => return v,
    };
    match validation::validate_namespace_deletion(ns.metadata.labels.iter().flatten()) {
        Ok(()) => Verdict::allow(),
        Err(e) => Verdict::deny(e.message),
    }
}

#[cfg(test)]
mod tests;
