//! From one node agent's `/metrics/resource` text to the points the store
//! keeps: metrics-server's `decodeBatch` (`pkg/scraper/client/resource`).
//!
//! Five families are read: `node_cpu_usage_seconds_total`,
//! `node_memory_working_set_bytes`, and per container (labels `container`,
//! `namespace`, `pod`) `container_cpu_usage_seconds_total`,
//! `container_memory_working_set_bytes` and `container_start_time_seconds`.
//! A sample without a timestamp is taken at the request time. As upstream,
//! the node is left out when its CPU or memory is missing or zero, and a pod
//! when any of its containers' is. Unlike upstream (which casts whatever
//! comes), a value that cannot be a reading (negative, NaN, infinite, beyond
//! `u64` nanoseconds or bytes, a time before 1970 or after 2262) is dropped
//! with its series, so the node or pod it belongs to is incomplete and left
//! out instead of published as nonsense.

use std::collections::{BTreeMap, HashMap};

use super::text::{self, ParseError, Sample};

/// The families read.
pub const NODE_CPU: &str = "node_cpu_usage_seconds_total";
/// See [`NODE_CPU`].
pub const NODE_MEMORY: &str = "node_memory_working_set_bytes";
/// See [`NODE_CPU`].
pub const CONTAINER_CPU: &str = "container_cpu_usage_seconds_total";
/// See [`NODE_CPU`].
pub const CONTAINER_MEMORY: &str = "container_memory_working_set_bytes";
/// See [`NODE_CPU`].
pub const CONTAINER_START: &str = "container_start_time_seconds";
/// The kubelet's own verdict on the scrape (1: stats missing).
pub const SCRAPE_ERROR: &str = "resource_scrape_error";

const NANOS_PER_SECOND: f64 = 1e9;
const NANOS_PER_MILLI: i64 = 1_000_000;
/// 2^64 as a float: the first value a `u64` cannot hold.
const U64_LIMIT: f64 = 18_446_744_073_709_551_616.0;
/// 2^63 as a float.
const I64_LIMIT: f64 = 9_223_372_036_854_775_808.0;

/// One reading of a node or a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// When the CPU counter was read, in nanoseconds since the epoch.
    pub timestamp_ns: i64,
    /// When the container started, in nanoseconds since the epoch (`None`
    /// for a node, or when the agent does not say).
    pub start_time_ns: Option<i64>,
    /// Cumulative CPU time, in nanoseconds.
    pub cpu_ns: u64,
    /// Working set, in bytes.
    pub memory_bytes: u64,
}

/// A pod: namespace and name (metrics-server's `NamespacedName` key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

/// What one scrape of one node gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeBatch {
    /// The node's point, when complete.
    pub node: Option<Point>,
    /// The complete pods: their containers' points by container name.
    pub pods: HashMap<PodRef, BTreeMap<String, Point>>,
    /// Series dropped for an absurd value: `line N: metric value`.
    pub dropped: Vec<String>,
    /// The agent said `resource_scrape_error 1`: it could not read (all)
    /// its stats.
    pub agent_error: bool,
}

/// A reading being assembled from its samples.
#[derive(Debug, Default, Clone, Copy)]
struct Partial {
    /// (nanoseconds, time in ns).
    cpu: Option<(u64, i64)>,
    /// (bytes, time in ns).
    memory: Option<(u64, i64)>,
    start_ns: Option<i64>,
}

impl Partial {
    /// The point, when CPU and memory are both there and non-zero (upstream:
    /// a zero counter or working set is an incomplete reading).
    fn complete(self) -> Option<Point> {
        let (cpu_ns, timestamp_ns) = self.cpu?;
        let (memory_bytes, _) = self.memory?;
        if cpu_ns == 0 || memory_bytes == 0 {
            return None;
        }
        Some(Point {
            timestamp_ns,
            start_time_ns: self.start_ns,
            cpu_ns,
            memory_bytes,
        })
    }
}

/// `value × scale` as a whole `u64`, if the value can be a reading. Rounded
/// rather than truncated as upstream's cast: the agent prints nanosecond
/// counters divided by 10⁹ in the shortest form that reads back, so rounding
/// gives back its exact integer (truncating `1.001 × 10⁹` gives 1000999999).
fn to_u64(value: f64, scale: f64) -> Option<u64> {
    let scaled = (value * scale).round();
    // `as` saturates; the bounds make sure it never has to.
    (value.is_finite() && value >= 0.0 && scaled < U64_LIMIT).then_some(scaled as u64)
}

/// A sample's time in nanoseconds, or `default_ns` without one.
fn time_ns(sample: &Sample<'_>, default_ns: i64) -> Option<i64> {
    match sample.timestamp_ms {
        None => Some(default_ns),
        Some(ms) if ms > 0 => ms.checked_mul(NANOS_PER_MILLI),
        Some(_) => None,
    }
}

/// Decode the `/metrics/resource` `body` of `node`, read at `request_ns`
/// (nanoseconds since the epoch). A malformed line is an error (the whole
/// scrape is then lost, as upstream); a pod or node whose readings are
/// incomplete is simply absent.
pub fn decode(body: &str, request_ns: i64) -> Result<NodeBatch, ParseError> {
    let samples = text::parse(body)?;
    let mut node = Partial::default();
    let mut containers: HashMap<PodRef, BTreeMap<String, Partial>> = HashMap::new();
    let mut dropped = Vec::new();
    let mut agent_error = false;
    for s in &samples {
        let absurd = |dropped: &mut Vec<String>| {
            dropped.push(format!("line {}: {} {}", s.line, s.name, s.value));
        };
        match s.name {
            NODE_CPU | NODE_MEMORY => {
                let (Some(v), Some(t)) = (to_u64(s.value, scale(s.name)), time_ns(s, request_ns))
                else {
                    absurd(&mut dropped);
                    continue;
                };
                if s.name == NODE_CPU {
                    node.cpu = Some((v, t));
                } else {
                    node.memory = Some((v, t));
                }
            }
            CONTAINER_CPU | CONTAINER_MEMORY | CONTAINER_START => {
                let (Some(ns), Some(pod), Some(container)) =
                    (s.label("namespace"), s.label("pod"), s.label("container"))
                else {
                    dropped.push(format!(
                        "line {}: {} without namespace, pod and container labels",
                        s.line, s.name
                    ));
                    continue;
                };
                let reading = if s.name == CONTAINER_START {
                    let ns_value = (s.value * NANOS_PER_SECOND).round();
                    (s.value.is_finite() && s.value >= 0.0 && ns_value < I64_LIMIT)
                        .then_some(Reading::Start(ns_value as i64))
                } else {
                    match (to_u64(s.value, scale(s.name)), time_ns(s, request_ns)) {
                        (Some(v), Some(t)) if s.name == CONTAINER_CPU => Some(Reading::Cpu(v, t)),
                        (Some(v), Some(t)) => Some(Reading::Memory(v, t)),
                        _ => None,
                    }
                };
                let Some(reading) = reading else {
                    absurd(&mut dropped);
                    continue;
                };
                let key = PodRef {
                    namespace: ns.to_string(),
                    name: pod.to_string(),
                };
                let partial = containers
                    .entry(key)
                    .or_default()
                    .entry(container.to_string())
                    .or_default();
                match reading {
                    Reading::Cpu(v, t) => partial.cpu = Some((v, t)),
                    Reading::Memory(v, t) => partial.memory = Some((v, t)),
                    Reading::Start(t) => partial.start_ns = Some(t),
                }
            }
            SCRAPE_ERROR => agent_error |= s.value != 0.0,
            _ => {}
        }
    }
    let pods = containers
        .into_iter()
        .filter_map(|(pod, cs)| {
            let points: Option<BTreeMap<String, Point>> = cs
                .into_iter()
                .map(|(name, p)| p.complete().map(|point| (name, point)))
                .collect();
            Some((pod, points?))
        })
        .collect();
    Ok(NodeBatch {
        node: node.complete(),
        pods,
        dropped,
        agent_error,
    })
}

/// A container sample's meaning.
enum Reading {
    Cpu(u64, i64),
    Memory(u64, i64),
    Start(i64),
}

/// Seconds of CPU become nanoseconds; bytes stay bytes.
fn scale(name: &str) -> f64 {
    if name == NODE_CPU || name == CONTAINER_CPU {
        NANOS_PER_SECOND
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn pod(ns: &str, name: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    /// The kubelet's own test body (`resource_metrics_test.go`'s shape).
    const KUBELET: &str = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="container_a",namespace="namespace_a",pod="pod_a"} 1 1624396278302
container_cpu_usage_seconds_total{container="container_a",namespace="namespace_b",pod="pod_b"} 10 1624396278302
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="container_a",namespace="namespace_a",pod="pod_a"} 1000 1624396278302
container_memory_working_set_bytes{container="container_a",namespace="namespace_b",pod="pod_b"} 10000 1624396278302
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="container_a",namespace="namespace_a",pod="pod_a"} 1.6243962483020916e+09
container_start_time_seconds{container="container_a",namespace="namespace_b",pod="pod_b"} 1.6243956783020916e+09
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 10 1624396278302
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1000 1624396278302
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
"#;

    #[test]
    fn the_kubelets_body() {
        let b = decode(KUBELET, NOW).unwrap();
        let t = 1_624_396_278_302 * NANOS_PER_MILLI;
        assert_eq!(
            b.node,
            Some(Point {
                timestamp_ns: t,
                start_time_ns: None,
                cpu_ns: 10_000_000_000,
                memory_bytes: 1000
            })
        );
        assert_eq!(b.pods.len(), 2);
        let a = &b.pods[&pod("namespace_a", "pod_a")]["container_a"];
        assert_eq!(a.cpu_ns, 1_000_000_000);
        assert_eq!(a.memory_bytes, 1000);
        assert_eq!(a.timestamp_ns, t);
        assert_eq!(
            a.start_time_ns,
            Some((1.624_396_248_302_091_6e9 * 1e9) as i64)
        );
        assert!(b.dropped.is_empty());
        assert!(!b.agent_error);
        // What an agent answers when it has no stats at all.
        let b = decode("resource_scrape_error 1\n", NOW).unwrap();
        assert!(b.agent_error && b.node.is_none() && b.pods.is_empty());
    }

    #[test]
    fn counters_read_back_exactly() {
        let b = decode(
            "node_cpu_usage_seconds_total 1.001\nnode_memory_working_set_bytes 3\n",
            NOW,
        )
        .unwrap();
        assert_eq!(b.node.map(|p| p.cpu_ns), Some(1_001_000_000));
    }

    #[test]
    fn no_timestamp_is_the_request_time() {
        let b = decode(
            "node_cpu_usage_seconds_total 2\nnode_memory_working_set_bytes 3\n",
            NOW,
        )
        .unwrap();
        assert_eq!(b.node.map(|p| p.timestamp_ns), Some(NOW));
    }

    #[test]
    fn incomplete_readings_are_left_out() {
        // No memory for the node; a zero CPU counter in one container of a
        // two-container pod; a pod with start time only.
        let body = r#"node_cpu_usage_seconds_total 10 1000
container_cpu_usage_seconds_total{container="a",namespace="n",pod="two"} 1 1000
container_memory_working_set_bytes{container="a",namespace="n",pod="two"} 10 1000
container_cpu_usage_seconds_total{container="b",namespace="n",pod="two"} 0 1000
container_memory_working_set_bytes{container="b",namespace="n",pod="two"} 10 1000
container_start_time_seconds{container="a",namespace="n",pod="starting"} 5
container_cpu_usage_seconds_total{container="a",namespace="n",pod="ok"} 1 1000
container_memory_working_set_bytes{container="a",namespace="n",pod="ok"} 10 1000
"#;
        let b = decode(body, NOW).unwrap();
        assert_eq!(b.node, None);
        assert_eq!(b.pods.keys().collect::<Vec<_>>(), vec![&pod("n", "ok")]);
    }

    #[test]
    fn absurd_values_drop_their_series() {
        let body = r#"node_cpu_usage_seconds_total -1 1000
node_memory_working_set_bytes 1e30 1000
container_cpu_usage_seconds_total{container="a",namespace="n",pod="nan"} NaN 1000
container_memory_working_set_bytes{container="a",namespace="n",pod="nan"} 10 1000
container_cpu_usage_seconds_total{container="a",namespace="n",pod="inf"} +Inf 1000
container_memory_working_set_bytes{container="a",namespace="n",pod="inf"} 10 1000
container_cpu_usage_seconds_total{container="a",namespace="n",pod="old"} 1 -5
container_memory_working_set_bytes{container="a",namespace="n",pod="old"} 10 1000
container_cpu_usage_seconds_total{container="a",namespace="n",pod="future"} 1 9223372036854775
container_memory_working_set_bytes{container="a",namespace="n",pod="future"} 10 1000
container_cpu_usage_seconds_total{namespace="n",pod="nolabel"} 1 1000
container_start_time_seconds{container="a",namespace="n",pod="ok"} -3
container_cpu_usage_seconds_total{container="a",namespace="n",pod="ok"} 1 1000
container_memory_working_set_bytes{container="a",namespace="n",pod="ok"} 10 1000
"#;
        let b = decode(body, NOW).unwrap();
        assert_eq!(b.node, None);
        // Only "ok" stays (its absurd start time dropped, the rest is whole).
        assert_eq!(b.pods.len(), 1, "{:?}", b.pods);
        assert_eq!(b.pods[&pod("n", "ok")]["a"].start_time_ns, None);
        assert_eq!(b.dropped.len(), 8, "{:?}", b.dropped);
        assert_eq!(b.dropped[0], "line 1: node_cpu_usage_seconds_total -1");
        assert!(b.dropped[6].contains("without namespace, pod and container labels"));
    }

    #[test]
    fn garbage_fails_the_scrape() {
        let e = decode("node_cpu_usage_seconds_total 1\n<html>oops</html>\n", NOW).unwrap_err();
        assert_eq!(e.line, 2);
    }
}
