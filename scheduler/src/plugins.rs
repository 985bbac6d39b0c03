//! The default profile's filter and score plugins, over a pod precomputed once
//! per scheduling cycle ([`PodInfo`]) and a [`NodeInfo`]; nothing here allocates
//! per (pod, node) pair.

use berth_api::scheduling::{RequiredNodeAffinity, Term, Toleration, tolerated};
use k8s_openapi::api::core::v1::Pod;

use crate::resources::{PodRequests, QuantityError, pod_requests};
use crate::snapshot::{Effect, HostPort, NodeInfo, Taint, host_ports};

/// The highest score a plugin gives (`framework.MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;

/// NodeUnschedulable's reason (`ErrReasonUnschedulable`).
pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
/// NodeName's reason.
pub const REASON_NODE_NAME: &str = "node(s) didn't match the requested node name";
/// NodeAffinity's reason (`ErrReasonPod`).
pub const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
/// NodeAffinity's PreFilter reason when the terms' `metadata.name` fields
/// select no node.
pub const REASON_AFFINITY_CONFLICT: &str = "pod affinity terms conflict";
/// NodePorts' reason.
pub const REASON_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
/// NodeResourcesFit's reason for the pod count.
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// What the filters and scores need of the pod being scheduled, computed once
/// per scheduling cycle.
#[derive(Debug, Clone)]
pub(crate) struct PodInfo {
    pub(crate) node_name: Option<String>,
    pub(crate) tolerations: Vec<Toleration>,
    /// The tolerations with an empty or `PreferNoSchedule` effect.
    pub(crate) prefer_tolerations: Vec<Toleration>,
    pub(crate) tolerates_unschedulable: bool,
    /// `spec.nodeSelector` and the required node affinity terms.
    pub(crate) required: RequiredNodeAffinity,
    pub(crate) preferred: Vec<(i64, Term)>,
    pub(crate) requests: PodRequests,
    pub(crate) ports: Vec<HostPort>,
    pub(crate) priority: i32,
    pub(crate) preemption_never: bool,
    /// NodeAffinity's PreFilter result: the only node names the required terms
    /// allow (`Some(empty)`: the terms conflict).
    pub(crate) prefilter_names: Option<Vec<String>>,
}

impl PodInfo {
    pub(crate) fn new(pod: &Pod) -> Result<PodInfo, QuantityError> {
        let default_spec;
        let spec = match pod.spec.as_ref() {
            Some(s) => s,
            None => {
                default_spec = Default::default();
                &default_spec
            }
        };
        let tolerations = berth_api::scheduling::tolerations(spec);
        let prefer_tolerations = tolerations
            .iter()
            .filter(|t| t.effect.is_none_or(|e| e == Effect::PreferNoSchedule))
            .cloned()
            .collect();
        let tolerates_unschedulable = tolerated(
            &tolerations,
            &Taint {
                key: "node.kubernetes.io/unschedulable".to_owned(),
                value: String::new(),
                effect: Effect::NoSchedule,
            },
        );
        let node_affinity = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref());
        let required_api = node_affinity.and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
        let prefilter_names = required_api.and_then(|sel| {
            let mut names: Option<Vec<String>> = None;
            for term in &sel.node_selector_terms {
                let mut term_names: Option<Vec<String>> = None;
                for f in term.match_fields.iter().flatten() {
                    if f.key == "metadata.name" && f.operator == "In" {
                        let s: Vec<String> = f.values.clone().unwrap_or_default();
                        term_names = Some(match term_names {
                            None => s,
                            Some(prev) => prev.into_iter().filter(|n| s.contains(n)).collect(),
                        });
                    }
                }
                // A term without a name field allows every node.
                let term_names = term_names?;
                let all = names.get_or_insert_with(Vec::new);
                for n in term_names {
                    if !all.contains(&n) {
                        all.push(n);
                    }
                }
            }
            names
        });
        let preferred = node_affinity
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter(|p| p.weight != 0)
            .filter_map(|p| Some((i64::from(p.weight), Term::parse(&p.preference)?)))
            .collect();
        Ok(PodInfo {
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            tolerations,
            prefer_tolerations,
            tolerates_unschedulable,
            required: RequiredNodeAffinity::new(spec),
            preferred,
            requests: pod_requests(spec)?,
            ports: host_ports(spec),
            priority: spec.priority.unwrap_or(0),
            preemption_never: spec.preemption_policy.as_deref() == Some("Never"),
            prefilter_names,
        })
    }

    /// Whether the pod requests nothing of the resources BalancedAllocation
    /// scores (cpu, memory): it then skips the pod.
    pub(crate) fn best_effort_for_balance(&self) -> bool {
        self.requests.requests.milli_cpu == 0 && self.requests.requests.memory == 0
    }
}

/// Why a node failed a filter, compactly (turned into reason strings only when
/// the pod cannot be scheduled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Unschedulable,
    NodeName,
    /// The index of the first untolerated taint in the node's taints.
    Taint(usize),
    Affinity,
    Ports,
    Fit {
        pods: bool,
        cpu: bool,
        memory: bool,
        ephemeral: bool,
        /// Bit i: the pod's i-th scalar resource is insufficient.
        scalars: u64,
        /// The request exceeds the node's whole allocatable.
        unresolvable: bool,
    },
}

impl Failure {
    /// `UnschedulableAndUnresolvable` (preemption cannot help) or not.
    pub(crate) fn unresolvable(&self) -> bool {
        match self {
            Failure::Ports => false,
            Failure::Fit { unresolvable, .. } => *unresolvable,
            _ => true,
        }
    }

    /// The reason strings, as the plugins word them.
    pub(crate) fn reasons(&self, pod: &PodInfo, node: &NodeInfo, out: &mut Vec<String>) {
        match *self {
            Failure::Unschedulable => out.push(REASON_UNSCHEDULABLE.to_owned()),
            Failure::NodeName => out.push(REASON_NODE_NAME.to_owned()),
            Failure::Taint(i) => {
                let (k, v) = node
                    .taints
                    .get(i)
                    .map_or(("", ""), |t| (t.key.as_str(), t.value.as_str()));
                out.push(format!("node(s) had untolerated taint {{{k}: {v}}}"));
            }
            Failure::Affinity => out.push(REASON_NODE_AFFINITY.to_owned()),
            Failure::Ports => out.push(REASON_NODE_PORTS.to_owned()),
            Failure::Fit {
                pods,
                cpu,
                memory,
                ephemeral,
                scalars,
                ..
            } => {
                if pods {
                    out.push(REASON_TOO_MANY_PODS.to_owned());
                }
                if cpu {
                    out.push("Insufficient cpu".to_owned());
                }
                if memory {
                    out.push("Insufficient memory".to_owned());
                }
                if ephemeral {
                    out.push("Insufficient ephemeral-storage".to_owned());
                }
                for (i, (name, _)) in pod.requests.requests.scalar.iter().enumerate() {
                    if i < 64 && scalars & (1 << i) != 0 {
                        out.push(format!("Insufficient {name}"));
                    }
                }
            }
        }
    }
}

/// Runs the filters in the default profile's order (NodeUnschedulable,
/// NodeName, TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit),
/// stopping at the first that fails.
pub(crate) fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Failure> {
    if node.unschedulable && !pod.tolerates_unschedulable {
        return Err(Failure::Unschedulable);
    }
    if pod.node_name.as_ref().is_some_and(|n| *n != node.name) {
        return Err(Failure::NodeName);
    }
    if let Some(i) = node.taints.iter().position(|t| {
        matches!(t.effect, Effect::NoSchedule | Effect::NoExecute)
            && !tolerated(&pod.tolerations, t)
    }) {
        return Err(Failure::Taint(i));
    }
    if !matches_node_selector_and_affinity(pod, node) {
        return Err(Failure::Affinity);
    }
    if pod.ports.iter().any(|p| node.port_conflicts(p)) {
        return Err(Failure::Ports);
    }
    fits_resources(pod, node)
}

fn matches_node_selector_and_affinity(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.required.matches(&node.labels, &node.name)
}

/// NodeResourcesFit's filter (`fitsRequest`).
pub(crate) fn fits_resources(pod: &PodInfo, node: &NodeInfo) -> Result<(), Failure> {
    let req = &pod.requests.requests;
    let alloc = &node.allocatable;
    let used = &node.requested;
    let pods = i64::try_from(node.pods.len())
        .unwrap_or(i64::MAX)
        .saturating_add(1)
        > alloc.pods;
    let mut unresolvable = false;
    let mut insufficient = |want: i64, have: i64, used: i64| {
        if want > 0 && want > have.saturating_sub(used) {
            unresolvable |= want > have;
            true
        } else {
            false
        }
    };
    let cpu = insufficient(req.milli_cpu, alloc.milli_cpu, used.milli_cpu);
    let memory = insufficient(req.memory, alloc.memory, used.memory);
    let ephemeral = insufficient(
        req.ephemeral_storage,
        alloc.ephemeral_storage,
        used.ephemeral_storage,
    );
    let mut scalars = 0u64;
    for (i, (name, want)) in req.scalar.iter().enumerate() {
        if insufficient(*want, alloc.scalar(name), used.scalar(name)) {
            scalars |= 1 << i.min(63);
        }
    }
    if pods || cpu || memory || ephemeral || scalars != 0 {
        return Err(Failure::Fit {
            pods,
            cpu,
            memory,
            ephemeral,
            scalars,
            unresolvable,
        });
    }
    Ok(())
}

/// NodeResourcesFit's LeastAllocated score over cpu and memory (weight 1
/// each), with the non-zero requests.
pub(crate) fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let mut sum = 0;
    let mut weights = 0;
    for (alloc, requested) in [
        (
            node.allocatable.milli_cpu,
            node.non_zero_milli_cpu
                .saturating_add(pod.requests.non_zero_milli_cpu),
        ),
        (
            node.allocatable.memory,
            node.non_zero_memory
                .saturating_add(pod.requests.non_zero_memory),
        ),
    ] {
        if alloc == 0 {
            continue;
        }
        sum += if requested > alloc {
            0
        } else {
            // In i128: (capacity - requested) × 100 overflows i64 near the top.
            i64::try_from(
                (i128::from(alloc) - i128::from(requested)) * i128::from(MAX_NODE_SCORE)
                    / i128::from(alloc),
            )
            .unwrap_or(0)
        };
        weights += 1;
    }
    if weights == 0 { 0 } else { sum / weights }
}

/// NodeResourcesBalancedAllocation's score over cpu and memory, with the
/// actual requests: `(1 - |f_cpu - f_mem| / 2) × 100`.
pub(crate) fn balanced_allocation(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let mut fractions = [0f64; 2];
    let mut n = 0;
    for (alloc, requested) in [
        (
            node.allocatable.milli_cpu,
            node.requested
                .milli_cpu
                .saturating_add(pod.requests.requests.milli_cpu),
        ),
        (
            node.allocatable.memory,
            node.requested
                .memory
                .saturating_add(pod.requests.requests.memory),
        ),
    ] {
        if alloc == 0 {
            continue;
        }
        fractions[n] = (requested as f64 / alloc as f64).min(1.0);
        n += 1;
    }
    let std = if n == 2 {
        ((fractions[0] - fractions[1]) / 2.0).abs()
    } else {
        0.0
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

/// TaintToleration's raw score: how many `PreferNoSchedule` taints the pod
/// does not tolerate (normalized in reverse afterwards).
pub(crate) fn intolerable_prefer_no_schedule(pod: &PodInfo, node: &NodeInfo) -> i64 {
    node.taints
        .iter()
        .filter(|t| t.effect == Effect::PreferNoSchedule && !tolerated(&pod.prefer_tolerations, t))
        .count() as i64
}

/// NodeAffinity's raw score: the sum of the weights of the preferred terms
/// the node matches.
pub(crate) fn preferred_affinity(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.preferred
        .iter()
        .filter(|(_, t)| t.matches(&node.labels, &node.name))
        .map(|(w, _)| *w)
        .sum()
}

/// `helper.DefaultNormalizeScore`: scale to 0..=max by the highest score,
/// optionally reversed.
pub(crate) fn normalize(
    scores: impl Iterator<Item = i64>,
    max: i64,
    reverse: bool,
) -> impl Fn(i64) -> i64 {
    let highest = scores.max().unwrap_or(0).max(0);
    move |s| {
        if highest == 0 {
            if reverse { max } else { s }
        } else {
            let scaled = max * s / highest;
            if reverse { max - scaled } else { scaled }
        }
    }
}
