//! `berth_runtime_events_total{kind}`: what the agent made of containerd's
//! event stream (`agent::runtime_events`), so a node whose exits are noticed
//! only by the relist shows it (no `task_exit`, `stream_error` growing).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Every `kind` the counter has, present from the start as zeros.
pub const KINDS: [&str; 6] = [
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
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The counter family, shared with the registry.
#[derive(Debug, Clone, Default)]
pub struct RuntimeEventMetrics {
    events: Family<KindLabels, Counter>,
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
}
