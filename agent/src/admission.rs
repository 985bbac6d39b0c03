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
//! Under node pressure the eviction admit handler runs first
//! ([`crate::eviction::admit_under_pressure`]). A critical pod (static, or
//! of system-critical priority) short only of resources preempts others as
//! the kubelet's `CriticalPodAdmissionHandler` does: the fewest, closest-fit
//! non-critical pods, BestEffort before Burstable before Guaranteed, each
//! Failed with reason `Preempting` and stopped; when no set of pods covers it,
//! it is refused like any other.

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
    /// The node's pressure: under it, the eviction admit handler refuses.
    pressure: std::sync::OnceLock<crate::eviction::SharedPressure>,
    /// Told of each pod preempted to admit a critical one (an event, a
    /// poke of its worker, which stops it).
    on_preempt: std::sync::OnceLock<PreemptHook>,
}

/// See [`Admitter::set_preemption_hook`].
pub type PreemptHook = Box<dyn Fn(&Pod, &Rejection) + Send + Sync>;

/// The status reason of a pod preempted for a critical one (the kubelet's
/// `events.PreemptContainer`), and its message.
pub const REASON_PREEMPTING: &str = "Preempting";
pub const MESSAGE_PREEMPTED: &str = "Preempted in order to admit critical pod";

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
                            evicted: None,
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
            pressure: std::sync::OnceLock::new(),
            on_preempt: std::sync::OnceLock::new(),
        })
    }

    /// Call `hook` for each pod preempted to admit a critical pod.
    pub fn set_preemption_hook(&self, hook: PreemptHook) {
        let _ = self.on_preempt.set(hook);
    }

    /// Refuse new pods under `pressure` as the kubelet's eviction admit
    /// handler does (see [`crate::eviction::admit_under_pressure`]).
    pub fn set_pressure(&self, pressure: crate::eviction::SharedPressure) {
        let _ = self.pressure.set(pressure);
    }

    /// Record that `uid` was evicted: from now on it is refused (its worker
    /// stops it) and no longer counts against the node.
    pub fn evict(&self, uid: &str, r: Rejection) {
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_string(), Decision::Rejected(r));
    }

    /// The pods that count: admitted, desired, not being deleted, not finished.
    pub fn active_pods(&self) -> Vec<SourcedPod> {
        let decisions = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        self.config
            .pods()
            .into_iter()
            .filter(|sp| decisions.get(&uid_of(&sp.pod)) == Some(&Decision::Admitted))
            .filter(|sp| !is_terminating(&sp.pod) && !(self.finished)(&sp.pod))
            .collect()
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
            // An evicted pod keeps its stopped containers: held, yet refused.
            if let Some(r) = sp.rejected.as_ref().filter(|r| r.evicted.is_some()) {
                decisions.insert(uid_of(&sp.pod), Decision::Rejected(r.clone()));
                continue;
            }
            decisions.insert(uid_of(&sp.pod), Decision::Admitted);
            if !(self.finished)(&sp.pod) {
                active.push(&sp.pod);
            }
        }
        let conditions = self
            .pressure
            .get()
            .map(|p| {
                p.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .conditions
                    .clone()
            })
            .unwrap_or_default();
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
                // The eviction admit handler runs first, as the kubelet's.
                let mut verdict = crate::eviction::admit_under_pressure(sp, &conditions)
                    .and_then(|()| admit(&sp.pod, &active, &node, is_static));
                // A critical pod short only of resources preempts others (the
                // kubelet's CriticalPodAdmissionHandler), or is refused as is.
                if verdict
                    .as_ref()
                    .is_err_and(|r| r.reason.starts_with("OutOf"))
                    && crate::eviction::is_critical(sp)
                {
                    let candidates: Vec<&Pod> = pods
                        .iter()
                        .filter(|other| !crate::eviction::is_critical(other))
                        .map(|other| &other.pod)
                        .filter(|p| active.iter().any(|a| uid_of(a) == uid_of(p)))
                        .collect();
                    if let Some(victims) = pods_to_preempt(&sp.pod, &active, &candidates, &node) {
                        for v in &victims {
                            let grace = v
                                .spec
                                .as_ref()
                                .and_then(|s| s.termination_grace_period_seconds)
                                .unwrap_or(30)
                                .max(0);
                            let r = Rejection {
                                reason: REASON_PREEMPTING.to_string(),
                                message: MESSAGE_PREEMPTED.to_string(),
                                evicted: Some(grace),
                            };
                            tracing::warn!(pod = %crate::source::pod_key(v), critical_pod = %crate::source::pod_key(&sp.pod), "preempting a pod to admit a critical pod");
                            if let Some(hook) = self.on_preempt.get() {
                                hook(v, &r);
                            }
                            decisions.insert(uid_of(v), Decision::Rejected(r));
                        }
                        let gone: std::collections::HashSet<Uid> =
                            victims.iter().map(|v| uid_of(v)).collect();
                        active.retain(|a| !gone.contains(&uid_of(a)));
                        verdict = admit(&sp.pod, &active, &node, is_static);
                    }
                }
                match verdict {
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

/// One resource a critical pod lacks, and how much of it.
#[derive(Debug, Clone, PartialEq)]
enum Need {
    Pods(i64),
    Cpu(i64),
    Memory(i64),
    EphemeralStorage(i64),
    Scalar(String, i64),
}

impl Need {
    fn amount(&self) -> i64 {
        match self {
            Need::Pods(n) | Need::Cpu(n) | Need::Memory(n) | Need::EphemeralStorage(n) => *n,
            Need::Scalar(_, n) => *n,
        }
    }

    fn with(&self, amount: i64) -> Need {
        match self {
            Need::Pods(_) => Need::Pods(amount),
            Need::Cpu(_) => Need::Cpu(amount),
            Need::Memory(_) => Need::Memory(amount),
            Need::EphemeralStorage(_) => Need::EphemeralStorage(amount),
            Need::Scalar(n, _) => Need::Scalar(n.clone(), amount),
        }
    }

    /// What preempting `pod` gives back of this resource.
    fn given_by(&self, pod: &Pod) -> i64 {
        if let Need::Pods(_) = self {
            return 1;
        }
        let Some(r) = pod.spec.as_ref().and_then(|s| pod_requests(s).ok()) else {
            return 0;
        };
        match self {
            Need::Pods(_) => 1,
            Need::Cpu(_) => r.requests.milli_cpu,
            Need::Memory(_) => r.requests.memory,
            Need::EphemeralStorage(_) => r.requests.ephemeral_storage,
            Need::Scalar(name, _) => r.requests.scalar(name),
        }
    }
}

/// The needs left once `pods` are preempted (upstream's `subtract`).
fn subtract(needs: &[Need], pods: &[&Pod]) -> Vec<Need> {
    needs
        .iter()
        .filter_map(|n| {
            let left = pods
                .iter()
                .fold(n.amount(), |left, p| left.saturating_sub(n.given_by(p)));
            (left > 0).then(|| n.with(left))
        })
        .collect()
}

/// How far preempting `pod` leaves `needs` from met: the squared fraction of
/// each need it does not cover (upstream's `distance`).
fn distance(needs: &[Need], pod: &Pod) -> f64 {
    needs
        .iter()
        .map(|n| {
            let remaining = n.amount().saturating_sub(n.given_by(pod));
            if remaining > 0 && n.amount() > 0 {
                #[allow(clippy::cast_precision_loss)]
                let f = remaining as f64 / n.amount() as f64;
                f * f
            } else {
                0.0
            }
        })
        .sum()
}

/// The fewest, closest-fitting pods of `pods` that cover `needs`, one at a
/// time (upstream's `getPodsToPreemptByDistance`); `None` when they cannot.
fn preempt_by_distance(mut pods: Vec<&Pod>, mut needs: Vec<Need>) -> Option<Vec<&Pod>> {
    let mut out = Vec::new();
    while !needs.is_empty() {
        if pods.is_empty() {
            return None;
        }
        let key = |p: &Pod| {
            let r = p
                .spec
                .as_ref()
                .and_then(|s| pod_requests(s).ok())
                .map(|r| (r.requests.memory, r.requests.milli_cpu))
                .unwrap_or_default();
            (distance(&needs, p), r)
        };
        let best = pods
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| {
                let (da, ra) = key(a);
                let (db, rb) = key(b);
                da.total_cmp(&db).then(ra.cmp(&rb))
            })
            .map(|(i, _)| i)?;
        let pod = pods.swap_remove(best);
        needs = subtract(&needs, &[pod]);
        out.push(pod);
    }
    Some(out)
}

/// The pods to preempt so that critical `pod` fits (the kubelet's
/// `getPodsToPreempt`): BestEffort first, then Burstable, then Guaranteed,
/// each class only as far as the classes before it cannot cover. `None` when
/// nothing would make it fit, or what it lacks is not only resources (a
/// host port in use, a node affinity).
fn pods_to_preempt<'a>(
    pod: &Pod,
    active: &[&Pod],
    candidates: &[&'a Pod],
    node: &NodeInfo,
) -> Option<Vec<&'a Pod>> {
    // Fits an empty node: what it lacks is resources only.
    let others: Vec<&Pod> = active
        .iter()
        .filter(|a| !candidates.iter().any(|c| uid_of(c) == uid_of(a)))
        .copied()
        .collect();
    admit(pod, &others, node, true).ok()?;
    let spec = pod.spec.as_ref()?;
    let want = pod_requests(spec).ok()?.requests;
    let mut used = Resources::default();
    for p in active {
        if let Some(r) = p.spec.as_ref().and_then(|s| pod_requests(s).ok()) {
            used.add(&r.requests);
        }
    }
    let alloc = &node.resources.allocatable;
    let short = |want: i64, have: i64, used: i64| want.saturating_sub(have.saturating_sub(used));
    let count = i64::try_from(active.len()).unwrap_or(i64::MAX);
    let mut needs = vec![
        Need::Pods(count.saturating_add(1).saturating_sub(alloc.pods)),
        Need::Cpu(short(want.milli_cpu, alloc.milli_cpu, used.milli_cpu)),
        Need::Memory(short(want.memory, alloc.memory, used.memory)),
        Need::EphemeralStorage(short(
            want.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
        )),
    ];
    for (name, amount) in &want.scalar {
        // As admission: extended resources the node does not know are not its.
        let known = alloc.scalar.iter().any(|(n, _)| n == name);
        if known || name.starts_with("hugepages-") {
            needs.push(Need::Scalar(
                name.clone(),
                short(*amount, alloc.scalar(name), used.scalar(name)),
            ));
        }
    }
    needs.retain(|n| n.amount() > 0 && !want_is_zero(n, &want));
    if needs.is_empty() {
        return None;
    }
    let class = |c: &str| -> Vec<&'a Pod> {
        candidates
            .iter()
            .filter(|p| berth_api::qos::pod_qos_class(p) == c)
            .copied()
            .collect()
    };
    let (best_effort, burstable, guaranteed) = (
        class(berth_api::qos::BEST_EFFORT),
        class(berth_api::qos::BURSTABLE),
        class(berth_api::qos::GUARANTEED),
    );
    let all: Vec<&Pod> = candidates.to_vec();
    if !subtract(&needs, &all).is_empty() {
        return None;
    }
    let lower: Vec<&Pod> = best_effort.iter().chain(&burstable).copied().collect();
    let g = preempt_by_distance(guaranteed, subtract(&needs, &lower))?;
    let lower: Vec<&Pod> = best_effort.iter().chain(&g).copied().collect();
    let b = preempt_by_distance(burstable, subtract(&needs, &lower))?;
    let lower: Vec<&Pod> = b.iter().chain(&g).copied().collect();
    let e = preempt_by_distance(best_effort, subtract(&needs, &lower))?;
    Some(e.into_iter().chain(b).chain(g).collect())
}

/// A need for a resource the pod requests none of (a node already over
/// its allocatable): preempting others is not what admits it.
fn want_is_zero(n: &Need, want: &Resources) -> bool {
    match n {
        Need::Cpu(_) => want.milli_cpu == 0,
        Need::Memory(_) => want.memory == 0,
        Need::EphemeralStorage(_) => want.ephemeral_storage == 0,
        Need::Scalar(name, _) => want.scalar(name) == 0,
        Need::Pods(_) => false,
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
                | "Evicted"
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
                evicted: None,
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
        evicted: None,
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
        evicted: None,
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

    fn guaranteed(name: &str, cpu: &str, memory: &str) -> Pod {
        let mut p = pod(name, cpu, memory);
        if let Some(r) = p
            .spec
            .as_mut()
            .and_then(|s| s.containers[0].resources.as_mut())
        {
            r.limits = r.requests.clone();
        }
        p
    }

    fn names(pods: &[&Pod]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_critical_pod_preempts_the_lowest_qos_class_that_covers_it_closest_fit_first() {
        let n = node(2000, 4 << 30, 110);
        let be = pod("be", "", "");
        let small = pod("small", "200m", "");
        let big = pod("big", "900m", "");
        let g = guaranteed("g", "800m", "1Gi");
        let active = [&be, &small, &big, &g];
        // 1900m used of 2000m; the critical pod wants 800m: 700m short.
        let critical = pod("critical", "800m", "");
        let victims = pods_to_preempt(&critical, &active, &active, &n).unwrap();
        // Burstable pods cover it (BestEffort frees no CPU): the closest fit
        // alone, not the Guaranteed one.
        assert_eq!(names(&victims), ["big"]);
        // 1.5 cores short: Burstable pods are not enough, so Guaranteed too,
        // and only the Burstable ones still needed beside it.
        let huge = pod("huge", "1600m", "");
        let victims = pods_to_preempt(&huge, &active, &active, &n).unwrap();
        assert_eq!(names(&victims), ["big", "g"]);
        // Too many pods: one pod of the lowest class goes (BestEffort).
        let n3 = node(4000, 4 << 30, 4);
        let tiny = pod("tiny", "10m", "");
        assert_eq!(
            names(&pods_to_preempt(&tiny, &active, &active, &n3).unwrap()),
            ["be"]
        );
        // Nothing to take from, or more than the node has: no preemption.
        assert!(pods_to_preempt(&critical, &active, &[], &n).is_none());
        let absurd = pod("absurd", "64", "");
        assert!(pods_to_preempt(&absurd, &active, &active, &n).is_none());
        // A non-resource failure (node selector) is not preempted for.
        let mut picky = pod("picky", "800m", "");
        if let Some(s) = picky.spec.as_mut() {
            s.node_selector = Some(BTreeMap::from([("disk".into(), "hdd".into())]));
        }
        assert!(pods_to_preempt(&picky, &active, &active, &n).is_none());
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
