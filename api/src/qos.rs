//! A pod's QoS class (`ComputePodQOS`, `pkg/apis/core/v1/helper/qos`): the API
//! server stores it in `status.qosClass` at creation, the agent uses it for the
//! pod's cgroup and `oom_score_adj`; both call this one function, so the class
//! never changes after binding.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::quantity::Quantity;

/// Every container sets equal, non-zero CPU and memory requests and limits.
pub const GUARANTEED: &str = "Guaranteed";
/// Some request or limit, but not Guaranteed.
pub const BURSTABLE: &str = "Burstable";
/// No CPU or memory request or limit at all.
pub const BEST_EFFORT: &str = "BestEffort";

/// The resources the QoS class looks at (`isSupportedQoSComputeResource`).
const SUPPORTED: [&str; 2] = ["cpu", "memory"];

/// The pod's QoS class: only `cpu` and `memory` count, compared as quantities
/// (`1` equals `1000m`, `64Mi` equals `67108864`); Guaranteed when every
/// container (init containers included) sets both limits and the summed requests
/// equal the summed limits; BestEffort when nothing is requested or limited;
/// Burstable otherwise. A request defaults to its limit, as API defaulting does,
/// so a pod not yet defaulted gets the class it will have. A quantity that does
/// not parse counts as absent (validation refuses such a pod); a sum that
/// overflows makes the pod Burstable.
pub fn pod_qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return BEST_EFFORT;
    };
    // `None` marks a sum that overflowed.
    let mut requests: BTreeMap<&str, Option<Quantity>> = BTreeMap::new();
    let mut limits: BTreeMap<&str, Option<Quantity>> = BTreeMap::new();
    let add =
        |sums: &mut BTreeMap<&'static str, Option<Quantity>>, name: &'static str, q: Quantity| {
            let sum = sums.entry(name).or_insert(Some(Quantity::ZERO));
            *sum = sum.and_then(|s| s.checked_add(&q));
        };
    let mut guaranteed = true;
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in all {
        let res = c.resources.as_ref();
        let lim = res.and_then(|r| r.limits.as_ref());
        let req = res.and_then(|r| r.requests.as_ref());
        let mut limits_found = 0;
        for name in SUPPORTED {
            let parsed = |list: Option<&BTreeMap<String, _>>| {
                list.and_then(|l| l.get(name))
                    .and_then(|q| Quantity::try_from(q).ok())
            };
            let limit = parsed(lim);
            let request = parsed(req).or(limit);
            if let Some(v) = request.filter(|v| v.signum() > 0) {
                add(&mut requests, name, v);
            }
            if let Some(v) = limit.filter(|v| v.signum() > 0) {
                limits_found += 1;
                add(&mut limits, name, v);
            }
        }
        if limits_found < SUPPORTED.len() {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return BEST_EFFORT;
    }
    let equal = |(name, req): (&&str, &Option<Quantity>)| matches!((req, limits.get(name)), (Some(r), Some(Some(l))) if r == l);
    if guaranteed && requests.len() == limits.len() && requests.iter().all(equal) {
        return GUARANTEED;
    }
    BURSTABLE
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"spec": spec})).expect("pod")
    }

    fn containers(list: serde_json::Value) -> Pod {
        pod(json!({"containers": list}))
    }

    #[test]
    fn classes() {
        let cases = [
            (json!([{"name": "a"}]), BEST_EFFORT),
            (
                json!([{"name": "a", "resources": {"requests": {"cpu": "0"}}}]),
                BEST_EFFORT,
            ),
            (
                json!([{"name": "a", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]),
                BEST_EFFORT,
            ),
            (
                json!([{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]),
                BURSTABLE,
            ),
            (
                json!([{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]),
                GUARANTEED,
            ),
            (
                json!([{"name": "a", "resources": {
                    "requests": {"cpu": "500m", "memory": "1Gi"},
                    "limits": {"cpu": "1", "memory": "1Gi"}}}]),
                BURSTABLE,
            ),
            (
                json!([{"name": "a", "resources": {"limits": {"cpu": "1"}}}]),
                BURSTABLE,
            ),
            (
                json!([
                    {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                    {"name": "b"},
                ]),
                BURSTABLE,
            ),
            // Two containers whose sums agree though each differs: upstream sums.
            (
                json!([
                    {"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                                "limits": {"cpu": "1", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "1n", "memory": "1"}}},
                ]),
                GUARANTEED,
            ),
            // Finer than a milli-unit still counts: 1n is not 1m.
            (
                json!([{"name": "a", "resources": {
                    "requests": {"cpu": "1n", "memory": "1Gi"},
                    "limits": {"cpu": "1m", "memory": "1Gi"}}}]),
                BURSTABLE,
            ),
            // Sums that overflow are not equal to anything.
            (
                json!([
                    {"name": "a", "resources": {"limits": {"cpu": "1e1000", "memory": "1"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "1n", "memory": "1"}}},
                ]),
                BURSTABLE,
            ),
        ];
        for (list, want) in cases {
            assert_eq!(pod_qos_class(&containers(list.clone())), want, "{list}");
        }
        // An init container without limits makes a Guaranteed pod Burstable.
        let p = pod(json!({
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "100m"}}}],
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
        }));
        assert_eq!(pod_qos_class(&p), BURSTABLE);
        assert_eq!(pod_qos_class(&Pod::default()), BEST_EFFORT);
    }

    /// Regression (issue 7): the API server compared quantity strings and called
    /// this pod Burstable, the agent Guaranteed; `status.qosClass` changed after binding.
    #[test]
    fn equal_quantities_spelled_differently_are_guaranteed() {
        let p = containers(json!([{"name": "a", "resources": {
            "requests": {"cpu": "1", "memory": "64Mi"},
            "limits": {"cpu": "1000m", "memory": "67108864"}}}]));
        assert_eq!(pod_qos_class(&p), GUARANTEED);
    }
}
