//! `berth_runtime_events_total{kind}`: what the agent made of containerd's
//! event stream (`agent::runtime_events`), so a node whose exits are noticed
//! only by the relist shows it (no `task_exit`, `stream_error` growing).
//!
//! The same handle also carries the one piece of wiring between the event
//! subscriber and the PLEG: the [`ExitSink`] the PLEG installs, to which the
//! subscriber hands every container exit. Both are given this handle by the
//! agent, and this module sits below both (a lower module never imports a
//! higher one), so neither needs to know the other.

use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Every `kind` the counter has, present from the start as zeros.
pub const KINDS: [&str; 8] = [
    // A container's own task exited: the relist was woken.
    "task_exit",
    // A container ran out of memory (its exit follows as `task_exit`).
    "task_oom",
    // An exec'd process (an exec probe, `kubectl exec`) exited: not the container.
    "exec_exit_ignored",
    // Another namespace's task, or an envelope that did not decode.
    "other_ignored",
    // The subscription was made (first and after every reconnect).
    "subscribed",
    // The stream ended or failed, or subscribing failed: reconnecting with back-off.
    "stream_error",
    // A container's exit was shown at once, before CRI reported it.
    "exit_reflected",
    // An exit shown from the event that CRI did not confirm within the bound:
    // dropped, the relist's answer stands.
    "exit_unconfirmed",
];

/// A container's exit as containerd's `/tasks/exit` (and an earlier
/// `/tasks/oom`) reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    pub container_id: String,
    /// The exit status as CRI reports it (`exit_status`; 137 after SIGKILL).
    pub exit_code: i32,
    /// Nanoseconds since the epoch (`exited_at`).
    pub finished_at: i64,
    /// The container's cgroup ran out of memory during its life.
    pub oom: bool,
    /// The termination message, read as the relist would (the
    /// termination-message file; see `runtime_events`).
    pub message: String,
}

impl ContainerExit {
    /// The reason CRI (containerd's `toCRIContainerStatus`) gives such an
    /// exit, and the kubelet shows: `OOMKilled`, `Completed` or `Error`.
    pub fn reason(&self) -> &'static str {
        if self.oom {
            "OOMKilled"
        } else if self.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// Where the event subscriber hands container exits (the PLEG's cache).
pub trait ExitSink: Send + Sync {
    /// Show `exit` at once; false when the container is not one the sink knows
    /// running (the relist then judges alone).
    fn container_exited(&self, exit: &ContainerExit) -> bool;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The counter family, shared with the registry, and the exit sink.
#[derive(Clone, Default)]
pub struct RuntimeEventMetrics {
    events: Family<KindLabels, Counter>,
    sink: Arc<RwLock<Option<Arc<dyn ExitSink>>>>,
    /// True while the subscriber has a live subscription (see
    /// [`following`](Self::following)).
    following: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for RuntimeEventMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeEventMetrics")
            .field("events", &self.events)
            .field("sink", &self.exit_sink().is_some())
            .finish()
    }
}

impl RuntimeEventMetrics {
    /// Register in `registry` (prometheus-client appends `_total`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "berth_runtime_events",
            "Cumulative number of containerd events and event-stream outcomes, by kind",
            m.events.clone(),
        );
        for kind in KINDS {
            drop(m.events.get_or_create(&KindLabels { kind }));
        }
        m
    }

    /// Count one of [`KINDS`].
    pub fn inc(&self, kind: &'static str) {
        self.events.get_or_create(&KindLabels { kind }).inc();
    }

    /// The current count of `kind` (tests).
    pub fn get(&self, kind: &'static str) -> u64 {
        self.events.get_or_create(&KindLabels { kind }).get()
    }

    /// Hand every container exit the subscriber reads to `sink` (the newest
    /// installed wins).
    pub fn set_exit_sink(&self, sink: Arc<dyn ExitSink>) {
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// The installed exit sink, if any.
    pub fn exit_sink(&self) -> Option<Arc<dyn ExitSink>> {
        self.sink.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Say whether containerd's task events are followed: a subscription
    /// in flight or streaming (set by the subscriber).
    pub fn set_following(&self, following: bool) {
        self.following
            .store(following, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether exits reach the agent as events now (the PLEG then relists
    /// less often: upstream's Evented PLEG does the same).
    pub fn following(&self) -> bool {
        self.following.load(std::sync::atomic::Ordering::Relaxed)
    }
}
