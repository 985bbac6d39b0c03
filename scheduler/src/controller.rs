//! The scheduler loop against an API server: watches Nodes and Pods, keeps a
//! [`ClusterSnapshot`] current, and binds pending pods one at a time from a
//! [`SchedulingQueue`].
//!
//! As in kube-scheduler, the scheduling cycle (choose a node, assume the pod
//! on it) runs on one task in order; the binding cycle (the `pods/binding`
//! POST and the `Scheduled` event) runs concurrently, bounded by
//! [`RunConfig::max_in_flight_binds`]. A failed binding forgets the assumed
//! pod and backs it off. A pod no node fits gets `PodScheduled=False`
//! (`Unschedulable`, the `FitError` message) on its status, a
//! `FailedScheduling` event, and a retry after its backoff or when a node is
//! added or changes in a way that matters, or a bound pod goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    Binding, Event, EventSource, Node, ObjectReference, Pod, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Client, ResourceExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::queue::SchedulingQueue;
use crate::{ClusterSnapshot, ScheduleError, Scheduler, SchedulerConfig, pod_key};

/// The default `spec.schedulerName`.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// Settings of [`run`].
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Pods with this `spec.schedulerName` (unset means
    /// `default-scheduler`) are ours.
    pub scheduler_name: String,
    /// The scheduling algorithm's settings.
    pub scheduler: SchedulerConfig,
    /// Binding cycles running at once.
    pub max_in_flight_binds: usize,
    /// First backoff of an unschedulable pod; doubles per attempt.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Whether to post `Scheduled` / `FailedScheduling` events.
    pub post_events: bool,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            scheduler_name: DEFAULT_SCHEDULER_NAME.to_owned(),
            scheduler: SchedulerConfig::default(),
            max_in_flight_binds: 16,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            post_events: true,
        }
    }
}

/// What a binding cycle reports back.
struct BindOutcome {
    key: String,
    node: String,
    result: Result<(), kube::Error>,
}

/// The loop's state: the snapshot, the objects it came from, the queue.
struct State {
    config: RunConfig,
    snapshot: ClusterSnapshot,
    algorithm: Scheduler,
    nodes: HashMap<String, Node>,
    pods: HashMap<String, Pod>,
    queue: SchedulingQueue,
    binds_in_flight: usize,
    node_relist: Option<Vec<Node>>,
    pod_relist: Option<Vec<Pod>>,
    nodes_synced: bool,
    pods_synced: bool,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Whether a bound pod holds resources on its node.
fn occupies(pod: &Pod) -> bool {
    bound_node(pod).is_some() && !is_terminal(pod)
}

/// Node fields the filters look at (upstream's
/// `nodeSchedulingPropertiesChange`): a change re-queues waiting pods.
fn scheduling_properties_changed(old: &Node, new: &Node) -> bool {
    let spec = |n: &Node| {
        n.spec
            .as_ref()
            .map(|s| (s.unschedulable, s.taints.clone()))
            .unwrap_or_default()
    };
    let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    old.metadata.labels != new.metadata.labels || spec(old) != spec(new) || alloc(old) != alloc(new)
}

impl State {
    fn new(config: RunConfig) -> State {
        State {
            algorithm: Scheduler::new(config.scheduler.clone()),
            queue: SchedulingQueue::new(config.initial_backoff, config.max_backoff),
            config,
            snapshot: ClusterSnapshot::new(),
            nodes: HashMap::new(),
            pods: HashMap::new(),
            binds_in_flight: 0,
            node_relist: None,
            pod_relist: None,
            nodes_synced: false,
            pods_synced: false,
        }
    }

    /// Whether the pod is ours and waiting for a node.
    fn wants_scheduling(&self, pod: &Pod) -> bool {
        let spec = match pod.spec.as_ref() {
            Some(s) => s,
            None => return false,
        };
        bound_node(pod).is_none()
            && spec
                .scheduler_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(DEFAULT_SCHEDULER_NAME)
                == self.config.scheduler_name
            && !is_terminal(pod)
            && pod.metadata.deletion_timestamp.is_none()
    }

    fn cluster_changed(&mut self, why: &str) {
        let moved = self.queue.move_all_to_active();
        if moved > 0 {
            debug!(
                moved,
                event = why,
                "moving waiting pods to the active queue"
            );
        }
    }

    fn node_applied(&mut self, node: Node) {
        let name = node.name_any();
        self.snapshot.update_node(&node);
        match self.nodes.insert(name, node) {
            None => self.cluster_changed("NodeAdd"),
            Some(old) => {
                let new = &self.nodes[&old.name_any()];
                if scheduling_properties_changed(&old, new) {
                    self.cluster_changed("NodeUpdate");
                }
            }
        }
    }

    fn node_deleted(&mut self, name: &str) {
        self.snapshot.remove_node(name);
        self.nodes.remove(name);
    }

    fn pod_applied(&mut self, pod: Pod) {
        let key = pod_key(&pod);
        let old_occupied = self.pods.get(&key).is_some_and(occupies);
        if bound_node(&pod).is_some() {
            // Bound (by us or anyone): the truth replaces an assumed pod.
            self.snapshot.add_pod(&pod);
            if !self.queue.in_flight(&key) {
                self.queue.remove(&key);
            }
            let now_occupied = occupies(&pod);
            self.pods.insert(key, pod);
            if old_occupied && !now_occupied {
                self.cluster_changed("AssignedPodFinished");
            }
            return;
        }
        if self.queue.in_flight(&key) {
            // Being bound: keep the assumed pod, just remember the object.
            self.pods.insert(key, pod);
            return;
        }
        if self.wants_scheduling(&pod) {
            let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_nanosecond());
            self.queue.add(&key, priority, created);
        } else {
            self.queue.remove(&key);
        }
        self.pods.insert(key, pod);
    }

    fn pod_deleted(&mut self, key: &str) {
        let was_bound = self.pods.remove(key).is_some_and(|p| occupies(&p));
        self.snapshot.remove_pod_by_key(key);
        if !self.queue.in_flight(key) {
            self.queue.remove(key);
        }
        if was_bound {
            self.cluster_changed("AssignedPodDelete");
        }
    }

    fn node_event(&mut self, ev: WatchEvent<Node>) {
        match ev {
            WatchEvent::Apply(n) => self.node_applied(n),
            WatchEvent::Delete(n) => self.node_deleted(&n.name_any()),
            WatchEvent::Init => self.node_relist = Some(Vec::new()),
            WatchEvent::InitApply(n) => match self.node_relist.as_mut() {
                Some(buf) => buf.push(n),
                None => self.node_applied(n),
            },
            WatchEvent::InitDone => {
                let listed = self.node_relist.take().unwrap_or_default();
                let keep: std::collections::HashSet<String> =
                    listed.iter().map(|n| n.name_any()).collect();
                let gone: Vec<String> = self
                    .nodes
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for name in gone {
                    self.node_deleted(&name);
                }
                for n in listed {
                    self.node_applied(n);
                }
                if !self.nodes_synced {
                    info!(nodes = self.nodes.len(), "nodes synced");
                }
                self.nodes_synced = true;
            }
        }
    }

    fn pod_event(&mut self, ev: WatchEvent<Pod>) {
        match ev {
            WatchEvent::Apply(p) => self.pod_applied(p),
            WatchEvent::Delete(p) => self.pod_deleted(&pod_key(&p)),
            WatchEvent::Init => self.pod_relist = Some(Vec::new()),
            WatchEvent::InitApply(p) => match self.pod_relist.as_mut() {
                Some(buf) => buf.push(p),
                None => self.pod_applied(p),
            },
            WatchEvent::InitDone => {
                let listed = self.pod_relist.take().unwrap_or_default();
                let keep: std::collections::HashSet<String> = listed.iter().map(pod_key).collect();
                let gone: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.pod_deleted(&key);
                }
                for p in listed {
                    self.pod_applied(p);
                }
                if !self.pods_synced {
                    let (active, _, _) = self.queue.lens();
                    info!(pods = self.pods.len(), pending = active, "pods synced");
                }
                self.pods_synced = true;
            }
        }
    }

    fn bind_done(&mut self, outcome: BindOutcome) {
        self.binds_in_flight -= 1;
        let BindOutcome { key, node, result } = outcome;
        let Err(err) = result else {
            self.queue.done(&key);
            return;
        };
        match self.pods.get(&key) {
            Some(pod) if bound_node(pod).is_some() => {
                // Bound by someone else meanwhile: the watch's word counts.
                let pod = pod.clone();
                self.snapshot.add_pod(&pod);
                self.queue.done(&key);
            }
            Some(pod) => {
                warn!(pod = %pod_name(pod), %node, error = %err, "binding failed; retrying");
                self.snapshot.remove_pod_by_key(&key);
                if self.wants_scheduling(pod) {
                    self.queue.backoff(&key, Instant::now());
                } else {
                    self.queue.done(&key);
                }
            }
            None => {
                self.snapshot.remove_pod_by_key(&key);
                self.queue.done(&key);
            }
        }
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Posts events without holding up the loop, a bounded number at once.
#[derive(Clone)]
struct Recorder {
    client: Client,
    component: String,
    limit: Arc<Semaphore>,
    enabled: bool,
    tasks: TaskTracker,
}

impl Recorder {
    fn record(&self, pod: &Pod, type_: &str, reason: &str, message: String) {
        if !self.enabled {
            return;
        }
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                // As client-go's recorder names events: `<object>.<unix nanos in hex>`
                // (a generateName ending in '.' is not a valid name prefix).
                name: Some(format!(
                    "{name}.{:x}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or_default()
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some("Scheduling".into()),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            ..Default::default()
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            let Ok(_permit) = this.limit.acquire().await else {
                return;
            };
            let api: Api<Event> = Api::namespaced(this.client.clone(), &ns);
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                debug!(error = %e, "posting event failed");
            }
        });
    }
}

/// Sets `PodScheduled=False` (`Unschedulable`, `message`) on the pod's status
/// unless it says that already.
fn patch_unschedulable(tasks: &TaskTracker, client: &Client, pod: &Pod, message: &str) {
    let conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let current = conditions.iter().find(|c| c.type_ == "PodScheduled");
    if current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    }) {
        return;
    }
    let transition = match current {
        Some(c) if c.status == "False" => c.last_transition_time.clone(),
        _ => None,
    }
    .unwrap_or(Time(Timestamp::now()));
    let mut list: Vec<PodCondition> = conditions
        .into_iter()
        .filter(|c| c.type_ != "PodScheduled")
        .collect();
    list.push(PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some(message.to_owned()),
        last_transition_time: Some(transition),
        ..Default::default()
    });
    let patch = serde_json::json!({"status": {"conditions": list}});
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let name = pod.metadata.name.clone().unwrap_or_default();
    tasks.spawn(async move {
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            debug!(pod = %name, error = %e, "updating PodScheduled failed");
        }
    });
}

fn bind(
    client: &Client,
    pod: &Pod,
    node: String,
    key: String,
    recorder: Recorder,
    done: mpsc::UnboundedSender<BindOutcome>,
) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pod.clone();
    let tasks = recorder.tasks.clone();
    tasks.spawn(async move {
        let result = api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
            .map(|_| ());
        if result.is_ok() {
            info!(pod = %format!("{ns}/{name}"), %node, "bound");
            recorder.record(
                &pod,
                "Normal",
                "Scheduled",
                format!("Successfully assigned {ns}/{name} to {node}"),
            );
        }
        let _ = done.send(BindOutcome { key, node, result });
    });
}

async fn next_event<K>(
    stream: &mut (impl Stream<Item = Result<WatchEvent<K>, watcher::Error>> + Unpin),
    what: &str,
) -> anyhow::Result<Option<WatchEvent<K>>> {
    match stream.next().await {
        Some(Ok(ev)) => Ok(Some(ev)),
        Some(Err(e)) => {
            warn!(resource = what, error = %e, "watch failed; retrying");
            Ok(None)
        }
        None => bail!("{what} watch ended"),
    }
}

/// Runs the scheduler until `cancel` fires, then waits (up to 10 s in all)
/// for bindings, status updates and events in flight.
pub async fn run(
    client: Client,
    config: RunConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let recorder = Recorder {
        client: client.clone(),
        component: config.scheduler_name.clone(),
        limit: Arc::new(Semaphore::new(config.max_in_flight_binds.max(1))),
        enabled: config.post_events,
        tasks: TaskTracker::new(),
    };
    let max_binds = config.max_in_flight_binds.max(1);
    let mut state = State::new(config);
    let mut nodes = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut pods = watcher::watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .boxed();
    let (bind_tx, mut bind_rx) = mpsc::unbounded_channel::<BindOutcome>();
    info!(scheduler_name = %state.config.scheduler_name, "scheduler starting");
    let mut scheduled = 0u64;
    let mut failed = 0u64;

    loop {
        state.queue.flush_backoff(Instant::now());
        let ready = state.nodes_synced
            && state.pods_synced
            && state.queue.has_active()
            && state.binds_in_flight < max_binds;
        let wake = state.queue.next_backoff();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            ev = next_event(&mut nodes, "nodes") => {
                if let Some(ev) = ev? { state.node_event(ev) }
            }
            ev = next_event(&mut pods, "pods") => {
                if let Some(ev) = ev? { state.pod_event(ev) }
            }
            Some(outcome) = bind_rx.recv() => state.bind_done(outcome),
            _ = std::future::ready(()), if ready => {
                schedule_one(&client, &mut state, &recorder, &bind_tx, &mut scheduled, &mut failed);
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
        }
    }

    info!(
        scheduled,
        failed,
        binds_in_flight = state.binds_in_flight,
        "scheduler stopping"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.binds_in_flight > 0 {
        match tokio::time::timeout_at(deadline, bind_rx.recv()).await {
            Ok(Some(outcome)) => state.bind_done(outcome),
            _ => break,
        }
    }
    // Status updates and events still being posted.
    recorder.tasks.close();
    if tokio::time::timeout_at(deadline, recorder.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left = recorder.tasks.len(),
            "gave up waiting for status updates and events"
        );
    }
    Ok(())
}

fn schedule_one(
    client: &Client,
    state: &mut State,
    recorder: &Recorder,
    bind_tx: &mpsc::UnboundedSender<BindOutcome>,
    scheduled: &mut u64,
    failed: &mut u64,
) {
    let Some(key) = state.queue.pop() else {
        return;
    };
    let Some(pod) = state.pods.get(&key).cloned() else {
        state.queue.done(&key);
        return;
    };
    if !state.wants_scheduling(&pod) {
        state.queue.done(&key);
        return;
    }
    match state
        .algorithm
        .schedule_and_assume(&mut state.snapshot, &pod)
    {
        Ok(node) => {
            *scheduled += 1;
            debug!(pod = %pod_name(&pod), %node, "assumed");
            state.binds_in_flight += 1;
            bind(client, &pod, node, key, recorder.clone(), bind_tx.clone());
        }
        Err(err) => {
            *failed += 1;
            let message = match &err {
                ScheduleError::Unschedulable { message, .. } => message.clone(),
                other => other.to_string(),
            };
            let wait = state.queue.backoff(&key, Instant::now());
            info!(
                pod = %pod_name(&pod),
                reason = %message,
                retry_in = ?wait,
                "unschedulable"
            );
            patch_unschedulable(&recorder.tasks, client, &pod, &message);
            recorder.record(&pod, "Warning", "FailedScheduling", message);
        }
    }
}

/// Loads a kubeconfig file into a client (ring as the TLS provider).
pub async fn client_from_kubeconfig(path: &std::path::Path) -> anyhow::Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("loading kubeconfig")?;
    Client::try_from(config).context("building client")
}
