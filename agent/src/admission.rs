//! Pod admission before a pod's first sync, as the kubelet's predicate admit
//! handler (`pkg/kubelet/lifecycle/predicate.go`, `generalFilter`): the pod's
//! requests must fit what is left of the node's allocatable (`OutOfcpu`,
//! `OutOfmemory`, `OutOfephemeral-storage`, `OutOfpods`, `OutOf<resource>`),
//! its node selector and required node affinity must match the node
//! (`NodeAffinity`), its host ports must be free (`NodePorts`), and it must
//! tolerate the node's `NoExecute` taints (`TaintToleration`; not checked for
//! static pods). Only the first failure is given, as upstream does.
//!
//! Pods are decided in creation order, all undecided pods at once, the first
//! time any of them is asked about; a decision holds for the pod's life, also
//! across a restart of the agent: a pod the runtime already holds is admitted
//! without a check (it was admitted before, and a restart never stops a
//! running pod); a refusal is read back from the API's status (API pods, see
//! `cluster::pods::earlier_rejection`) or from `<root-dir>/admission/<uid>`
//! (static pods, whose UID changes with their manifest). Active pods
//! (admitted, desired, not finished) count against allocatable.
//!
//! A static pod that does not fit is refused like any other: upstream's
//! critical-pod preemption (evicting others to make room) is not done here.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use berth_api::resource::{Resources, pod_requests};
use berth_api::scheduling::{Effect, HostPort, RequiredNodeAffinity, Taint, host_ports, tolerated};
use k8s_openapi::api::core::v1::Pod;

use crate::Uid;
use crate::allocatable::NodeResources;
use crate::pleg::RuntimeCache;
use crate::source::{PodConfig, SourcedPod, is_terminating, uid_of};

pub use crate::source::Rejection;

/// What was decided for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Admitted,
    Rejected(Rejection),
}

/// The node as admission sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub resources: NodeResources,
}

/// The node's admission facts, shared: the cluster's node loop updates the
/// labels and taints from the Node object.
#[derive(Debug, Default)]
pub struct NodeState {
    inner: RwLock<NodeInfo>,
}

impl NodeState {
    /// A node with these facts.
    pub fn new(info: NodeInfo) -> Arc<Self> {
        Arc::new(NodeState {
            inner: RwLock::new(info),
        })
    }

    /// The node as of now.
    pub fn get(&self) -> NodeInfo {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The capacity and allocatable.
    pub fn resources(&self) -> NodeResources {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .resources
            .clone()
    }

    /// Labels and taints as the Node object has them.
    pub fn set_labels_and_taints(&self, labels: BTreeMap<String, String>, taints: Vec<Taint>) {
        let mut n = self.inner.write().unwrap_or_else(|e| e.into_inner());
        n.labels = labels;
        n.taints = taints;
    }
}

/// True when a pod has finished (phase Succeeded or Failed) and so no longer
/// counts against the node.
pub type IsFinished = Box<dyn Fn(&Pod) -> bool + Send + Sync>;

/// The admission decisions of the node's pods.
pub struct Admitter {
    config: Arc<PodConfig>,
    cache: Arc<RuntimeCache>,
    node: Arc<NodeState>,
    finished: IsFinished,
    decisions: Mutex<HashMap<Uid, Decision>>,
    /// Where static pods' refusals are kept, and those read back at start.
    state_dir: Option<PathBuf>,
    earlier: Mutex<HashMap<Uid, Rejection>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    reason: String,
    message: String,
}

impl Admitter {
    /// Decisions over `config`'s pods on `node`; `cache` tells which pods the
    /// runtime already holds. With `state_dir` (`<root-dir>/admission`),
    /// static pods' refusals are kept there and those of an earlier run read
    /// back (unreadable entries are skipped).
    pub fn new(
        config: Arc<PodConfig>,
        cache: Arc<RuntimeCache>,
        node: Arc<NodeState>,
        finished: IsFinished,
        state_dir: Option<PathBuf>,
    ) -> Arc<Self> {
        let mut earlier = HashMap::new();
        let entries = state_dir
            .iter()
            .flat_map(std::fs::read_dir)
            .flatten()
            .flatten();
        for entry in entries {
            let Some(uid) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if uid.starts_with('.') {
                continue;
            }
            let stored = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Stored>(&b).ok());
            match stored {
                Some(s) => {
                    earlier.insert(
                        uid,
                        Rejection {
                            reason: s.reason,
                            message: s.message,
                        },
                    );
                }
                None => {
                    tracing::warn!(file = %entry.path().display(), "unreadable admission record; removed");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Arc::new(Admitter {
            config,
            cache,
            node,
            finished,
            decisions: Mutex::default(),
            state_dir,
            earlier: Mutex::new(earlier),
        })
    }

    fn remember(&self, uid: &str, r: &Rejection) {
        let Some(dir) = &self.state_dir else { return };
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{uid}.tmp"));
            let body = serde_json::to_vec(&Stored {
                reason: r.reason.clone(),
                message: r.message.clone(),
            })?;
            std::fs::write(&tmp, body)?;
            std::fs::rename(&tmp, dir.join(uid))
        })();
        if let Err(e) = result {
            tracing::warn!(pod_uid = %uid, dir = %dir.display(), error = %e, "cannot keep the admission refusal; a restart judges the pod again");
        }
    }

    fn forget(&self, uid: &str) {
        self.earlier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        if let Some(dir) = &self.state_dir {
            let _ = std::fs::remove_file(dir.join(uid));
        }
    }

    /// The decision already taken for `uid`, if any.
    pub fn decision(&self, uid: &str) -> Option<Decision> {
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    /// The rejection of `uid`, if it was refused.
    pub fn rejection(&self, uid: &str) -> Option<Rejection> {
        match self.decision(uid) {
            Some(Decision::Rejected(r)) => Some(r),
            _ => None,
        }
    }

    /// Decide `uid` (and every other undecided pod, in creation order) and
    /// return its decision, with `true` when it was taken now. A pod no source
    /// holds, or one being deleted before it was decided, is admitted: its
    /// worker only stops it.
    pub fn decide(&self, uid: &str) -> (Decision, bool) {
        let mut decisions = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = decisions.get(uid) {
            return (d.clone(), false);
        }
        let pods = self.config.pods();
        // Forget pods that left (neither desired nor in the runtime).
        let live: std::collections::HashSet<Uid> = pods
            .iter()
            .map(|sp| uid_of(&sp.pod))
            .chain(self.cache.uids())
            .collect();
        decisions.retain(|u, _| live.contains(u));
        let gone: Vec<Uid> = self
            .earlier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|u| !live.contains(*u))
            .cloned()
            .collect();
        for u in gone {
            self.forget(&u);
        }

        let mut undecided: Vec<&SourcedPod> = pods
            .iter()
            .filter(|sp| !decisions.contains_key(&uid_of(&sp.pod)))
            .collect();
        undecided.sort_by(|a, b| {
            let key = |sp: &SourcedPod| {
                (
                    sp.pod
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.as_nanosecond()),
                    uid_of(&sp.pod),
                )
            };
            key(a).cmp(&key(b))
        });
        let node = self.node.get();
        let mut active: Vec<&Pod> = pods
            .iter()
            .filter(|sp| decisions.get(&uid_of(&sp.pod)) == Some(&Decision::Admitted))
            .map(|sp| &sp.pod)
            .filter(|p| !(self.finished)(p))
            .collect();
        // Pods the runtime holds first: they were admitted before a restart.
        let (held, new): (Vec<&SourcedPod>, Vec<&SourcedPod>) =
            undecided.into_iter().partition(|sp| {
                let observed = self.cache.get(&uid_of(&sp.pod));
                !observed.sandboxes.is_empty() || !observed.containers.is_empty()
            });
        for sp in held {
            decisions.insert(uid_of(&sp.pod), Decision::Admitted);
            if !(self.finished)(&sp.pod) {
                active.push(&sp.pod);
            }
        }
        for sp in new {
            let d = if is_terminating(&sp.pod) {
                Decision::Admitted
            } else if let Some(r) = &sp.rejected {
                Decision::Rejected(r.clone())
            } else if let Some(r) = self
                .earlier
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&uid_of(&sp.pod))
            {
                Decision::Rejected(r.clone())
            } else {
                // Static pods come from manifest files; the API's from the api source.
                let is_static = sp.file != std::path::Path::new(crate::source::API_SOURCE);
                match admit(&sp.pod, &active, &node, is_static) {
                    Ok(()) => Decision::Admitted,
                    Err(r) => {
                        if is_static {
                            self.remember(&uid_of(&sp.pod), &r);
                        }
                        Decision::Rejected(r)
                    }
                }
            };
            if d == Decision::Admitted {
                active.push(&sp.pod);
            }
            decisions.insert(uid_of(&sp.pod), d);
        }
        match decisions.get(uid) {
            Some(d) => (d.clone(), true),
            // Not desired: nothing to run; its worker only cleans up.
            None => (Decision::Admitted, false),
        }
    }
}

/// True for the reasons admission gives (`OutOf<resource>` and the predicates').
pub fn is_admission_reason(reason: &str) -> bool {
    reason.starts_with("OutOf")
        || matches!(
            reason,
            "NodeAffinity"
                | "NodeName"
                | "NodePorts"
                | "TaintToleration"
                | "UnexpectedAdmissionError"
        )
}

/// The predicate admit handler's check of `pod` against the `active` pods on
/// `node`: the first failure, in upstream's order (resources, node affinity,
/// host ports, NoExecute taints).
pub fn admit(
    pod: &Pod,
    active: &[&Pod],
    node: &NodeInfo,
    is_static: bool,
) -> Result<(), Rejection> {
    let default_spec = Default::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let want = match pod_requests(spec) {
        Ok(r) => r.requests,
        Err(e) => {
            return Err(Rejection {
                reason: "UnexpectedAdmissionError".into(),
                message: format!("Cannot compute the pod's requests: {e}"),
            });
        }
    };
    let mut used = Resources::default();
    let mut used_ports: Vec<HostPort> = Vec::new();
    for p in active {
        if let Some(s) = p.spec.as_ref() {
            // Each active pod passed validation; an unreadable one counts as nothing.
            if let Ok(r) = pod_requests(s) {
                used.add(&r.requests);
            }
            used_ports.extend(host_ports(s));
        }
    }
    let alloc = &node.resources.allocatable;
    let insufficient = |name: &str, requested: i64, used: i64, capacity: i64| Rejection {
        reason: format!("OutOf{name}"),
        message: format!(
            "Node didn't have enough resource: {name}, requested: {requested}, used: {used}, capacity: {capacity}"
        ),
    };
    let count = i64::try_from(active.len()).unwrap_or(i64::MAX);
    if count.saturating_add(1) > alloc.pods {
        return Err(insufficient("pods", 1, count, alloc.pods));
    }
    let short = |want: i64, have: i64, used: i64| want > 0 && want > have.saturating_sub(used);
    for (name, want, have, used) in [
        ("cpu", want.milli_cpu, alloc.milli_cpu, used.milli_cpu),
        ("memory", want.memory, alloc.memory, used.memory),
        (
            "ephemeral-storage",
            want.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
        ),
    ] {
        if short(want, have, used) {
            return Err(insufficient(name, want, used, have));
        }
    }
    for (name, amount) in &want.scalar {
        // Extended resources the node does not know are cluster-level ones
        // (`removeMissingExtendedResources`); hugepages are always checked.
        let known = alloc.scalar.iter().any(|(n, _)| n == name);
        if !known && !name.starts_with("hugepages-") {
            continue;
        }
        if short(*amount, alloc.scalar(name), used.scalar(name)) {
            return Err(insufficient(
                name,
                *amount,
                used.scalar(name),
                alloc.scalar(name),
            ));
        }
    }
    let predicate = |name: &str, desc: &str| Rejection {
        reason: name.to_string(),
        message: format!("Predicate {name} failed: {desc}"),
    };
    if !RequiredNodeAffinity::new(spec).matches(&node.labels, &node.name) {
        return Err(predicate(
            "NodeAffinity",
            "node(s) didn't match Pod's node affinity/selector",
        ));
    }
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty())
        && n != node.name
    {
        return Err(predicate(
            "NodeName",
            "node(s) didn't match the requested node name",
        ));
    }
    if host_ports(spec)
        .iter()
        .any(|want| used_ports.iter().any(|u| u.conflicts(want)))
    {
        return Err(predicate(
            "NodePorts",
            "node(s) didn't have free ports for the requested pod ports",
        ));
    }
    if !is_static {
        let tolerations = berth_api::scheduling::tolerations(spec);
        if node
            .taints
            .iter()
            .any(|t| t.effect == Effect::NoExecute && !tolerated(&tolerations, t))
        {
            return Err(predicate(
                "TaintToleration",
                "node(s) had taints that the pod didn't tolerate",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodSpec, ResourceRequirements, Toleration as ApiToleration,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_string(), Quantity(cpu.into()));
        }
        if !memory.is_empty() {
            requests.insert("memory".to_string(), Quantity(memory.into()));
        }
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.spec = Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    fn node(cpu_milli: i64, memory: i64, pods: i64) -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            labels: BTreeMap::from([("disk".to_string(), "ssd".to_string())]),
            taints: Vec::new(),
            resources: NodeResources {
                capacity: Resources::default(),
                allocatable: Resources {
                    milli_cpu: cpu_milli,
                    memory,
                    ephemeral_storage: 1 << 40,
                    pods,
                    scalar: vec![("hugepages-2Mi".into(), 0)],
                },
            },
        }
    }

    #[test]
    fn out_of_cpu_names_request_use_and_capacity_as_upstream() {
        let a = pod("a", "1500m", "");
        let b = pod("b", "1", "");
        let r = admit(&b, &[&a], &node(2000, 1 << 30, 110), false).unwrap_err();
        assert_eq!(r.reason, "OutOfcpu");
        assert_eq!(
            r.message,
            "Node didn't have enough resource: cpu, requested: 1000, used: 1500, capacity: 2000"
        );
        // What fits is admitted; memory is checked after cpu.
        assert!(
            admit(
                &pod("c", "500m", ""),
                &[&a],
                &node(2000, 1 << 30, 110),
                false
            )
            .is_ok()
        );
        let r = admit(
            &pod("d", "100m", "2Gi"),
            &[&a],
            &node(2000, 1 << 30, 110),
            false,
        )
        .unwrap_err();
        assert_eq!(r.reason, "OutOfmemory");
        // A pod requesting nothing only needs a pod slot.
        let r = admit(&pod("e", "", ""), &[&a], &node(2000, 1 << 30, 1), false).unwrap_err();
        assert_eq!(r.reason, "OutOfpods");
        assert_eq!(
            r.message,
            "Node didn't have enough resource: pods, requested: 1, used: 1, capacity: 1"
        );
    }

    #[test]
    fn absurd_requests_are_refused_without_overflow() {
        let huge = pod("h", "10E", "7Ei");
        let r = admit(&huge, &[], &node(2000, 1 << 30, 110), false).unwrap_err();
        assert_eq!(r.reason, "OutOfcpu");
        let used = [&huge];
        let r = admit(
            &pod("x", "1", ""),
            &used,
            &node(i64::MAX, i64::MAX, 110),
            false,
        )
        .unwrap_err();
        assert_eq!(r.reason, "OutOfcpu");
    }

    #[test]
    fn hugepages_and_extended_resources() {
        let mut p = pod("g", "", "");
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        let req = c.resources.as_mut().unwrap().requests.as_mut().unwrap();
        req.insert("example.com/gpu".into(), Quantity("1".into()));
        // An extended resource the node does not have is a cluster-level one: ignored.
        assert!(admit(&p, &[], &node(2000, 1 << 30, 110), false).is_ok());
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        let req = c.resources.as_mut().unwrap().requests.as_mut().unwrap();
        req.insert("hugepages-2Mi".into(), Quantity("2Mi".into()));
        let r = admit(&p, &[], &node(2000, 1 << 30, 110), false).unwrap_err();
        assert_eq!(r.reason, "OutOfhugepages-2Mi");
    }

    #[test]
    fn node_affinity_ports_and_noexecute_taints() {
        let n = node(2000, 1 << 30, 110);
        let mut p = pod("s", "", "");
        p.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".to_string(), "hdd".to_string())]));
        let r = admit(&p, &[], &n, false).unwrap_err();
        assert_eq!(r.reason, "NodeAffinity");
        assert_eq!(
            r.message,
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
        );
        p.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".to_string(), "ssd".to_string())]));
        assert!(admit(&p, &[], &n, false).is_ok());

        let with_port = |name: &str| {
            let mut p = pod(name, "", "");
            p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
                container_port: 80,
                host_port: Some(8080),
                ..Default::default()
            }]);
            p
        };
        let first = with_port("p1");
        let r = admit(&with_port("p2"), &[&first], &n, false).unwrap_err();
        assert_eq!(r.reason, "NodePorts");

        let mut tainted = n.clone();
        tainted.taints = vec![
            Taint {
                key: "maint".into(),
                value: "yes".into(),
                effect: Effect::NoExecute,
            },
            Taint {
                key: "soft".into(),
                value: String::new(),
                effect: Effect::NoSchedule,
            },
        ];
        let plain = pod("t", "", "");
        let r = admit(&plain, &[], &tainted, false).unwrap_err();
        assert_eq!(r.reason, "TaintToleration");
        assert_eq!(
            r.message,
            "Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate"
        );
        // Static pods are not checked against taints; a toleration lets others in.
        assert!(admit(&plain, &[], &tainted, true).is_ok());
        let mut tolerant = plain.clone();
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![ApiToleration {
            key: Some("maint".into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        }]);
        assert!(admit(&tolerant, &[], &tainted, false).is_ok());
    }
}
