//! JSON Patch operations adding node requirements to every required nodeSelectorTerm.
//!
//! Absent objects are created with one `add` of the whole value (an `add` below a missing parent fails, and a patch
//! that fails to apply rejects the pod even under failurePolicy Ignore). Pointers are built token by token, so any
//! `/` or `~` in a token is escaped (`~1`, `~0`) as RFC 6901 requires.

use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
};

use super::AddOp;

fn same(a: &NodeSelectorRequirement, b: &NodeSelectorRequirement) -> bool {
    let norm = |r: &NodeSelectorRequirement| {
        let mut v = r.values.clone().unwrap_or_default();
        v.sort();
        v
    };
    a.key == b.key && a.operator == b.operator && norm(a) == norm(b)
}

/// Operations making every required term contain every requirement in `reqs`.
pub(super) fn ops(affinity: Option<&Affinity>, reqs: &[NodeSelectorRequirement]) -> Vec<AddOp> {
    if reqs.is_empty() {
        return Vec::new();
    }
    let term = || NodeSelectorTerm {
        match_expressions: Some(reqs.to_vec()),
        match_fields: None,
    };
    let required = || NodeSelector {
        node_selector_terms: vec![term()],
    };
    let node_affinity = || NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(required()),
        preferred_during_scheduling_ignored_during_execution: None,
    };
    let mut path = PointerBuf::from_tokens(["spec", "affinity"]);
    let Some(affinity) = affinity else {
        let whole = Affinity {
            node_affinity: Some(node_affinity()),
            ..Affinity::default()
        };
        return vec![AddOp::new(path, &whole)];
    };
    path.push_back("nodeAffinity");
    let Some(existing) = &affinity.node_affinity else {
        return vec![AddOp::new(path, &node_affinity())];
    };
    path.push_back("requiredDuringSchedulingIgnoredDuringExecution");
    let Some(selector) = &existing.required_during_scheduling_ignored_during_execution else {
        return vec![AddOp::new(path, &required())];
    };
    path.push_back("nodeSelectorTerms");
    if selector.node_selector_terms.is_empty() {
        return vec![AddOp::new(path, &[term()])];
    }
    let mut out = Vec::new();
    for (i, term) in selector.node_selector_terms.iter().enumerate() {
        let have = term.match_expressions.as_deref().unwrap_or_default();
        let missing: Vec<&NodeSelectorRequirement> = reqs
            .iter()
            .filter(|r| !have.iter().any(|h| same(h, r)))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let term_path = path
            .with_trailing_token(i)
            .with_trailing_token("matchExpressions");
        if term.match_expressions.is_none() {
            out.push(AddOp::new(term_path, &missing));
        } else {
            for m in missing {
                out.push(AddOp::new(term_path.with_trailing_token("-"), m));
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
