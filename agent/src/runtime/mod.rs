//! The runtime manager: compares a desired pod with what the runtime holds for
//! it and does only what differs, over CRI (the kubelet's kuberuntime manager).
//!
//! - [`inspect`]: read one pod's sandboxes and containers from the runtime.
//! - [`sandbox`] / [`container`]: the CRI configs, shaped as the kubelet's.
//! - [`images`]: `imagePullPolicy` and pulls with back-off.
//! - [`security`]: seccomp and AppArmor profiles; pods the node refuses.
//! - [`sync`]: the per-pod reconcile (start, restart, replace, kill, clean up).

pub mod container;
pub mod downward;
pub mod hooks;
pub mod images;
pub mod inspect;
pub mod runtimeclass;
pub mod sandbox;
pub mod security;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;

use berth_cri::RuntimeClient;

use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// Node-level settings the runtime manager needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub node_ip: String,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    /// Parent of pod cgroups (cgroupfs driver), e.g. `/kubepods`.
    pub cgroup_root: String,
}

/// Drives the container runtime for every pod (shared by all pod workers).
pub struct RuntimeManager {
    pub client: RuntimeClient,
    pub settings: Settings,
    pub volumes: berth_plugins::VolumeManager,
    pub(crate) crash_backoff: Backoff,
    pub(crate) image_backoff: Backoff,
    pub(crate) metrics: Arc<Metrics>,
    /// Where the kubelet's events go (logged only, unless [`with_events`](Self::with_events)).
    pub(crate) events: crate::events::EventRecorder,
    /// ConfigMaps and Secrets of the pods (env and volumes).
    pub(crate) objects: Arc<crate::objects::ObjectStore>,
    /// Where a running postStart hook is shown to the status while the pod's
    /// sync waits for it (the pod workers' store, see [`with_transient_store`](Self::with_transient_store)).
    pub(crate) live: Arc<crate::status::TransientStore>,
    /// RuntimeClass names → CRI runtime handlers.
    pub(crate) runtime_classes: runtimeclass::RuntimeClasses,
    /// Whether the host enforces AppArmor (read once, at start).
    pub(crate) apparmor_enabled: bool,
    /// Pod and QoS cgroups (see [`with_cgroups`](Self::with_cgroups)).
    pub(crate) cgroups: crate::cgroups::PodCgroups,
    /// Where a sandbox this manager ran, or a container it started, is shown
    /// at once, before the next relist (see [`with_runtime_cache`](Self::with_runtime_cache)).
    pub(crate) runtime_cache: Option<Arc<crate::pleg::RuntimeCache>>,
}

impl RuntimeManager {
    /// A manager over `client` with the kubelet's back-off settings.
    pub fn new(client: RuntimeClient, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let settings_root = settings.cgroup_root.clone();
        let objects = Arc::new(crate::objects::ObjectStore::new());
        let volumes = berth_plugins::VolumeManager::with_api_objects(
            settings.root_dir.clone(),
            Arc::new(berth_plugins::SystemMounter),
            objects.clone(),
        );
        Self {
            client,
            settings,
            volumes,
            crash_backoff: Backoff::crash_loop(),
            image_backoff: Backoff::image_pull(),
            metrics,
            events: crate::events::EventRecorder::log_only(),
            objects,
            live: Arc::default(),
            runtime_classes: runtimeclass::RuntimeClasses::default(),
            apparmor_enabled: security::host_apparmor_enabled(),
            cgroups: default_cgroups(&settings_root),
            runtime_cache: None,
        }
    }

    /// As if the host did (or did not) enforce AppArmor (tests).
    pub fn with_apparmor_enabled(mut self, enabled: bool) -> Self {
        self.apparmor_enabled = enabled;
        self
    }

    /// Reflect this manager's own successful RunPodSandbox and StartContainer
    /// calls in `cache` (the one the status reads) at once; the next relist
    /// supersedes them. Without it, the status waits for that relist.
    pub fn with_runtime_cache(mut self, cache: Arc<crate::pleg::RuntimeCache>) -> Self {
        self.runtime_cache = Some(cache);
        self
    }

    /// Show running postStart hooks in `store` (the one the status reads).
    pub fn with_transient_store(mut self, store: Arc<crate::status::TransientStore>) -> Self {
        self.live = store;
        self
    }

    /// Fetch the ConfigMaps, Secrets and RuntimeClasses pods reference through `client`.
    pub fn with_api_client(self, client: kube::Client) -> Self {
        self.runtime_classes.set_client(client.clone());
        self.objects.set_client(client);
        self
    }

    /// Pod cgroups made and removed through `cgroups` (a recording fake in
    /// tests; by default the cgroupfs driver on this host's hierarchies).
    pub fn with_cgroups(mut self, cgroups: crate::cgroups::PodCgroups) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// `--cpu-cfs-quota` (CPU limits become a CFS quota, on containers and
    /// pod cgroups), `--pod-max-pids` (each pod cgroup's `pids.max`; -1
    /// unlimited) and the values of the cgroup root (`kubepods`: the node's
    /// allocatable, see [`crate::allocatable::node_cgroup_config`]).
    pub fn with_cgroup_limits(
        mut self,
        cpu_cfs_quota: bool,
        pod_pids_limit: i64,
        node: crate::cgroups::ResourceConfig,
    ) -> Self {
        self.cgroups.enforce_cpu_limits = cpu_cfs_quota;
        self.cgroups.pod_pids_limit = pod_pids_limit;
        self.cgroups.node_config = node;
        self
    }

    /// The pod and QoS cgroups.
    pub fn cgroups(&self) -> &crate::cgroups::PodCgroups {
        &self.cgroups
    }

    /// The node's own RuntimeClasses (name → CRI runtime handler).
    pub fn with_runtime_classes(
        mut self,
        local: std::collections::BTreeMap<String, String>,
    ) -> Self {
        self.runtime_classes = runtimeclass::RuntimeClasses::new(local);
        self
    }

    /// The ConfigMaps and Secrets as last fetched.
    pub fn objects(&self) -> &Arc<crate::objects::ObjectStore> {
        &self.objects
    }

    /// Record events with `events` (cluster mode, tests) instead of only logging them.
    pub fn with_events(mut self, events: crate::events::EventRecorder) -> Self {
        self.events = events;
        self
    }

    /// `<root-dir>/pods/<uid>`: the pod's own directory (volumes, termination messages, hosts file).
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.settings.root_dir.join("pods").join(uid)
    }

    /// `<pod-logs-dir>/<namespace>_<name>_<uid>`, as the kubelet lays it out.
    pub fn pod_log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.settings
            .pod_logs_dir
            .join(format!("{namespace}_{name}_{uid}"))
    }
}

/// The UID of a pod log directory `<namespace>_<name>_<uid>` (names and
/// namespaces are DNS labels or subdomains, never with `_`).
pub fn log_dir_uid(dir_name: &str) -> Option<&str> {
    let mut parts = dir_name.splitn(3, '_');
    let (Some(ns), Some(name), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    (!ns.is_empty() && !name.is_empty() && !uid.is_empty() && !uid.contains('_')).then_some(uid)
}

/// The pod log directories under `dir` whose UID is `uid`.
pub fn log_dirs_of(dir: &std::path::Path, uid: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_str().and_then(log_dir_uid) == Some(uid))
        .map(|e| e.path())
        .collect()
}

/// The cgroupfs driver on this host's hierarchies, under `root` (validated
/// with the configuration; an invalid root falls back to `/kubepods`).
fn default_cgroups(root: &str) -> crate::cgroups::PodCgroups {
    let manager: Arc<dyn crate::cgroups::CgroupManager> =
        Arc::new(crate::cgroups::FsManager::new(crate::cgroups::detect_mode()));
    crate::cgroups::PodCgroups::new(manager.clone(), root).unwrap_or_else(|e| {
        tracing::error!(cgroup_root = root, error = %e, "invalid cgroup root; using /kubepods");
        crate::cgroups::PodCgroups::new(manager, "/kubepods")
            .expect("/kubepods is a valid cgroup name")
    })
}

/// Errors of one pod sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A CRI call failed (the CRI error names its method already: `op` is
    /// not said twice).
    #[error("{}", runtime_message(op, source))]
    Runtime {
        op: String,
        #[source]
        source: berth_cri::Error,
    },
    /// Setting up or tearing down the pod's volumes or directories failed.
    #[error("{op}: {source}")]
    Volume {
        op: String,
        #[source]
        source: berth_plugins::Error,
    },
    /// The pod's RuntimeClass has no handler here (the message is the API's).
    #[error("{message}")]
    RuntimeClass { message: String },
    /// The pod's cgroup could not be made (the kubelet's
    /// `FailedToCreatePodContainer`).
    #[error("unable to ensure pod container exists: {source}")]
    PodCgroup {
        #[source]
        source: crate::cgroups::CgroupError,
    },
    /// A filesystem operation on the pod's directories failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn runtime_message(op: &str, source: &berth_cri::Error) -> String {
    let message = source.to_string();
    match message.strip_prefix(op) {
        Some(rest) if rest.starts_with(':') => message,
        _ => format!("{op}: {message}"),
    }
}

impl SyncError {
    /// True when the runtime could not be reached (the sync will be retried when it is back).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SyncError::Runtime { source, .. } if source.is_unreachable())
    }
}

/// `Result` of a pod sync.
pub type Result<T, E = SyncError> = std::result::Result<T, E>;

/// Treat "not found" as done: removing or stopping what is already gone succeeds.
pub(crate) fn ignore_not_found<T: Default>(r: berth_cri::Result<T>) -> berth_cri::Result<T> {
    match r {
        Err(e) if e.is_not_found() => Ok(T::default()),
        other => other,
    }
}

/// Wrap a CRI error with the operation it failed in.
pub(crate) fn cri(op: impl Into<String>) -> impl FnOnce(berth_cri::Error) -> SyncError {
    let op = op.into();
    move |source| SyncError::Runtime { op, source }
}
