//! JSON Patch operations adding node requirements to every required nodeSelectorTerm.
//!
//! Absent objects are created with one `add` of the whole value (an `add` below a missing parent fails, and a patch
//! that fails to apply rejects the pod even under failurePolicy Ignore). Pointers are built token by token, so any
//! `/` or `~` in a token is escaped (`~1`, `~0`) as RFC 6901 requires.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::{Affinity, NodeSelectorRequirement};
use serde_json::{Value, json};

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn to_value(r: &NodeSelectorRequirement) -> Value {
    match &r.values {
        Some(v) => json!({"key": r.key, "operator": r.operator, "values": v}),
        None => json!({"key": r.key, "operator": r.operator}),
    }
}

fn same(a: &NodeSelectorRequirement, b: &NodeSelectorRequirement) -> bool {
    let norm = |r: &NodeSelectorRequirement| {
        let mut v = r.values.clone().unwrap_or_default();
        v.sort();
        v
    };
    a.key == b.key && a.operator == b.operator && norm(a) == norm(b)
}

/// Operations making every required term contain every requirement in `reqs`.
pub(super) fn ops(
    affinity: Option<&Affinity>,
    reqs: &[NodeSelectorRequirement],
) -> Vec<PatchOperation> {
    if reqs.is_empty() {
        return Vec::new();
    }
    let exprs: Vec<Value> = reqs.iter().map(to_value).collect();
    let required = json!({"nodeSelectorTerms": [{"matchExpressions": exprs}]});
    let mut path = PointerBuf::from_tokens(["spec", "affinity"]);
    let Some(affinity) = affinity else {
        return vec![add(
            path,
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}),
        )];
    };
    path.push_back("nodeAffinity");
    let Some(node_affinity) = &affinity.node_affinity else {
        return vec![add(
            path,
            json!({"requiredDuringSchedulingIgnoredDuringExecution": required}),
        )];
    };
    path.push_back("requiredDuringSchedulingIgnoredDuringExecution");
    let Some(selector) = &node_affinity.required_during_scheduling_ignored_during_execution else {
        return vec![add(path, required)];
    };
    path.push_back("nodeSelectorTerms");
    if selector.node_selector_terms.is_empty() {
        return vec![add(path, json!([{"matchExpressions": exprs}]))];
    }
    let mut out = Vec::new();
    for (i, term) in selector.node_selector_terms.iter().enumerate() {
        let have = term.match_expressions.as_deref().unwrap_or_default();
        let missing: Vec<Value> = reqs
            .iter()
            .filter(|r| !have.iter().any(|h| same(h, r)))
            .map(to_value)
            .collect();
        if missing.is_empty() {
            continue;
        }
        let term_path = path
            .with_trailing_token(i)
            .with_trailing_token("matchExpressions");
        if term.match_expressions.is_none() {
            out.push(add(term_path, Value::Array(missing)));
        } else {
            for m in missing {
                out.push(add(term_path.with_trailing_token("-"), m));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tokens_with_slashes_are_escaped() {
        let p = PointerBuf::from_tokens([
            "metadata",
            "labels",
            "kmm.node.kubernetes.io/a.b.ready",
            "x~y",
        ]);
        assert_eq!(
            p.as_str(),
            "/metadata/labels/kmm.node.kubernetes.io~1a.b.ready/x~0y"
        );
    }
}
