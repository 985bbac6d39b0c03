//! The pod lifecycle event generator: relist the runtime every period, keep the
//! observed state of every pod, and wake the worker of each pod whose state
//! changed. Where the runtime streams container events (`GetContainerEvents`,
//! containerd 1.7+ and CRI-O), those wake workers at once and the relist stays
//! as the safety net; containerd 1.6 does not offer it, so relist alone drives.
//!
//! Status calls are made only for sandboxes and containers whose state changed
//! since the last relist, so a quiet node costs two List calls per period.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use berth_cri::{RuntimeClient, api};
use tokio_util::sync::CancellationToken;

use crate::Uid;
use crate::metrics::Metrics;
use crate::observed::{self, ObservedPod, keys};

/// The kubelet's PLEG health threshold: no relist for this long is unhealthy.
pub const RELIST_THRESHOLD: Duration = Duration::from_secs(180);

#[derive(Debug, Default)]
struct Health {
    last_relist: Option<Instant>,
    last_error: Option<String>,
    runtime: Option<api::VersionResponse>,
}

/// One container as a probe worker sees it (see [`RuntimeCache::probe_view`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeView {
    pub id: String,
    pub state: crate::observed::ContainerState,
    /// Nanoseconds since the epoch (0 when unknown).
    pub started_at: i64,
    /// The pod's IP (its ready sandbox's first), empty when none.
    pub pod_ip: String,
}

/// The observed state of every pod, as of the last relist, overlaid with
/// what the pod workers' own successful calls made since that relist began.
#[derive(Debug, Default)]
pub struct RuntimeCache {
    pods: RwLock<HashMap<Uid, ObservedPod>>,
    /// What a worker's own RunPodSandbox or StartContainer just did, shown at
    /// once instead of after the next relist. The relist stays the truth: each
    /// entry goes when a relist that began after it is stored (see
    /// [`Pleg::relist`]), so it never outlives the runtime's own answer.
    reflected: RwLock<HashMap<Uid, Vec<Reflected>>>,
    health: RwLock<Health>,
}

/// A sandbox or container as a worker's own call left it, and when.
#[derive(Debug, Clone)]
struct Reflected {
    at: Instant,
    item: ReflectedItem,
}

#[derive(Debug, Clone)]
enum ReflectedItem {
    Sandbox(observed::ObservedSandbox),
    Container(observed::ObservedContainer),
}

impl Reflected {
    /// Put this over `pod`: it replaces the entry with its id, or is added.
    fn apply(&self, pod: &mut ObservedPod) {
        match &self.item {
            ReflectedItem::Sandbox(s) => match pod.sandboxes.iter_mut().find(|o| o.id == s.id) {
                Some(o) => *o = s.clone(),
                None => pod.sandboxes.push(s.clone()),
            },
            ReflectedItem::Container(c) => match pod.containers.iter_mut().find(|o| o.id == c.id) {
                Some(o) => *o = c.clone(),
                None => pod.containers.push(c.clone()),
            },
        }
    }
}

impl RuntimeCache {
    /// A fresh, empty cache.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The observed state of pod `uid` (empty if the runtime holds nothing of it).
    pub fn get(&self, uid: &str) -> ObservedPod {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        let mut pod = pods.get(uid).cloned().unwrap_or_else(|| ObservedPod {
            uid: uid.to_string(),
            ..Default::default()
        });
        let reflected = self.reflected.read().unwrap_or_else(|e| e.into_inner());
        if let Some(items) = reflected.get(uid) {
            items.iter().for_each(|r| r.apply(&mut pod));
            pod.sort_newest_first();
        }
        pod
    }

    /// Show sandbox `s` as a worker's own RunPodSandbox (and PodSandboxStatus)
    /// left it, until the next relist that begins after now.
    pub fn reflect_sandbox(&self, s: observed::ObservedSandbox) {
        self.reflect(s.uid.clone(), ReflectedItem::Sandbox(s));
    }

    /// Show container `c` of pod `uid` as a worker's own CreateContainer and
    /// StartContainer left it, until the next relist that begins after now.
    pub fn reflect_container(&self, uid: &str, c: observed::ObservedContainer) {
        self.reflect(uid.to_string(), ReflectedItem::Container(c));
    }

    fn reflect(&self, uid: Uid, item: ReflectedItem) {
        let mut reflected = self.reflected.write().unwrap_or_else(|e| e.into_inner());
        let items = reflected.entry(uid).or_default();
        let id = |i: &ReflectedItem| match i {
            ReflectedItem::Sandbox(s) => s.id.clone(),
            ReflectedItem::Container(c) => c.id.clone(),
        };
        // The newest word on an object replaces an older one.
        let new_id = id(&item);
        items.retain(|r| id(&r.item) != new_id);
        items.push(Reflected {
            at: Instant::now(),
            item,
        });
    }

    /// Store a relist that began at `began`: it replaces the pods, and drops
    /// every reflection it supersedes (those made before it began; a later one
    /// may be newer than what the relist read, so it stays until the next).
    fn store_relist(&self, pods: HashMap<Uid, ObservedPod>, began: Instant) {
        let mut cached = self.pods.write().unwrap_or_else(|e| e.into_inner());
        let mut reflected = self.reflected.write().unwrap_or_else(|e| e.into_inner());
        reflected.retain(|_, items| {
            items.retain(|r| r.at > began);
            !items.is_empty()
        });
        *cached = pods;
    }

    /// What a probe worker needs of the newest container `name` of pod `uid`
    /// (and the pod's IP), without copying the whole pod: probes ask every
    /// second, for every container.
    pub fn probe_view(&self, uid: &str, name: &str, init: bool) -> Option<ProbeView> {
        let reflected = self
            .reflected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(uid);
        if reflected {
            // Rare and short-lived: the merged copy.
            let pod = self.get(uid);
            return Self::view(&pod, name, init);
        }
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        Self::view(pods.get(uid)?, name, init)
    }

    fn view(pod: &ObservedPod, name: &str, init: bool) -> Option<ProbeView> {
        let c = pod.latest_container(name, init)?;
        Some(ProbeView {
            id: c.id.clone(),
            state: c.state,
            started_at: c.started_at,
            pod_ip: pod
                .ready_sandbox()
                .and_then(|s| s.ips.first().cloned())
                .unwrap_or_default(),
        })
    }

    /// UIDs of every pod the runtime holds something of.
    pub fn uids(&self) -> Vec<Uid> {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        let reflected = self.reflected.read().unwrap_or_else(|e| e.into_inner());
        let mut uids: Vec<Uid> = pods.keys().cloned().collect();
        uids.extend(reflected.keys().filter(|u| !pods.contains_key(*u)).cloned());
        uids
    }

    /// `Ok` when the runtime answered the last relist and relists keep coming;
    /// otherwise why not.
    pub fn health(&self) -> Result<(), String> {
        let h = self.health.read().unwrap_or_else(|e| e.into_inner());
        if let Some(err) = &h.last_error {
            return Err(format!("container runtime is unreachable: {err}"));
        }
        match h.last_relist {
            None => Err("container runtime not reached yet".to_string()),
            Some(at) if at.elapsed() > RELIST_THRESHOLD => Err(format!(
                "PLEG is not healthy: pleg was last seen active {}s ago; threshold is {}s",
                at.elapsed().as_secs(),
                RELIST_THRESHOLD.as_secs()
            )),
            Some(_) => Ok(()),
        }
    }

    /// The runtime's name and version, once reached.
    pub fn runtime_version(&self) -> Option<api::VersionResponse> {
        let h = self.health.read().unwrap_or_else(|e| e.into_inner());
        h.runtime.clone()
    }

    /// Record the runtime's version (after a successful Version call).
    pub fn set_runtime_version(&self, v: api::VersionResponse) {
        let mut h = self.health.write().unwrap_or_else(|e| e.into_inner());
        h.runtime = Some(v);
    }

    /// Record that the runtime could not be reached.
    pub fn set_error(&self, err: String) {
        let mut h = self.health.write().unwrap_or_else(|e| e.into_inner());
        h.last_error = Some(err);
    }
}

/// Relists the runtime and announces pods whose observed state changed.
pub struct Pleg {
    client: RuntimeClient,
    cache: Arc<RuntimeCache>,
    metrics: Arc<Metrics>,
    /// Status calls are cached by id and state: only a change asks again.
    sandbox_status: HashMap<String, (i32, Option<api::PodSandboxStatus>)>,
    container_status: HashMap<String, (i32, Option<api::ContainerStatus>)>,
}

impl Pleg {
    /// A PLEG over `client`, filling `cache`.
    pub fn new(client: RuntimeClient, cache: Arc<RuntimeCache>, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            cache,
            metrics,
            sandbox_status: HashMap::new(),
            container_status: HashMap::new(),
        }
    }

    /// One relist: returns the UIDs whose observed state changed, or why the
    /// runtime could not be listed (the cache then keeps the last known state).
    pub async fn relist(&mut self) -> Result<Vec<Uid>, berth_cri::Error> {
        let started = Instant::now();
        let sandboxes = self
            .client
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await?
            .items;
        let containers = self
            .client
            .list_containers(api::ListContainersRequest { filter: None })
            .await?
            .containers;

        let mut pods: HashMap<Uid, ObservedPod> = HashMap::new();
        let mut live: HashSet<String> = HashSet::new();
        for sb in &sandboxes {
            if !sb.labels.contains_key(keys::POD_UID) {
                continue;
            }
            live.insert(sb.id.clone());
            let status = self.sandbox_status_cached(sb).await?;
            if let Some(o) = observed::sandbox_from_cri(sb, status.as_ref()) {
                pods.entry(o.uid.clone())
                    .or_insert_with(|| ObservedPod {
                        uid: o.uid.clone(),
                        ..Default::default()
                    })
                    .sandboxes
                    .push(o);
            }
        }
        for c in &containers {
            let Some(uid) = c.labels.get(keys::POD_UID).cloned() else {
                continue;
            };
            live.insert(c.id.clone());
            let status = self.container_status_cached(c).await?;
            if let Some(o) = observed::container_from_cri(c, status.as_ref()) {
                pods.entry(uid.clone())
                    .or_insert_with(|| ObservedPod {
                        uid,
                        ..Default::default()
                    })
                    .containers
                    .push(o);
            }
        }
        self.sandbox_status.retain(|id, _| live.contains(id));
        self.container_status.retain(|id, _| live.contains(id));
        pods.values_mut().for_each(ObservedPod::sort_newest_first);

        let running = pods
            .values()
            .filter(|p| p.ready_sandbox().is_some())
            .count();
        self.metrics.set_running_pods(running as i64);
        let changed = {
            let cached = self.cache.pods.read().unwrap_or_else(|e| e.into_inner());
            let mut changed: Vec<Uid> = pods
                .iter()
                .filter(|(uid, pod)| cached.get(*uid) != Some(*pod))
                .map(|(uid, _)| uid.clone())
                .collect();
            changed.extend(
                cached
                    .keys()
                    .filter(|uid| !pods.contains_key(*uid))
                    .cloned(),
            );
            drop(cached);
            self.cache.store_relist(pods, started);
            changed
        };
        {
            let mut h = self.cache.health.write().unwrap_or_else(|e| e.into_inner());
            h.last_relist = Some(Instant::now());
            h.last_error = None;
        }
        self.metrics.observe_relist(started.elapsed());
        Ok(changed)
    }

    async fn sandbox_status_cached(
        &mut self,
        sb: &api::PodSandbox,
    ) -> Result<Option<api::PodSandboxStatus>, berth_cri::Error> {
        if let Some((state, status)) = self.sandbox_status.get(&sb.id)
            && *state == sb.state
        {
            return Ok(status.clone());
        }
        let status = match self
            .client
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: sb.id.clone(),
                verbose: false,
            })
            .await
        {
            Ok(r) => r.status,
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        self.sandbox_status
            .insert(sb.id.clone(), (sb.state, status.clone()));
        Ok(status)
    }

    async fn container_status_cached(
        &mut self,
        c: &api::Container,
    ) -> Result<Option<api::ContainerStatus>, berth_cri::Error> {
        if let Some((state, status)) = self.container_status.get(&c.id)
            && *state == c.state
        {
            return Ok(status.clone());
        }
        let status = match self
            .client
            .container_status(api::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: false,
            })
            .await
        {
            Ok(r) => r.status.map(|mut s| {
                observed::fill_termination_message(&mut s);
                s
            }),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        self.container_status
            .insert(c.id.clone(), (c.state, status.clone()));
        Ok(status)
    }

    /// Relist every `period` (or at once when `poke` fires) until cancelled,
    /// calling `on_change` with every UID whose state changed. When the runtime
    /// comes back after an outage, every known pod is announced.
    pub async fn run(
        mut self,
        period: Duration,
        poke: Arc<tokio::sync::Notify>,
        cancel: CancellationToken,
        on_change: impl Fn(Uid),
    ) {
        let mut was_down = false;
        loop {
            match self.relist().await {
                Ok(changed) => {
                    if was_down {
                        tracing::info!("container runtime is reachable again; resyncing every pod");
                        for uid in self.cache.uids() {
                            on_change(uid);
                        }
                        was_down = false;
                    }
                    for uid in changed {
                        on_change(uid);
                    }
                }
                Err(e) => {
                    if !was_down {
                        tracing::error!(error = %e, "relist failed; keeping the last known state");
                    }
                    was_down = true;
                    self.cache.set_error(e.to_string());
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = poke.notified() => {}
            }
        }
    }
}

/// Follow the runtime's container event stream, where it has one, calling
/// `on_event` with the pod UID of every event. Returns when the runtime does
/// not implement it or on cancel. containerd 1.6 does not; there
/// the `runtime_events` module follows containerd's own `/tasks/exit` events and
/// wakes `Pleg::run` through its poke.
pub async fn watch_container_events(
    client: RuntimeClient,
    cancel: CancellationToken,
    on_event: impl Fn(Uid),
) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            s = client.get_container_events() => s,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) if e.is_unimplemented() => {
                tracing::info!(
                    "runtime does not stream container events (GetContainerEvents); relist alone notices changes"
                );
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "container event stream unavailable; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        };
        tracing::info!("following the runtime's container events");
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(ev)) => {
                    let uid = ev
                        .pod_sandbox_status
                        .as_ref()
                        .and_then(|s| s.metadata.as_ref())
                        .map(|m| m.uid.clone())
                        .filter(|u| !u.is_empty());
                    if let Some(uid) = uid {
                        on_event(uid);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}
