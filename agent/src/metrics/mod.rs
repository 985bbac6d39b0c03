//! The agent's Prometheus metrics, named after the kubelet's where one exists
//! (`kubelet_running_pods` → `berth_running_pods`, …).
//!
//! Observations on the hot path (a CRI call, a pod sync, a relist) touch atomics
//! and, for labelled metrics, a read-locked map keyed by `&'static str` labels:
//! no allocation once a label set has been seen. Gauges that describe the
//! desired state (pods by phase, manifest errors) are set at scrape time by
//! [`Metrics::encode`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::status::phase;

pub mod probes;
pub mod runtime_events;

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text, which
/// prometheus-client produces and Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    operation: &'static str,
    code: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn cri_histogram() -> Histogram {
    // The kubelet's runtime_operations_duration_seconds buckets: 5ms … ~5h.
    Histogram::new(exponential_buckets(0.005, 2.5, 14))
}

fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.5, 14))
}

/// Every metric the agent exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    running_pods: Gauge,
    pods: Family<PhaseLabels, Gauge>,
    pod_sync_duration: HistogramFamily<ResultLabels>,
    cri_duration: HistogramFamily<OperationLabels>,
    cri_errors: Family<ErrorLabels, Counter>,
    relist_duration: Histogram,
    relist_last_seen: Gauge<f64, AtomicU64>,
    manifest_errors: Gauge<i64, AtomicI64>,
    image_pulls: Family<ResultLabels, Counter>,
    events: Family<OutcomeLabels, Counter>,
    /// Serialises scrapes: the scrape-time gauges are reset and set, then encoded.
    scrape: Mutex<()>,
    /// The prober's metrics, served apart at `/metrics/probes` as the kubelet's.
    pub probes: std::sync::Arc<probes::ProbeMetrics>,
    /// containerd's event stream (`berth_runtime_events_total{kind}`).
    pub runtime_events: runtime_events::RuntimeEventMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn result_label(ok: bool) -> ResultLabels {
    ResultLabels {
        result: if ok { "ok" } else { "error" },
    }
}

impl Metrics {
    /// A registry with every metric registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let running_pods = Gauge::default();
        registry.register(
            "berth_running_pods",
            "Number of pods that have a running pod sandbox",
            running_pods.clone(),
        );
        let pods = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "berth_pods",
            "Number of desired pods, by status phase",
            pods.clone(),
        );
        let pod_sync_duration: HistogramFamily<ResultLabels> =
            Family::new_with_constructor(sync_histogram);
        registry.register(
            "berth_pod_sync_duration_seconds",
            "Duration in seconds to sync a single pod, by result",
            pod_sync_duration.clone(),
        );
        let cri_duration: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(cri_histogram);
        registry.register(
            "berth_cri_operations_duration_seconds",
            "Duration in seconds of CRI operations, by operation",
            cri_duration.clone(),
        );
        let cri_errors = Family::<ErrorLabels, Counter>::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "berth_cri_operations_errors",
            "Cumulative number of CRI operation errors, by operation and gRPC code",
            cri_errors.clone(),
        );
        let relist_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "berth_pleg_relist_duration_seconds",
            "Duration in seconds for relisting pods in PLEG",
            relist_duration.clone(),
        );
        let relist_last_seen = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "berth_pleg_last_seen_seconds",
            "Timestamp in seconds when PLEG was last seen active",
            relist_last_seen.clone(),
        );
        let manifest_errors = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "berth_manifest_errors",
            "Number of pod manifests rejected in the latest reading of the manifest directory",
            manifest_errors.clone(),
        );
        let image_pulls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "berth_image_pulls",
            "Cumulative number of image pulls, by result",
            image_pulls.clone(),
        );
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "berth_events",
            "Cumulative number of Events, by outcome (created, patched, or dropped: queue_full, spam, api_error)",
            events.clone(),
        );
        let runtime_events = runtime_events::RuntimeEventMetrics::register(&mut registry);
        // Series that exist from the start, so dashboards see zeros, not gaps.
        for ok in [true, false] {
            drop(pod_sync_duration.get_or_create(&result_label(ok)));
            drop(image_pulls.get_or_create(&result_label(ok)));
        }
        Self {
            registry,
            running_pods,
            pods,
            pod_sync_duration,
            cri_duration,
            cri_errors,
            relist_duration,
            relist_last_seen,
            manifest_errors,
            image_pulls,
            events,
            scrape: Mutex::new(()),
            probes: Default::default(),
            runtime_events,
        }
    }

    /// Record one pod sync and whether it succeeded.
    pub fn observe_sync(&self, elapsed: Duration, ok: bool) {
        self.pod_sync_duration
            .get_or_create(&result_label(ok))
            .observe(elapsed.as_secs_f64());
    }

    /// Record one PLEG relist, and now as the time PLEG was last seen.
    pub fn observe_relist(&self, elapsed: Duration) {
        self.relist_duration.observe(elapsed.as_secs_f64());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.relist_last_seen.set(now.as_secs_f64());
    }

    /// Record one image pull and whether it succeeded.
    pub fn observe_pull(&self, ok: bool) {
        self.image_pulls.get_or_create(&result_label(ok)).inc();
    }

    /// Count one Event by what became of it (`created`, `patched`, `queue_full`,
    /// `spam`, `api_error`).
    pub fn observe_event(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Set the number of pods with a running (ready) sandbox, e.g. after a relist.
    pub fn set_running_pods(&self, n: i64) {
        self.running_pods.set(n);
    }

    /// The exposition text (see [`CONTENT_TYPE`]), with the scrape-time gauges
    /// set from `pods_by_phase` (every phase not given reports 0) and
    /// `manifest_errors`.
    pub fn encode(&self, pods_by_phase: &[(&str, i64)], manifest_errors: i64) -> String {
        let _guard = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.pods.clear();
        for p in phase::ALL {
            self.pods
                .get_or_create(&PhaseLabels {
                    phase: p.to_string(),
                })
                .set(0);
        }
        for (p, n) in pods_by_phase {
            self.pods
                .get_or_create(&PhaseLabels {
                    phase: (*p).to_string(),
                })
                .inc_by(*n);
        }
        self.manifest_errors.set(manifest_errors);
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String does not fail; an encoder error would be a bug.
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

impl berth_cri::CallObserver for Metrics {
    fn observe(&self, method: &'static str, elapsed: Duration, code: Option<tonic::Code>) {
        self.cri_duration
            .get_or_create(&OperationLabels { operation: method })
            .observe(elapsed.as_secs_f64());
        if let Some(code) = code {
            self.cri_errors
                .get_or_create(&ErrorLabels {
                    operation: method,
                    code: code_name(code),
                })
                .inc();
        }
    }
}

/// A gRPC code as its canonical name (`DeadlineExceeded`, `Unavailable`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cri::CallObserver;

    #[test]
    fn encodes_every_metric() {
        let m = Metrics::new();
        m.observe_sync(Duration::from_millis(20), true);
        m.observe_sync(Duration::from_millis(20), false);
        m.observe_relist(Duration::from_millis(3));
        m.observe_pull(true);
        m.observe_pull(false);
        m.observe_pull(false);
        m.set_running_pods(2);
        m.observe("RunPodSandbox", Duration::from_millis(40), None);
        m.observe(
            "RunPodSandbox",
            Duration::from_millis(40),
            Some(tonic::Code::Unavailable),
        );
        let text = m.encode(&[("Running", 2), ("Pending", 1)], 3);
        for line in [
            "berth_running_pods 2",
            "berth_pods{phase=\"Running\"} 2",
            "berth_pods{phase=\"Pending\"} 1",
            "berth_pods{phase=\"Failed\"} 0",
            "berth_pod_sync_duration_seconds_count{result=\"ok\"} 1",
            "berth_pod_sync_duration_seconds_count{result=\"error\"} 1",
            "berth_cri_operations_duration_seconds_count{operation=\"RunPodSandbox\"} 2",
            "berth_cri_operations_errors_total{operation=\"RunPodSandbox\",code=\"Unavailable\"} 1",
            "berth_pleg_relist_duration_seconds_count 1",
            "berth_manifest_errors 3",
            "berth_image_pulls_total{result=\"ok\"} 1",
            "berth_image_pulls_total{result=\"error\"} 2",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let last_seen = text
            .lines()
            .find_map(|l| l.strip_prefix("berth_pleg_last_seen_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("last seen");
        assert!(last_seen > 1.7e9, "{last_seen}");
    }

    #[test]
    fn scrape_time_gauges_are_replaced() {
        let m = Metrics::new();
        m.encode(&[("Running", 5)], 1);
        let text = m.encode(&[("Pending", 1)], 0);
        assert!(text.contains("berth_pods{phase=\"Running\"} 0"), "{text}");
        assert!(text.contains("berth_pods{phase=\"Pending\"} 1"), "{text}");
        assert!(text.contains("berth_manifest_errors 0"), "{text}");
    }
}
