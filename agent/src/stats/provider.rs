//! The Summary API provider: asks the runtime for what it measures, reads the
//! host for the rest, and assembles a [`Summary`].
//!
//! Where each number comes from (as the kubelet's CRI stats provider, with
//! cadvisor's cgroup readings):
//! - node: CPU and memory of the root cgroup ([`host`]), network of the
//!   agent's namespace, `fs` = statvfs of the root directory, `runtime` = CRI
//!   `ImageFsInfo` (where implemented), `rlimit`, and the `pods` system
//!   container (the cgroup root);
//! - pod: CPU, memory and process count of the pod cgroup (`PodCgroups`'s
//!   layout, so QoS comes from the desired pod), network of the namespace of a
//!   process in that cgroup (none for hostNetwork pods), emptyDir and
//!   configMap volumes by directory usage, `ephemeral-storage` as their sum
//!   with the containers' writable layers and logs and the pod's hosts file;
//! - container (running ones of the pod's newest ready sandbox): CRI
//!   `ListContainerStats` (CPU, working set, writable layer), memory details
//!   the runtime leaves out filled from the container's cgroup; when the
//!   runtime does not implement the call, CPU and memory from the cgroup
//!   alone and no `rootfs`; `logs` by directory usage of
//!   `<pod-logs-dir>/<ns>_<name>_<uid>/<container>/`.
//!
//! `usageNanoCores` comes from the runtime when it reports one, else from the
//! last reading of the same counter ([`CpuSampler`]). The node's counter is
//! read once when the provider is made, so the first summary has its rate.
//!
//! Runtime calls are async; every host read runs in one blocking task per
//! summary, which holds the sampler and the directory-usage cache for its
//! duration (two summaries at once take turns, and forgetting old ids is
//! never raced).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_cri::{RuntimeClient, api};
use k8s_openapi::api::core::v1::Pod;

use super::cgroup::{CgroupFs, CgroupSample, MemorySample};
use super::du::{DirUsage, DuCache};
use super::host::{self, FsInfo};
use super::network;
use super::sampler::CpuSampler;
use super::summary::{
    ContainerStats, CpuStats, FsStats, MemoryStats, NodeStats, PodReference, PodStats,
    ProcessStats, RlimitStats, RuntimeStats, SYSTEM_CONTAINER_PODS, Summary, Time, VolumeStats,
};
use super::{Result, StatsError, now_ns};
use crate::cgroups::{CgroupName, PodCgroups};
use crate::observed::{ContainerState, ObservedPod};
use crate::pleg::RuntimeCache;

/// How long a directory's measured usage is reused (the kubelet's
/// `--volume-stats-agg-period` default).
pub const DEFAULT_DU_TTL: Duration = Duration::from_secs(60);

/// Node settings the provider needs.
#[derive(Debug, Clone)]
pub struct StatsSettings {
    pub node_name: String,
    /// `--root-dir`: pods' directories are `<root-dir>/pods/<uid>`; its
    /// filesystem is the node's `fs`.
    pub root_dir: PathBuf,
    /// `--pod-logs-dir`.
    pub pod_logs_dir: PathBuf,
    /// The cgroup every pod sits in, cgroupfs spelling (`/kubepods`).
    pub cgroup_root: String,
}

/// Where the host's files are read from (the real ones, or a test's tree).
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub cgroups: CgroupFs,
    /// `/proc`.
    pub proc: PathBuf,
}

impl HostPaths {
    /// This host: `/sys/fs/cgroup` in its detected version, and `/proc`.
    pub fn host() -> Self {
        HostPaths {
            cgroups: CgroupFs::host(),
            proc: PathBuf::from("/proc"),
        }
    }
}

/// Produces the kubelet's Summary from the runtime and the host.
pub struct StatsProvider {
    client: RuntimeClient,
    cache: Arc<RuntimeCache>,
    cgroups: PodCgroups,
    collector: Arc<Collector>,
}

impl std::fmt::Debug for StatsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsProvider")
            .field("node_name", &self.collector.settings.node_name)
            .field("host", &self.collector.host)
            .finish()
    }
}

impl StatsProvider {
    /// A provider reading this host's cgroups and /proc.
    pub fn new(
        client: RuntimeClient,
        cache: Arc<RuntimeCache>,
        cgroups: PodCgroups,
        settings: StatsSettings,
    ) -> Self {
        Self::with_host(client, cache, cgroups, settings, HostPaths::host())
    }

    /// A provider reading the host's files under `host`.
    pub fn with_host(
        client: RuntimeClient,
        cache: Arc<RuntimeCache>,
        cgroups: PodCgroups,
        settings: StatsSettings,
        host: HostPaths,
    ) -> Self {
        let pods_cgroup = CgroupName::from_cgroupfs(&settings.cgroup_root)
            .ok()
            .map(|name| cgroups.manager().name(&name));
        let collector = Collector {
            host,
            settings,
            pods_cgroup,
            cpu: Mutex::new(CpuSampler::default()),
            du: Mutex::new(DuCache::new(DEFAULT_DU_TTL)),
        };
        collector.prime();
        StatsProvider {
            client,
            cache,
            cgroups,
            collector: Arc::new(collector),
        }
    }

    /// Reuse directory usage for `ttl` (zero: measure on every summary).
    pub fn with_du_ttl(self, ttl: Duration) -> Self {
        *lock(&self.collector.du) = DuCache::new(ttl);
        self
    }

    /// Compute a new CPU rate only over windows of at least `window`
    /// (1 s by default; readings closer together reuse the last rate).
    pub fn with_min_rate_window(self, window: Duration) -> Self {
        let ns = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
        *lock(&self.collector.cpu) = CpuSampler::new(ns);
        self.collector.prime();
        self
    }

    /// The Summary of the node and its pods. `pods` are the desired pods
    /// (their names, UIDs, QoS classes and volumes); pods the runtime still
    /// holds that are not among them are reported from the runtime alone.
    /// Fails when the runtime fails a stats call it implements.
    pub async fn summary(&self, pods: &[Pod]) -> Result<Summary> {
        let cri = match self
            .client
            .list_container_stats(api::ListContainerStatsRequest::default())
            .await
        {
            Ok(resp) => Some(
                resp.stats
                    .into_iter()
                    .filter_map(|s| Some((s.attributes.as_ref()?.id.clone(), s)))
                    .collect::<HashMap<_, _>>(),
            ),
            Err(e) if e.is_unimplemented() => {
                tracing::debug!(error = %e, "runtime has no ListContainerStats; reading container cgroups");
                None
            }
            Err(e) => return Err(StatsError::Runtime(e)),
        };
        let image_fs = match self
            .client
            .image_fs_info(api::ImageFsInfoRequest::default())
            .await
        {
            Ok(resp) => Some(resp),
            Err(e) if e.is_unimplemented() => None,
            Err(e) => return Err(StatsError::Runtime(e)),
        };
        let plan = self.plan(pods, cri, image_fs);
        let collector = self.collector.clone();
        tokio::task::spawn_blocking(move || collector.collect(plan, now_ns()))
            .await
            .map_err(|e| StatsError::Task(e.to_string()))
    }

    /// What to read for each pod: the desired pods first, then the pods only
    /// the runtime still holds.
    fn plan(
        &self,
        pods: &[Pod],
        mut cri: Option<HashMap<String, api::ContainerStats>>,
        image_fs: Option<api::ImageFsInfoResponse>,
    ) -> Plan {
        let settings = &self.collector.settings;
        let mut planned = Vec::new();
        let mut desired = HashSet::new();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.as_deref().filter(|u| safe_component(u)) else {
                continue;
            };
            if !desired.insert(uid.to_string()) {
                continue;
            }
            let cgroup = match self.cgroups.pod_name(pod) {
                Ok(name) => Some(self.cgroups.manager().name(&name)),
                Err(e) => {
                    tracing::debug!(pod.uid = uid, error = %e, "no pod cgroup to read");
                    None
                }
            };
            let pod_ref = PodReference {
                name: pod.metadata.name.clone().unwrap_or_default(),
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                uid: uid.to_string(),
            };
            let observed = self.cache.get(uid);
            if let Some(p) = plan_pod(settings, pod_ref, &observed, cgroup, Some(pod), &mut cri) {
                planned.push(p);
            }
        }
        let mut others = self.cache.uids();
        others.sort();
        for uid in others {
            if desired.contains(&uid) || !safe_component(&uid) {
                continue;
            }
            let observed = self.cache.get(&uid);
            let Some(sb) = observed.latest_sandbox() else {
                continue;
            };
            let pod_ref = PodReference {
                name: sb.name.clone(),
                namespace: sb.namespace.clone(),
                uid: uid.clone(),
            };
            if let Some(p) = plan_pod(settings, pod_ref, &observed, None, None, &mut cri) {
                planned.push(p);
            }
        }
        Plan {
            pods: planned,
            image_fs,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A path component that stays where it is put (no `/`, not `.` or `..`).
fn safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// Everything one summary reads, decided before the blocking part.
#[derive(Debug, Default)]
struct Plan {
    pods: Vec<PodPlan>,
    image_fs: Option<api::ImageFsInfoResponse>,
}

#[derive(Debug)]
struct PodPlan {
    pod_ref: PodReference,
    /// The sandbox's creation, ns.
    started_at: i64,
    /// The pod cgroup in the driver's spelling (`None`: unknown).
    cgroup: Option<String>,
    host_network: bool,
    containers: Vec<ContainerPlan>,
    volumes: Vec<VolumePlan>,
    /// `<pod-logs-dir>/<ns>_<name>_<uid>`.
    log_dir: Option<PathBuf>,
    /// `<pod-dir>/etc-hosts`.
    etc_hosts: PathBuf,
}

#[derive(Debug)]
struct ContainerPlan {
    id: String,
    name: String,
    created_at: i64,
    /// What the runtime reported (`None`: not reported or not implemented).
    cri: Option<api::ContainerStats>,
}

#[derive(Debug)]
struct VolumePlan {
    name: String,
    path: PathBuf,
    /// Counted in the pod's ephemeral storage (the kubelet's
    /// `IsLocalEphemeralVolume`: disk-backed emptyDir, configMap).
    ephemeral: bool,
}

fn plan_pod(
    settings: &StatsSettings,
    pod_ref: PodReference,
    observed: &ObservedPod,
    cgroup: Option<String>,
    spec: Option<&Pod>,
    cri: &mut Option<HashMap<String, api::ContainerStats>>,
) -> Option<PodPlan> {
    // The kubelet reports pods by their sandboxes: none, no entry.
    let sandbox = observed
        .ready_sandbox()
        .or_else(|| observed.latest_sandbox())?;
    let mut names = HashSet::new();
    let containers = observed
        .containers
        .iter()
        .filter(|c| c.state == ContainerState::Running && c.sandbox_id == sandbox.id)
        // Newest first: one entry per name.
        .filter(|c| names.insert(c.name.clone()))
        .map(|c| ContainerPlan {
            id: c.id.clone(),
            name: c.name.clone(),
            created_at: c.created_at,
            cri: cri.as_mut().and_then(|m| m.remove(&c.id)),
        })
        .collect();
    let pod_dir = settings.root_dir.join("pods").join(&pod_ref.uid);
    let volumes = spec
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter(|v| safe_component(&v.name))
        .filter_map(|v| {
            let (plugin, ephemeral) = if let Some(ed) = &v.empty_dir {
                (
                    "kubernetes.io~empty-dir",
                    ed.medium.as_deref() != Some("Memory"),
                )
            } else if v.config_map.is_some() {
                ("kubernetes.io~configmap", true)
            } else {
                return None;
            };
            Some(VolumePlan {
                name: v.name.clone(),
                path: pod_dir.join("volumes").join(plugin).join(&v.name),
                ephemeral,
            })
        })
        .collect();
    let log_dir =
        (safe_component(&pod_ref.namespace) && safe_component(&pod_ref.name)).then(|| {
            settings.pod_logs_dir.join(format!(
                "{}_{}_{}",
                pod_ref.namespace, pod_ref.name, pod_ref.uid
            ))
        });
    Some(PodPlan {
        started_at: sandbox.created_at,
        cgroup,
        host_network: sandbox.host_network == Some(true),
        containers,
        volumes,
        log_dir,
        etc_hosts: pod_dir.join("etc-hosts"),
        pod_ref,
    })
}

/// The blocking half: reads the host and keeps the state between summaries.
#[derive(Debug)]
struct Collector {
    host: HostPaths,
    settings: StatsSettings,
    /// The cgroup root in the driver's spelling.
    pods_cgroup: Option<String>,
    cpu: Mutex<CpuSampler>,
    du: Mutex<DuCache>,
}

/// One collection's working state.
struct Ctx<'a> {
    now: i64,
    cpu: MutexGuard<'a, CpuSampler>,
    du: MutexGuard<'a, DuCache>,
    seen_ids: HashSet<String>,
    seen_paths: HashSet<PathBuf>,
    fs: HashMap<PathBuf, Option<FsInfo>>,
}

impl Ctx<'_> {
    fn time(&self) -> Time {
        Time::from_nanos(self.now)
    }

    /// CPU stats from a cumulative reading, with the rate since the last one.
    fn cpu(&mut self, id: String, at: i64, usage_ns: u64, reported_rate: Option<u64>) -> CpuStats {
        let rate = self.cpu.observe(&id, at, usage_ns);
        self.seen_ids.insert(id);
        CpuStats {
            time: Time::from_nanos(at),
            usage_nano_cores: reported_rate.or(rate),
            usage_core_nano_seconds: Some(usage_ns),
        }
    }

    /// statvfs of `path`, once per collection.
    fn fs_info(&mut self, path: &Path) -> Option<FsInfo> {
        if let Some(info) = self.fs.get(path) {
            return *info;
        }
        let info = match host::fs_info(path) {
            Ok(info) => Some(info),
            Err(e) => {
                if !e.is_not_found() {
                    tracing::debug!(path = %path.display(), error = %e, "statvfs failed");
                }
                None
            }
        };
        self.fs.insert(path.to_path_buf(), info);
        info
    }

    /// Directory usage of `path` with its filesystem's size, or `None` when
    /// it does not exist.
    fn dir_stats(&mut self, path: &Path) -> Option<FsStats> {
        let usage = match self.du.usage(path) {
            Ok(u) => u,
            Err(e) => {
                if !e.is_not_found() {
                    tracing::debug!(path = %path.display(), error = %e, "directory usage failed");
                }
                return None;
            }
        };
        self.seen_paths.insert(path.to_path_buf());
        let mut stats = used_stats(self.time(), usage);
        if let Some(fs) = self.fs_info(path) {
            fill_capacity(&mut stats, &fs);
        }
        Some(stats)
    }

    /// A CRI filesystem usage, with the size of the filesystem it names.
    fn cri_fs_stats(&mut self, usage: &api::FilesystemUsage) -> FsStats {
        let mut stats = FsStats {
            time: cri_time(usage.timestamp, self.now),
            used_bytes: usage.used_bytes.as_ref().map(|v| v.value),
            inodes_used: usage.inodes_used.as_ref().map(|v| v.value),
            ..Default::default()
        };
        let mountpoint = usage
            .fs_id
            .as_ref()
            .map(|id| id.mountpoint.as_str())
            .filter(|m| !m.is_empty());
        if let Some(fs) = mountpoint.and_then(|m| self.fs_info(Path::new(m))) {
            fill_capacity(&mut stats, &fs);
        }
        stats
    }
}

/// A runtime timestamp, or now when it sent none.
fn cri_time(ns: i64, now: i64) -> Time {
    Time::from_nanos(if ns > 0 { ns } else { now })
}

fn used_stats(time: Time, usage: DirUsage) -> FsStats {
    FsStats {
        time,
        used_bytes: Some(usage.bytes),
        inodes_used: Some(usage.inodes),
        ..Default::default()
    }
}

fn fill_capacity(stats: &mut FsStats, fs: &FsInfo) {
    stats.available_bytes = Some(fs.available);
    stats.capacity_bytes = Some(fs.capacity);
    stats.inodes = Some(fs.inodes);
    stats.inodes_free = Some(fs.inodes_free);
}

fn memory_stats(time: Time, m: &MemorySample) -> MemoryStats {
    MemoryStats {
        time,
        available_bytes: m.available(),
        usage_bytes: Some(m.usage),
        working_set_bytes: Some(m.working_set),
        rss_bytes: m.rss,
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
    }
}

fn add(total: &mut Option<u64>, v: Option<u64>) {
    if let Some(v) = v {
        *total = Some(total.unwrap_or(0).saturating_add(v));
    }
}

impl Collector {
    /// Take the node's first CPU reading, so the first summary has a rate.
    fn prime(&self) {
        if let Ok(ns) = host::node_cpu_ns(&self.host.cgroups, &self.host.proc) {
            lock(&self.cpu).observe(NODE_ID, now_ns(), ns);
        }
    }

    fn read_cgroup(&self, cgroup: &str) -> Option<CgroupSample> {
        match self.host.cgroups.read(cgroup) {
            Ok(s) => Some(s),
            Err(e) => {
                if !e.is_not_found() {
                    tracing::debug!(cgroup, error = %e, "reading cgroup failed");
                }
                None
            }
        }
    }

    fn collect(&self, plan: Plan, now: i64) -> Summary {
        let mut ctx = Ctx {
            now,
            cpu: lock(&self.cpu),
            du: lock(&self.du),
            // The node's id is always kept: it was primed at creation.
            seen_ids: HashSet::from([NODE_ID.to_string()]),
            seen_paths: HashSet::new(),
            fs: HashMap::new(),
        };
        let root_fs = ctx.fs_info(&self.settings.root_dir);
        let node = self.node_stats(&mut ctx, root_fs, plan.image_fs.as_ref());
        let pods = plan
            .pods
            .into_iter()
            .map(|p| self.pod_stats(&mut ctx, root_fs, p))
            .collect();
        let Ctx {
            mut cpu,
            mut du,
            seen_ids,
            seen_paths,
            ..
        } = ctx;
        cpu.retain(&seen_ids);
        du.retain(&seen_paths);
        Summary { node, pods }
    }

    fn node_stats(
        &self,
        ctx: &mut Ctx<'_>,
        root_fs: Option<FsInfo>,
        image_fs: Option<&api::ImageFsInfoResponse>,
    ) -> NodeStats {
        let (cgroups, proc) = (&self.host.cgroups, self.host.proc.as_path());
        let t = ctx.time();
        let cpu = match host::node_cpu_ns(cgroups, proc) {
            Ok(ns) => Some(ctx.cpu(NODE_ID.to_string(), ctx.now, ns, None)),
            Err(e) => {
                tracing::debug!(error = %e, "node cpu unreadable");
                None
            }
        };
        let memory = match host::node_memory(cgroups, proc) {
            Ok(m) => Some(memory_stats(t, &m)),
            Err(e) => {
                tracing::debug!(error = %e, "node memory unreadable");
                None
            }
        };
        let network = network::read_net_dev(proc, None)
            .ok()
            .map(|ifaces| network::network_stats(t, &ifaces));
        let fs = root_fs.map(|f| FsStats {
            time: t,
            available_bytes: Some(f.available),
            capacity_bytes: Some(f.capacity),
            used_bytes: Some(f.used),
            inodes_free: Some(f.inodes_free),
            inodes: Some(f.inodes),
            inodes_used: Some(f.inodes_used()),
        });
        let runtime = image_fs.and_then(|resp| {
            let image = resp.image_filesystems.first().map(|u| ctx.cri_fs_stats(u));
            let container = match resp.container_filesystems.first() {
                Some(u) => Some(ctx.cri_fs_stats(u)),
                // One filesystem for both.
                None => image.clone(),
            };
            (image.is_some() || container.is_some()).then_some(RuntimeStats {
                image_fs: image,
                container_fs: container,
            })
        });
        let start_time = host::boot_time_ns(proc)
            .map(Time::from_nanos)
            .unwrap_or_default();
        let system_containers = self
            .pods_cgroup
            .as_deref()
            .and_then(|cg| self.read_cgroup(cg))
            .map(|s| ContainerStats {
                name: SYSTEM_CONTAINER_PODS.to_string(),
                start_time,
                cpu: s.cpu_usage_ns.map(|ns| {
                    ctx.cpu(format!("system/{SYSTEM_CONTAINER_PODS}"), ctx.now, ns, None)
                }),
                memory: s.memory.as_ref().map(|m| memory_stats(t, m)),
                ..Default::default()
            })
            .into_iter()
            .collect();
        NodeStats {
            node_name: self.settings.node_name.clone(),
            system_containers,
            start_time,
            cpu,
            memory,
            network,
            fs,
            runtime,
            rlimit: Some(RlimitStats {
                time: t,
                max_pid: host::pid_max(proc).ok(),
                num_of_running_processes: host::process_count(),
            }),
        }
    }

    fn pod_stats(&self, ctx: &mut Ctx<'_>, root_fs: Option<FsInfo>, p: PodPlan) -> PodStats {
        let t = ctx.time();
        let sample = p.cgroup.as_deref().and_then(|cg| self.read_cgroup(cg));
        let cpu = sample
            .as_ref()
            .and_then(|s| s.cpu_usage_ns)
            .map(|ns| ctx.cpu(format!("pod/{}", p.pod_ref.uid), ctx.now, ns, None));
        let memory = sample
            .as_ref()
            .and_then(|s| s.memory.as_ref())
            .map(|m| memory_stats(t, m));
        let process_stats = sample.as_ref().and_then(|s| s.pids).map(|n| ProcessStats {
            process_count: Some(n),
        });
        // Every container of the pod shares the sandbox's namespace: any
        // process in the pod cgroup leads to it.
        let network = if p.host_network {
            None
        } else {
            p.cgroup
                .as_deref()
                .and_then(|cg| self.host.cgroups.any_pid(cg))
                .and_then(|pid| network::read_net_dev(&self.host.proc, Some(pid)).ok())
                .map(|ifaces| network::network_stats(t, &ifaces))
        };
        let containers: Vec<ContainerStats> = p
            .containers
            .iter()
            .map(|c| self.container_stats(ctx, &p, c))
            .collect();
        let volumes: Vec<(VolumeStats, bool)> = p
            .volumes
            .iter()
            .filter_map(|v| {
                let fs = ctx.dir_stats(&v.path)?;
                Some((
                    VolumeStats {
                        fs,
                        name: v.name.clone(),
                        pvc_ref: None,
                    },
                    v.ephemeral,
                ))
            })
            .collect();
        let etc_hosts = std::fs::symlink_metadata(&p.etc_hosts).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks().saturating_mul(512)
        });
        let ephemeral_storage =
            root_fs.map(|fs| ephemeral_storage(t, &fs, &containers, &volumes, etc_hosts));
        PodStats {
            pod_ref: p.pod_ref,
            start_time: Time::from_nanos(p.started_at),
            containers,
            cpu,
            memory,
            network,
            volume_stats: volumes.into_iter().map(|(v, _)| v).collect(),
            ephemeral_storage,
            process_stats,
        }
    }

    /// The container's cgroup under its pod's: `<pod>/<id>` (cgroupfs
    /// driver) or `<pod>/cri-containerd-<id>.scope` (systemd driver).
    fn container_cgroup(&self, pod_cgroup: &str, id: &str) -> Option<CgroupSample> {
        if !safe_component(id) {
            return None;
        }
        let pod = pod_cgroup.trim_end_matches('/');
        [
            format!("{pod}/{id}"),
            format!("{pod}/cri-containerd-{id}.scope"),
        ]
        .into_iter()
        .find(|cg| self.host.cgroups.exists(cg))
        .and_then(|cg| self.read_cgroup(&cg))
    }

    fn container_stats(
        &self,
        ctx: &mut Ctx<'_>,
        pod: &PodPlan,
        c: &ContainerPlan,
    ) -> ContainerStats {
        let t = ctx.time();
        let cgroup = pod
            .cgroup
            .as_deref()
            .and_then(|cg| self.container_cgroup(cg, &c.id));
        let id = format!("container/{}", c.id);
        let mut out = ContainerStats {
            name: c.name.clone(),
            start_time: Time::from_nanos(c.created_at),
            ..Default::default()
        };
        match &c.cri {
            Some(stats) => {
                out.cpu = stats.cpu.as_ref().and_then(|u| {
                    let usage = u.usage_core_nano_seconds.as_ref()?.value;
                    let reported = u.usage_nano_cores.as_ref().map(|v| v.value);
                    let at = cri_time(u.timestamp, ctx.now).nanos();
                    Some(ctx.cpu(id.clone(), at, usage, reported))
                });
                out.memory = stats.memory.as_ref().map(|m| {
                    let v = |x: &Option<api::UInt64Value>| x.as_ref().map(|v| v.value);
                    let mut mem = MemoryStats {
                        time: cri_time(m.timestamp, ctx.now),
                        available_bytes: v(&m.available_bytes),
                        usage_bytes: v(&m.usage_bytes),
                        working_set_bytes: v(&m.working_set_bytes),
                        rss_bytes: v(&m.rss_bytes),
                        page_faults: v(&m.page_faults),
                        major_page_faults: v(&m.major_page_faults),
                    };
                    // containerd 1.6 reports the working set alone; the
                    // kubelet fills the rest from cadvisor's cgroup reading.
                    if let Some(cg) = cgroup.as_ref().and_then(|s| s.memory.as_ref()) {
                        let fill = |field: &mut Option<u64>, from: Option<u64>| {
                            if field.is_none() {
                                *field = from;
                            }
                        };
                        fill(&mut mem.usage_bytes, Some(cg.usage));
                        fill(&mut mem.rss_bytes, cg.rss);
                        fill(&mut mem.page_faults, cg.page_faults);
                        fill(&mut mem.major_page_faults, cg.major_page_faults);
                        if let (None, Some(limit), Some(ws)) =
                            (mem.available_bytes, cg.limit, mem.working_set_bytes)
                        {
                            mem.available_bytes = Some(limit.saturating_sub(ws));
                        }
                    }
                    mem
                });
                out.rootfs = stats.writable_layer.as_ref().map(|u| ctx.cri_fs_stats(u));
            }
            None => {
                if let Some(s) = &cgroup {
                    out.cpu = s.cpu_usage_ns.map(|ns| ctx.cpu(id, ctx.now, ns, None));
                    out.memory = s.memory.as_ref().map(|m| memory_stats(t, m));
                }
            }
        }
        out.logs = pod
            .log_dir
            .as_ref()
            .filter(|_| safe_component(&c.name))
            .and_then(|dir| ctx.dir_stats(&dir.join(&c.name)));
        out
    }
}

/// The sampler's id for the node's CPU counter.
const NODE_ID: &str = "node";

/// The kubelet's `calcEphemeralStorage`: the root filesystem's size, and the
/// sum of the containers' writable layers and logs, the pod's local
/// ephemeral volumes and its hosts file.
fn ephemeral_storage(
    time: Time,
    root_fs: &FsInfo,
    containers: &[ContainerStats],
    volumes: &[(VolumeStats, bool)],
    etc_hosts_bytes: Option<u64>,
) -> FsStats {
    let mut out = FsStats {
        time,
        ..Default::default()
    };
    fill_capacity(&mut out, root_fs);
    for c in containers {
        for fs in [&c.rootfs, &c.logs].into_iter().flatten() {
            add(&mut out.used_bytes, fs.used_bytes);
            add(&mut out.inodes_used, fs.inodes_used);
        }
    }
    for (v, ephemeral) in volumes {
        if *ephemeral {
            add(&mut out.used_bytes, v.fs.used_bytes);
            add(&mut out.inodes_used, v.fs.inodes_used);
        }
    }
    if let Some(bytes) = etc_hosts_bytes {
        add(&mut out.used_bytes, Some(bytes));
        add(&mut out.inodes_used, Some(1));
    }
    out
}

#[cfg(test)]
mod tests;
