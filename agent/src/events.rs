//! Events, as the kubelet records them (`Pulling`, `Pulled`, `Created`,
//! `Started`, `Killing`, `BackOff`, `Failed`, `SandboxChanged`,
//! `FailedCreatePodSandBox`, `FailedMount`…; reasons and messages from upstream
//! `pkg/kubelet/events` and its call sites).
//!
//! The runtime manager calls [`EventRecorder::record`], which never blocks and
//! never fails: every event is logged (`info` for Warning, `debug` for Normal),
//! and in cluster mode it is also queued on a bounded channel (full → dropped
//! and counted as `berth_events_total{outcome="queue_full"}`).
//!
//! [`run_sink`] drains that channel into the API server as core/v1 `Event`s,
//! with client-go's ideas ([`Correlator`]):
//! - the same (object, type, reason, message) within [`AGGREGATE_WINDOW`] is
//!   not a new Event: the existing one is patched (`count`, `lastTimestamp`);
//! - a per-object spam filter (token bucket, burst [`SPAM_BURST`], one more
//!   every [`SPAM_REFILL`]) drops floods;
//! - a write is tried a few times ([`ATTEMPTS`]), then dropped and counted: an
//!   absent API server never holds a pod sync up.
//!
//! Not done from client-go: the aggregator that folds >10 *similar* events
//! (same object and reason, different messages) into one "(combined from
//! similar events)" Event; and `Unhealthy`, which needs probes berth lacks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// `source.component` and `reportingComponent`.
pub const COMPONENT: &str = "kubelet";
/// How many events may wait for the API server.
pub const QUEUE_CAPACITY: usize = 1000;
/// A repeat of an event within this window patches the existing Event.
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// Spam filter: events one object may burst.
pub const SPAM_BURST: f64 = 25.0;
/// Spam filter: one more token per this period.
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Tries of one API write before the event is dropped.
pub const ATTEMPTS: u32 = 3;
/// Time limit of one API write.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Correlator entries kept (client-go's LRU size).
const MAX_ENTRIES: usize = 4096;

/// `Normal` or `Warning` (an Event's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The object an event is about: a pod, or one container of it (`fieldPath`),
/// or the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ObjectRef {
    /// The involved object's kind: `Pod` (empty) or `Node`.
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.containers{c}` / `spec.initContainers{c}`, or none for the pod.
    pub field_path: Option<String>,
}

/// What an [`ObjectRef`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ObjectKind {
    #[default]
    Pod,
    Node,
}

impl ObjectRef {
    /// The node, as the kubelet refers to it: kind Node, the node's name as
    /// its UID, its events in namespace `default`.
    pub fn node(name: &str) -> Self {
        Self {
            kind: ObjectKind::Node,
            namespace: "default".to_string(),
            name: name.to_string(),
            uid: name.to_string(),
            field_path: None,
        }
    }

    /// The pod itself. For a static pod this is the static pod (its UID), as upstream.
    pub fn pod(pod: &Pod) -> Self {
        Self {
            kind: ObjectKind::Pod,
            namespace: pod
                .metadata
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            field_path: None,
        }
    }

    /// A pod by its parts (e.g. from runtime labels once the spec is gone).
    pub fn from_parts(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            kind: ObjectKind::Pod,
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            field_path: None,
        }
    }

    /// Container `name` of this pod (the kubelet's `GenerateContainerRef`).
    pub fn container(&self, name: &str, init: bool) -> Self {
        let list = if init {
            "spec.initContainers"
        } else {
            "spec.containers"
        };
        Self {
            field_path: Some(format!("{list}{{{name}}}")),
            ..self.clone()
        }
    }
}

/// One recorded event, before it reaches the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub object: ObjectRef,
    pub type_: EventType,
    pub reason: String,
    pub message: String,
    pub timestamp: Timestamp,
}

/// The handle the runtime manager records events with: cheap to clone, never blocks.
#[derive(Clone, Default)]
pub struct EventRecorder {
    tx: Option<mpsc::Sender<Recorded>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("queued", &self.tx.is_some())
            .finish()
    }
}

impl EventRecorder {
    /// A recorder that only logs (standalone mode).
    pub fn log_only() -> Self {
        Self::default()
    }

    /// A recorder that also queues events (at most `capacity` waiting) for the
    /// returned receiver: [`run_sink`] in cluster mode, a test otherwise.
    pub fn channel(
        capacity: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> (Self, mpsc::Receiver<Recorded>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx: Some(tx),
                metrics,
            },
            rx,
        )
    }

    /// Record an event about `object`. Logged at once; queued for the API
    /// server when there is one, dropped (and counted) when its queue is full.
    pub fn record(
        &self,
        object: &ObjectRef,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let message = message.into();
        let pod = match object.kind {
            ObjectKind::Pod => format!("{}/{}", object.namespace, object.name),
            ObjectKind::Node => format!("node/{}", object.name),
        };
        let field_path = object.field_path.as_deref().unwrap_or("");
        match type_ {
            EventType::Warning => {
                tracing::info!(event_type = "Warning", reason, pod, field_path, message = %message, "event")
            }
            EventType::Normal => {
                tracing::debug!(event_type = "Normal", reason, pod, field_path, message = %message, "event")
            }
        }
        let Some(tx) = &self.tx else { return };
        let ev = Recorded {
            object: object.clone(),
            type_,
            reason: reason.to_string(),
            message,
            timestamp: Timestamp::now(),
        };
        if tx.try_send(ev).is_err()
            && let Some(m) = &self.metrics
        {
            m.observe_event("queue_full");
        }
    }
}

/// A token bucket (client-go's per-object spam filter).
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What was last sent for one (object, type, reason, message).
#[derive(Debug, Clone)]
struct Sent {
    name: String,
    count: i32,
    first: Timestamp,
    seen: Instant,
}

/// What to do with one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// POST a new Event.
    Create(Box<Event>),
    /// PATCH the existing Event `name` to `count` and `lastTimestamp`.
    Patch {
        namespace: String,
        name: String,
        count: i32,
        last: Timestamp,
    },
    /// Spam: drop it.
    Drop,
}

type Key = (ObjectRef, EventType, String, String);

/// client-go's EventCorrelator, reduced: spam filter and same-event
/// aggregation into a count.
#[derive(Debug)]
pub struct Correlator {
    node: String,
    buckets: HashMap<ObjectRef, Bucket>,
    sent: HashMap<Key, Sent>,
}

fn object_key(o: &ObjectRef) -> ObjectRef {
    // The spam filter is per object (pod), whatever its container.
    ObjectRef {
        field_path: None,
        ..o.clone()
    }
}

impl Correlator {
    /// A correlator for events reported by node `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            buckets: HashMap::new(),
            sent: HashMap::new(),
        }
    }

    /// Decide what to do with `ev` at `now`.
    pub fn observe(&mut self, ev: &Recorded, now: Instant) -> Action {
        let bucket = self
            .buckets
            .entry(object_key(&ev.object))
            .or_insert(Bucket {
                tokens: SPAM_BURST,
                at: now,
            });
        let refill =
            now.saturating_duration_since(bucket.at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(SPAM_BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Action::Drop;
        }
        bucket.tokens -= 1.0;

        let key: Key = (
            ev.object.clone(),
            ev.type_,
            ev.reason.clone(),
            ev.message.clone(),
        );
        if let Some(s) = self.sent.get(&key)
            && now.saturating_duration_since(s.seen) < AGGREGATE_WINDOW
        {
            return Action::Patch {
                namespace: ev.object.namespace.clone(),
                name: s.name.clone(),
                count: s.count + 1,
                last: ev.timestamp,
            };
        }
        Action::Create(Box::new(self.new_event(ev)))
    }

    /// The Event to create for `ev` (count 1, named `<pod>.<hex nanos>`).
    pub fn new_event(&self, ev: &Recorded) -> Event {
        let nanos = ev.timestamp.as_nanosecond();
        let o = &ev.object;
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", o.name, nanos)),
                namespace: Some(o.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some(
                    match o.kind {
                        ObjectKind::Pod => "Pod",
                        ObjectKind::Node => "Node",
                    }
                    .into(),
                ),
                name: Some(o.name.clone()),
                // A node is cluster-scoped: its reference has no namespace.
                namespace: Some(o.namespace.clone()).filter(|_| o.kind == ObjectKind::Pod),
                uid: Some(o.uid.clone()).filter(|u| !u.is_empty()),
                field_path: o.field_path.clone(),
                ..Default::default()
            },
            reason: Some(ev.reason.clone()),
            message: Some(ev.message.clone()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: Some(self.node.clone()),
            }),
            first_timestamp: Some(Time(ev.timestamp)),
            last_timestamp: Some(Time(ev.timestamp)),
            count: Some(1),
            type_: Some(ev.type_.as_str().into()),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        }
    }

    /// Remember that `ev` now stands as Event `name` with `count`.
    pub fn sent(&mut self, ev: &Recorded, name: &str, count: i32, now: Instant) {
        if self.sent.len() >= MAX_ENTRIES {
            self.sent
                .retain(|_, s| now.saturating_duration_since(s.seen) < AGGREGATE_WINDOW);
            if self.sent.len() >= MAX_ENTRIES {
                self.sent.clear();
            }
        }
        if self.buckets.len() >= MAX_ENTRIES {
            self.buckets.clear();
        }
        let key: Key = (
            ev.object.clone(),
            ev.type_,
            ev.reason.clone(),
            ev.message.clone(),
        );
        let first = self.sent.get(&key).map(|s| s.first).unwrap_or(ev.timestamp);
        self.sent.insert(
            key,
            Sent {
                name: name.to_string(),
                count,
                first,
                seen: now,
            },
        );
    }

    /// Forget `ev`'s Event (it was deleted on the server): the next one is created anew.
    pub fn forget(&mut self, ev: &Recorded) {
        let key: Key = (
            ev.object.clone(),
            ev.type_,
            ev.reason.clone(),
            ev.message.clone(),
        );
        self.sent.remove(&key);
    }
}

/// Post events from `rx` to the API server until `cancel` fires (or every
/// recorder is gone).
pub async fn run_sink(
    client: kube::Client,
    node: String,
    mut rx: mpsc::Receiver<Recorded>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut correlator = Correlator::new(&node);
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &ev.object.namespace);
        let outcome = match correlator.observe(&ev, Instant::now()) {
            Action::Drop => "spam",
            Action::Patch {
                name, count, last, ..
            } => {
                let body = serde_json::json!({
                    "count": count,
                    "lastTimestamp": Time(last),
                });
                let params = PatchParams::default();
                let patch = Patch::Merge(&body);
                match with_retries(&cancel, || api.patch(&name, &params, &patch)).await {
                    Ok(_) => {
                        correlator.sent(&ev, &name, count, Instant::now());
                        "patched"
                    }
                    Err(e) if crate::util::is_not_found(&e) => {
                        // Deleted on the server (TTL): start a new one.
                        correlator.forget(&ev);
                        create(&api, &mut correlator, &ev, &cancel).await
                    }
                    Err(e) => {
                        tracing::debug!(reason = %ev.reason, error = %e, "event patch failed; dropped");
                        "api_error"
                    }
                }
            }
            Action::Create(_) => create(&api, &mut correlator, &ev, &cancel).await,
        };
        metrics.observe_event(outcome);
    }
}

async fn create(
    api: &Api<Event>,
    correlator: &mut Correlator,
    ev: &Recorded,
    cancel: &CancellationToken,
) -> &'static str {
    let event = correlator.new_event(ev);
    let name = event.metadata.name.clone().unwrap_or_default();
    let params = PostParams::default();
    match with_retries(cancel, || api.create(&params, &event)).await {
        Ok(_) => {
            correlator.sent(ev, &name, 1, Instant::now());
            "created"
        }
        Err(e) => {
            tracing::debug!(reason = %ev.reason, error = %e, "event create failed; dropped");
            "api_error"
        }
    }
}

/// Run `call` up to [`ATTEMPTS`] times (each within a time limit) while the
/// error is not the server's final word (4xx other than 429).
async fn with_retries<T, F, Fut>(cancel: &CancellationToken, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let result = match tokio::time::timeout(CALL_TIMEOUT, call()).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "event write timed out",
            )))),
        };
        let final_answer = matches!(&result, Err(kube::Error::Api(s)) if s.code >= 400 && s.code < 500 && s.code != 429);
        if result.is_ok() || final_answer || attempt >= ATTEMPTS {
            return result;
        }
        attempt += 1;
        if !crate::util::sleep_or_cancel(cancel, wait).await {
            return result;
        }
        wait *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, message: &str) -> Recorded {
        Recorded {
            object: ObjectRef::from_parts("default", "web", "u1").container("c", false),
            type_: EventType::Warning,
            reason: reason.into(),
            message: message.into(),
            timestamp: Timestamp::now(),
        }
    }

    #[test]
    fn container_field_paths() {
        let p = ObjectRef::from_parts("ns", "p", "u");
        assert_eq!(
            p.container("c", false).field_path.as_deref(),
            Some("spec.containers{c}")
        );
        assert_eq!(
            p.container("i", true).field_path.as_deref(),
            Some("spec.initContainers{i}")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn same_event_is_patched_within_the_window_and_created_after() {
        let mut c = Correlator::new("node-a");
        let e = ev(
            "BackOff",
            "Back-off restarting failed container c in pod web_default(u1)",
        );
        let now = Instant::now();
        let Action::Create(first) = c.observe(&e, now) else {
            panic!("first is created")
        };
        assert_eq!(first.count, Some(1));
        assert_eq!(
            first.source.as_ref().unwrap().host.as_deref(),
            Some("node-a")
        );
        assert_eq!(
            first.involved_object.field_path.as_deref(),
            Some("spec.containers{c}")
        );
        assert!(first.metadata.name.as_deref().unwrap().starts_with("web."));
        let name = first.metadata.name.clone().unwrap();
        c.sent(&e, &name, 1, now);
        match c.observe(&e, now + Duration::from_secs(10)) {
            Action::Patch { name: n, count, .. } => {
                assert_eq!(n, name);
                assert_eq!(count, 2);
            }
            other => panic!("expected a patch, got {other:?}"),
        }
        // A different message is a different Event.
        assert!(matches!(
            c.observe(&ev("BackOff", "other"), now),
            Action::Create(_)
        ));
        // Past the window: a new Event.
        assert!(matches!(
            c.observe(&e, now + AGGREGATE_WINDOW + Duration::from_secs(1)),
            Action::Create(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn spam_filter_bursts_then_refills() {
        let mut c = Correlator::new("n");
        let now = Instant::now();
        for i in 0..25 {
            assert!(
                !matches!(c.observe(&ev("R", &format!("m{i}")), now), Action::Drop),
                "event {i} within the burst"
            );
        }
        assert_eq!(c.observe(&ev("R", "m25"), now), Action::Drop);
        // Another pod is not affected.
        let mut other = ev("R", "x");
        other.object.name = "other".into();
        assert!(!matches!(c.observe(&other, now), Action::Drop));
        // One token back after five minutes.
        let later = now + SPAM_REFILL;
        assert!(!matches!(c.observe(&ev("R", "m26"), later), Action::Drop));
        assert_eq!(c.observe(&ev("R", "m27"), later), Action::Drop);
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts() {
        let metrics = Arc::new(Metrics::new());
        let (rec, mut rx) = EventRecorder::channel(1, Some(metrics.clone()));
        let o = ObjectRef::from_parts("default", "p", "u");
        rec.record(&o, EventType::Normal, "A", "one");
        rec.record(&o, EventType::Normal, "B", "two");
        assert_eq!(rx.recv().await.unwrap().reason, "A");
        assert!(rx.try_recv().is_err());
        let text = metrics.encode(&[], 0);
        assert!(
            text.contains("berth_events_total{outcome=\"queue_full\"} 1"),
            "{text}"
        );
    }
}
