//! The last two points per node and per container, and the usage computed
//! from them: metrics-server's `pkg/storage` (`nodeStorage`, `podStorage`,
//! `resourceUsage`).
//!
//! Every scrape round replaces the whole store: a node (or pod) the round
//! did not get is gone at once, so nothing older than one resolution is
//! served. A new point moves the stored last point to "previous" when it is
//! newer and continues it (same container start time, counter not gone
//! backwards); an equal or older point keeps the previous point if that is
//! still older. A container that restarted, or whose counter went
//! backwards, starts over with one point. Usage needs two points: CPU is the
//! counter's increase over the time between their own timestamps, memory
//! the newest working set. A node or pod with fewer than two points, or a
//! pod with one container short of two, is absent.
//!
//! Left out from upstream: its shortcut for a container younger than one
//! resolution (its start time taken as a zero point), so a new pod shows
//! after its second scrape, not its first.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use super::decode::{NodeBatch, PodRef, Point};

/// A usage computed from two points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The newer point's time, in nanoseconds since the epoch.
    pub timestamp_ns: i64,
    /// The time between the two points.
    pub window: Duration,
    /// CPU in nanocores (nanoseconds of CPU per second).
    pub cpu_nanocores: u64,
    /// The newer working set, in bytes.
    pub memory_bytes: u64,
}

/// A pod's usage: one time window (its earliest container's) and each
/// container's usage, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    /// The earliest of its containers' timestamps.
    pub timestamp_ns: i64,
    /// That container's window.
    pub window: Duration,
    /// Per container, in name order.
    pub containers: Vec<(String, Usage)>,
}

/// Why two points give no usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// The container's start time changed between the points (it restarted).
    #[error("the container's start time changed between the two points")]
    Restarted,
    /// The cumulative CPU counter went backwards.
    #[error("the cumulative CPU counter went backwards")]
    CounterDecreased,
    /// The newer point is not newer.
    #[error("the two points are not apart in time")]
    NoWindow,
}

/// metrics-server's `resourceUsage`: CPU as the rate of the cumulative
/// counter over the window between the points' own timestamps, memory the
/// newer working set. The rate is computed in integers (upstream divides
/// floats; the results agree to within a nanocore).
pub fn resource_usage(last: &Point, prev: &Point) -> Result<Usage, UsageError> {
    if last.start_time_ns != prev.start_time_ns {
        return Err(UsageError::Restarted);
    }
    let used = last
        .cpu_ns
        .checked_sub(prev.cpu_ns)
        .ok_or(UsageError::CounterDecreased)?;
    let window_ns = last
        .timestamp_ns
        .checked_sub(prev.timestamp_ns)
        .and_then(|w| u64::try_from(w).ok())
        .filter(|w| *w > 0)
        .ok_or(UsageError::NoWindow)?;
    let rate = u128::from(used) * 1_000_000_000 / u128::from(window_ns);
    Ok(Usage {
        timestamp_ns: last.timestamp_ns,
        window: Duration::from_nanos(window_ns),
        cpu_nanocores: u64::try_from(rate).unwrap_or(u64::MAX),
        memory_bytes: last.memory_bytes,
    })
}

/// Whether `next` continues `point`'s series: the same container (start
/// time) and a counter that did not go backwards.
fn continues(point: &Point, next: &Point) -> bool {
    point.start_time_ns == next.start_time_ns && point.cpu_ns <= next.cpu_ns
}

/// The newest point and the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pair {
    last: Point,
    prev: Option<Point>,
}

impl Pair {
    /// The pair after `new` arrives where `old` was stored (`nodeStorage.Store`).
    fn next(old: Option<&Pair>, new: Point) -> Pair {
        let prev = old.and_then(|old| {
            if new.timestamp_ns > old.last.timestamp_ns {
                continues(&old.last, &new).then_some(old.last)
            } else {
                // The same reading again (or an older one): keep the
                // previous point if it is still older.
                old.prev
                    .filter(|p| p.timestamp_ns < new.timestamp_ns && continues(p, &new))
            }
        });
        Pair { last: new, prev }
    }

    fn usage(&self) -> Option<Result<Usage, UsageError>> {
        self.prev.map(|prev| resource_usage(&self.last, &prev))
    }
}

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<String, Pair>,
    pods: HashMap<PodRef, BTreeMap<String, Pair>>,
}

/// The metrics store the scraper fills and the API reads.
#[derive(Debug, Default)]
pub struct Store {
    inner: RwLock<Inner>,
}

/// One scrape round: every node's batch.
#[derive(Debug, Default)]
pub struct Round {
    /// Node points by node name.
    pub nodes: HashMap<String, Point>,
    /// Pod points by pod, then container.
    pub pods: HashMap<PodRef, BTreeMap<String, Point>>,
}

impl Round {
    /// Add node `name`'s batch; a pod another node already reported keeps
    /// its first batch (upstream: "duplicate pod point").
    pub fn add(&mut self, name: &str, batch: NodeBatch) {
        if let Some(point) = batch.node {
            self.nodes.insert(name.to_string(), point);
        }
        for (pod, containers) in batch.pods {
            match self.pods.entry(pod) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    tracing::debug!(node = name, namespace = %e.key().namespace, pod = %e.key().name,
                        "a pod reported by two nodes; keeping the first");
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(containers);
                }
            }
        }
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Replace the store with `round` (see the module documentation).
    pub fn store(&self, round: Round) {
        let mut inner = match self.inner.write() {
            Ok(g) => g,
            // A panic while holding the lock left maps that are still whole.
            Err(poisoned) => poisoned.into_inner(),
        };
        let nodes = round
            .nodes
            .into_iter()
            .map(|(name, point)| {
                let pair = Pair::next(inner.nodes.get(&name), point);
                (name, pair)
            })
            .collect();
        let pods = round
            .pods
            .into_iter()
            .map(|(pod, containers)| {
                let old = inner.pods.get(&pod);
                let pairs = containers
                    .into_iter()
                    .map(|(c, point)| {
                        let pair = Pair::next(old.and_then(|o| o.get(&c)), point);
                        (c, pair)
                    })
                    .collect();
                (pod, pairs)
            })
            .collect();
        *inner = Inner { nodes, pods };
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        match self.inner.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Node `name`'s usage, when it has two usable points.
    pub fn node(&self, name: &str) -> Option<Usage> {
        match self.read().nodes.get(name)?.usage()? {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::debug!(node = name, error = %e, "skipping the node's usage");
                None
            }
        }
    }

    /// Pod `pod`'s usage, when every one of its containers has two usable
    /// points (upstream leaves such a pod out too).
    pub fn pod(&self, pod: &PodRef) -> Option<PodUsage> {
        let inner = self.read();
        let containers = inner.pods.get(pod)?;
        let mut out = Vec::with_capacity(containers.len());
        let mut earliest: Option<Usage> = None;
        for (name, pair) in containers {
            let usage = match pair.usage()? {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(namespace = %pod.namespace, pod = %pod.name, container = %name,
                        error = %e, "skipping the pod's usage");
                    return None;
                }
            };
            if earliest.is_none_or(|e| usage.timestamp_ns < e.timestamp_ns) {
                earliest = Some(usage);
            }
            out.push((name.clone(), usage));
        }
        let earliest = earliest?;
        Some(PodUsage {
            timestamp_ns: earliest.timestamp_ns,
            window: earliest.window,
            containers: out,
        })
    }

    /// How many nodes and pods currently have usage.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.read();
        let nodes = inner
            .nodes
            .values()
            .filter(|p| matches!(p.usage(), Some(Ok(_))))
            .count();
        let pods = inner
            .pods
            .values()
            .filter(|cs| cs.values().all(|p| matches!(p.usage(), Some(Ok(_)))))
            .count();
        (nodes, pods)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * S;

    fn point(t_s: i64, cpu_s: f64, mem: u64, start: Option<i64>) -> Point {
        Point {
            timestamp_ns: T0 + t_s * S,
            start_time_ns: start,
            cpu_ns: (cpu_s * 1e9) as u64,
            memory_bytes: mem,
        }
    }

    fn node_round(p: Point) -> Round {
        let mut r = Round::default();
        r.nodes.insert("n1".into(), p);
        r
    }

    fn pod_ref() -> PodRef {
        PodRef {
            namespace: "ns".into(),
            name: "p".into(),
        }
    }

    fn pod_round(containers: &[(&str, Point)]) -> Round {
        let mut r = Round::default();
        r.pods.insert(
            pod_ref(),
            containers
                .iter()
                .map(|(n, p)| (n.to_string(), *p))
                .collect(),
        );
        r
    }

    #[test]
    fn rate_over_the_points_own_window() {
        let u = resource_usage(&point(15, 3.0, 200, None), &point(0, 1.5, 100, None)).unwrap();
        assert_eq!(u.cpu_nanocores, 100_000_000);
        assert_eq!(u.memory_bytes, 200);
        assert_eq!(u.window, Duration::from_secs(15));
        assert_eq!(u.timestamp_ns, T0 + 15 * S);
        // A sub-nanocore rate rounds down, as upstream's uint64 cast.
        let a = point(0, 1.0, 1, None);
        let mut b = point(3, 1.0, 1, None);
        b.cpu_ns += 2;
        assert_eq!(resource_usage(&b, &a).unwrap().cpu_nanocores, 0);
    }

    #[test]
    fn counter_reset_restart_and_zero_window() {
        assert_eq!(
            resource_usage(&point(15, 1.0, 1, None), &point(0, 2.0, 1, None)),
            Err(UsageError::CounterDecreased)
        );
        assert_eq!(
            resource_usage(&point(15, 3.0, 1, Some(20)), &point(0, 2.0, 1, Some(10))),
            Err(UsageError::Restarted)
        );
        assert_eq!(
            resource_usage(&point(5, 3.0, 1, None), &point(5, 2.0, 1, None)),
            Err(UsageError::NoWindow)
        );
        assert_eq!(
            resource_usage(&point(4, 3.0, 1, None), &point(5, 2.0, 1, None)),
            Err(UsageError::NoWindow)
        );
    }

    #[test]
    fn a_single_point_is_absent_and_a_second_one_makes_usage() {
        let s = Store::new();
        s.store(node_round(point(0, 10.0, 100, None)));
        assert_eq!(s.node("n1"), None);
        s.store(node_round(point(10, 15.0, 300, None)));
        let u = s.node("n1").unwrap();
        assert_eq!(u.cpu_nanocores, 500_000_000);
        assert_eq!(u.memory_bytes, 300);
        // The agent answers the same reading again: the previous point stays.
        s.store(node_round(point(10, 15.0, 300, None)));
        assert_eq!(s.node("n1"), Some(u));
        // A round without the node: gone at once.
        s.store(Round::default());
        assert_eq!(s.node("n1"), None);
        assert_eq!(s.counts(), (0, 0));
    }

    #[test]
    fn a_counter_reset_starts_over() {
        let s = Store::new();
        s.store(node_round(point(0, 10.0, 1, None)));
        s.store(node_round(point(10, 20.0, 1, None)));
        assert!(s.node("n1").is_some());
        // The node rebooted: its counter starts again from zero.
        s.store(node_round(point(20, 1.0, 1, None)));
        assert_eq!(s.node("n1"), None);
        s.store(node_round(point(30, 3.0, 1, None)));
        assert_eq!(s.node("n1").unwrap().cpu_nanocores, 200_000_000);
    }

    #[test]
    fn a_restarted_container_takes_its_pod_out_until_it_has_two_points() {
        let s = Store::new();
        let (a0, b0) = (point(0, 1.0, 10, Some(1)), point(0, 1.0, 10, Some(1)));
        s.store(pod_round(&[("a", a0), ("b", b0)]));
        assert_eq!(s.pod(&pod_ref()), None, "one point");
        let (a1, b1) = (point(10, 2.0, 20, Some(1)), point(12, 5.0, 30, Some(1)));
        s.store(pod_round(&[("a", a1), ("b", b1)]));
        let u = s.pod(&pod_ref()).unwrap();
        assert_eq!(
            u.timestamp_ns, a1.timestamp_ns,
            "the earliest container's time"
        );
        assert_eq!(u.window, Duration::from_secs(10));
        assert_eq!(
            u.containers
                .iter()
                .map(|(n, u)| (n.as_str(), u.cpu_nanocores, u.memory_bytes))
                .collect::<Vec<_>>(),
            vec![("a", 100_000_000, 20), ("b", 333_333_333, 30)]
        );
        assert_eq!(s.counts(), (0, 1));
        // b restarts (new start time, counter from zero): the pod is out.
        let (a2, b2) = (point(20, 3.0, 20, Some(1)), point(20, 0.5, 5, Some(15)));
        s.store(pod_round(&[("a", a2), ("b", b2)]));
        assert_eq!(s.pod(&pod_ref()), None);
        let (a3, b3) = (point(30, 4.0, 20, Some(1)), point(30, 1.5, 5, Some(15)));
        s.store(pod_round(&[("a", a3), ("b", b3)]));
        assert_eq!(s.pod(&pod_ref()).unwrap().containers.len(), 2);
        // A new container appears: the pod is incomplete for one round.
        let c = point(40, 1.0, 1, Some(35));
        s.store(pod_round(&[
            ("a", point(40, 5.0, 1, Some(1))),
            ("b", point(40, 2.5, 5, Some(15))),
            ("c", c),
        ]));
        assert_eq!(s.pod(&pod_ref()), None);
    }

    #[test]
    fn duplicate_pods_keep_the_first_node() {
        let mut r = Round::default();
        let batch = |cpu: f64| NodeBatch {
            node: None,
            pods: [(
                pod_ref(),
                BTreeMap::from([("a".to_string(), point(0, cpu, 1, None))]),
            )]
            .into_iter()
            .collect(),
            dropped: vec![],
            agent_error: false,
        };
        r.add("n1", batch(1.0));
        r.add("n2", batch(2.0));
        assert_eq!(r.pods[&pod_ref()]["a"].cpu_ns, 1_000_000_000);
    }
}
