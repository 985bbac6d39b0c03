//! The kubelet's `/metrics/resource` endpoint
//! (`pkg/kubelet/metrics/collectors/resource_metrics.go`): CPU and memory of
//! the node, pods and containers, from a [`Summary`].
//!
//! Written by hand rather than with `prometheus-client`, which the agent's
//! `/metrics` uses: that crate encodes OpenMetrics only (`# EOF`, counters
//! named without `_total` in `# TYPE`) and cannot put a timestamp on a sample,
//! while this endpoint is the Prometheus text format 0.0.4 with the time of
//! each reading in milliseconds after the value, which metrics-server and
//! Prometheus scrape configs for the kubelet rely on. The text follows
//! client_golang's encoder: families sorted by name, samples by label values,
//! label names sorted, values as Go's `strconv.FormatFloat(v, 'g', -1, 64)`,
//! and `[STABLE]` before each help text, as component-base writes it.

use std::fmt::Write as _;

use super::summary::{CpuStats, MemoryStats, Summary, Time};

/// The content type of [`resource_metrics`]' text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const NS_PER_SEC: f64 = 1e9;

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One sample: label pairs (names in sorted order), value, optional time.
struct Sample {
    labels: Vec<(&'static str, String)>,
    value: f64,
    timestamp_ms: Option<i64>,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64, time: Option<Time>) {
        self.samples.push(Sample {
            labels,
            value,
            timestamp_ms: time.map(|t| t.nanos().div_euclid(1_000_000)),
        });
    }

    fn encode(mut self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        self.samples.sort_by(|a, b| {
            a.labels
                .iter()
                .map(|(_, v)| v)
                .cmp(b.labels.iter().map(|(_, v)| v))
        });
        // client_golang refuses a scrape with two samples of one label set;
        // keep the first instead.
        self.samples.dedup_by(|a, b| a.labels == b.labels);
        let _ = writeln!(out, "# HELP {} [STABLE] {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        for s in &self.samples {
            out.push_str(self.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{name}=\"{}\"", escape_label(value));
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&go_float(s.value));
            if let Some(ms) = s.timestamp_ms {
                let _ = write!(out, " {ms}");
            }
            out.push('\n');
        }
    }
}

/// A label value as the text format escapes it.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `v` as Go's `strconv.FormatFloat(v, 'g', -1, 64)`: the shortest digits
/// that read back as `v`, in exponent form (at least two exponent digits)
/// when the decimal exponent is below -4 or at least 6 (`1e+06`,
/// `1.6243962483020916e+09`, `1e-05`), plain otherwise (`1000`, `0.25`).
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip form too: "1.6243962483020916e9".
    let sci = format!("{v:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return format!("{v}");
    };
    let Ok(exp) = exp.parse::<i32>() else {
        return format!("{v}");
    };
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    } else {
        format!("{v}")
    }
}

fn cpu_seconds(cpu: Option<&CpuStats>) -> Option<(f64, Time)> {
    let cpu = cpu?;
    let seconds = cpu.usage_core_nano_seconds? as f64 / NS_PER_SEC;
    Some((seconds, cpu.time))
}

fn working_set(memory: Option<&MemoryStats>) -> Option<(f64, Time)> {
    let memory = memory?;
    let bytes = memory.working_set_bytes? as f64;
    Some((bytes, memory.time))
}

/// The kubelet's `/metrics/resource` text for `summary` (with
/// `resource_scrape_error 0`).
pub fn resource_metrics(summary: &Summary) -> String {
    let mut container_cpu = Family::new(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the container in core-seconds",
        Kind::Counter,
    );
    let mut container_memory = Family::new(
        "container_memory_working_set_bytes",
        "Current working set of the container in bytes",
        Kind::Gauge,
    );
    let mut container_start = Family::new(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds",
        Kind::Gauge,
    );
    let mut node_cpu = Family::new(
        "node_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the node in core-seconds",
        Kind::Counter,
    );
    let mut node_memory = Family::new(
        "node_memory_working_set_bytes",
        "Current working set of the node in bytes",
        Kind::Gauge,
    );
    let mut pod_cpu = Family::new(
        "pod_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the pod in core-seconds",
        Kind::Counter,
    );
    let mut pod_memory = Family::new(
        "pod_memory_working_set_bytes",
        "Current working set of the pod in bytes",
        Kind::Gauge,
    );

    if let Some((v, t)) = cpu_seconds(summary.node.cpu.as_ref()) {
        node_cpu.push(vec![], v, Some(t));
    }
    if let Some((v, t)) = working_set(summary.node.memory.as_ref()) {
        node_memory.push(vec![], v, Some(t));
    }
    for pod in &summary.pods {
        let ns = &pod.pod_ref.namespace;
        let name = &pod.pod_ref.name;
        for c in &pod.containers {
            let labels = || {
                vec![
                    ("container", c.name.clone()),
                    ("namespace", ns.clone()),
                    ("pod", name.clone()),
                ]
            };
            // Upstream skips a start time at or before the epoch.
            if c.start_time.nanos() >= 1_000_000_000 {
                let start = c.start_time.nanos() as f64 / NS_PER_SEC;
                container_start.push(labels(), start, None);
            }
            if let Some((v, t)) = cpu_seconds(c.cpu.as_ref()) {
                container_cpu.push(labels(), v, Some(t));
            }
            if let Some((v, t)) = working_set(c.memory.as_ref()) {
                container_memory.push(labels(), v, Some(t));
            }
        }
        let labels = || vec![("namespace", ns.clone()), ("pod", name.clone())];
        if let Some((v, t)) = cpu_seconds(pod.cpu.as_ref()) {
            pod_cpu.push(labels(), v, Some(t));
        }
        if let Some((v, t)) = working_set(pod.memory.as_ref()) {
            pod_memory.push(labels(), v, Some(t));
        }
    }

    let mut out = String::new();
    // In name order, as client_golang gathers them.
    for family in [
        container_cpu,
        container_memory,
        container_start,
        node_cpu,
        node_memory,
        pod_cpu,
        pod_memory,
    ] {
        family.encode(&mut out);
    }
    scrape_error(&mut out, false);
    out
}

/// The text when no summary could be had: `resource_scrape_error 1` alone,
/// as the kubelet answers then.
pub fn resource_scrape_failed() -> String {
    let mut out = String::new();
    scrape_error(&mut out, true);
    out
}

fn scrape_error(out: &mut String, failed: bool) {
    let mut family = Family::new(
        "resource_scrape_error",
        "1 if there was an error while getting container metrics, 0 otherwise",
        Kind::Gauge,
    );
    family.push(vec![], if failed { 1.0 } else { 0.0 }, None);
    family.encode(out);
}

#[cfg(test)]
mod tests {
    use super::super::summary::*;
    use super::*;

    /// The upstream test's timestamp: 2021-06-23 05:11:18.302091597 +0800.
    const T: i64 = 1_624_396_278_302_091_597;

    #[test]
    fn floats_print_as_go_prints_them() {
        assert_eq!(go_float(10.0), "10");
        assert_eq!(go_float(1000.0), "1000");
        assert_eq!(go_float(123_456.0), "123456");
        assert_eq!(go_float(1_000_000.0), "1e+06");
        assert_eq!(go_float(15_728_640.0), "1.572864e+07");
        assert_eq!(
            go_float(1.624_396_248_302_091_6e9),
            "1.6243962483020916e+09"
        );
        assert_eq!(go_float(0.25), "0.25");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(-2.5), "-2.5");
        assert_eq!(go_float(f64::NAN), "NaN");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
    }

    #[test]
    fn one_container_gives_the_kubelets_lines() {
        let t = Time::from_nanos(T);
        let summary = Summary {
            node: NodeStats {
                node_name: "node-a".into(),
                cpu: Some(CpuStats {
                    time: t,
                    usage_core_nano_seconds: Some(10_000_000_000),
                    usage_nano_cores: None,
                }),
                memory: Some(MemoryStats {
                    time: t,
                    working_set_bytes: Some(1000),
                    ..Default::default()
                }),
                ..Default::default()
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "pod_a".into(),
                    namespace: "namespace_a".into(),
                    uid: "u".into(),
                },
                containers: vec![ContainerStats {
                    name: "container_a".into(),
                    start_time: Time::from_nanos(T - 30_000_000_000),
                    cpu: Some(CpuStats {
                        time: t,
                        usage_core_nano_seconds: Some(10_000_000_000),
                        usage_nano_cores: Some(1),
                    }),
                    memory: Some(MemoryStats {
                        time: t,
                        working_set_bytes: Some(1000),
                        usage_bytes: Some(2000),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                cpu: Some(CpuStats {
                    time: t,
                    usage_core_nano_seconds: Some(10_000_000_000),
                    usage_nano_cores: None,
                }),
                memory: Some(MemoryStats {
                    time: t,
                    working_set_bytes: Some(15_728_640),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        let want = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="container_a",namespace="namespace_a",pod="pod_a"} 10 1624396278302
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="container_a",namespace="namespace_a",pod="pod_a"} 1000 1624396278302
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="container_a",namespace="namespace_a",pod="pod_a"} 1.6243962483020916e+09
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 10 1624396278302
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1000 1624396278302
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace="namespace_a",pod="pod_a"} 10 1624396278302
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace="namespace_a",pod="pod_a"} 1.572864e+07 1624396278302
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
"#;
        assert_eq!(resource_metrics(&summary), want);
    }

    #[test]
    fn samples_sort_by_labels_missing_values_are_left_out_and_labels_escaped() {
        let t = Time::from_nanos(T);
        let container = |name: &str, cpu: Option<u64>| ContainerStats {
            name: name.into(),
            start_time: Time::default(),
            cpu: Some(CpuStats {
                time: t,
                usage_core_nano_seconds: cpu,
                usage_nano_cores: None,
            }),
            ..Default::default()
        };
        let pod = |ns: &str, name: &str, containers| PodStats {
            pod_ref: PodReference {
                name: name.into(),
                namespace: ns.into(),
                uid: String::new(),
            },
            containers,
            ..Default::default()
        };
        let summary = Summary {
            node: NodeStats::default(),
            pods: vec![
                pod(
                    "ns_b",
                    "p\"1",
                    vec![container("b", Some(500_000_000)), container("a", None)],
                ),
                pod("ns_a", "p2", vec![container("b", Some(2_000_000_000))]),
            ],
        };
        let text = resource_metrics(&summary);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                r#"container_cpu_usage_seconds_total{container="b",namespace="ns_a",pod="p2"} 2 1624396278302"#,
                r#"container_cpu_usage_seconds_total{container="b",namespace="ns_b",pod="p\"1"} 0.5 1624396278302"#,
                "resource_scrape_error 0",
            ]
        );
        assert_eq!(
            resource_scrape_failed(),
            "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n\
             # TYPE resource_scrape_error gauge\nresource_scrape_error 1\n"
        );
    }
}
