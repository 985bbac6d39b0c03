//! ClusterRole aggregation (upstream `pkg/controller/clusterroleaggregation`):
//! a ClusterRole with `aggregationRule.clusterRoleSelectors` gets as `rules`
//! the rules of every other ClusterRole whose labels match any selector, in
//! the order of the matched roles' names, each rule once.
//!
//! Upstream's controller handles one role per event and converges through
//! the events its own writes cause (`view` feeds `edit` feeds `admin`).
//! [`reconcile_all`] instead computes the fixpoint in memory and writes each
//! changed role once, so one pass converges.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::ApiState;
use crate::api::error::ApiError;
use crate::storage::{self, ListOptions, collection_prefix};

/// Whether `labels` satisfy a `metav1.LabelSelector` (`matchLabels` and
/// `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`; an
/// empty selector matches everything, an unknown operator nothing).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// The rules `target` aggregates from `roles` (which may include `target`
/// itself, skipped as upstream does).
pub fn aggregate(roles: &[ClusterRole], target: &ClusterRole) -> Option<Vec<PolicyRule>> {
    let selectors = target
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .as_deref()
        .unwrap_or(&[]);
    let mut matched: Vec<&ClusterRole> = roles
        .iter()
        .filter(|r| r.metadata.name != target.metadata.name)
        .filter(|r| {
            let labels = r.metadata.labels.clone().unwrap_or_default();
            selectors.iter().any(|s| selector_matches(s, &labels))
        })
        .collect();
    matched.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out: Vec<PolicyRule> = Vec::new();
    for r in matched {
        for rule in r.rules.iter().flatten() {
            if !out.contains(rule) {
                out.push(rule.clone());
            }
        }
    }
    Some(out)
}

/// Recompute every aggregated ClusterRole and write those whose rules
/// changed (compare-and-swap on the listed revision: a concurrent write
/// wins and the next trigger retries). Returns how many were written.
pub async fn reconcile_all(state: &ApiState) -> Result<usize, ApiError> {
    let prefix =
        collection_prefix("clusterroles", None).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let page = state
        .storage
        .list(&prefix, ListOptions::default())
        .await
        .map_err(|e| ApiError::from_storage(e, "clusterroles.rbac.authorization.k8s.io", ""))?;
    let mut roles: Vec<(String, i64, serde_json::Value, ClusterRole)> = Vec::new();
    for kv in &page.items {
        let Ok(raw) = serde_json::from_slice::<serde_json::Value>(&kv.value) else {
            continue;
        };
        match serde_json::from_value::<ClusterRole>(raw.clone()) {
            Ok(r) => roles.push((kv.key.clone(), kv.mod_revision, raw, r)),
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "undecodable cluster role skipped"),
        }
    }
    let original: Vec<Option<Vec<PolicyRule>>> = roles.iter().map(|r| r.3.rules.clone()).collect();
    // Aggregated roles may select one another: iterate to the fixpoint (at
    // most one round per role, as each round settles at least one more
    // level of the chain; a cycle stops there too).
    for _ in 0..=roles.len() {
        let snapshot: Vec<ClusterRole> = roles.iter().map(|r| r.3.clone()).collect();
        let mut changed = false;
        for entry in roles.iter_mut() {
            if let Some(rules) = aggregate(&snapshot, &entry.3) {
                let rules = Some(rules);
                if entry.3.rules.as_ref().map_or(Vec::new(), Clone::clone)
                    != rules.clone().unwrap_or_default()
                {
                    entry.3.rules = rules;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut written = 0;
    for ((key, rev, raw, role), before) in roles.into_iter().zip(original) {
        if role.rules.clone().unwrap_or_default() == before.unwrap_or_default() {
            continue;
        }
        // Write only `rules` into the stored JSON: fields this server does
        // not know survive.
        let mut obj = raw;
        obj["rules"] = serde_json::to_value(role.rules.unwrap_or_default())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some(m) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.remove("resourceVersion");
        }
        let bytes = serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
        match state.storage.update(&key, bytes, Some(rev)).await {
            Ok(_) => {
                written += 1;
                tracing::debug!(%key, "aggregated cluster role updated");
            }
            Err(storage::Error::Conflict { .. } | storage::Error::NotFound { .. }) => {
                tracing::debug!(%key, "aggregated cluster role changed meanwhile; retrying later");
            }
            Err(e) => {
                return Err(ApiError::from_storage(
                    e,
                    "clusterroles.rbac.authorization.k8s.io",
                    "",
                ));
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors() {
        let l = labels(&[("a", "1"), ("b", "2")]);
        let sel = |ml: &[(&str, &str)], ex: Vec<(&str, &str, &[&str])>| LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!ex.is_empty()).then(|| {
                ex.into_iter()
                    .map(|(k, op, vs)| LabelSelectorRequirement {
                        key: k.into(),
                        operator: op.into(),
                        values: Some(vs.iter().map(|v| v.to_string()).collect()),
                    })
                    .collect()
            }),
        };
        assert!(selector_matches(&sel(&[], vec![]), &l));
        assert!(selector_matches(&sel(&[("a", "1")], vec![]), &l));
        assert!(!selector_matches(&sel(&[("a", "2")], vec![]), &l));
        assert!(selector_matches(
            &sel(&[], vec![("b", "In", &["2", "3"])]),
            &l
        ));
        assert!(!selector_matches(
            &sel(&[], vec![("b", "NotIn", &["2"])]),
            &l
        ));
        assert!(selector_matches(
            &sel(&[], vec![("c", "DoesNotExist", &[])]),
            &l
        ));
        assert!(!selector_matches(&sel(&[], vec![("c", "Exists", &[])]), &l));
        assert!(!selector_matches(&sel(&[], vec![("a", "Bogus", &[])]), &l));
    }

    #[test]
    fn aggregates_sorted_deduplicated() {
        let mk = |name: &str, l: &[(&str, &str)], verbs: &[&str]| ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(l)),
                ..ObjectMeta::default()
            },
            rules: Some(
                verbs
                    .iter()
                    .map(|v| PolicyRule {
                        verbs: vec![v.to_string()],
                        ..PolicyRule::default()
                    })
                    .collect(),
            ),
            aggregation_rule: None,
        };
        let mut target = mk("t", &[("x", "true")], &[]);
        target.aggregation_rule = Some(k8s_openapi::api::rbac::v1::AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some(labels(&[("x", "true")])),
                match_expressions: None,
            }]),
        });
        let roles = vec![
            mk("z", &[("x", "true")], &["get", "list"]),
            mk("a", &[("x", "true")], &["list", "watch"]),
            mk("m", &[("x", "false")], &["delete"]),
            target.clone(),
        ];
        let got = aggregate(&roles, &target).expect("aggregated");
        let verbs: Vec<&str> = got.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(verbs, ["list", "watch", "get"]);
        assert_eq!(aggregate(&roles, &roles[0]), None);
    }
}
