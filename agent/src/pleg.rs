//! The pod lifecycle event generator: relist the runtime every period, keep the
//! observed state of every pod, and wake the worker of each pod whose state
//! changed. Where the runtime streams container events (`GetContainerEvents`,
//! containerd 1.7+ and CRI-O), those wake workers at once and the relist stays
//! as the safety net; containerd 1.6 does not offer it, so relist alone drives.
//!
//! Status calls are made only for sandboxes and containers whose state changed
//! since the last relist, so a quiet node costs two List calls per period.
//!
//! On containerd 1.6 a container's exit reaches the cache from containerd's
//! own event stream (`runtime_events`, through the [`ExitSink`] this PLEG
//! installs): shown at once, tens of milliseconds before CRI reports it (the
//! CRI plugin deletes the task first). Until CRI agrees the PLEG relists
//! every [`CONFIRM_POLL`], so the worker, which acts only on what CRI says,
//! restarts the container as soon as CRI has caught up.
//!
//! While those events are followed, the periodic relist (the net for what
//! no event reports: a container removed behind the agent's back, an event
//! lost) runs every [`EVENTED_RELIST_PERIOD`] instead of every
//! `--relist-period`, as upstream's Evented PLEG relists every 300 s: at
//! 100 pods, decoding two full lists every second was the largest share of
//! the agent's idle CPU. The moment the stream ends or cannot be
//! subscribed the relist is poked and the period is `--relist-period` again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use berth_cri::{RuntimeClient, api};
use tokio_util::sync::CancellationToken;

use crate::Uid;
use crate::metrics::Metrics;
use crate::metrics::runtime_events::{ContainerExit, ExitSink};
use crate::observed::{self, ContainerState, ObservedPod, keys};

/// The kubelet's PLEG health threshold: no relist for this long is unhealthy.
pub const RELIST_THRESHOLD: Duration = Duration::from_secs(180);
/// How long an exit shown from containerd's event waits for CRI to agree
/// before it is dropped (and the relist's answer stands).
pub const EXIT_CONFIRM_BOUND: Duration = Duration::from_secs(2);
/// How often the PLEG relists while an exit shown from an event waits for CRI.
pub const CONFIRM_POLL: Duration = Duration::from_millis(10);
/// The relist period while containerd's task events are followed (never
/// shorter than `--relist-period`).
pub const EVENTED_RELIST_PERIOD: Duration = Duration::from_secs(5);

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
    /// Container exits containerd's event stream reported before CRI did,
    /// by pod. The relist stays the truth, but CRI lags the event: a relist
    /// that still sees the container running does not undo the exit; one that
    /// began after it and sees the container exited or gone supersedes it; if
    /// CRI never agrees it goes after [`EXIT_CONFIRM_BOUND`] (see
    /// [`RuntimeCache::store_relist`]).
    exits: RwLock<HashMap<Uid, Vec<EventExit>>>,
    /// Ready sandboxes whose (pause) task exited by containerd's event: not
    /// shown otherwise, but the PLEG relists often until CRI reports them
    /// not ready (or for [`EXIT_CONFIRM_BOUND`] at most), so the pod's worker
    /// is woken as soon as CRI agrees.
    sandbox_exits: RwLock<HashMap<String, Instant>>,
    health: RwLock<Health>,
}

/// An exit shown from containerd's event, and when it was shown.
#[derive(Debug, Clone)]
struct EventExit {
    at: Instant,
    exit: ContainerExit,
}

impl EventExit {
    /// Put this over `pod`: its container, still running (or created) there,
    /// shows exited. One CRI already reports exited is left as CRI has it
    /// (with its termination message).
    fn apply(&self, pod: &mut ObservedPod) {
        let Some(c) = pod
            .containers
            .iter_mut()
            .find(|c| c.id == self.exit.container_id)
        else {
            return;
        };
        if matches!(c.state, ContainerState::Running | ContainerState::Created) {
            c.state = ContainerState::Exited;
            c.exit_code = self.exit.exit_code;
            c.finished_at = self.exit.finished_at;
            c.reason = self.exit.reason().to_string();
            c.message = self.exit.message.clone();
        }
    }
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

    /// The observed state of pod `uid` (empty if the runtime holds nothing of
    /// it): the last relist, the workers' own calls since, and the exits
    /// containerd's events reported before CRI did. What `/pods` shows.
    pub fn get(&self, uid: &str) -> ObservedPod {
        let mut pod = self.confirmed(uid);
        let exits = self.exits.read().unwrap_or_else(|e| e.into_inner());
        if let Some(exits) = exits.get(uid) {
            exits.iter().for_each(|e| e.apply(&mut pod));
        }
        pod
    }

    /// Pod `uid` as CRI and the workers' own calls left it, without the exits
    /// only the event stream has reported. What the runtime manager builds on:
    /// a worker acts on what CRI says, so it never restarts a container CRI
    /// still calls running (nor reuses an event's exit in place of CRI's
    /// status with its termination message).
    pub fn confirmed(&self, uid: &str) -> ObservedPod {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        let mut pod = pods.get(uid).cloned().unwrap_or_else(|| ObservedPod {
            uid: uid.to_string(),
            ..Default::default()
        });
        drop(pods);
        let reflected = self.reflected.read().unwrap_or_else(|e| e.into_inner());
        if let Some(items) = reflected.get(uid) {
            items.iter().for_each(|r| r.apply(&mut pod));
            pod.sort_newest_first();
        }
        pod
    }

    /// Show container `exit.container_id` exited, as containerd's event said,
    /// until CRI agrees (or for [`EXIT_CONFIRM_BOUND`] at most). Returns the
    /// pod's UID, or `None` when the cache knows no such running container
    /// (one it never listed, or already exited: the relist judges).
    pub fn reflect_exit(&self, exit: &ContainerExit) -> Option<Uid> {
        let id = exit.container_id.as_str();
        let running = |c: &observed::ObservedContainer| {
            c.id == id && matches!(c.state, ContainerState::Running | ContainerState::Created)
        };
        let uid = {
            let reflected = self.reflected.read().unwrap_or_else(|e| e.into_inner());
            reflected.iter().find_map(|(uid, items)| {
                items
                    .iter()
                    .any(|r| matches!(&r.item, ReflectedItem::Container(c) if running(c)))
                    .then(|| uid.clone())
            })
        };
        let uid = uid.or_else(|| {
            let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
            pods.iter()
                .find(|(_, p)| p.containers.iter().any(running))
                .map(|(uid, _)| uid.clone())
        });
        let Some(uid) = uid else {
            if self.is_ready_sandbox(id) {
                self.sandbox_exits
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string(), Instant::now());
            }
            return None;
        };
        let mut exits = self.exits.write().unwrap_or_else(|e| e.into_inner());
        let items = exits.entry(uid.clone()).or_default();
        items.retain(|e| e.exit.container_id != id);
        items.push(EventExit {
            at: Instant::now(),
            exit: exit.clone(),
        });
        Some(uid)
    }

    /// True when sandbox `id` is cached ready.
    fn is_ready_sandbox(&self, id: &str) -> bool {
        let ready =
            |items: &[observed::ObservedSandbox]| items.iter().any(|s| s.id == id && s.ready);
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        if pods.values().any(|p| ready(&p.sandboxes)) {
            return true;
        }
        drop(pods);
        let reflected = self.reflected.read().unwrap_or_else(|e| e.into_inner());
        reflected
            .values()
            .flatten()
            .any(|r| matches!(&r.item, ReflectedItem::Sandbox(s) if s.id == id && s.ready))
    }

    /// True while an exit reported by an event waits for CRI to agree.
    pub fn exits_pending(&self) -> bool {
        !self
            .exits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            || !self
                .sandbox_exits
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
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
    ///
    /// An exit from an event is superseded only by a relist that began after
    /// it and sees the container exited or gone: CRI reports a killed
    /// container running for tens of milliseconds after its exit event, and
    /// such a relist must not show it running again. One CRI has not
    /// confirmed after [`EXIT_CONFIRM_BOUND`] goes (logged; then the relist's
    /// answer stands). Returns how many went so.
    fn store_relist(&self, pods: HashMap<Uid, ObservedPod>, began: Instant) -> usize {
        let mut cached = self.pods.write().unwrap_or_else(|e| e.into_inner());
        let mut reflected = self.reflected.write().unwrap_or_else(|e| e.into_inner());
        let mut exits = self.exits.write().unwrap_or_else(|e| e.into_inner());
        reflected.retain(|_, items| {
            items.retain(|r| r.at > began);
            !items.is_empty()
        });
        let mut unconfirmed = 0;
        exits.retain(|uid, items| {
            items.retain(|e| {
                let id = e.exit.container_id.as_str();
                let running = pods
                    .get(uid)
                    .and_then(|p| p.containers.iter().find(|c| c.id == id))
                    .is_some_and(|c| {
                        matches!(c.state, ContainerState::Running | ContainerState::Created)
                    });
                if e.at > began || !running {
                    // Not yet judged by this relist (it began before the
                    // event), or superseded by it: CRI agrees.
                    return e.at > began;
                }
                if e.at.elapsed() >= EXIT_CONFIRM_BOUND {
                    tracing::warn!(pod.uid = %uid, container.id = %id, bound = ?EXIT_CONFIRM_BOUND, "CRI still reports running a container whose exit containerd reported; showing what CRI says");
                    unconfirmed += 1;
                    return false;
                }
                true
            });
            !items.is_empty()
        });
        let mut sandbox_exits = self
            .sandbox_exits
            .write()
            .unwrap_or_else(|e| e.into_inner());
        sandbox_exits.retain(|id, at| {
            let ready = pods
                .values()
                .any(|p| p.sandboxes.iter().any(|s| s.id == *id && s.ready));
            *at > began || (ready && at.elapsed() < EXIT_CONFIRM_BOUND)
        });
        *cached = pods;
        unconfirmed
    }

    /// What a probe worker needs of the newest container `name` of pod `uid`
    /// (and the pod's IP), without copying the whole pod: probes ask every
    /// second, for every container.
    pub fn probe_view(&self, uid: &str, name: &str, init: bool) -> Option<ProbeView> {
        let reflected = self
            .reflected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(uid)
            || self
                .exits
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
    /// How long the last relist took.
    last_took: Duration,
}

impl Pleg {
    /// A PLEG over `client`, filling `cache`. Container exits read from
    /// containerd's events (`runtime_events`, given the same metrics handle)
    /// go to `cache` at once.
    pub fn new(client: RuntimeClient, cache: Arc<RuntimeCache>, metrics: Arc<Metrics>) -> Self {
        metrics.runtime_events.set_exit_sink(cache.clone());
        Self {
            client,
            cache,
            metrics,
            sandbox_status: HashMap::new(),
            container_status: HashMap::new(),
            last_took: Duration::ZERO,
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
            let unconfirmed = self.cache.store_relist(pods, started);
            for _ in 0..unconfirmed {
                self.metrics.runtime_events.inc("exit_unconfirmed");
            }
            changed
        };
        {
            let mut h = self.cache.health.write().unwrap_or_else(|e| e.into_inner());
            h.last_relist = Some(Instant::now());
            h.last_error = None;
        }
        self.last_took = started.elapsed();
        self.metrics.observe_relist(self.last_took);
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

    /// The wait between relists: `period`, or [`EVENTED_RELIST_PERIOD`] while
    /// containerd's task events are followed.
    fn period(&self, period: Duration) -> Duration {
        if self.metrics.runtime_events.following() {
            period.max(EVENTED_RELIST_PERIOD)
        } else {
            period
        }
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
            // An exit shown from an event waits for CRI: relist soon, so the
            // worker restarts the container as soon as CRI agrees. One loop
            // for however many exits; never busier than every other relist.
            let period = self.period(period);
            let wait = if self.cache.exits_pending() {
                CONFIRM_POLL.max(self.last_took).min(period)
            } else {
                period
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = poke.notified() => {}
            }
        }
    }
}

impl ExitSink for RuntimeCache {
    fn container_exited(&self, exit: &ContainerExit) -> bool {
        match self.reflect_exit(exit) {
            Some(uid) => {
                tracing::debug!(pod.uid = %uid, container.id = %exit.container_id, exit_code = exit.exit_code, reason = exit.reason(), "container exit shown from containerd's event");
                true
            }
            None => false,
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

#[cfg(test)]
mod tests {
    use berth_cri::fake::FakeRuntime;

    use super::*;
    use crate::runtime::sync::SyncOutcome;
    use crate::runtime::{RuntimeManager, Settings};
    use crate::source::SourcedPod;
    use crate::status::Transient;

    const IMAGE: &str = "localhost/berth/busybox:1.36";

    /// The fake CRI, a runtime manager and a PLEG sharing one cache, and a
    /// pod `web` (restartPolicy Always) its worker syncs.
    struct Env {
        fake: FakeRuntime,
        _dir: tempfile::TempDir,
        cache: Arc<RuntimeCache>,
        metrics: Arc<Metrics>,
        pleg: Pleg,
        manager: RuntimeManager,
        pod: SourcedPod,
        uid: Uid,
    }

    impl Env {
        async fn new() -> Self {
            let fake = FakeRuntime::start().await;
            fake.add_image(IMAGE);
            let dir = tempfile::tempdir().unwrap();
            let cache = RuntimeCache::new();
            let metrics = Arc::new(Metrics::new());
            let pleg = Pleg::new(fake.client().await, cache.clone(), metrics.clone());
            let manager = RuntimeManager::new(
                fake.client().await,
                Settings {
                    node_name: "node-a".into(),
                    node_ip: "192.0.2.10".into(),
                    root_dir: dir.path().join("root"),
                    pod_logs_dir: dir.path().join("logs"),
                    cgroup_root: "/berth-test-kubepods".into(),
                },
                metrics.clone(),
            )
            .with_cgroups(
                crate::cgroups::PodCgroups::new(
                    Arc::new(crate::cgroups::RecordingManager::default()),
                    "/berth-test-kubepods",
                )
                .unwrap(),
            )
            .with_runtime_cache(cache.clone());
            let yaml = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  restartPolicy: Always\n  containers:\n  - name: web\n    image: {IMAGE}\n"
            );
            let pod = crate::source::manifest::parse_manifest(
                &dir.path().join("web.yaml"),
                yaml.as_bytes(),
                "node-a",
            )
            .unwrap();
            let uid = pod.pod.metadata.uid.clone().unwrap();
            Self {
                fake,
                _dir: dir,
                cache,
                metrics,
                pleg,
                manager,
                pod,
                uid,
            }
        }

        /// One worker sync of the pod.
        async fn sync(&self) {
            let outcome = self
                .manager
                .sync_pod(&self.uid, Some(&self.pod), &mut Transient::default())
                .await
                .unwrap();
            assert!(matches!(outcome, SyncOutcome::Synced { .. }));
        }

        /// The pod running, relisted: its container's id.
        async fn running(&mut self) -> String {
            self.sync().await;
            self.pleg.relist().await.unwrap();
            let c = self.shown();
            assert_eq!(c.state, ContainerState::Running);
            c.id
        }

        /// The newest `web` container as `/pods` shows it.
        fn shown(&self) -> observed::ObservedContainer {
            self.cache
                .get(&self.uid)
                .latest_container("web", false)
                .cloned()
                .unwrap()
        }

        fn shown_by_id(&self, id: &str) -> observed::ObservedContainer {
            self.cache
                .get(&self.uid)
                .containers
                .into_iter()
                .find(|c| c.id == id)
                .unwrap()
        }
    }

    fn exit(id: &str, exit_code: i32, oom: bool) -> ContainerExit {
        ContainerExit {
            message: String::new(),
            container_id: id.to_string(),
            exit_code,
            finished_at: 1_700_000_000_000_000_000,
            oom,
        }
    }

    #[tokio::test]
    async fn the_relist_slows_only_while_events_are_followed() {
        let env = Env::new().await;
        let second = Duration::from_secs(1);
        assert_eq!(
            env.pleg.period(second),
            second,
            "relist alone: --relist-period"
        );
        env.metrics.runtime_events.set_following(true);
        assert_eq!(env.pleg.period(second), EVENTED_RELIST_PERIOD);
        // A longer --relist-period is kept.
        let minute = Duration::from_secs(60);
        assert_eq!(env.pleg.period(minute), minute);
        env.metrics.runtime_events.set_following(false);
        assert_eq!(
            env.pleg.period(second),
            second,
            "the stream gone: back at once"
        );
    }

    #[tokio::test]
    async fn a_relist_that_still_sees_the_container_running_does_not_undo_its_exit() {
        let mut env = Env::new().await;
        let id = env.running().await;

        // The event: shown exited at once, with the event's status and time.
        assert_eq!(
            env.cache.reflect_exit(&exit(&id, 137, false)),
            Some(env.uid.clone())
        );
        let c = env.shown();
        assert_eq!(
            (c.state, c.exit_code, c.finished_at, c.reason.as_str()),
            (
                ContainerState::Exited,
                137,
                1_700_000_000_000_000_000,
                "Error"
            )
        );
        assert_eq!(
            env.cache
                .confirmed(&env.uid)
                .latest_container("web", false)
                .map(|c| c.state),
            Some(ContainerState::Running),
            "what the worker builds on is CRI's word"
        );
        let probe = env.cache.probe_view(&env.uid, "web", false).unwrap();
        assert_eq!(probe.state, ContainerState::Exited);

        // CRI lags the event: relists that still read it running keep the exit.
        for _ in 0..3 {
            let changed = env.pleg.relist().await.unwrap();
            assert!(changed.is_empty());
            assert_eq!(env.shown().state, ContainerState::Exited);
            assert!(env.cache.exits_pending());
        }

        // CRI catches up: the relist supersedes the event's exit with its own.
        assert!(env.fake.exit_container(&id, 137));
        let changed = env.pleg.relist().await.unwrap();
        assert_eq!(changed, vec![env.uid.clone()], "the worker is woken");
        assert!(!env.cache.exits_pending());
        let c = env.shown_by_id(&id);
        assert_eq!((c.state, c.exit_code), (ContainerState::Exited, 137));
        assert_eq!(env.metrics.runtime_events.get("exit_unconfirmed"), 0);
    }

    #[tokio::test]
    async fn an_exit_of_a_container_gone_from_cri_is_superseded() {
        let mut env = Env::new().await;
        let id = env.running().await;
        env.cache.reflect_exit(&exit(&id, 0, false)).unwrap();
        assert_eq!(env.shown().reason, "Completed");
        env.manager
            .client
            .remove_container(berth_cri::api::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        env.pleg.relist().await.unwrap();
        assert!(!env.cache.exits_pending());
        assert!(
            env.cache
                .get(&env.uid)
                .containers
                .iter()
                .all(|c| c.id != id)
        );
    }

    #[tokio::test]
    async fn an_exit_cri_never_confirms_is_dropped_after_the_bound() {
        let mut env = Env::new().await;
        let id = env.running().await;
        env.cache.reflect_exit(&exit(&id, 137, false)).unwrap();
        env.pleg.relist().await.unwrap();
        assert_eq!(
            env.shown().state,
            ContainerState::Exited,
            "within the bound"
        );

        // As if the bound had passed since the event.
        for items in env.cache.exits.write().unwrap().values_mut() {
            for e in items.iter_mut() {
                e.at = Instant::now()
                    .checked_sub(EXIT_CONFIRM_BOUND + Duration::from_millis(1))
                    .unwrap();
            }
        }
        env.pleg.relist().await.unwrap();
        assert!(!env.cache.exits_pending());
        assert_eq!(
            env.shown().state,
            ContainerState::Running,
            "CRI's answer stands"
        );
        assert_eq!(env.metrics.runtime_events.get("exit_unconfirmed"), 1);
    }

    #[tokio::test]
    async fn an_oom_exit_is_oom_killed_and_an_unknown_or_exited_container_is_not_shown() {
        let mut env = Env::new().await;
        let id = env.running().await;
        assert_eq!(env.cache.reflect_exit(&exit("not-listed", 1, false)), None);
        env.cache.reflect_exit(&exit(&id, 137, true)).unwrap();
        assert_eq!(env.shown().reason, "OOMKilled");

        // Once CRI reports the exit, a late event changes nothing.
        assert!(env.fake.exit_container(&id, 137));
        env.pleg.relist().await.unwrap();
        assert_eq!(env.cache.reflect_exit(&exit(&id, 1, false)), None);
        assert!(!env.cache.exits_pending());
    }

    #[tokio::test]
    async fn a_sandbox_exit_keeps_the_relist_polling_until_cri_agrees() {
        let mut env = Env::new().await;
        env.running().await;
        let sandbox = env.cache.get(&env.uid).sandboxes[0].id.clone();
        assert_eq!(env.cache.reflect_exit(&exit(&sandbox, 137, false)), None);
        assert!(env.cache.exits_pending());
        env.pleg.relist().await.unwrap();
        assert!(env.cache.exits_pending(), "CRI still reports it ready");
        assert!(env.fake.set_sandbox_not_ready(&sandbox));
        assert_eq!(env.pleg.relist().await.unwrap(), vec![env.uid.clone()]);
        assert!(!env.cache.exits_pending());
    }

    /// What the pod worker does with an exit CRI has not confirmed: nothing
    /// (it acts on CRI), so it never starts a second container beside one
    /// CRI calls running, nor stops the one it restarted; once CRI agrees,
    /// exactly one restart.
    #[tokio::test]
    async fn a_restart_policy_always_container_is_restarted_exactly_once() {
        let mut env = Env::new().await;
        let id = env.running().await;
        env.fake.clear_calls();

        env.cache.reflect_exit(&exit(&id, 137, false)).unwrap();
        // The worker woken while CRI still says running.
        env.sync().await;
        env.pleg.relist().await.unwrap();
        env.sync().await;
        assert_eq!(env.fake.call_count("CreateContainer"), 0);
        assert_eq!(env.fake.call_count("StopContainer"), 0);
        assert_eq!(env.shown().state, ContainerState::Exited);

        // CRI agrees: the relist wakes the worker, which restarts it once.
        assert!(env.fake.exit_container(&id, 137));
        assert_eq!(env.pleg.relist().await.unwrap(), vec![env.uid.clone()]);
        env.sync().await;
        let restarted = env.shown();
        assert_ne!(restarted.id, id);
        assert_eq!(
            (restarted.state, restarted.restart_count),
            (ContainerState::Running, 1)
        );

        // A late or repeated event for the old container, more relists and
        // syncs: no second restart, the new container left running.
        assert_eq!(env.cache.reflect_exit(&exit(&id, 137, false)), None);
        for _ in 0..3 {
            env.pleg.relist().await.unwrap();
            env.sync().await;
        }
        assert_eq!(env.fake.call_count("CreateContainer"), 1);
        assert_eq!(env.fake.call_count("StartContainer"), 1);
        assert_eq!(env.fake.call_count("StopContainer"), 0);
        let running: Vec<_> = env
            .fake
            .containers()
            .into_iter()
            .filter(|c| c.state == berth_cri::api::ContainerState::ContainerRunning)
            .map(|c| c.id)
            .collect();
        assert_eq!(running, vec![restarted.id.clone()]);
        assert_eq!(env.shown().id, restarted.id);
        assert_eq!(env.shown().state, ContainerState::Running);
    }
}
