//! Does a Module target this node? Its selector (equality on every key) must match the node's labels, and every
//! NoSchedule/NoExecute taint of the node must be tolerated by the Module's tolerations (KMM-COMPAT 7.4, the
//! device-plugin rule: Module tolerations only; PreferNoSchedule is ignored).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Taint, Toleration};
use kmm_api::Module;

/// The node facts a Module is matched against.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFacts {
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Node taints.
    pub taints: Vec<Taint>,
}

/// Whether every selector entry is a node label with the same value (an empty selector matches every node).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Kubernetes' `Toleration.ToleratesTaint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            // An empty key with Equal matches nothing (the API server rejects it; be strict).
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// Whether every NoSchedule/NoExecute taint is tolerated by one of `tolerations`.
pub fn schedulable(taints: &[Taint], tolerations: &[Toleration]) -> bool {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// Whether `module` targets the node: selector and tolerations.
pub fn module_targets(module: &Module, node: &NodeFacts) -> bool {
    selector_matches(&module.spec.selector, &node.labels)
        && schedulable(
            &node.taints,
            module.spec.tolerations.as_deref().unwrap_or_default(),
        )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn tol(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn toleration_table() {
        let t = taint("gpu", Some("yes"), "NoSchedule");
        let cases = [
            (tol(Some("gpu"), None, Some("yes"), None), true),
            (tol(Some("gpu"), Some("Equal"), Some("no"), None), false),
            (tol(Some("gpu"), Some("Exists"), None, None), true),
            (tol(None, Some("Exists"), None, None), true),
            (tol(None, Some("Exists"), None, Some("NoExecute")), false),
            (
                tol(Some("gpu"), Some("Exists"), None, Some("NoSchedule")),
                true,
            ),
            (tol(Some("other"), Some("Exists"), None, None), false),
            (tol(None, None, None, None), false),
        ];
        for (i, (tol, want)) in cases.iter().enumerate() {
            assert_eq!(tolerates(tol, &t), *want, "case {i}: {tol:?}");
        }
    }

    #[test]
    fn prefer_no_schedule_is_ignored_and_cordon_needs_a_toleration() {
        let soft = [taint("x", None, "PreferNoSchedule")];
        assert!(schedulable(&soft, &[]));
        let cordon = [taint(
            "node.kubernetes.io/unschedulable",
            None,
            "NoSchedule",
        )];
        assert!(!schedulable(&cordon, &[]));
        assert!(schedulable(
            &cordon,
            &[tol(
                Some("node.kubernetes.io/unschedulable"),
                Some("Exists"),
                None,
                None
            )]
        ));
    }

    #[test]
    fn selector_is_an_equality_match_on_every_key() {
        let labels: BTreeMap<_, _> =
            [("a".to_owned(), "1".to_owned()), ("b".into(), "2".into())].into();
        assert!(selector_matches(&BTreeMap::new(), &labels));
        assert!(selector_matches(
            &[("a".to_owned(), "1".to_owned())].into(),
            &labels
        ));
        assert!(!selector_matches(
            &[("a".to_owned(), "2".to_owned())].into(),
            &labels
        ));
        assert!(!selector_matches(
            &[("c".to_owned(), "".to_owned())].into(),
            &labels
        ));
    }
}
