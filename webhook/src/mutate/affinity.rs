//! JSON Patch operations adding node requirements to every required nodeSelectorTerm.
//!
//! Absent objects are created with one `add` of the whole value (an `add` below a missing parent fails, and a patch
//! that fails to apply rejects the pod even under failurePolicy Ignore). The pointers are fixed field names and
//! indexes: no token ever needs RFC 6901 escaping.
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
};

use std::sync::Arc;

use super::{AddOp, Json, json_array};
use crate::b64::SharedText;
use crate::scan::{Scan, once};

/// Reads `spec.affinity` as k8s-openapi does: the usual shape (required node terms of match expressions) by the
/// scanner, anything else (pod affinities, preferred terms, match fields, escapes, repeated fields) by serde_json
/// from the value's text. `None` when neither reads it.
pub(super) fn scan(s: &mut Scan<'_>) -> Option<Affinity> {
    let start = s.checkpoint();
    if let Some(affinity) = node_terms_only(s) {
        return Some(affinity);
    }
    s.rewind(start);
    serde_json::from_str(s.raw()?).ok()
}

/// k8s-openapi reads `null` as absent (an absent list as empty) and skips unknown fields.
fn node_terms_only(s: &mut Scan<'_>) -> Option<Affinity> {
    let mut affinity = Affinity::default();
    let mut seen = 0;
    s.object(|s, key| match key {
        "nodeAffinity" => {
            once(&mut seen, 0)?;
            if !s.null()? {
                affinity.node_affinity = Some(node_affinity(s)?);
            }
            Some(())
        }
        "podAffinity" | "podAntiAffinity" => s.null()?.then_some(()),
        _ => s.skip(),
    })?;
    Some(affinity)
}

fn node_affinity(s: &mut Scan<'_>) -> Option<NodeAffinity> {
    let mut out = NodeAffinity::default();
    let mut seen = 0;
    s.object(|s, key| match key {
        "requiredDuringSchedulingIgnoredDuringExecution" => {
            once(&mut seen, 0)?;
            if !s.null()? {
                let mut terms = Vec::new();
                let mut seen = 0;
                s.object(|s, key| match key {
                    "nodeSelectorTerms" => {
                        once(&mut seen, 0)?;
                        if !s.null()? {
                            terms = s.list(term)?;
                        }
                        Some(())
                    }
                    _ => s.skip(),
                })?;
                out.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
                    node_selector_terms: terms,
                });
            }
            Some(())
        }
        "preferredDuringSchedulingIgnoredDuringExecution" => s.null()?.then_some(()),
        _ => s.skip(),
    })?;
    Some(out)
}

fn term(s: &mut Scan<'_>) -> Option<NodeSelectorTerm> {
    let mut out = NodeSelectorTerm::default();
    let mut seen = 0;
    s.object(|s, key| match key {
        "matchExpressions" => {
            once(&mut seen, 0)?;
            if !s.null()? {
                out.match_expressions = Some(s.list(requirement)?);
            }
            Some(())
        }
        "matchFields" => s.null()?.then_some(()),
        _ => s.skip(),
    })?;
    Some(out)
}

fn requirement(s: &mut Scan<'_>) -> Option<NodeSelectorRequirement> {
    let mut out = NodeSelectorRequirement::default();
    let mut seen = 0;
    s.object(|s, key| {
        match key {
            "key" => {
                once(&mut seen, 0)?;
                out.key = s.opt_str()?.unwrap_or_default().to_owned();
            }
            "operator" => {
                once(&mut seen, 1)?;
                out.operator = s.opt_str()?.unwrap_or_default().to_owned();
            }
            "values" => {
                once(&mut seen, 2)?;
                if !s.null()? {
                    out.values = Some(s.list(|s| s.str().map(str::to_owned))?);
                }
            }
            _ => s.skip()?,
        }
        Some(())
    })?;
    Some(out)
}

/// The same requirement: key, operator and the same set of values (no allocation: this runs for every existing
/// requirement of every pod needing a driver).
fn same(a: &NodeSelectorRequirement, b: &NodeSelectorRequirement) -> bool {
    let within = |x: &[String], y: &[String]| x.iter().all(|v| y.contains(v));
    let va = a.values.as_deref().unwrap_or_default();
    let vb = b.values.as_deref().unwrap_or_default();
    a.key == b.key && a.operator == b.operator && within(va, vb) && within(vb, va)
}

/// `TERMS/<i>/<rest>`, written without the formatting machinery (a tenth of its cost).
fn term_path(i: usize, rest: &str) -> String {
    let index = i.to_string();
    let mut path = String::with_capacity(TERMS.len() + index.len() + rest.len() + 1);
    path.push_str(TERMS);
    path.push('/');
    path.push_str(&index);
    path.push_str(rest);
    path
}

const AFFINITY: &str = "/spec/affinity";
const NODE_AFFINITY: &str = "/spec/affinity/nodeAffinity";
const REQUIRED: &str = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";
const TERMS: &str =
    "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms";

/// Operations making every required term contain every requirement in `reqs` (each with its JSON text). Values
/// are written as text; the test `written_values_equal_their_serde_form` checks them against k8s-openapi's.
pub(super) fn ops(
    affinity: Option<&Affinity>,
    reqs: &[(&NodeSelectorRequirement, &Arc<SharedText>)],
) -> Vec<AddOp> {
    if reqs.is_empty() {
        return Vec::new();
    }
    let texts: Vec<&str> = reqs.iter().map(|&(_, json)| json.as_str()).collect();
    let term = || format!("{{\"matchExpressions\":{}}}", json_array(&texts));
    let required = || format!("{{\"nodeSelectorTerms\":[{}]}}", term());
    let node_affinity = || {
        format!(
            "{{\"requiredDuringSchedulingIgnoredDuringExecution\":{}}}",
            required()
        )
    };
    let Some(affinity) = affinity else {
        return vec![AddOp::raw(
            AFFINITY.to_owned(),
            format!("{{\"nodeAffinity\":{}}}", node_affinity()),
        )];
    };
    let Some(existing) = &affinity.node_affinity else {
        return vec![AddOp::raw(NODE_AFFINITY.to_owned(), node_affinity())];
    };
    let Some(selector) = &existing.required_during_scheduling_ignored_during_execution else {
        return vec![AddOp::raw(REQUIRED.to_owned(), required())];
    };
    if selector.node_selector_terms.is_empty() {
        return vec![AddOp::raw(TERMS.to_owned(), format!("[{}]", term()))];
    }
    let mut out = Vec::new();
    for (i, term) in selector.node_selector_terms.iter().enumerate() {
        let have = term.match_expressions.as_deref().unwrap_or_default();
        let missing: Vec<&Arc<SharedText>> = reqs
            .iter()
            .filter(|(r, _)| !have.iter().any(|h| same(h, r)))
            .map(|(_, json)| *json)
            .collect();
        if missing.is_empty() {
            continue;
        }
        if term.match_expressions.is_none() {
            let path = term_path(i, "/matchExpressions");
            out.push(AddOp {
                path,
                value: Json::Array(
                    missing
                        .into_iter()
                        .map(|m| Json::Shared(Arc::clone(m)))
                        .collect(),
                ),
            });
        } else {
            for m in missing {
                let path = term_path(i, "/matchExpressions/-");
                out.push(AddOp::shared(path, m));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    use k8s_openapi::api::core::v1::{NodeAffinity, NodeSelector, NodeSelectorTerm};
    use serde_json::Value;

    fn req(key: &str, op: &str, values: Option<Vec<&str>>) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.to_owned(),
            operator: op.to_owned(),
            values: values.map(|v| v.into_iter().map(str::to_owned).collect()),
        }
    }

    /// The values written as text parse to exactly what serde_json writes for the k8s-openapi objects, for every
    /// shape of existing affinity.
    #[test]
    fn written_values_equal_their_serde_form() {
        let reqs = [
            req("kmm.node.kubernetes.io/a.b.ready", "Exists", None),
            req(
                "kmm.node.kubernetes.io/a.b.version.ready",
                "In",
                Some(vec!["1.0"]),
            ),
        ];
        let texts: Vec<Arc<SharedText>> = reqs
            .iter()
            .map(|r| SharedText::new(serde_json::to_string(r).unwrap()))
            .collect();
        let pairs: Vec<(&NodeSelectorRequirement, &Arc<SharedText>)> =
            reqs.iter().zip(texts.iter()).collect();
        let term = NodeSelectorTerm {
            match_expressions: Some(reqs.to_vec()),
            match_fields: None,
        };
        let required = NodeSelector {
            node_selector_terms: vec![term.clone()],
        };
        let node_affinity = NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(required.clone()),
            preferred_during_scheduling_ignored_during_execution: None,
        };
        let with = |na: Option<NodeAffinity>| Affinity {
            node_affinity: na,
            ..Affinity::default()
        };
        let other_term = NodeSelectorTerm {
            match_expressions: Some(vec![req("zone", "In", Some(vec!["a"]))]),
            match_fields: None,
        };
        let fields_only = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", Some(vec!["n1"]))]),
        };
        let selector = |terms: Vec<NodeSelectorTerm>| {
            with(Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                preferred_during_scheduling_ignored_during_execution: None,
            }))
        };
        type Case<'a> = (Option<Affinity>, Vec<(&'a str, Value)>);
        let cases: Vec<Case<'_>> = vec![
            (
                None,
                vec![("/spec/affinity", sv(&with(Some(node_affinity.clone()))))],
            ),
            (
                Some(Affinity::default()),
                vec![("/spec/affinity/nodeAffinity", sv(&node_affinity))],
            ),
            (
                Some(with(Some(NodeAffinity::default()))),
                vec![(
                    "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                    sv(&required),
                )],
            ),
            (
                Some(selector(Vec::new())),
                vec![(
                    "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
                    sv(&vec![term.clone()]),
                )],
            ),
            (
                Some(selector(vec![fields_only, other_term])),
                vec![
                    (
                        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions",
                        sv(&reqs.to_vec()),
                    ),
                    (
                        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/1/matchExpressions/-",
                        sv(&reqs[0]),
                    ),
                    (
                        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/1/matchExpressions/-",
                        sv(&reqs[1]),
                    ),
                ],
            ),
        ];
        for (affinity, want) in cases {
            let got: Vec<(String, Value)> = ops(affinity.as_ref(), &pairs)
                .into_iter()
                .map(|op| (op.path.clone(), serde_json::from_str(&op.value()).unwrap()))
                .collect();
            let want: Vec<(String, Value)> =
                want.into_iter().map(|(p, v)| (p.to_owned(), v)).collect();
            assert_eq!(got, want, "{affinity:?}");
        }
        // A term that already has everything gets nothing.
        assert!(ops(Some(&selector(vec![term])), &pairs).is_empty());
    }

    fn sv<T: serde::Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }
}
