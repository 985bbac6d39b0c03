//! The eviction manager (`pkg/kubelet/eviction`): every [`MONITORING_INTERVAL`]
//! the node's eviction signals are observed and compared with the hard
//! (`--eviction-hard`) and soft (`--eviction-soft`, held for
//! `--eviction-soft-grace-period`) thresholds, each with its
//! `--eviction-minimum-reclaim`; the pressure conditions they set are held
//! for `--eviction-pressure-transition-period` after the last time a signal
//! was met. Pods past a local storage limit (emptyDir `sizeLimit`, the pod's
//! or a container's `ephemeral-storage` limit) are evicted at once. A
//! threshold met past its grace period first reclaims node-level resources
//! (disk signals: dead containers, then images no container uses — never a
//! pinned one or the runtime's sandbox image), and if that was not enough
//! evicts one pod per pass, ranked as the kubelet ranks them ([`rank`]):
//! Failed, reason `Evicted`, the kubelet's message, `DisruptionTarget`.
//! Critical pods (static, or of system-critical priority) are never evicted.
//!
//! Signals (`pkg/kubelet/eviction/helpers.go` `makeSignalObservations`):
//! `memory.available` = MemTotal − the root cgroup's working set;
//! `nodefs.available`/`nodefs.inodesFree` = statvfs of `--root-dir`;
//! `imagefs.*` = statvfs of the runtime's image filesystem (the runtime's
//! `ImageFsInfo` mountpoint, else the node filesystem, as upstream when the
//! image filesystem is not separate); `pid.available` = `pid_max` − the
//! processes running. The source is a trait, so tests feed values
//! ([`FileSignals`] for end-to-end tests).
//!
//! Not done: the kernel memcg threshold notifier that wakes the manager
//! before the next pass (upstream's `--kernel-memcg-notification`), and
//! `allocatableMemory.available` / split `containerfs` signals, which are
//! parsed but never observed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::allocatable::{Signal, Threshold};
use crate::source::SourcedPod;
use crate::stats::summary::PodStats;

/// How often signals are observed (the kubelet's housekeeping period).
pub const MONITORING_INTERVAL: Duration = Duration::from_secs(10);

/// The kubelet's default `--eviction-pressure-transition-period`.
pub const DEFAULT_PRESSURE_TRANSITION_PERIOD: Duration = Duration::from_secs(300);

/// One signal's reading: what is available of how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub available: i64,
    pub capacity: i64,
}

/// Where signals come from.
pub trait SignalSource: Send + Sync {
    /// The signals readable now (an unreadable one is left out).
    fn observe(&self) -> BTreeMap<Signal, Observation>;
}

/// The host's signals.
#[derive(Debug, Clone)]
pub struct HostSignals {
    /// `--root-dir` (the node filesystem).
    pub root_dir: PathBuf,
    /// The runtime's image filesystem, when it said where.
    pub image_dir: Option<PathBuf>,
}

impl SignalSource for HostSignals {
    fn observe(&self) -> BTreeMap<Signal, Observation> {
        use crate::stats::host;
        let mut out = BTreeMap::new();
        let cgroups = crate::stats::cgroup::CgroupFs::host();
        if let Ok(mem) = host::node_memory(&cgroups, std::path::Path::new("/proc"))
            && let Some(limit) = mem.limit
        {
            let available = mem.available().unwrap_or(0);
            out.insert(
                Signal::MemoryAvailable,
                Observation {
                    available: i64::try_from(available).unwrap_or(i64::MAX),
                    capacity: i64::try_from(limit).unwrap_or(i64::MAX),
                },
            );
        }
        let fs =
            |path: &std::path::Path, bytes: Signal, inodes: Signal, out: &mut BTreeMap<_, _>| {
                if let Ok(info) = host::fs_info(path) {
                    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                    out.insert(
                        bytes,
                        Observation {
                            available: n(info.available),
                            capacity: n(info.capacity),
                        },
                    );
                    out.insert(
                        inodes,
                        Observation {
                            available: n(info.inodes_free),
                            capacity: n(info.inodes),
                        },
                    );
                }
            };
        fs(
            &self.root_dir,
            Signal::NodeFsAvailable,
            Signal::NodeFsInodesFree,
            &mut out,
        );
        fs(
            self.image_dir.as_deref().unwrap_or(&self.root_dir),
            Signal::ImageFsAvailable,
            Signal::ImageFsInodesFree,
            &mut out,
        );
        if let (Ok(max), Some(running)) = (
            host::pid_max(std::path::Path::new("/proc")),
            host::process_count(),
        ) {
            out.insert(
                Signal::PidAvailable,
                Observation {
                    available: max.saturating_sub(running),
                    capacity: max,
                },
            );
        }
        out
    }
}

/// Signals read from a JSON file over another source's (tests: a low
/// `memory.available` without exhausting the machine). The file maps signal
/// names to `{"available": N, "capacity": N}`; read at every observation, so
/// a test changes it while the agent runs. Unreadable: the other source alone.
pub struct FileSignals {
    pub path: PathBuf,
    pub host: Arc<dyn SignalSource>,
}

impl SignalSource for FileSignals {
    fn observe(&self) -> BTreeMap<Signal, Observation> {
        #[derive(serde::Deserialize)]
        struct Entry {
            available: i64,
            capacity: i64,
        }
        let mut out = self.host.observe();
        let Ok(bytes) = std::fs::read(&self.path) else {
            return out;
        };
        match serde_json::from_slice::<BTreeMap<String, Entry>>(&bytes) {
            Ok(map) => {
                for (name, e) in map {
                    match Signal::parse_name(&name) {
                        Some(signal) => {
                            out.insert(
                                signal,
                                Observation {
                                    available: e.available,
                                    capacity: e.capacity,
                                },
                            );
                        }
                        None => {
                            tracing::warn!(file = %self.path.display(), signal = %name, "unknown eviction signal in the signals file")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "unreadable eviction signals file")
            }
        }
        out
    }
}

/// A node condition eviction sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pressure {
    Memory,
    Disk,
    Pid,
}

impl Pressure {
    /// The condition's type.
    pub fn condition_type(self) -> &'static str {
        match self {
            Pressure::Memory => "MemoryPressure",
            Pressure::Disk => "DiskPressure",
            Pressure::Pid => "PIDPressure",
        }
    }

    /// The condition a signal sets (`signalToNodeCondition`).
    pub fn of(signal: Signal) -> Option<Pressure> {
        match signal {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Some(Pressure::Memory),
            Signal::NodeFsAvailable
            | Signal::NodeFsInodesFree
            | Signal::ImageFsAvailable
            | Signal::ImageFsInodesFree
            | Signal::ContainerFsAvailable
            | Signal::ContainerFsInodesFree => Some(Pressure::Disk),
            Signal::PidAvailable => Some(Pressure::Pid),
        }
    }
}

/// A threshold met: the signal, what was observed, and the threshold's amount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Met {
    pub signal: &'static str,
    pub available: i64,
    pub threshold: i64,
}

/// The amount `t` stands for against `o`, plus its minimum reclaim when
/// `enforce_min_reclaim` (the kubelet's `thresholdsMet`).
fn amount(t: &Threshold, o: &Observation, enforce_min_reclaim: bool) -> i64 {
    let base = t.value.amount(o.capacity);
    match (enforce_min_reclaim, t.min_reclaim) {
        (true, Some(r)) => base.saturating_add(r.amount(o.capacity)),
        _ => base,
    }
}

/// The indices of the thresholds `observations` meet (available < amount).
fn met_indices(
    thresholds: &[Threshold],
    observations: &BTreeMap<Signal, Observation>,
    enforce_min_reclaim: bool,
    only: Option<&BTreeSet<usize>>,
) -> BTreeSet<usize> {
    thresholds
        .iter()
        .enumerate()
        .filter(|(i, _)| only.is_none_or(|o| o.contains(i)))
        .filter(|(_, t)| {
            observations
                .get(&t.signal)
                .is_some_and(|o| o.available < amount(t, o, enforce_min_reclaim))
        })
        .map(|(i, _)| i)
        .collect()
}

/// The thresholds `observations` meet (`thresholdsMet`: available < amount).
pub fn thresholds_met(
    thresholds: &[Threshold],
    observations: &BTreeMap<Signal, Observation>,
) -> Vec<Met> {
    met_indices(thresholds, observations, false, None)
        .into_iter()
        .filter_map(|i| met_of(&thresholds[i], observations))
        .collect()
}

fn met_of(t: &Threshold, observations: &BTreeMap<Signal, Observation>) -> Option<Met> {
    let o = observations.get(&t.signal)?;
    Some(Met {
        signal: t.signal.as_str(),
        available: o.available,
        threshold: t.value.amount(o.capacity),
    })
}

/// The node's pressure as of the last observation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PressureState {
    /// Conditions in force (met now, or within the transition period).
    #[serde(skip)]
    pub conditions: BTreeSet<Pressure>,
    /// The condition types in force, for `/status`.
    pub pressure: Vec<&'static str>,
    /// The thresholds met at the last observation (a threshold once met
    /// stays met until its minimum reclaim is available again).
    pub thresholds_met: Vec<Met>,
}

/// The eviction manager's memory between observations (the kubelet's
/// `thresholdsMet`, `thresholdsFirstObservedAt` and
/// `nodeConditionsLastObservedAt`): pressure conditions with their
/// transition period, soft thresholds with their grace periods, and each
/// threshold's minimum reclaim.
#[derive(Debug)]
pub struct PressureTracker {
    thresholds: Vec<Threshold>,
    transition: Duration,
    last_met: BTreeMap<Pressure, Instant>,
    first_observed: BTreeMap<usize, Instant>,
    met: BTreeSet<usize>,
    acting: Vec<Threshold>,
}

impl PressureTracker {
    /// A tracker for `thresholds` (hard and soft), holding a condition
    /// `transition` after it was last met.
    pub fn new(thresholds: Vec<Threshold>, transition: Duration) -> Self {
        PressureTracker {
            thresholds,
            transition,
            last_met: BTreeMap::new(),
            first_observed: BTreeMap::new(),
            met: BTreeSet::new(),
            acting: Vec::new(),
        }
    }

    /// Take one observation at `now` (the kubelet's `synchronize` up to
    /// `thresholdsMetGracePeriod`).
    pub fn observe(
        &mut self,
        observations: &BTreeMap<Signal, Observation>,
        now: Instant,
    ) -> PressureState {
        let mut met = met_indices(&self.thresholds, observations, false, None);
        // Met before and not yet resolved by its minimum reclaim: still met.
        met.extend(met_indices(
            &self.thresholds,
            observations,
            true,
            Some(&self.met),
        ));
        self.first_observed.retain(|i, _| met.contains(i));
        for i in &met {
            self.first_observed.entry(*i).or_insert(now);
        }
        let met_now: BTreeSet<Pressure> = met
            .iter()
            .filter_map(|i| Pressure::of(self.thresholds[*i].signal))
            .collect();
        for p in &met_now {
            self.last_met.insert(*p, now);
        }
        let transition = self.transition;
        self.last_met
            .retain(|p, at| met_now.contains(p) || now.saturating_duration_since(*at) < transition);
        let conditions: BTreeSet<Pressure> = self.last_met.keys().copied().collect();
        self.acting = met
            .iter()
            .filter(|i| {
                let since = self.first_observed.get(i).copied().unwrap_or(now);
                now.saturating_duration_since(since) >= self.thresholds[**i].grace_period
            })
            .map(|i| self.thresholds[*i])
            .collect();
        let thresholds_met = met
            .iter()
            .filter_map(|i| met_of(&self.thresholds[*i], observations))
            .collect();
        self.met = met;
        PressureState {
            pressure: conditions.iter().map(|p| p.condition_type()).collect(),
            conditions,
            thresholds_met,
        }
    }

    /// The thresholds met past their grace period at the last observation:
    /// the ones to act on.
    pub fn acting(&self) -> &[Threshold] {
        &self.acting
    }

    /// True when, after node-level reclaim, no threshold is met counting its
    /// minimum reclaim (`reclaimNodeLevelResources`).
    pub fn resolved(&self, observations: &BTreeMap<Signal, Observation>) -> bool {
        met_indices(&self.thresholds, observations, true, None).is_empty()
    }
}

/// The pressure the node status reads, shared.
pub type SharedPressure = Arc<RwLock<PressureState>>;

/// The status reason (and event reason) of an evicted pod.
pub const REASON_EVICTED: &str = "Evicted";

/// The kubelet's `SystemCriticalPriority`: pods at or above it are critical.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// A critical pod (the kubelet's `IsCriticalPod`): a static pod, or one with
/// a priority of at least [`SYSTEM_CRITICAL_PRIORITY`]. Never evicted.
pub fn is_critical(sp: &SourcedPod) -> bool {
    sp.file != std::path::Path::new(crate::source::API_SOURCE)
        || sp
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.priority)
            .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// The resource a signal reclaims (`signalToResource`).
pub fn resource_to_reclaim(signal: Signal) -> &'static str {
    match signal {
        Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => "memory",
        Signal::NodeFsAvailable | Signal::ImageFsAvailable | Signal::ContainerFsAvailable => {
            "ephemeral-storage"
        }
        Signal::NodeFsInodesFree | Signal::ImageFsInodesFree | Signal::ContainerFsInodesFree => {
            "inodes"
        }
        Signal::PidAvailable => "pids",
    }
}

fn is_memory(signal: Signal) -> bool {
    matches!(
        signal,
        Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable
    )
}

/// The threshold to reclaim first (`getReclaimableThreshold` with
/// `byEvictionPriority`): memory before the rest, then in signal order.
pub fn threshold_to_reclaim(acting: &[Threshold]) -> Option<Threshold> {
    acting
        .iter()
        .find(|t| is_memory(t.signal))
        .or_else(|| acting.first())
        .copied()
}

/// True for the signals node-level reclaim (dead containers, unused
/// images) can relieve: the filesystem ones.
pub fn reclaims_node_level(signal: Signal) -> bool {
    Pressure::of(signal) == Some(Pressure::Disk)
}

/// A quantity as the kubelet prints a byte count (`resource.BinarySI`) or a
/// count of inodes or processes (`resource.DecimalSI`).
fn quantity_text(signal_resource: &str, n: i64) -> String {
    match signal_resource {
        "memory" | "ephemeral-storage" => crate::allocatable::binary_si(n),
        _ => {
            for (suffix, unit) in [
                ("E", 1_000_000_000_000_000_000i64),
                ("P", 1_000_000_000_000_000),
                ("T", 1_000_000_000_000),
                ("G", 1_000_000_000),
                ("M", 1_000_000),
                ("k", 1_000),
            ] {
                if n != 0 && n % unit == 0 {
                    return format!("{}{suffix}", n / unit);
                }
            }
            n.to_string()
        }
    }
}

fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A pod's working set (its pod-level memory stats).
fn memory_usage(stats: &PodStats) -> Option<i64> {
    stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .map(sat)
}

/// A pod's local storage use, bytes or inodes (`podDiskUsage` over rootfs,
/// logs and local volumes: the summary's `ephemeral-storage`).
fn disk_usage(stats: &PodStats, inodes: bool) -> Option<i64> {
    let fs = stats.ephemeral_storage.as_ref()?;
    if inodes {
        fs.inodes_used.map(sat)
    } else {
        fs.used_bytes.map(sat)
    }
}

fn process_count(stats: &PodStats) -> Option<i64> {
    stats
        .process_stats
        .as_ref()
        .and_then(|p| p.process_count)
        .map(sat)
}

fn request_of(pod: &Pod, resource: &str) -> i64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let Ok(r) = berth_api::resource::pod_requests(spec) else {
        return 0;
    };
    match resource {
        "memory" => r.requests.memory,
        "ephemeral-storage" => r.requests.ephemeral_storage,
        _ => 0,
    }
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// A pod the eviction manager may pick, with its stats (`None`: none found).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub pod: Pod,
    pub stats: Option<PodStats>,
}

/// Order `pods` for eviction under `signal`, first to go first, as the
/// kubelet's rank functions: memory — usage above requests first, then lower
/// priority, then more usage above requests; disk — the same over local
/// storage (bytes, or inodes); pids — lower priority, then more processes. A
/// pod without stats goes before those with.
pub fn rank(signal: Signal, pods: &mut [Candidate]) {
    let resource = resource_to_reclaim(signal);
    let usage = |c: &Candidate| -> Option<i64> {
        let s = c.stats.as_ref()?;
        match resource {
            "memory" => memory_usage(s),
            "ephemeral-storage" => disk_usage(s, false),
            "inodes" => disk_usage(s, true),
            _ => process_count(s),
        }
    };
    // None (no stats) sorts first.
    let key = |c: &Candidate| {
        let used = usage(c);
        let over = used.map(|u| u.saturating_sub(request_of(&c.pod, resource)));
        let exceeds = over.map(|o| o > 0);
        (
            exceeds.map(std::cmp::Reverse),
            priority(&c.pod),
            over.map(std::cmp::Reverse),
        )
    };
    if resource == "pids" {
        pods.sort_by_key(|c| (priority(&c.pod), usage(c).map(std::cmp::Reverse)));
    } else {
        pods.sort_by_key(key);
    }
}

/// The kubelet's eviction message (`evictionMessage`): the resource the node
/// ran low on, the threshold and what was available, and each container
/// using more than it requested.
pub fn eviction_message(
    threshold: &Threshold,
    observation: Option<&Observation>,
    pod: &Pod,
    stats: Option<&PodStats>,
) -> String {
    let resource = resource_to_reclaim(threshold.signal);
    let mut message = format!("The node was low on resource: {resource}. ");
    if let Some(o) = observation {
        message.push_str(&format!(
            "Threshold quantity: {}, available: {}. ",
            quantity_text(resource, threshold.value.amount(o.capacity)),
            quantity_text(resource, o.available),
        ));
    }
    let (Some(stats), Some(spec)) = (stats, pod.spec.as_ref()) else {
        return message;
    };
    for cs in &stats.containers {
        let Some(c) = spec.containers.iter().find(|c| c.name == cs.name) else {
            continue;
        };
        let usage = match resource {
            "memory" => cs
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes)
                .map(sat),
            "ephemeral-storage" => match (
                cs.rootfs.as_ref().and_then(|f| f.used_bytes),
                cs.logs.as_ref().and_then(|f| f.used_bytes),
            ) {
                (Some(r), Some(l)) => Some(sat(r.saturating_add(l))),
                _ => None,
            },
            _ => None,
        };
        let request = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .map(|q| q.0.clone())
            .unwrap_or_else(|| "0".to_string());
        let request_value = berth_api::quantity::Quantity::parse(&request)
            .map(|q| q.value())
            .unwrap_or(0);
        if let Some(u) = usage
            && u > request_value
        {
            message.push_str(&format!(
                "Container {} was using {}, request is {request}, has larger consumption of {resource}. ",
                c.name,
                quantity_text(resource, u),
            ));
        }
    }
    message
}

/// A local storage limit the pod is over (the kubelet's
/// `localStorageEviction`): an emptyDir past its `sizeLimit`, the pod past
/// its containers' summed `ephemeral-storage` limit, or a container past its
/// own (its writable layer and logs). The message names which.
pub fn local_storage_violation(pod: &Pod, stats: &PodStats) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    for v in spec.volumes.iter().flatten() {
        let Some(limit) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) else {
            continue;
        };
        let Ok(size) = berth_api::quantity::Quantity::parse(&limit.0) else {
            continue;
        };
        let used = stats
            .volume_stats
            .iter()
            .find(|s| s.name == v.name)
            .and_then(|s| s.fs.used_bytes)
            .map(sat);
        if size.signum() > 0
            && let Some(used) = used
            && used > size.value()
        {
            return Some(format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                v.name, limit.0
            ));
        }
    }
    let limit_of = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("ephemeral-storage"))
            .and_then(|q| berth_api::quantity::Quantity::parse(&q.0).ok())
            .filter(|q| !q.is_zero())
    };
    let limits: Vec<_> = spec.containers.iter().filter_map(limit_of).collect();
    if !limits.is_empty() {
        let total = limits
            .iter()
            .fold(0i64, |sum, q| sum.saturating_add(q.value()));
        let used = stats
            .ephemeral_storage
            .as_ref()
            .and_then(|f| f.used_bytes)
            .map_or(0, sat);
        if used > total {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                crate::allocatable::binary_si(total)
            ));
        }
    }
    for cs in &stats.containers {
        let Some(c) = spec.containers.iter().find(|c| c.name == cs.name) else {
            continue;
        };
        let Some(limit) = limit_of(c) else { continue };
        let used = [cs.logs.as_ref(), cs.rootfs.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|f| f.used_bytes)
            .fold(0u64, u64::saturating_add);
        if sat(used) > limit.value() {
            let text = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("ephemeral-storage"))
                .map(|q| q.0.clone())
                .unwrap_or_default();
            return Some(format!(
                "Container {} exceeded its local ephemeral storage limit {text:?}. ",
                c.name
            ));
        }
    }
    None
}

/// The eviction admit handler (`managerImpl.Admit`): under pressure, a new
/// pod is refused with reason `Evicted` unless it is critical, or the only
/// pressure is memory and it is not BestEffort (or tolerates the
/// memory-pressure taint).
pub fn admit_under_pressure(
    sp: &SourcedPod,
    conditions: &BTreeSet<Pressure>,
) -> Result<(), crate::source::Rejection> {
    if conditions.is_empty() || is_critical(sp) {
        return Ok(());
    }
    if conditions.iter().all(|c| *c == Pressure::Memory) {
        let best_effort = berth_api::qos::pod_qos_class(&sp.pod) == berth_api::qos::BEST_EFFORT;
        let tolerates = berth_api::scheduling::tolerated(
            &sp.pod
                .spec
                .as_ref()
                .map(berth_api::scheduling::tolerations)
                .unwrap_or_default(),
            &berth_api::scheduling::Taint {
                key: TAINT_MEMORY_PRESSURE.to_string(),
                value: String::new(),
                effect: berth_api::scheduling::Effect::NoSchedule,
            },
        );
        if !best_effort || tolerates {
            return Ok(());
        }
    }
    let names: Vec<&str> = conditions.iter().map(|c| c.condition_type()).collect();
    Err(crate::source::Rejection {
        reason: REASON_EVICTED.to_string(),
        message: format!("The node had condition: [{}]. ", names.join(" ")),
        evicted: None,
    })
}

/// The taint the node lifecycle controller puts on a node under memory
/// pressure (`node.kubernetes.io/memory-pressure`).
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";

/// What the eviction manager asks of the rest of the agent.
pub trait Evictor: Send + Sync {
    /// The pods that run and may be ranked: admitted, desired, not being
    /// deleted, not finished.
    fn active_pods(&self) -> Vec<SourcedPod>;
    /// Evict `pod`: stop it within `grace` seconds, phase Failed, reason
    /// Evicted with `message`, an event. False when it could not be.
    fn evict(&self, pod: &Pod, grace: i64, message: String) -> bool;
}

/// The eviction manager (`pkg/kubelet/eviction`): every
/// [`MONITORING_INTERVAL`] it observes the signals, keeps the pressure
/// conditions, enforces local storage limits, and when a threshold is met
/// past its grace period reclaims node-level resources (for disk signals:
/// dead containers, unused images) and, if that was not enough, evicts one
/// pod, ranked as the kubelet ranks them.
pub struct Manager {
    pub source: Arc<dyn SignalSource>,
    pub tracker: PressureTracker,
    pub shared: SharedPressure,
    pub summary: crate::server::SummarySource,
    pub reclaim: Option<Reclaimer>,
    pub evictor: Arc<dyn Evictor>,
    /// `--eviction-max-pod-grace-period`.
    pub max_pod_grace_period: i64,
}

impl Manager {
    /// Run until `cancel`.
    pub fn spawn(mut self, cancel: tokio_util::sync::CancellationToken) {
        tokio::spawn(async move {
            loop {
                self.synchronize().await;
                if !crate::util::sleep_or_cancel(&cancel, MONITORING_INTERVAL).await {
                    return;
                }
            }
        });
    }

    async fn observe(&self) -> BTreeMap<Signal, Observation> {
        let src = self.source.clone();
        tokio::task::spawn_blocking(move || src.observe())
            .await
            .unwrap_or_default()
    }

    /// One pass (the kubelet's `synchronize`); returns the UIDs evicted.
    pub async fn synchronize(&mut self) -> Vec<String> {
        let observations = self.observe().await;
        let state = self.tracker.observe(&observations, Instant::now());
        {
            let mut s = self.shared.write().unwrap_or_else(|e| e.into_inner());
            if s.conditions != state.conditions {
                tracing::warn!(
                    pressure = ?state.pressure,
                    thresholds_met = ?state.thresholds_met,
                    "node pressure changed"
                );
            }
            *s = state;
        }
        let active: Vec<SourcedPod> = self
            .evictor
            .active_pods()
            .into_iter()
            .filter(|sp| !is_critical(sp))
            .collect();
        let acting = self.tracker.acting().to_vec();
        let wants_local = active.iter().any(|sp| has_local_storage_limit(&sp.pod));
        if active.is_empty() || (acting.is_empty() && !wants_local) {
            return Vec::new();
        }
        let stats: BTreeMap<String, PodStats> = match (self.summary)().await {
            Ok(s) => s
                .pods
                .into_iter()
                .map(|p| (p.pod_ref.uid.clone(), p))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "eviction manager: no pod stats; nothing evicted this pass");
                return Vec::new();
            }
        };
        // Local storage limits, whatever the node's pressure (grace 0).
        let mut evicted = Vec::new();
        for sp in active.iter().filter(|sp| has_local_storage_limit(&sp.pod)) {
            let uid = crate::source::uid_of(&sp.pod);
            if let Some(s) = stats.get(&uid)
                && let Some(message) = local_storage_violation(&sp.pod, s)
                && self.evictor.evict(&sp.pod, 0, message)
            {
                evicted.push(uid);
            }
        }
        if !evicted.is_empty() {
            return evicted;
        }
        let Some(threshold) = threshold_to_reclaim(&acting) else {
            return Vec::new();
        };
        if reclaims_node_level(threshold.signal)
            && let Some(reclaim) = &self.reclaim
        {
            reclaim.run().await;
            if self.tracker.resolved(&self.observe().await) {
                tracing::info!(
                    resource = resource_to_reclaim(threshold.signal),
                    "eviction manager: able to reduce resource pressure without evicting pods"
                );
                return Vec::new();
            }
        }
        let mut candidates: Vec<Candidate> = active
            .into_iter()
            .map(|sp| {
                let uid = crate::source::uid_of(&sp.pod);
                Candidate {
                    stats: stats.get(&uid).cloned(),
                    pod: sp.pod,
                }
            })
            .collect();
        rank(threshold.signal, &mut candidates);
        let observation = observations.get(&threshold.signal);
        // At most one pod per pass, as the kubelet.
        for c in &candidates {
            let grace = if threshold.is_hard() {
                0
            } else {
                let own = c
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30);
                own.min(self.max_pod_grace_period).max(0)
            };
            let message = eviction_message(&threshold, observation, &c.pod, c.stats.as_ref());
            if self.evictor.evict(&c.pod, grace, message) {
                return vec![crate::source::uid_of(&c.pod)];
            }
        }
        Vec::new()
    }
}

fn has_local_storage_limit(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.volumes
        .iter()
        .flatten()
        .any(|v| v.empty_dir.as_ref().is_some_and(|e| e.size_limit.is_some()))
        || spec.containers.iter().any(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key("ephemeral-storage"))
        })
}

/// Node-level reclaim for disk pressure (`DeleteAllUnusedContainers`,
/// `DeleteUnusedImages`): dead containers beyond the newest of each name of a
/// pod, then images no container uses, except pinned ones and the runtime's
/// sandbox image.
#[derive(Debug, Clone)]
pub struct Reclaimer {
    pub client: berth_cri::RuntimeClient,
}

impl Reclaimer {
    /// Reclaim; failures are logged, never fatal.
    pub async fn run(&self) {
        use berth_cri::api;
        let containers = match self
            .client
            .list_containers(api::ListContainersRequest::default())
            .await
        {
            Ok(r) => r.containers,
            Err(e) => {
                tracing::warn!(error = %e, "eviction manager: cannot list containers to reclaim");
                return;
            }
        };
        // Dead containers: keep the newest dead one of each (pod, name) — a
        // running container's `lastState`, `logs --previous` — as the pod
        // workers' own clean-up does; running ones are never touched.
        let mut sorted: Vec<&api::Container> = containers
            .iter()
            .filter(|c| c.state() == api::ContainerState::ContainerExited)
            .collect();
        sorted.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        let mut seen = BTreeSet::new();
        let mut removed = 0usize;
        for c in sorted {
            let pod = c
                .labels
                .get(crate::observed::keys::POD_UID)
                .cloned()
                .unwrap_or_default();
            let name = c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            if seen.insert((pod, name)) {
                continue;
            }
            match self
                .client
                .remove_container(api::RemoveContainerRequest {
                    container_id: c.id.clone(),
                })
                .await
            {
                Ok(_) => removed += 1,
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %e, "eviction manager: removing a dead container failed")
                }
            }
        }
        // Images in use: by any container, and the sandbox image.
        let mut in_use: BTreeSet<String> = BTreeSet::new();
        for c in &containers {
            in_use.insert(c.image_ref.clone());
            if let Some(spec) = &c.image {
                in_use.insert(spec.image.clone());
            }
        }
        let Some(sandbox) = self.sandbox_image().await else {
            tracing::warn!(
                removed_dead_containers = removed,
                "eviction manager: the runtime does not say its sandbox image; no image removed"
            );
            return;
        };
        in_use.insert(sandbox);
        let images = match self
            .client
            .list_images(api::ListImagesRequest::default())
            .await
        {
            Ok(r) => r.images,
            Err(e) => {
                tracing::warn!(error = %e, "eviction manager: cannot list images to reclaim");
                return;
            }
        };
        let mut freed = 0u64;
        for image in images {
            let used = in_use.contains(&image.id)
                || image.repo_tags.iter().any(|t| in_use.contains(t))
                || image.repo_digests.iter().any(|d| in_use.contains(d));
            if used || image.pinned {
                continue;
            }
            match self
                .client
                .remove_image(api::RemoveImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.id.clone(),
                        ..Default::default()
                    }),
                })
                .await
            {
                Ok(_) => {
                    freed = freed.saturating_add(image.size);
                    tracing::info!(image = %image.id, tags = ?image.repo_tags, size = image.size, "eviction manager: removed an unused image");
                }
                Err(e) => {
                    tracing::warn!(image = %image.id, error = %e, "eviction manager: removing an unused image failed")
                }
            }
        }
        tracing::info!(
            dead_containers = removed,
            image_bytes_freed = freed,
            "eviction manager: node-level reclaim done"
        );
    }

    /// The runtime's sandbox (pause) image, resolved to its ID: containerd's
    /// verbose `Status` says it in `config.sandboxImage`. Unknown: `None`,
    /// and then no image is removed at all rather than risk it.
    async fn sandbox_image(&self) -> Option<String> {
        use berth_cri::api;
        let status = self
            .client
            .status(api::StatusRequest { verbose: true })
            .await
            .ok()?;
        let config: serde_json::Value = serde_json::from_str(status.info.get("config")?).ok()?;
        let name = config.get("sandboxImage")?.as_str()?.to_string();
        let id = self
            .client
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: name.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.image)
            .map(|i| i.id);
        Some(id.unwrap_or(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocatable::parse_thresholds;

    fn obs(pairs: &[(Signal, i64, i64)]) -> BTreeMap<Signal, Observation> {
        pairs
            .iter()
            .map(|&(s, available, capacity)| {
                (
                    s,
                    Observation {
                        available,
                        capacity,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn thresholds_are_met_below_their_amount_absolute_or_percent() {
        let t = parse_thresholds("f", "memory.available<100Mi,nodefs.available<10%").unwrap();
        let gib = 1i64 << 30;
        let met = thresholds_met(
            &t,
            &obs(&[
                (Signal::MemoryAvailable, 99 << 20, 8 * gib),
                (Signal::NodeFsAvailable, 11 * gib, 100 * gib),
            ]),
        );
        assert_eq!(
            met,
            vec![Met {
                signal: "memory.available",
                available: 99 << 20,
                threshold: 100 << 20
            }]
        );
        // Exactly at the threshold is not below it; an unread signal meets nothing.
        assert!(
            thresholds_met(&t, &obs(&[(Signal::MemoryAvailable, 100 << 20, 8 * gib)])).is_empty()
        );
        let met = thresholds_met(&t, &obs(&[(Signal::NodeFsAvailable, 9 * gib, 100 * gib)]));
        assert_eq!(met.len(), 1);
    }

    #[test]
    fn a_condition_holds_for_the_transition_period_after_its_last_signal() {
        let t = parse_thresholds("f", "memory.available<100Mi,pid.available<10").unwrap();
        let mut tracker = PressureTracker::new(t, Duration::from_secs(300));
        let t0 = Instant::now();
        let low = obs(&[
            (Signal::MemoryAvailable, 1, 1 << 30),
            (Signal::PidAvailable, 5, 100),
        ]);
        let fine = obs(&[
            (Signal::MemoryAvailable, 1 << 29, 1 << 30),
            (Signal::PidAvailable, 50, 100),
        ]);
        let s = tracker.observe(&low, t0);
        assert_eq!(s.pressure, vec!["MemoryPressure", "PIDPressure"]);
        // Recovered, but within the period: still under pressure, nothing met.
        let s = tracker.observe(&fine, t0 + Duration::from_secs(60));
        assert_eq!(s.pressure, vec!["MemoryPressure", "PIDPressure"]);
        assert!(s.thresholds_met.is_empty());
        let s = tracker.observe(&fine, t0 + Duration::from_secs(301));
        assert!(s.pressure.is_empty(), "{s:?}");
        // No period: the condition follows the signal.
        let t = parse_thresholds("f", "nodefs.inodesFree<5%").unwrap();
        let mut tracker = PressureTracker::new(t, Duration::ZERO);
        let s = tracker.observe(&obs(&[(Signal::NodeFsInodesFree, 1, 100)]), t0);
        assert_eq!(s.pressure, vec!["DiskPressure"]);
        let s = tracker.observe(&obs(&[(Signal::NodeFsInodesFree, 50, 100)]), t0);
        assert!(s.pressure.is_empty());
    }

    fn threshold(text: &str) -> Threshold {
        parse_thresholds("f", text).unwrap()[0]
    }

    #[test]
    fn soft_thresholds_act_after_their_grace_period_and_pressure_shows_at_once() {
        let mut soft = threshold("memory.available<1Gi");
        soft.grace_period = Duration::from_secs(90);
        let hard = threshold("memory.available<100Mi");
        let mut tracker = PressureTracker::new(vec![hard, soft], Duration::ZERO);
        let t0 = Instant::now();
        let low = obs(&[(Signal::MemoryAvailable, 500 << 20, 8 << 30)]);
        let s = tracker.observe(&low, t0);
        assert_eq!(s.pressure, vec!["MemoryPressure"]);
        assert!(tracker.acting().is_empty(), "the soft threshold waits");
        tracker.observe(&low, t0 + Duration::from_secs(89));
        assert!(tracker.acting().is_empty());
        tracker.observe(&low, t0 + Duration::from_secs(90));
        assert_eq!(tracker.acting(), &[soft]);
        // Recovered: the grace period starts again next time.
        let fine = obs(&[(Signal::MemoryAvailable, 2 << 30, 8 << 30)]);
        tracker.observe(&fine, t0 + Duration::from_secs(91));
        tracker.observe(&low, t0 + Duration::from_secs(92));
        assert!(tracker.acting().is_empty());
        // A hard threshold acts at once.
        let very_low = obs(&[(Signal::MemoryAvailable, 50 << 20, 8 << 30)]);
        tracker.observe(&very_low, t0 + Duration::from_secs(93));
        assert_eq!(tracker.acting(), &[hard]);
    }

    #[test]
    fn a_threshold_met_holds_until_its_minimum_reclaim_is_available() {
        let mut t = threshold("memory.available<100Mi");
        t.min_reclaim = Some(crate::allocatable::ThresholdValue::Quantity(500 << 20));
        let mut tracker = PressureTracker::new(vec![t], Duration::ZERO);
        let now = Instant::now();
        let at = |mib: i64| obs(&[(Signal::MemoryAvailable, mib << 20, 8 << 30)]);
        // Not met before: the minimum reclaim does not count.
        assert!(tracker.observe(&at(300), now).pressure.is_empty());
        assert_eq!(
            tracker.observe(&at(50), now).pressure,
            vec!["MemoryPressure"]
        );
        // Met, so it holds until 100Mi + 500Mi are available.
        assert_eq!(
            tracker.observe(&at(300), now).pressure,
            vec!["MemoryPressure"]
        );
        assert!(!tracker.resolved(&at(599)));
        assert!(tracker.resolved(&at(600)));
        assert!(tracker.observe(&at(600), now).pressure.is_empty());
        // Not met again: back to the bare threshold.
        assert!(tracker.observe(&at(300), now).pressure.is_empty());
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn sourced(p: Pod, file: &str) -> SourcedPod {
        SourcedPod {
            pod: p,
            file: PathBuf::from(file),
            warnings: Vec::new(),
            rejected: None,
        }
    }

    fn named(name: &str, memory_request: Option<&str>, priority: Option<i32>) -> Pod {
        let resources = match memory_request {
            Some(m) => serde_json::json!({"requests": {"memory": m}}),
            None => serde_json::json!({}),
        };
        pod(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"priority": priority, "containers": [{"name": "c", "image": "busybox", "resources": resources}]}
        }))
    }

    fn memory_stats(name: &str, working_set: u64) -> PodStats {
        use crate::stats::summary::{ContainerStats, MemoryStats, PodReference};
        let mem = MemoryStats {
            working_set_bytes: Some(working_set),
            ..Default::default()
        };
        PodStats {
            pod_ref: PodReference {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
            },
            memory: Some(mem.clone()),
            containers: vec![ContainerStats {
                name: "c".into(),
                memory: Some(mem),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn memory_ranking_is_usage_over_requests_then_priority_then_usage() {
        let mib = 1u64 << 20;
        let mut pods = vec![
            // Within its request.
            Candidate {
                pod: named("within", Some("200Mi"), None),
                stats: Some(memory_stats("within", 150 * mib)),
            },
            // Over its request by 50Mi, high priority.
            Candidate {
                pod: named("important", Some("100Mi"), Some(1000)),
                stats: Some(memory_stats("important", 150 * mib)),
            },
            // Over by 10Mi (BestEffort), low priority.
            Candidate {
                pod: named("small", None, None),
                stats: Some(memory_stats("small", 10 * mib)),
            },
            // Over by 300Mi (BestEffort), low priority.
            Candidate {
                pod: named("greedy", None, None),
                stats: Some(memory_stats("greedy", 300 * mib)),
            },
            // No stats: first.
            Candidate {
                pod: named("unknown", None, None),
                stats: None,
            },
        ];
        rank(Signal::MemoryAvailable, &mut pods);
        let order: Vec<_> = pods
            .iter()
            .map(|c| c.pod.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(order, ["unknown", "greedy", "small", "important", "within"]);
    }

    #[test]
    fn the_eviction_message_names_the_resource_threshold_and_containers() {
        let t = threshold("memory.available<100Mi");
        let o = Observation {
            available: 50 << 20,
            capacity: 8 << 30,
        };
        let p = named("greedy", Some("10Mi"), None);
        let s = memory_stats("greedy", 300 << 20);
        assert_eq!(
            eviction_message(&t, Some(&o), &p, Some(&s)),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. Container c was using 300Mi, request is 10Mi, has larger consumption of memory. "
        );
        let t = threshold("nodefs.inodesFree<5%");
        let o = Observation {
            available: 3000,
            capacity: 100_000,
        };
        assert_eq!(
            eviction_message(&t, Some(&o), &p, None),
            "The node was low on resource: inodes. Threshold quantity: 5k, available: 3k. "
        );
    }

    #[test]
    fn local_storage_limits_are_checked_volume_pod_then_container() {
        use crate::stats::summary::{ContainerStats, FsStats, VolumeStats};
        let fs = |used: u64| FsStats {
            used_bytes: Some(used),
            ..Default::default()
        };
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {
                "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}],
                "containers": [{"name": "c", "image": "i", "resources": {"limits": {"ephemeral-storage": "4Mi"}}}]
            }
        }));
        let mut s = PodStats {
            volume_stats: vec![VolumeStats {
                name: "scratch".into(),
                fs: fs(512 << 10),
                ..Default::default()
            }],
            ephemeral_storage: Some(fs(1 << 20)),
            containers: vec![ContainerStats {
                name: "c".into(),
                rootfs: Some(fs(1 << 20)),
                logs: Some(fs(4096)),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(local_storage_violation(&p, &s), None);
        s.volume_stats[0].fs = fs(2 << 20);
        assert_eq!(
            local_storage_violation(&p, &s).as_deref(),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
        );
        s.volume_stats[0].fs = fs(0);
        s.ephemeral_storage = Some(fs(5 << 20));
        assert_eq!(
            local_storage_violation(&p, &s).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 4Mi. ")
        );
        s.ephemeral_storage = Some(fs(0));
        s.containers[0].rootfs = Some(fs(5 << 20));
        assert_eq!(
            local_storage_violation(&p, &s).as_deref(),
            Some("Container c exceeded its local ephemeral storage limit \"4Mi\". ")
        );
    }

    #[test]
    fn under_pressure_new_pods_are_refused_as_the_kubelets_admit_handler() {
        let memory: BTreeSet<Pressure> = [Pressure::Memory].into();
        let disk: BTreeSet<Pressure> = [Pressure::Disk, Pressure::Memory].into();
        let best_effort = sourced(named("be", None, None), "api");
        let burstable = sourced(named("bu", Some("10Mi"), None), "api");
        let static_pod = sourced(named("st", None, None), "/etc/manifests/st.yaml");
        let r = admit_under_pressure(&best_effort, &memory).unwrap_err();
        assert_eq!(r.reason, "Evicted");
        assert_eq!(r.message, "The node had condition: [MemoryPressure]. ");
        assert!(admit_under_pressure(&burstable, &memory).is_ok());
        assert!(admit_under_pressure(&static_pod, &memory).is_ok());
        assert!(admit_under_pressure(&best_effort, &BTreeSet::new()).is_ok());
        let r = admit_under_pressure(&burstable, &disk).unwrap_err();
        assert_eq!(
            r.message,
            "The node had condition: [MemoryPressure DiskPressure]. "
        );
        assert!(admit_under_pressure(&static_pod, &disk).is_ok());
        // Tolerating the memory-pressure taint lets a BestEffort pod in.
        let mut tolerant = named("tol", None, None);
        if let Some(spec) = tolerant.spec.as_mut() {
            spec.tolerations = Some(vec![k8s_openapi::api::core::v1::Toleration {
                key: Some(TAINT_MEMORY_PRESSURE.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]);
        }
        assert!(admit_under_pressure(&sourced(tolerant, "api"), &memory).is_ok());
    }

    struct FixedSignals(std::sync::Mutex<BTreeMap<Signal, Observation>>);
    impl SignalSource for FixedSignals {
        fn observe(&self) -> BTreeMap<Signal, Observation> {
            self.0.lock().unwrap().clone()
        }
    }

    #[derive(Default)]
    struct Recorded {
        pods: Vec<SourcedPod>,
        evicted: std::sync::Mutex<Vec<(String, i64, String)>>,
    }
    impl Evictor for Recorded {
        fn active_pods(&self) -> Vec<SourcedPod> {
            let gone: Vec<String> = self
                .evicted
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.0.clone())
                .collect();
            self.pods
                .iter()
                .filter(|sp| !gone.contains(&sp.pod.metadata.name.clone().unwrap_or_default()))
                .cloned()
                .collect()
        }
        fn evict(&self, pod: &Pod, grace: i64, message: String) -> bool {
            self.evicted.lock().unwrap().push((
                pod.metadata.name.clone().unwrap_or_default(),
                grace,
                message,
            ));
            true
        }
    }

    #[tokio::test]
    async fn the_manager_evicts_one_pod_per_pass_in_rank_order_never_a_critical_one() {
        let mib = 1u64 << 20;
        let signals = Arc::new(FixedSignals(std::sync::Mutex::new(obs(&[(
            Signal::MemoryAvailable,
            50 << 20,
            8 << 30,
        )]))));
        let evictor = Arc::new(Recorded {
            pods: vec![
                sourced(named("static", None, None), "/etc/m/static.yaml"),
                sourced(
                    named("critical", None, Some(SYSTEM_CRITICAL_PRIORITY)),
                    "api",
                ),
                sourced(named("within", Some("500Mi"), None), "api"),
                sourced(named("greedy", None, None), "api"),
            ],
            ..Default::default()
        });
        let stats = vec![
            memory_stats("static", 900 * mib),
            memory_stats("critical", 900 * mib),
            memory_stats("within", 400 * mib),
            memory_stats("greedy", 300 * mib),
        ];
        let summary: crate::server::SummarySource = Arc::new(move || {
            let pods = stats.clone();
            Box::pin(async move {
                Ok(crate::stats::Summary {
                    pods,
                    ..Default::default()
                })
            })
        });
        let mut m = Manager {
            source: signals.clone(),
            tracker: PressureTracker::new(
                parse_thresholds("f", "memory.available<100Mi").unwrap(),
                Duration::ZERO,
            ),
            shared: SharedPressure::default(),
            summary,
            reclaim: None,
            evictor: evictor.clone(),
            max_pod_grace_period: 0,
        };
        assert_eq!(m.synchronize().await, vec!["uid-greedy"]);
        assert_eq!(m.shared.read().unwrap().pressure, vec!["MemoryPressure"]);
        assert_eq!(m.synchronize().await, vec!["uid-within"]);
        // Only critical pods are left: nothing more is evicted.
        assert!(m.synchronize().await.is_empty());
        let evicted = evictor.evicted.lock().unwrap().clone();
        assert_eq!(evicted[0].1, 0, "a hard threshold evicts at once");
        assert!(
            evicted[0].2.starts_with("The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. Container c was using 300Mi, request is 0, has larger consumption of memory."),
            "{}",
            evicted[0].2
        );
        // Recovered: nothing evicted, no pressure (no transition period).
        *signals.0.lock().unwrap() = obs(&[(Signal::MemoryAvailable, 4 << 30, 8 << 30)]);
        assert!(m.synchronize().await.is_empty());
        assert!(m.shared.read().unwrap().pressure.is_empty());
    }

    #[test]
    fn the_signals_file_overrides_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signals.json");
        let host = Arc::new(FixedSignals(std::sync::Mutex::new(obs(&[
            (Signal::MemoryAvailable, 4 << 30, 8 << 30),
            (Signal::PidAvailable, 100, 200),
        ]))));
        let f = FileSignals {
            path: path.clone(),
            host,
        };
        assert_eq!(f.observe()[&Signal::MemoryAvailable].available, 4 << 30);
        std::fs::write(
            &path,
            r#"{"memory.available": {"available": 1, "capacity": 2}}"#,
        )
        .unwrap();
        let o = f.observe();
        assert_eq!(
            o[&Signal::MemoryAvailable],
            Observation {
                available: 1,
                capacity: 2
            }
        );
        assert_eq!(o[&Signal::PidAvailable].available, 100);
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(f.observe()[&Signal::MemoryAvailable].available, 4 << 30);
    }

    #[test]
    fn the_host_is_readable() {
        let s = HostSignals {
            root_dir: std::env::temp_dir(),
            image_dir: None,
        }
        .observe();
        for sig in [Signal::NodeFsAvailable, Signal::ImageFsInodesFree] {
            let o = s.get(&sig).expect("statvfs of the temp dir");
            assert!(o.capacity > 0 && o.available <= o.capacity, "{o:?}");
        }
    }
}
