//! The kubelet's prober metrics, served at `/metrics/probes`:
//! `prober_probe_total{probe_type,result,container,pod,namespace,pod_uid}` and
//! `prober_probe_duration_seconds{probe_type,container,pod,namespace}`.
//! A worker's series are removed when it stops, as upstream's are.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::probe_results::{ProbeResult, ProbeType};

/// The labels of one probe worker.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ProbeLabels {
    probe_type: &'static str,
    container: String,
    pod: String,
    namespace: String,
    pod_uid: String,
}

impl ProbeLabels {
    pub fn new(pod: &Pod, container: &str, t: ProbeType) -> Self {
        ProbeLabels {
            probe_type: t.as_str(),
            container: container.to_string(),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TotalLabels {
    probe_type: &'static str,
    result: &'static str,
    container: String,
    pod: String,
    namespace: String,
    pod_uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    probe_type: &'static str,
    container: String,
    pod: String,
    namespace: String,
}

const RESULTS: [ProbeResult; 3] = [
    ProbeResult::Success,
    ProbeResult::Failure,
    ProbeResult::Unknown,
];

fn duration_histogram() -> Histogram {
    // The kubelet's buckets (prometheus DefBuckets-like, 5 ms … 10 s).
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// One worker's handles on its series (they share the registry's values).
#[derive(Clone, Debug)]
pub struct ProbeSeries {
    successful: Counter,
    failed: Counter,
    unknown: Counter,
    duration: Histogram,
}

impl ProbeSeries {
    /// One probe ran with `result` in `took`.
    pub fn observe(&self, result: ProbeResult, took: Duration) {
        match result {
            ProbeResult::Success => self.successful.inc(),
            ProbeResult::Failure => self.failed.inc(),
            ProbeResult::Unknown => self.unknown.inc(),
        };
        // Upstream observes the duration of probes that ran (not errored).
        if result != ProbeResult::Unknown {
            self.duration.observe(took.as_secs_f64());
        }
    }
}

/// The prober's metrics and their registry.
pub struct ProbeMetrics {
    registry: Registry,
    total: Family<TotalLabels, Counter>,
    duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
}

impl Default for ProbeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProbeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let total = Family::<TotalLabels, Counter>::default();
        let duration = Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "prober_probe",
            "Cumulative number of a liveness, readiness or startup probe for a container by result.",
            total.clone(),
        );
        registry.register(
            "prober_probe_duration_seconds",
            "Duration in seconds for a probe response.",
            duration.clone(),
        );
        ProbeMetrics {
            registry,
            total,
            duration,
        }
    }

    fn total_labels(l: &ProbeLabels, result: ProbeResult) -> TotalLabels {
        TotalLabels {
            probe_type: l.probe_type,
            result: result.metric_label(),
            container: l.container.clone(),
            pod: l.pod.clone(),
            namespace: l.namespace.clone(),
            pod_uid: l.pod_uid.clone(),
        }
    }

    fn duration_labels(l: &ProbeLabels) -> DurationLabels {
        DurationLabels {
            probe_type: l.probe_type,
            container: l.container.clone(),
            pod: l.pod.clone(),
            namespace: l.namespace.clone(),
        }
    }

    /// The series of one probe worker, looked up once: a probe then only
    /// touches atomics (no label hashing or allocation per probe).
    pub fn series(&self, l: &ProbeLabels) -> ProbeSeries {
        let total = |r| self.total.get_or_create(&Self::total_labels(l, r)).clone();
        ProbeSeries {
            successful: total(ProbeResult::Success),
            failed: total(ProbeResult::Failure),
            unknown: total(ProbeResult::Unknown),
            duration: self
                .duration
                .get_or_create(&Self::duration_labels(l))
                .clone(),
        }
    }

    /// A worker stopped: its series go.
    pub fn forget(&self, l: &ProbeLabels) {
        for r in RESULTS {
            self.total.remove(&Self::total_labels(l, r));
        }
        self.duration.remove(&Self::duration_labels(l));
    }

    /// The text exposition (OpenMetrics, as `/metrics`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding probe metrics failed");
        }
        out
    }
}
