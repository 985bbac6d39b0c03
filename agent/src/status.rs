//! Pod status from observed runtime state, with the kubelet's semantics.
//!
//! [`compute_pod_status`] is a pure function of the desired pod, what the
//! runtime reports ([`ObservedPod`]) and what the pod worker remembers
//! ([`Transient`]). It mirrors the kubelet's `generateAPIPodStatus`,
//! `convertToAPIContainerStatuses` and `getPhase` (pkg/kubelet/kubelet_pods.go),
//! the prober's `UpdatePodStatus` for `ready`/`started` (from the probe results in [`Transient`]), and the
//! condition generators of pkg/kubelet/status/generate.go.
//!
//! The kubelet keeps the previous status in memory and stamps a condition's
//! `lastTransitionTime` with the wall clock when it flips; berth recomputes the
//! status from the runtime, so it uses the time the condition's basis changed
//! where the runtime shows it (a container's start or finish, a sandbox's
//! creation), and the pod's start time otherwise. Recomputing therefore gives the
//! same status for the same runtime state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;

use berth_api::restart;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::observed::{self, ObservedContainer, ObservedPod};
use crate::probe_results::{ContainerProbes, ProbeResult, ProbeType};

/// Why a container is waiting, as the kubelet reports it (`ErrImagePull`,
/// `ImagePullBackOff`, `ErrImageNeverPull`, `CrashLoopBackOff`,
/// `CreateContainerError`, `CreateContainerConfigError`, `RunContainerError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// The workers' shared view of per-pod transient state: the pod workers'
/// waiting reasons and the probe workers' results (kept apart, so neither
/// writer overwrites the other's).
#[derive(Debug, Default)]
pub struct TransientStore {
    inner: RwLock<HashMap<crate::Uid, Transient>>,
    probes: RwLock<HashMap<crate::Uid, BTreeMap<String, ContainerProbes>>>,
    /// Containers (by ID) whose postStart hook is still running, per pod.
    post_start: RwLock<HashMap<crate::Uid, BTreeSet<String>>>,
}

impl TransientStore {
    /// The transient state of `uid` (empty if none), with its probe results.
    pub fn get(&self, uid: &str) -> Transient {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut t = m.get(uid).cloned().unwrap_or_default();
        drop(m);
        t.probes = self.probes(uid);
        let hooks = self.post_start.read().unwrap_or_else(|e| e.into_inner());
        t.post_start_running = hooks.get(uid).cloned().unwrap_or_default();
        t
    }

    /// Mark container `id` of pod `uid` as running its postStart hook, or done.
    pub(crate) fn set_post_start(&self, uid: &str, id: &str, running: bool) {
        let mut m = self.post_start.write().unwrap_or_else(|e| e.into_inner());
        if running {
            m.entry(uid.to_string()).or_default().insert(id.to_string());
        } else if let Some(set) = m.get_mut(uid) {
            set.remove(id);
            if set.is_empty() {
                m.remove(uid);
            }
        }
    }

    /// The probe results of pod `uid`, by container ID.
    pub fn probes(&self, uid: &str) -> BTreeMap<String, ContainerProbes> {
        let m = self.probes.read().unwrap_or_else(|e| e.into_inner());
        m.get(uid).cloned().unwrap_or_default()
    }

    /// The probe results of container `id` of pod `uid`.
    pub fn probe(&self, uid: &str, id: &str) -> ContainerProbes {
        let m = self.probes.read().unwrap_or_else(|e| e.into_inner());
        m.get(uid)
            .and_then(|p| p.get(id))
            .copied()
            .unwrap_or_default()
    }

    /// Set (or with `None` forget) one probe result of container `id` of pod
    /// `uid`. Returns true when it changed.
    pub fn set_probe(
        &self,
        uid: &str,
        id: &str,
        probe: ProbeType,
        result: Option<ProbeResult>,
    ) -> bool {
        // Most probes confirm what is already known: a read lock, no allocation.
        if self.probe(uid, id).get(probe) == result {
            return false;
        }
        let mut m = self.probes.write().unwrap_or_else(|e| e.into_inner());
        let pod = m.entry(uid.to_string()).or_default();
        let entry = pod.entry(id.to_string()).or_default();
        let changed = entry.get(probe) != result;
        entry.set(probe, result);
        if entry.is_empty() {
            pod.remove(id);
        }
        if pod.is_empty() {
            m.remove(uid);
        }
        changed
    }

    /// Forget every probe result of pod `uid`.
    pub(crate) fn clear_probes(&self, uid: &str) {
        let mut m = self.probes.write().unwrap_or_else(|e| e.into_inner());
        m.remove(uid);
    }

    /// Keeps `t` (its probe results are the probe workers' and are not taken).
    pub(crate) fn set(&self, uid: &str, mut t: Transient) {
        t.probes.clear();
        t.post_start_running.clear();
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        m.insert(uid.to_string(), t);
    }

    pub(crate) fn remove(&self, uid: &str) {
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        m.remove(uid);
    }
}

/// What the pod worker knows that the runtime does not hold: why a container is
/// waiting, and why the sandbox could not be created. Lost on restart, rebuilt
/// by the next sync — as the kubelet's own in-memory sync results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transient {
    /// Keyed by container name (init and app container names are unique together).
    pub waiting: BTreeMap<String, Waiting>,
    /// A pod-level problem (e.g. RunPodSandbox failed), shown as the pod's
    /// `status.reason`/`status.message` while no container runs.
    pub pod_error: Option<Waiting>,
    /// The probe workers' latest results, by container ID (see
    /// [`crate::probe_results`]); a container with no entry has no result yet.
    pub probes: BTreeMap<String, ContainerProbes>,
    /// Containers (by ID) whose postStart hook has not returned: running, but
    /// neither started nor ready until it does.
    pub post_start_running: BTreeSet<String>,
    /// Admission refused the pod (`OutOfcpu`, `NodeAffinity`, ...): it never
    /// runs and its status is Failed with this reason.
    pub rejected: Option<crate::source::Rejection>,
    /// The attempt of the last RunPodSandbox this agent tried for the pod. A
    /// failed RunPodSandbox can leave a NotReady sandbox that holds its name
    /// (containerd keeps it for clean-up) before any relist has seen it; the
    /// next attempt counts from here too, not from the relist alone.
    pub last_sandbox_attempt: Option<u32>,
}

/// Pod phases (`status.phase`).
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const UNKNOWN: &str = "Unknown";
    /// Every phase, for metrics that report a count per phase.
    pub const ALL: [&str; 5] = [PENDING, RUNNING, SUCCEEDED, FAILED, UNKNOWN];
}

/// QoS classes (`status.qosClass`).
pub use berth_api::qos;

/// Pod condition types the kubelet owns, and the reasons it gives them.
pub mod condition {
    pub const POD_SCHEDULED: &str = "PodScheduled";
    pub const POD_READY_TO_START_CONTAINERS: &str = "PodReadyToStartContainers";
    pub const INITIALIZED: &str = "Initialized";
    pub const CONTAINERS_READY: &str = "ContainersReady";
    pub const READY: &str = "Ready";

    pub const REASON_POD_COMPLETED: &str = "PodCompleted";
    pub const REASON_POD_FAILED: &str = "PodFailed";
    pub const REASON_CONTAINERS_NOT_READY: &str = "ContainersNotReady";
    pub const REASON_CONTAINERS_NOT_INITIALIZED: &str = "ContainersNotInitialized";
    pub const REASON_READINESS_GATES_NOT_READY: &str = "ReadinessGatesNotReady";
    /// Set by the kubelet when it evicts a pod.
    pub const DISRUPTION_TARGET: &str = "DisruptionTarget";
    pub const REASON_TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";
}

/// The waiting reason of a container that has not been created yet.
pub const REASON_CONTAINER_CREATING: &str = "ContainerCreating";
/// The waiting reason of a not-yet-created container of a pod with init containers.
pub const REASON_POD_INITIALIZING: &str = "PodInitializing";

/// True for the phases a pod never leaves (`Succeeded`, `Failed`).
pub fn is_terminal(phase: &str) -> bool {
    phase == phase::SUCCEEDED || phase == phase::FAILED
}

/// A container's `containerID` as the kubelet shows it: `<runtime>://<id>`, where
/// `runtime_name` is the `runtime_name` of the CRI `Version` response
/// (`containerd`, `cri-o`).
pub fn container_id(runtime_name: &str, id: &str) -> String {
    format!("{runtime_name}://{id}")
}

/// The status of a pod the agent refuses to run (the kubelet's `rejectPod`):
/// phase Failed, the reason, and the message naming what did not fit.
pub fn rejected_status(pod: &Pod, reason: &str, message: String) -> PodStatus {
    PodStatus {
        phase: Some(phase::FAILED.to_string()),
        reason: Some(reason.to_string()),
        message: Some(message),
        qos_class: Some(berth_api::qos::pod_qos_class(pod).to_string()),
        ..Default::default()
    }
}

/// The pod's status as the kubelet would report it.
///
/// `host_ip` is the node's IP (`status.hostIP`, and `status.podIP` of a
/// hostNetwork pod; empty when unknown); `runtime_name` is the CRI runtime's name,
/// the scheme of `containerID` (see [`container_id`]).
pub fn compute_pod_status(
    pod: &Pod,
    observed: &ObservedPod,
    transient: &Transient,
    host_ip: &str,
    runtime_name: &str,
) -> PodStatus {
    let evicted = transient.rejected.as_ref().filter(|r| r.evicted.is_some());
    if let Some(r) = &transient.rejected
        && evicted.is_none()
    {
        return rejected_status(pod, &r.reason, format!("Pod was rejected: {}", r.message));
    }
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let init_specs: &[Container] = spec.init_containers.as_deref().unwrap_or(&[]);
    let has_init = !init_specs.is_empty();

    let ctx = Ctx {
        pod,
        observed,
        transient,
        runtime_name,
        has_init,
    };
    let init_statuses = ctx.container_statuses(init_specs, true);
    let mut app_statuses = ctx.container_statuses(&spec.containers, false);
    // The kubelet sorts app container statuses by name; init containers keep spec order.
    app_statuses.sort_by(|a, b| a.name.cmp(&b.name));

    // An evicted pod is Failed from the moment it was evicted (the kubelet's
    // eviction sets the phase as it kills the pod).
    let pod_phase = match evicted {
        Some(_) => phase::FAILED,
        None => pod_phase(
            spec,
            &init_statuses,
            &app_statuses,
            has_active_regular_container(spec, observed),
        ),
    };

    let start_time = observed
        .sandboxes
        .iter()
        .map(|s| s.created_at)
        .filter(|t| *t > 0)
        .min()
        .and_then(time_from_nanos);
    let fallback_time = start_time
        .clone()
        .or_else(|| pod.metadata.creation_timestamp.clone());

    let mut conditions = Vec::with_capacity(5);
    conditions.push(ready_to_start_condition(
        spec,
        observed,
        fallback_time.clone(),
    ));
    conditions.push(initialized_condition(
        spec,
        &init_statuses,
        &app_statuses,
        pod_phase,
        fallback_time.clone(),
    ));
    let containers_ready = containers_ready_condition(
        spec,
        &init_statuses,
        &app_statuses,
        pod_phase,
        fallback_time.clone(),
    );
    conditions.push(ready_condition(spec, &conditions, &containers_ready));
    conditions.push(containers_ready);
    conditions.push(PodCondition {
        type_: condition::POD_SCHEDULED.to_string(),
        status: "True".to_string(),
        last_transition_time: fallback_time,
        ..Default::default()
    });
    if let Some(r) = evicted {
        // The kubelet's eviction adds DisruptionTarget (reason
        // TerminationByKubelet) with the eviction's message.
        conditions.push(PodCondition {
            type_: condition::DISRUPTION_TARGET.to_string(),
            status: "True".to_string(),
            reason: Some(condition::REASON_TERMINATION_BY_KUBELET.to_string()),
            message: Some(r.message.clone()),
            ..Default::default()
        });
    }

    let host_network = spec.host_network.unwrap_or(false);
    let pod_ips: Vec<String> = if host_network {
        if host_ip.is_empty() {
            Vec::new()
        } else {
            vec![host_ip.to_string()]
        }
    } else {
        // As the kubelet: the IPs of the newest sandbox, while it is ready.
        observed
            .latest_sandbox()
            .filter(|s| s.ready)
            .map(|s| s.ips.iter().filter(|ip| !ip.is_empty()).cloned().collect())
            .unwrap_or_default()
    };

    let any_running = init_statuses
        .iter()
        .chain(app_statuses.iter())
        .any(is_running);
    let (reason, message) = match (evicted, &transient.pod_error, any_running) {
        (Some(r), _, _) => (Some(r.reason.clone()), Some(r.message.clone())),
        (None, Some(err), false) => (non_empty(&err.reason), non_empty(&err.message)),
        _ => (None, None),
    };

    PodStatus {
        phase: Some(pod_phase.to_string()),
        conditions: Some(conditions),
        host_ip: non_empty(host_ip),
        host_ips: non_empty(host_ip).map(|ip| vec![HostIP { ip }]),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: if pod_ips.is_empty() {
            None
        } else {
            Some(pod_ips.into_iter().map(|ip| PodIP { ip }).collect())
        },
        start_time,
        qos_class: Some(qos::pod_qos_class(pod).to_string()),
        reason,
        message,
        init_container_statuses: if has_init { Some(init_statuses) } else { None },
        container_statuses: Some(app_statuses),
        ..Default::default()
    }
}

/// What [`compute_pod_status`] reads for every container.
struct Ctx<'a> {
    pod: &'a Pod,
    observed: &'a ObservedPod,
    transient: &'a Transient,
    runtime_name: &'a str,
    has_init: bool,
}

impl Ctx<'_> {
    /// The kubelet's `convertToAPIContainerStatuses` for one list of containers,
    /// in spec order, followed by the prober's `ready`/`started`.
    fn container_statuses(&self, specs: &[Container], init: bool) -> Vec<ContainerStatus> {
        specs
            .iter()
            .map(|c| self.container_status(c, init))
            .collect()
    }

    fn container_status(&self, spec: &Container, init: bool) -> ContainerStatus {
        let default_reason = if self.has_init {
            REASON_POD_INITIALIZING
        } else {
            REASON_CONTAINER_CREATING
        };
        // Newest first, as the runtime state is ordered.
        let mut history = self
            .observed
            .containers
            .iter()
            .filter(|c| c.name == spec.name && c.init == init);
        let newest = history.next();
        let mut status = match newest {
            Some(c) => ContainerStatus {
                name: spec.name.clone(),
                image: if c.image.is_empty() {
                    spec.image.clone().unwrap_or_default()
                } else {
                    c.image.clone()
                },
                image_id: c.image_ref.clone(),
                container_id: Some(container_id(self.runtime_name, &c.id)),
                restart_count: c.restart_count,
                state: Some(self.api_state(c)),
                last_state: history.next().map(|prev| self.api_state(prev)),
                ..Default::default()
            },
            None => ContainerStatus {
                name: spec.name.clone(),
                image: spec.image.clone().unwrap_or_default(),
                state: Some(waiting_state(Some(default_reason), None)),
                ..Default::default()
            },
        };

        // A container that will be (re)started by the next sync shows why it is
        // waiting, if the worker knows; the exited one moves to lastState.
        let completed_init = init
            && newest
                .is_some_and(|c| c.state == observed::ContainerState::Exited && c.exit_code == 0);
        if !completed_init
            && self.should_restart(spec, init, newest)
            && let Some(w) = self.transient.waiting.get(&spec.name)
        {
            if status
                .state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some())
            {
                status.last_state = status.state.take();
            }
            status.state = Some(waiting_state(
                non_empty(&w.reason).as_deref(),
                non_empty(&w.message),
            ));
        }

        // The prober manager's `UpdatePodStatus`: started once running and its
        // startup probe (if any) succeeded for this very container; ready once
        // started and its readiness probe (if any) succeeded; neither while its
        // postStart hook runs. A regular init container is ready once it
        // exited 0.
        let hook_done = newest.is_none_or(|c| !self.transient.post_start_running.contains(&c.id));
        let running = is_running(&status) && hook_done;
        let probes = newest
            .filter(|_| running)
            .and_then(|c| self.transient.probes.get(&c.id).copied())
            .unwrap_or_default();
        let started = running
            && match probes.startup {
                Some(r) => r == ProbeResult::Success,
                None => spec.startup_probe.is_none(),
            };
        status.started = Some(started);
        status.ready = if init && !restart::is_restartable_init_container(spec) {
            terminated(&status).is_some_and(|t| t.exit_code == 0)
        } else {
            started
                && match probes.readiness {
                    Some(r) => r == ProbeResult::Success,
                    None => spec.readiness_probe.is_none(),
                }
        };
        if status.last_state.is_none() {
            status.last_state = Some(ContainerState::default());
        }
        status
    }

    /// The kubelet's `convertContainerStatus`: a runtime container as an API state.
    fn api_state(&self, c: &ObservedContainer) -> ContainerState {
        match c.state {
            observed::ContainerState::Running => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: time_from_nanos(c.started_at),
                }),
                ..Default::default()
            },
            observed::ContainerState::Exited => {
                let reason = if !c.reason.is_empty() {
                    c.reason.clone()
                } else if c.exit_code == 0 {
                    "Completed".to_string()
                } else {
                    "Error".to_string()
                };
                ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: c.exit_code,
                        reason: Some(reason),
                        message: non_empty(&c.message),
                        started_at: time_from_nanos(c.started_at),
                        finished_at: time_from_nanos(c.finished_at),
                        container_id: Some(container_id(self.runtime_name, &c.id)),
                        signal: None,
                    }),
                    ..Default::default()
                }
            }
            // Created but not started, or unknown: "waiting to be running".
            observed::ContainerState::Created | observed::ContainerState::Unknown => {
                waiting_state(None, None)
            }
        }
    }

    /// The kubelet's `ShouldContainerBeRestarted`, on the newest runtime container.
    fn should_restart(
        &self,
        spec: &Container,
        init: bool,
        newest: Option<&ObservedContainer>,
    ) -> bool {
        if self.pod.metadata.deletion_timestamp.is_some() {
            return false;
        }
        let Some(c) = newest else {
            return true;
        };
        match c.state {
            observed::ContainerState::Running => false,
            observed::ContainerState::Created | observed::ContainerState::Unknown => true,
            observed::ContainerState::Exited => {
                let policy = restart::container_restart_policy(self.pod.spec.as_ref(), spec, init);
                restart::restarts_after_exit(policy, c.exit_code)
            }
        }
    }
}

/// The kubelet's `HasAnyActiveRegularContainerStarted`: an app container exists
/// in the newest sandbox, so the pod was initialized.
fn has_active_regular_container(spec: &PodSpec, observed: &ObservedPod) -> bool {
    let Some(sandbox) = observed.latest_sandbox() else {
        return false;
    };
    observed.containers.iter().any(|c| {
        !c.init && c.sandbox_id == sandbox.id && spec.containers.iter().any(|s| s.name == c.name)
    })
}

/// The kubelet's `getPhase`, for a static pod (the kubelet does not apply its
/// "pod is terminal" shortcut to static pods, so only the restart policy decides).
///
/// Regular init containers: running, or waiting without a previous termination,
/// or missing → pending; terminated non-zero (now, or as the last termination of
/// a waiting one) → failed initialization. Sidecars (restartable init containers)
/// count as running (pending until started) or waiting; terminated ones are
/// ignored. App containers count as running, terminated (stopped; succeeded when
/// exit 0), waiting with a previous termination (stopped), waiting, or unknown.
///
/// | rule (first match wins)                                          | phase     |
/// |------------------------------------------------------------------|-----------|
/// | failed initialization and restartPolicy Never                    | Failed    |
/// | pending regular init, or pending sidecar while not initialized   | Pending   |
/// | any waiting                                                      | Pending   |
/// | running > 0 and unknown == 0                                     | Running   |
/// | running == 0, stopped > 0, unknown == 0, restartPolicy Always    | Running   |
/// | … all stopped succeeded (Never/OnFailure)                        | Succeeded |
/// | … restartPolicy Never (a failure)                                | Failed    |
/// | … restartPolicy OnFailure (a failure, restarting)                | Running   |
/// | otherwise                                                        | Pending   |
fn pod_phase(
    spec: &PodSpec,
    init_statuses: &[ContainerStatus],
    app_statuses: &[ContainerStatus],
    pod_has_initialized: bool,
) -> &'static str {
    let init_specs: &[Container] = spec.init_containers.as_deref().unwrap_or(&[]);
    let policy = restart::pod_restart_policy(Some(spec));

    let mut pending_regular_init = 0;
    let mut pending_restartable_init = 0;
    let mut failed_init = 0;
    for c in init_specs
        .iter()
        .filter(|c| !restart::is_restartable_init_container(c))
    {
        let Some(s) = find_status(init_statuses, &c.name) else {
            pending_regular_init += 1;
            continue;
        };
        let state = s.state.clone().unwrap_or_default();
        if state.running.is_some() {
            pending_regular_init += 1;
        } else if let Some(t) = &state.terminated {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else if state.waiting.is_some() {
            match last_terminated(s) {
                Some(t) => {
                    if t.exit_code != 0 {
                        failed_init += 1;
                    }
                }
                None => pending_regular_init += 1,
            }
        } else {
            pending_regular_init += 1;
        }
    }

    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for c in init_specs
        .iter()
        .filter(|c| restart::is_restartable_init_container(c))
    {
        let Some(s) = find_status(init_statuses, &c.name) else {
            unknown += 1;
            continue;
        };
        let state = s.state.clone().unwrap_or_default();
        if state.running.is_some() {
            if s.started != Some(true) {
                pending_restartable_init += 1;
            }
            running += 1;
        } else if state.terminated.is_some() {
            // Terminated sidecars do not count towards the phase.
        } else if state.waiting.is_some() {
            if last_terminated(s).is_none() {
                pending_restartable_init += 1;
                waiting += 1;
            }
        } else {
            pending_restartable_init += 1;
            unknown += 1;
        }
    }

    for c in &spec.containers {
        let Some(s) = find_status(app_statuses, &c.name) else {
            unknown += 1;
            continue;
        };
        let state = s.state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = &state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if state.waiting.is_some() {
            if last_terminated(s).is_some() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }

    if failed_init > 0 && policy == restart::NEVER {
        return phase::FAILED;
    }
    if pending_regular_init > 0 || (pending_restartable_init > 0 && !pod_has_initialized) {
        return phase::PENDING;
    }
    if waiting > 0 {
        return phase::PENDING;
    }
    if running > 0 && unknown == 0 {
        return phase::RUNNING;
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        if policy == restart::ALWAYS {
            return phase::RUNNING;
        }
        if stopped == succeeded {
            return phase::SUCCEEDED;
        }
        if policy == restart::NEVER {
            return phase::FAILED;
        }
        return phase::RUNNING;
    }
    phase::PENDING
}

/// `PodReadyToStartContainers`: True when the newest sandbox is the only ready
/// one and has its network (the kubelet: no new sandbox is needed).
fn ready_to_start_condition(
    spec: &PodSpec,
    observed: &ObservedPod,
    fallback_time: Option<Time>,
) -> PodCondition {
    let latest = observed.latest_sandbox();
    let ready = !pod_sandbox_changed(spec, observed);
    PodCondition {
        type_: condition::POD_READY_TO_START_CONTAINERS.to_string(),
        status: condition_status(ready),
        last_transition_time: latest
            .and_then(|s| time_from_nanos(s.created_at))
            .or(fallback_time),
        ..Default::default()
    }
}

/// The kubelet's `PodSandboxChanged`, as far as the runtime state shows it: a new
/// sandbox is needed when there is none, more than one is ready, the newest is
/// not ready, or the newest has no IP (unless hostNetwork).
pub fn pod_sandbox_changed(spec: &PodSpec, observed: &ObservedPod) -> bool {
    let Some(latest) = observed.latest_sandbox() else {
        return true;
    };
    if observed.sandboxes.iter().filter(|s| s.ready).count() > 1 || !latest.ready {
        return true;
    }
    !spec.host_network.unwrap_or(false) && latest.ips.iter().all(|ip| ip.is_empty())
}

/// The kubelet's `GeneratePodInitializedCondition`.
fn initialized_condition(
    spec: &PodSpec,
    init_statuses: &[ContainerStatus],
    app_statuses: &[ContainerStatus],
    pod_phase: &str,
    fallback_time: Option<Time>,
) -> PodCondition {
    let init_specs: &[Container] = spec.init_containers.as_deref().unwrap_or(&[]);
    let mut unknown = Vec::new();
    let mut incomplete = Vec::new();
    for c in init_specs {
        match find_status(init_statuses, &c.name) {
            None => unknown.push(c.name.as_str()),
            Some(s) => {
                let initialized = if restart::is_restartable_init_container(c) {
                    s.started == Some(true)
                } else {
                    s.ready
                };
                if !initialized {
                    incomplete.push(c.name.as_str());
                }
            }
        }
    }
    // Initialized when the last init container finished (or when the pod started).
    let finished = init_statuses
        .iter()
        .filter_map(|s| terminated(s).and_then(|t| t.finished_at.clone()))
        .max();
    let true_time = finished.or_else(|| fallback_time.clone());

    if pod_phase == phase::SUCCEEDED && unknown.is_empty() {
        return PodCondition {
            type_: condition::INITIALIZED.to_string(),
            status: condition_status(true),
            reason: Some(condition::REASON_POD_COMPLETED.to_string()),
            last_transition_time: true_time,
            ..Default::default()
        };
    }
    if has_any_regular_container_started(spec, app_statuses) {
        return PodCondition {
            type_: condition::INITIALIZED.to_string(),
            status: condition_status(true),
            last_transition_time: true_time,
            ..Default::default()
        };
    }
    let mut messages = Vec::new();
    if !unknown.is_empty() {
        messages.push(format!(
            "containers with unknown status: {}",
            go_list(&unknown)
        ));
    }
    if !incomplete.is_empty() {
        messages.push(format!(
            "containers with incomplete status: {}",
            go_list(&incomplete)
        ));
    }
    if !messages.is_empty() {
        return PodCondition {
            type_: condition::INITIALIZED.to_string(),
            status: condition_status(false),
            reason: Some(condition::REASON_CONTAINERS_NOT_INITIALIZED.to_string()),
            message: Some(messages.join(", ")),
            last_transition_time: fallback_time,
            ..Default::default()
        };
    }
    PodCondition {
        type_: condition::INITIALIZED.to_string(),
        status: condition_status(true),
        last_transition_time: true_time,
        ..Default::default()
    }
}

/// The kubelet's `HasAnyRegularContainerStarted`: an app container is running or terminated.
fn has_any_regular_container_started(spec: &PodSpec, app_statuses: &[ContainerStatus]) -> bool {
    spec.containers.iter().any(|c| {
        find_status(app_statuses, &c.name).is_some_and(|s| {
            s.state
                .as_ref()
                .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
        })
    })
}

/// The kubelet's `GenerateContainersReadyCondition` (sidecars and app containers).
fn containers_ready_condition(
    spec: &PodSpec,
    init_statuses: &[ContainerStatus],
    app_statuses: &[ContainerStatus],
    pod_phase: &str,
    fallback_time: Option<Time>,
) -> PodCondition {
    let init_specs: &[Container] = spec.init_containers.as_deref().unwrap_or(&[]);
    let mut unknown = Vec::new();
    let mut unready = Vec::new();
    let mut considered: Vec<&ContainerStatus> = Vec::new();
    let sidecars = init_specs
        .iter()
        .filter(|c| restart::is_restartable_init_container(c))
        .map(|c| (c, init_statuses));
    let apps = spec.containers.iter().map(|c| (c, app_statuses));
    for (c, statuses) in sidecars.chain(apps) {
        match find_status(statuses, &c.name) {
            None => unknown.push(c.name.as_str()),
            Some(s) => {
                if !s.ready {
                    unready.push(c.name.as_str());
                }
                considered.push(s);
            }
        }
    }

    // Ready since the last of them started; unready since the last of the
    // unready ones finished.
    let last_started = considered
        .iter()
        .filter_map(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.running.as_ref())
                .and_then(|r| r.started_at.clone())
        })
        .max();
    let last_finished = considered
        .iter()
        .filter(|s| !s.ready)
        .filter_map(|s| {
            terminated(s)
                .or_else(|| last_terminated(s))
                .and_then(|t| t.finished_at.clone())
        })
        .max();
    let false_time = last_finished.or_else(|| fallback_time.clone());

    let terminal = |reason: &str| PodCondition {
        type_: condition::CONTAINERS_READY.to_string(),
        status: condition_status(false),
        reason: Some(reason.to_string()),
        last_transition_time: false_time.clone(),
        ..Default::default()
    };
    if pod_phase == phase::SUCCEEDED && unknown.is_empty() {
        return terminal(condition::REASON_POD_COMPLETED);
    }
    if pod_phase == phase::FAILED {
        return terminal(condition::REASON_POD_FAILED);
    }

    let mut messages = Vec::new();
    if !unknown.is_empty() {
        messages.push(format!(
            "containers with unknown status: {}",
            go_list(&unknown)
        ));
    }
    if !unready.is_empty() {
        messages.push(format!(
            "containers with unready status: {}",
            go_list(&unready)
        ));
    }
    if !messages.is_empty() {
        return PodCondition {
            type_: condition::CONTAINERS_READY.to_string(),
            status: condition_status(false),
            reason: Some(condition::REASON_CONTAINERS_NOT_READY.to_string()),
            message: Some(messages.join(", ")),
            last_transition_time: false_time,
            ..Default::default()
        };
    }
    PodCondition {
        type_: condition::CONTAINERS_READY.to_string(),
        status: condition_status(true),
        last_transition_time: last_started.or(fallback_time),
        ..Default::default()
    }
}

/// The kubelet's `GeneratePodReadyCondition`: ContainersReady, then the
/// readiness gates against the conditions computed so far.
fn ready_condition(
    spec: &PodSpec,
    conditions: &[PodCondition],
    containers_ready: &PodCondition,
) -> PodCondition {
    let mut ready = PodCondition {
        type_: condition::READY.to_string(),
        ..containers_ready.clone()
    };
    if containers_ready.status != "True" {
        return ready;
    }
    let mut messages = Vec::new();
    for gate in spec.readiness_gates.as_deref().unwrap_or(&[]) {
        match conditions.iter().find(|c| c.type_ == gate.condition_type) {
            None => messages.push(format!(
                "corresponding condition of pod readiness gate {:?} does not exist.",
                gate.condition_type
            )),
            Some(c) if c.status != "True" => messages.push(format!(
                "the status of pod readiness gate {:?} is not \"True\", but {}",
                gate.condition_type, c.status
            )),
            Some(_) => {}
        }
    }
    if !messages.is_empty() {
        ready.status = condition_status(false);
        ready.reason = Some(condition::REASON_READINESS_GATES_NOT_READY.to_string());
        ready.message = Some(messages.join(", "));
    }
    ready
}

fn find_status<'a>(statuses: &'a [ContainerStatus], name: &str) -> Option<&'a ContainerStatus> {
    statuses.iter().find(|s| s.name == name)
}

fn is_running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.running.is_some())
}

fn terminated(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    s.state.as_ref().and_then(|st| st.terminated.as_ref())
}

fn last_terminated(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    s.last_state.as_ref().and_then(|st| st.terminated.as_ref())
}

fn waiting_state(reason: Option<&str>, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: reason.map(str::to_string),
            message,
        }),
        ..Default::default()
    }
}

fn condition_status(value: bool) -> String {
    if value { "True" } else { "False" }.to_string()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A list as Go's `%s` prints a `[]string`: `[a b]`.
fn go_list(names: &[&str]) -> String {
    format!("[{}]", names.join(" "))
}

/// A CRI timestamp (nanoseconds since the epoch; 0 = unknown) as an API time.
fn time_from_nanos(ns: i64) -> Option<Time> {
    if ns <= 0 {
        return None;
    }
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .ok()
        .map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::{ContainerState as Cs, ObservedSandbox};
    use serde_json::json;

    const SEC: i64 = 1_000_000_000;
    /// 2024-01-01T00:00:00Z in nanoseconds.
    const T0: i64 = 1_704_067_200 * SEC;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": spec,
        }))
        .expect("test pod")
    }

    fn one(restart_policy: &str) -> Pod {
        pod(json!({
            "restartPolicy": restart_policy,
            "containers": [{"name": "app", "image": "nginx:1"}],
        }))
    }

    fn with_init(restart_policy: &str) -> Pod {
        pod(json!({
            "restartPolicy": restart_policy,
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "nginx:1"}],
        }))
    }

    fn sandbox(id: &str, ready: bool, created: i64, ips: &[&str]) -> ObservedSandbox {
        ObservedSandbox {
            id: id.to_string(),
            uid: "u1".to_string(),
            name: "web".to_string(),
            namespace: "default".to_string(),
            attempt: 0,
            ready,
            created_at: created,
            ips: ips.iter().map(|s| s.to_string()).collect(),
            host_network: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    fn container(id: &str, name: &str, state: Cs, created: i64) -> ObservedContainer {
        ObservedContainer {
            id: id.to_string(),
            sandbox_id: "sb1".to_string(),
            name: name.to_string(),
            attempt: 0,
            state,
            hash: String::new(),
            restart_count: 0,
            init: false,
            created_at: created,
            started_at: if state == Cs::Created {
                0
            } else {
                created + SEC
            },
            finished_at: if state == Cs::Exited {
                created + 5 * SEC
            } else {
                0
            },
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image: "nginx:1".to_string(),
            image_ref: "sha256:abc".to_string(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    fn exited(id: &str, name: &str, code: i32, created: i64) -> ObservedContainer {
        ObservedContainer {
            exit_code: code,
            ..container(id, name, Cs::Exited, created)
        }
    }

    fn init(c: ObservedContainer) -> ObservedContainer {
        ObservedContainer { init: true, ..c }
    }

    /// An observed pod with one ready sandbox (10.0.0.5) and these containers, newest first.
    fn observed(containers: Vec<ObservedContainer>) -> ObservedPod {
        ObservedPod {
            uid: "u1".to_string(),
            sandboxes: vec![sandbox("sb1", true, T0, &["10.0.0.5"])],
            containers,
        }
    }

    fn waiting(pairs: &[(&str, &str)]) -> Transient {
        Transient {
            waiting: pairs
                .iter()
                .map(|(name, reason)| {
                    (
                        name.to_string(),
                        Waiting {
                            reason: reason.to_string(),
                            message: format!("{reason} message"),
                        },
                    )
                })
                .collect(),
            pod_error: None,
            probes: BTreeMap::new(),
            post_start_running: BTreeSet::new(),
            rejected: None,
            last_sandbox_attempt: None,
        }
    }

    fn status(pod: &Pod, obs: &ObservedPod, tr: &Transient) -> PodStatus {
        compute_pod_status(pod, obs, tr, "192.168.1.10", "containerd")
    }

    fn app<'a>(s: &'a PodStatus, name: &str) -> &'a ContainerStatus {
        s.container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .expect("container status")
    }

    fn init_status<'a>(s: &'a PodStatus, name: &str) -> &'a ContainerStatus {
        s.init_container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .expect("init container status")
    }

    fn cond<'a>(s: &'a PodStatus, type_: &str) -> &'a PodCondition {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    fn waiting_reason(c: &ContainerStatus) -> Option<&str> {
        c.state
            .as_ref()?
            .waiting
            .as_ref()
            .map(|w| w.reason.as_deref().unwrap_or(""))
    }

    fn t(ns: i64) -> Option<Time> {
        time_from_nanos(ns)
    }

    #[test]
    fn running_container() {
        let p = one("Always");
        let s = status(
            &p,
            &observed(vec![container("c1", "app", Cs::Running, T0)]),
            &Transient::default(),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let c = app(&s, "app");
        assert!(c.ready);
        assert_eq!(c.started, Some(true));
        assert_eq!(c.container_id.as_deref(), Some("containerd://c1"));
        assert_eq!(c.image, "nginx:1");
        assert_eq!(c.image_id, "sha256:abc");
        assert_eq!(c.restart_count, 0);
        assert_eq!(
            c.state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.clone()),
            t(T0 + SEC)
        );
        assert_eq!(c.last_state, Some(ContainerState::default()));
        for type_ in [
            condition::POD_READY_TO_START_CONTAINERS,
            condition::INITIALIZED,
            condition::READY,
            condition::CONTAINERS_READY,
            condition::POD_SCHEDULED,
        ] {
            assert_eq!(cond(&s, type_).status, "True", "{type_}");
        }
        // The kubelet's order of conditions.
        let types: Vec<&str> = s
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
        assert_eq!(cond(&s, "Ready").last_transition_time, t(T0 + SEC));
        assert_eq!(cond(&s, "PodScheduled").last_transition_time, t(T0));
        assert_eq!(s.start_time, t(T0));
        assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(s.host_ip.as_deref(), Some("192.168.1.10"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        assert!(s.init_container_statuses.is_none());

        let v = serde_json::to_value(&s).expect("serialize");
        assert_eq!(v["containerStatuses"][0]["lastState"], json!({}));
        assert_eq!(
            v["containerStatuses"][0]["state"]["running"]["startedAt"],
            "2024-01-01T00:00:01Z"
        );
        assert_eq!(v["podIPs"], json!([{"ip": "10.0.0.5"}]));
        assert_eq!(v["hostIPs"], json!([{"ip": "192.168.1.10"}]));
    }

    #[test]
    fn crash_loop_shows_waiting_with_last_state() {
        let p = one("Always");
        let newest = ObservedContainer {
            restart_count: 1,
            ..exited("c2", "app", 1, T0 + 10 * SEC)
        };
        let obs = observed(vec![newest, exited("c1", "app", 1, T0)]);
        let s = status(&p, &obs, &waiting(&[("app", "CrashLoopBackOff")]));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let c = app(&s, "app");
        assert_eq!(waiting_reason(c), Some("CrashLoopBackOff"));
        assert_eq!(
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.message.as_deref()),
            Some("CrashLoopBackOff message")
        );
        let last = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("lastState");
        assert_eq!(last.exit_code, 1);
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert_eq!(last.container_id.as_deref(), Some("containerd://c2"));
        assert_eq!(last.finished_at, t(T0 + 15 * SEC));
        assert_eq!(c.restart_count, 1);
        assert!(!c.ready);
        assert_eq!(c.started, Some(false));
        let ready = cond(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [app]")
        );
        assert_eq!(ready.last_transition_time, t(T0 + 15 * SEC));
    }

    #[test]
    fn exited_without_waiting_entry_keeps_previous_as_last_state() {
        let p = one("Always");
        let obs = observed(vec![
            exited("c2", "app", 2, T0 + 10 * SEC),
            exited("c1", "app", 1, T0),
        ]);
        let s = status(&p, &obs, &Transient::default());
        let c = app(&s, "app");
        assert_eq!(
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
            Some(2)
        );
        assert_eq!(last_terminated(c).map(|t| t.exit_code), Some(1));
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn running_after_restart_shows_previous_termination() {
        let p = one("Always");
        let obs = observed(vec![
            container("c2", "app", Cs::Running, T0 + 10 * SEC),
            exited("c1", "app", 137, T0),
        ]);
        let s = status(&p, &obs, &Transient::default());
        let c = app(&s, "app");
        assert!(is_running(c));
        assert_eq!(last_terminated(c).map(|t| t.exit_code), Some(137));
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn image_pull_error_is_pending() {
        let p = one("Always");
        let s = status(&p, &observed(vec![]), &waiting(&[("app", "ErrImagePull")]));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = app(&s, "app");
        assert_eq!(waiting_reason(c), Some("ErrImagePull"));
        assert_eq!(c.image, "nginx:1");
        assert_eq!(c.image_id, "");
        assert_eq!(c.container_id, None);
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "True");
    }

    #[test]
    fn never_nonzero_exit_fails() {
        let p = one("Never");
        let s = status(
            &p,
            &observed(vec![exited("c1", "app", 3, T0)]),
            &Transient::default(),
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let term = terminated(app(&s, "app")).expect("terminated");
        assert_eq!(term.exit_code, 3);
        assert_eq!(term.reason.as_deref(), Some("Error"));
        assert_eq!(term.container_id.as_deref(), Some("containerd://c1"));
        assert_eq!(
            cond(&s, "ContainersReady").reason.as_deref(),
            Some("PodFailed")
        );
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodFailed"));
        assert_eq!(cond(&s, "Ready").status, "False");
    }

    #[test]
    fn never_ignores_waiting_entry_for_a_container_that_will_not_restart() {
        let p = one("Never");
        let s = status(
            &p,
            &observed(vec![exited("c1", "app", 3, T0)]),
            &waiting(&[("app", "CrashLoopBackOff")]),
        );
        assert!(terminated(app(&s, "app")).is_some());
        assert_eq!(s.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn never_zero_exit_succeeds() {
        let p = one("Never");
        let s = status(
            &p,
            &observed(vec![exited("c1", "app", 0, T0)]),
            &Transient::default(),
        );
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(
            terminated(app(&s, "app")).and_then(|t| t.reason.as_deref()),
            Some("Completed")
        );
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        assert_eq!(
            cond(&s, "ContainersReady").reason.as_deref(),
            Some("PodCompleted")
        );
        assert_eq!(
            cond(&s, "Initialized").reason.as_deref(),
            Some("PodCompleted")
        );
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert!(is_terminal(s.phase.as_deref().unwrap_or_default()));
    }

    #[test]
    fn runtime_reason_wins() {
        let p = one("Never");
        let oom = ObservedContainer {
            reason: "OOMKilled".to_string(),
            message: "out of memory".to_string(),
            ..exited("c1", "app", 137, T0)
        };
        let s = status(&p, &observed(vec![oom]), &Transient::default());
        let term = terminated(app(&s, "app")).expect("terminated");
        assert_eq!(term.reason.as_deref(), Some("OOMKilled"));
        assert_eq!(term.message.as_deref(), Some("out of memory"));
    }

    #[test]
    fn on_failure_zero_exit_succeeds() {
        let p = one("OnFailure");
        let s = status(
            &p,
            &observed(vec![exited("c1", "app", 0, T0)]),
            &Transient::default(),
        );
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    }

    #[test]
    fn on_failure_nonzero_exit_runs_again() {
        let p = one("OnFailure");
        let obs = observed(vec![exited("c1", "app", 1, T0)]);
        let s = status(&p, &obs, &Transient::default());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let s = status(&p, &obs, &waiting(&[("app", "CrashLoopBackOff")]));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(waiting_reason(app(&s, "app")), Some("CrashLoopBackOff"));
    }

    #[test]
    fn always_zero_exit_runs_again() {
        let p = one("Always");
        let s = status(
            &p,
            &observed(vec![exited("c1", "app", 0, T0)]),
            &Transient::default(),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn init_container_running_is_pending() {
        let p = with_init("Always");
        let obs = observed(vec![init(container("i1", "init", Cs::Running, T0))]);
        let s = status(&p, &obs, &Transient::default());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(waiting_reason(app(&s, "app")), Some("PodInitializing"));
        let i = init_status(&s, "init");
        assert!(is_running(i));
        assert!(!i.ready);
        assert_eq!(i.started, Some(true));
        let c = cond(&s, "Initialized");
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some("ContainersNotInitialized"));
        assert_eq!(
            c.message.as_deref(),
            Some("containers with incomplete status: [init]")
        );
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [app]")
        );
    }

    #[test]
    fn init_done_app_not_created_is_pending_initialized() {
        let p = with_init("Always");
        let obs = observed(vec![init(exited("i1", "init", 0, T0))]);
        let s = status(&p, &obs, &Transient::default());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let i = init_status(&s, "init");
        assert!(i.ready);
        assert_eq!(i.started, Some(false));
        assert_eq!(waiting_reason(app(&s, "app")), Some("PodInitializing"));
        let c = cond(&s, "Initialized");
        assert_eq!(c.status, "True");
        assert_eq!(c.last_transition_time, t(T0 + 5 * SEC));
    }

    #[test]
    fn completed_init_container_ignores_waiting_entry() {
        let p = with_init("Always");
        let obs = observed(vec![init(exited("i1", "init", 0, T0))]);
        let s = status(&p, &obs, &waiting(&[("init", "CrashLoopBackOff")]));
        assert!(terminated(init_status(&s, "init")).is_some());
    }

    #[test]
    fn init_failed_with_never_fails() {
        let p = with_init("Never");
        let obs = observed(vec![init(exited("i1", "init", 1, T0))]);
        let s = status(&p, &obs, &Transient::default());
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(cond(&s, "Initialized").status, "False");
    }

    #[test]
    fn init_crash_looping_with_always_is_pending() {
        let p = with_init("Always");
        let obs = observed(vec![init(exited("i1", "init", 1, T0))]);
        let s = status(&p, &obs, &waiting(&[("init", "CrashLoopBackOff")]));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let i = init_status(&s, "init");
        assert_eq!(waiting_reason(i), Some("CrashLoopBackOff"));
        assert_eq!(last_terminated(i).map(|t| t.exit_code), Some(1));
    }

    #[test]
    fn no_sandbox_yet_is_pending_container_creating() {
        let p = one("Always");
        let s = status(&p, &ObservedPod::default(), &Transient::default());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = app(&s, "app");
        assert_eq!(waiting_reason(c), Some("ContainerCreating"));
        assert_eq!(c.started, Some(false));
        assert_eq!(s.start_time, None);
        assert_eq!(s.pod_ip, None);
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "False");
    }

    #[test]
    fn pod_error_shown_while_nothing_runs() {
        let p = one("Always");
        let tr = Transient {
            pod_error: Some(Waiting {
                reason: "FailedCreatePodSandBox".to_string(),
                message: "network plugin not ready".to_string(),
            }),
            ..Default::default()
        };
        let s = status(&p, &ObservedPod::default(), &tr);
        assert_eq!(s.reason.as_deref(), Some("FailedCreatePodSandBox"));
        assert_eq!(s.message.as_deref(), Some("network plugin not ready"));
        let s = status(
            &p,
            &observed(vec![container("c1", "app", Cs::Running, T0)]),
            &tr,
        );
        assert_eq!(s.reason, None);
        assert_eq!(s.message, None);
    }

    #[test]
    fn created_container_is_waiting_without_reason() {
        let p = one("Always");
        let s = status(
            &p,
            &observed(vec![container("c1", "app", Cs::Created, T0)]),
            &Transient::default(),
        );
        assert_eq!(waiting_reason(app(&s, "app")), Some(""));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let s = status(
            &p,
            &observed(vec![container("c1", "app", Cs::Created, T0)]),
            &waiting(&[("app", "RunContainerError")]),
        );
        assert_eq!(waiting_reason(app(&s, "app")), Some("RunContainerError"));
    }

    #[test]
    fn one_ready_one_not() {
        let p = pod(json!({
            "containers": [
                {"name": "web", "image": "nginx:1"},
                {"name": "b", "image": "busybox"},
                {"name": "a", "image": "busybox"},
            ],
        }));
        let obs = observed(vec![
            exited("c3", "a", 1, T0 + 2 * SEC),
            container("c2", "b", Cs::Running, T0 + SEC),
            container("c1", "web", Cs::Running, T0),
        ]);
        let s = status(&p, &obs, &waiting(&[("a", "CrashLoopBackOff")]));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let ready = cond(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [a]")
        );
        // The kubelet sorts app container statuses by name.
        let names: Vec<&str> = s
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "web"]);
        assert!(app(&s, "b").ready && app(&s, "web").ready);
    }

    #[test]
    fn pod_ip_from_newest_ready_sandbox() {
        let p = one("Always");
        let mut obs = observed(vec![container("c1", "app", Cs::Running, T0)]);
        obs.sandboxes = vec![sandbox("sb1", true, T0, &["10.0.0.5", "fd00::5"])];
        let s = status(&p, &obs, &Transient::default());
        assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(
            s.pod_ips,
            Some(vec![
                PodIP {
                    ip: "10.0.0.5".into()
                },
                PodIP {
                    ip: "fd00::5".into()
                }
            ])
        );

        // A newer sandbox that is not ready yet: no IP, a new sandbox is needed.
        obs.sandboxes = vec![
            sandbox("sb2", false, T0 + 60 * SEC, &[]),
            sandbox("sb1", false, T0, &[]),
        ];
        let s = status(&p, &obs, &Transient::default());
        assert_eq!(s.pod_ip, None);
        assert_eq!(s.pod_ips, None);
        assert_eq!(s.start_time, t(T0));
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
    }

    #[test]
    fn host_network_uses_host_ip() {
        let p = pod(json!({
            "hostNetwork": true,
            "containers": [{"name": "app", "image": "nginx:1"}],
        }));
        let mut obs = observed(vec![container("c1", "app", Cs::Running, T0)]);
        obs.sandboxes = vec![sandbox("sb1", true, T0, &[])];
        let s = status(&p, &obs, &Transient::default());
        assert_eq!(s.pod_ip.as_deref(), Some("192.168.1.10"));
        assert_eq!(
            s.pod_ips,
            Some(vec![PodIP {
                ip: "192.168.1.10".into()
            }])
        );
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "True");
    }

    #[test]
    fn readiness_gates_hold_ready() {
        let p = pod(json!({
            "readinessGates": [{"conditionType": "example.com/lb"}],
            "containers": [{"name": "app", "image": "nginx:1"}],
        }));
        let s = status(
            &p,
            &observed(vec![container("c1", "app", Cs::Running, T0)]),
            &Transient::default(),
        );
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        let ready = cond(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some(
                "corresponding condition of pod readiness gate \"example.com/lb\" does not exist."
            )
        );
    }

    #[test]
    fn other_runtime_scheme() {
        let p = one("Always");
        let s = compute_pod_status(
            &p,
            &observed(vec![container("c1", "app", Cs::Running, T0)]),
            &Transient::default(),
            "",
            "cri-o",
        );
        assert_eq!(app(&s, "app").container_id.as_deref(), Some("cri-o://c1"));
        assert_eq!(s.host_ip, None);
        assert_eq!(s.host_ips, None);
    }

    /// getPhase, row by row, on hand-built statuses.
    #[test]
    fn phase_rules() {
        fn st(name: &str, state: &str, last_exit: Option<i32>) -> ContainerStatus {
            let term = |code: i32| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let state = match state {
                "running" => ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..Default::default()
                },
                "waiting" => waiting_state(Some("X"), None),
                "empty" => ContainerState::default(),
                code => term(code.parse().expect("exit code")),
            };
            ContainerStatus {
                name: name.to_string(),
                state: Some(state),
                last_state: last_exit.map(term),
                started: Some(false),
                ..Default::default()
            }
        }
        let spec = |policy: &str, init: bool| -> PodSpec {
            let p = if init { with_init(policy) } else { one(policy) };
            p.spec.expect("spec")
        };
        // (policy, has init, init status, app status, phase)
        type Row<'a> = (
            &'a str,
            bool,
            Option<ContainerStatus>,
            Option<ContainerStatus>,
            &'a str,
        );
        let rows: Vec<Row> = vec![
            (
                "Always",
                false,
                None,
                Some(st("app", "running", None)),
                "Running",
            ),
            (
                "Always",
                false,
                None,
                Some(st("app", "waiting", None)),
                "Pending",
            ),
            (
                "Always",
                false,
                None,
                Some(st("app", "waiting", Some(1))),
                "Running",
            ),
            ("Always", false, None, Some(st("app", "0", None)), "Running"),
            ("Always", false, None, Some(st("app", "1", None)), "Running"),
            ("Always", false, None, None, "Pending"),
            (
                "Always",
                false,
                None,
                Some(st("app", "empty", None)),
                "Pending",
            ),
            (
                "OnFailure",
                false,
                None,
                Some(st("app", "0", None)),
                "Succeeded",
            ),
            (
                "OnFailure",
                false,
                None,
                Some(st("app", "1", None)),
                "Running",
            ),
            (
                "OnFailure",
                false,
                None,
                Some(st("app", "waiting", Some(1))),
                "Running",
            ),
            (
                "Never",
                false,
                None,
                Some(st("app", "0", None)),
                "Succeeded",
            ),
            ("Never", false, None, Some(st("app", "3", None)), "Failed"),
            (
                "Never",
                true,
                Some(st("init", "1", None)),
                Some(st("app", "waiting", None)),
                "Failed",
            ),
            (
                "Never",
                true,
                Some(st("init", "waiting", Some(1))),
                Some(st("app", "waiting", None)),
                "Failed",
            ),
            (
                "Always",
                true,
                Some(st("init", "waiting", Some(1))),
                Some(st("app", "waiting", None)),
                "Pending",
            ),
            (
                "Always",
                true,
                Some(st("init", "running", None)),
                Some(st("app", "waiting", None)),
                "Pending",
            ),
            (
                "Always",
                true,
                Some(st("init", "waiting", None)),
                Some(st("app", "waiting", None)),
                "Pending",
            ),
            (
                "Always",
                true,
                None,
                Some(st("app", "waiting", None)),
                "Pending",
            ),
            (
                "Always",
                true,
                Some(st("init", "0", None)),
                Some(st("app", "running", None)),
                "Running",
            ),
            (
                "Never",
                true,
                Some(st("init", "0", None)),
                Some(st("app", "0", None)),
                "Succeeded",
            ),
        ];
        for (i, (policy, has_init, init_st, app_st, want)) in rows.into_iter().enumerate() {
            let spec = spec(policy, has_init);
            let inits: Vec<ContainerStatus> = init_st.into_iter().collect();
            let apps: Vec<ContainerStatus> = app_st.into_iter().collect();
            assert_eq!(pod_phase(&spec, &inits, &apps, false), want, "row {i}");
        }
    }

    #[test]
    fn sidecar_phase() {
        let p = pod(json!({
            "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "nginx:1"}],
        }));
        let obs = observed(vec![
            container("c1", "app", Cs::Running, T0 + SEC),
            init(container("i1", "proxy", Cs::Running, T0)),
        ]);
        let s = status(&p, &obs, &Transient::default());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let proxy = init_status(&s, "proxy");
        assert!(proxy.ready);
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
    }

    #[test]
    fn terminal_phases() {
        assert!(is_terminal("Succeeded"));
        assert!(is_terminal("Failed"));
        assert!(!is_terminal("Running"));
        assert!(!is_terminal("Pending"));
        assert!(!is_terminal("Unknown"));
    }
}
