//! The RuntimeClass admission plugin (upstream
//! `plugin/pkg/admission/runtimeclass/admission.go`), on pod creation only:
//!
//! - `spec.runtimeClassName` must name a RuntimeClass (`pod rejected:
//!   RuntimeClass "x" not found`);
//! - the class's `overhead.podFixed` becomes the pod's `spec.overhead`; a pod
//!   that sets a different one is refused, and so is a pod that sets one
//!   without a class defining it (upstream's `Validate` half);
//! - the class's `scheduling.nodeSelector` is merged into the pod's (the
//!   same key with another value is a conflict) and its
//!   `scheduling.tolerations` into the pod's (`MergeTolerations`: a
//!   toleration another one covers is dropped).
//!
//! Upstream splits this into `Admit` (mutating) and `Validate`; nothing else
//! changes a pod between the two here, so both run in one step, with the
//! class read once. Refusals are 403s shaped as `admission.NewForbidden`.

use std::collections::BTreeMap;

use berth_api::quantity::Quantity;
use k8s_openapi::api::core::v1::{PodSpec, Toleration};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use serde_json::{Value, json};

use super::ApiState;
use super::admission::{Attributes, Operation};
use super::error::{ApiError, ApiResult};
use crate::storage::object_key;

/// Apply the plugin to a write; only the creation of a pod (not of a
/// subresource) is looked at. `pod` is the object to be stored, changed in place.
pub async fn admit(state: &ApiState, a: &Attributes<'_>, pod: &mut Value) -> ApiResult<()> {
    if a.operation != Operation::Create
        || a.sub.is_some()
        || (a.res.group, a.res.name) != ("", "pods")
    {
        return Ok(());
    }
    let mut spec: PodSpec = serde_json::from_value(pod.get("spec").cloned().unwrap_or(json!({})))
        .map_err(|_| {
        ApiError::BadRequest(
            "Resource was marked with kind Pod but was unable to be converted".into(),
        )
    })?;
    let Some(name) = spec.runtime_class_name.clone() else {
        return apply(&mut spec, None).map_err(|reason| a.forbidden(reason));
    };
    let class = runtime_class(state, &name)
        .await?
        .ok_or_else(|| a.forbidden(format!("pod rejected: RuntimeClass {name:?} not found")))?;
    apply(&mut spec, Some(&class)).map_err(|reason| a.forbidden(reason))?;
    if let Some(spec_json) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        // Only the three fields the plugin owns; the rest stays as sent.
        let fields = [
            ("overhead", serde_json::to_value(&spec.overhead)),
            ("nodeSelector", serde_json::to_value(&spec.node_selector)),
            ("tolerations", serde_json::to_value(&spec.tolerations)),
        ];
        for (key, value) in fields {
            match value.map_err(|e| ApiError::Internal(e.to_string()))? {
                Value::Null => spec_json.remove(key),
                v => spec_json.insert(key.into(), v),
            };
        }
    }
    Ok(())
}

/// The stored RuntimeClass `name` (`None`: there is none; a name that cannot
/// be a key cannot be stored either).
async fn runtime_class(state: &ApiState, name: &str) -> ApiResult<Option<RuntimeClass>> {
    let Ok(key) = object_key("runtimeclasses", None, name) else {
        return Ok(None);
    };
    let resource = "runtimeclasses.node.k8s.io";
    let Some(stored) = state
        .storage
        .get(&key)
        .await
        .map_err(|e| ApiError::from_storage(e, resource, name))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&stored.value)
        .map(Some)
        .map_err(|e| ApiError::Internal(format!("{resource} {name:?} does not decode: {e}")))
}

/// Upstream's `setOverhead`, `setScheduling` and `validateOverhead` on a pod
/// spec; `Err` is the refusal's reason.
pub fn apply(spec: &mut PodSpec, class: Option<&RuntimeClass>) -> Result<(), String> {
    let class_overhead = class.and_then(|c| c.overhead.as_ref());
    match class_overhead {
        Some(overhead) => {
            let fixed = overhead.pod_fixed.clone().filter(|m| !m.is_empty());
            if spec.overhead.is_some() && !same_resources(spec.overhead.as_ref(), fixed.as_ref()) {
                return Err(
                    "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead"
                        .into(),
                );
            }
            spec.overhead = fixed;
        }
        None if spec.overhead.is_some() => {
            return Err(
                "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
                    .into(),
            );
        }
        None => {}
    }
    let Some(scheduling) = class.and_then(|c| c.scheduling.as_ref()) else {
        return Ok(());
    };
    let class_selector = scheduling.node_selector.clone().unwrap_or_default();
    match &mut spec.node_selector {
        None => spec.node_selector = scheduling.node_selector.clone(),
        Some(selector) => {
            for (key, want) in class_selector {
                if let Some(have) = selector.get(&key)
                    && *have != want
                {
                    return Err(format!(
                        "conflict: runtimeClass.scheduling.nodeSelector[{key}] = {want}; pod.spec.nodeSelector[{key}] = {have}"
                    ));
                }
                selector.insert(key, want);
            }
        }
    }
    let merged = merge_tolerations(
        spec.tolerations.as_deref().unwrap_or_default(),
        scheduling.tolerations.as_deref().unwrap_or_default(),
    );
    spec.tolerations = (!merged.is_empty()).then_some(merged);
    Ok(())
}

/// `apiequality.Semantic.DeepEqual` of two resource lists: quantities
/// compared by value (`1` equals `1000m`), absent equal to empty.
fn same_resources(
    a: Option<&BTreeMap<String, ApiQuantity>>,
    b: Option<&BTreeMap<String, ApiQuantity>>,
) -> bool {
    let (empty_a, empty_b) = (BTreeMap::new(), BTreeMap::new());
    let (a, b) = (a.unwrap_or(&empty_a), b.unwrap_or(&empty_b));
    a.len() == b.len()
        && a.iter().all(|(name, qa)| {
            b.get(name).is_some_and(
                |qb| match (Quantity::try_from(qa), Quantity::try_from(qb)) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => qa.0 == qb.0,
                },
            )
        })
}

/// Upstream's `tolerations.MergeTolerations`: `first` then `second`, leaving
/// out any toleration another one covers (of two equal ones, the first stays).
pub fn merge_tolerations(first: &[Toleration], second: &[Toleration]) -> Vec<Toleration> {
    let all: Vec<&Toleration> = first.iter().chain(second).collect();
    let mut merged: Vec<Toleration> = Vec::new();
    for (i, t) in all.iter().enumerate() {
        let covered = merged.iter().any(|m| is_superset(m, t))
            || all[i + 1..]
                .iter()
                .any(|later| !same(later, t) && is_superset(later, t));
        if !covered {
            merged.push((*t).clone());
        }
    }
    merged
}

/// An unset string field is the empty string, as in Go.
fn s(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

/// `Semantic.DeepEqual` of two tolerations.
fn same(a: &Toleration, b: &Toleration) -> bool {
    let fields = |t: &Toleration| {
        let strings = [&t.key, &t.operator, &t.value, &t.effect].map(|f| s(f).to_string());
        (strings, t.toleration_seconds)
    };
    fields(a) == fields(b)
}

/// Upstream's `isSuperset`: whether `ss` tolerates every taint `t` does.
fn is_superset(ss: &Toleration, t: &Toleration) -> bool {
    if same(ss, t) {
        return true;
    }
    let (ss_key, ss_op, ss_effect) = (s(&ss.key), s(&ss.operator), s(&ss.effect));
    // An empty key with Exists matches every key.
    if s(&t.key) != ss_key && (!ss_key.is_empty() || ss_op != "Exists") {
        return false;
    }
    // An empty effect matches every effect.
    if s(&t.effect) != ss_effect && !ss_effect.is_empty() {
        return false;
    }
    if ss_effect == "NoExecute"
        && let Some(limit) = ss.toleration_seconds
        && t.toleration_seconds.is_none_or(|secs| secs > limit)
    {
        return false;
    }
    match ss_op {
        "" | "Equal" => s(&t.operator) == "Equal" && s(&t.value) == s(&ss.value),
        "Exists" => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(v: Value) -> RuntimeClass {
        serde_json::from_value(v).expect("a RuntimeClass")
    }

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).expect("a PodSpec")
    }

    fn toleration(v: Value) -> Toleration {
        serde_json::from_value(v).expect("a Toleration")
    }

    #[test]
    fn overhead_is_set_checked_and_required_to_come_from_a_class() {
        let rc = class(
            json!({"handler": "runsc", "overhead": {"podFixed": {"cpu": "250m", "memory": "64Mi"}}}),
        );
        let mut s = spec(json!({"containers": []}));
        apply(&mut s, Some(&rc)).expect("admitted");
        assert_eq!(
            serde_json::to_value(&s.overhead).expect("json"),
            json!({"cpu": "250m", "memory": "64Mi"})
        );
        // The same overhead written differently is the same.
        let mut s = spec(json!({"containers": [], "overhead": {"cpu": "0.25", "memory": "64Mi"}}));
        apply(&mut s, Some(&rc)).expect("admitted");
        let mut s = spec(json!({"containers": [], "overhead": {"cpu": "1"}}));
        assert_eq!(
            apply(&mut s, Some(&rc)),
            Err(
                "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead".into()
            )
        );
        let without = class(json!({"handler": "runc"}));
        for rc in [None, Some(&without)] {
            let mut s = spec(json!({"containers": [], "overhead": {"cpu": "1"}}));
            assert_eq!(
                apply(&mut s, rc),
                Err(
                    "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
                        .into()
                )
            );
        }
    }

    #[test]
    fn node_selector_merges_or_conflicts() {
        let rc = class(
            json!({"handler": "runsc", "scheduling": {"nodeSelector": {"sandbox": "gvisor"}}}),
        );
        let mut s =
            spec(json!({"containers": [], "nodeSelector": {"disk": "ssd", "sandbox": "gvisor"}}));
        apply(&mut s, Some(&rc)).expect("admitted");
        assert_eq!(
            serde_json::to_value(&s.node_selector).expect("json"),
            json!({"disk": "ssd", "sandbox": "gvisor"})
        );
        let mut s = spec(json!({"containers": [], "nodeSelector": {"sandbox": "kata"}}));
        assert_eq!(
            apply(&mut s, Some(&rc)),
            Err("conflict: runtimeClass.scheduling.nodeSelector[sandbox] = gvisor; pod.spec.nodeSelector[sandbox] = kata".into())
        );
    }

    /// Upstream's `TestMergeTolerations` cases that matter here.
    #[test]
    fn tolerations_merge_without_redundancy() {
        let exists_all = toleration(json!({"operator": "Exists"}));
        let k_ns = toleration(json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"}));
        let k_eq = toleration(
            json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}),
        );
        let other = toleration(json!({"key": "o", "operator": "Exists"}));
        let ne = |secs: i64| {
            toleration(
                json!({"key": "n", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}),
            )
        };
        let merge = |a: &[&Toleration], b: &[&Toleration]| {
            let owned = |l: &[&Toleration]| l.iter().map(|t| (*t).clone()).collect::<Vec<_>>();
            merge_tolerations(&owned(a), &owned(b))
        };
        // Duplicates collapse; a covered toleration goes, in either list.
        assert_eq!(merge(&[&k_ns], &[&k_ns]), vec![k_ns.clone()]);
        assert_eq!(merge(&[&k_eq], &[&k_ns]), vec![k_ns.clone()]);
        assert_eq!(merge(&[&k_ns], &[&k_eq]), vec![k_ns.clone()]);
        assert_eq!(
            merge(&[&k_ns, &other], &[&exists_all]),
            vec![exists_all.clone()]
        );
        assert_eq!(
            merge(&[&other], &[&k_ns]),
            vec![other.clone(), k_ns.clone()]
        );
        // A shorter NoExecute grace is covered by a longer one.
        assert_eq!(merge(&[&ne(10)], &[&ne(20)]), vec![ne(20)]);
    }
}
