//! The eviction manager's first half: the node's eviction signals observed
//! every [`MONITORING_INTERVAL`] and compared with the hard thresholds
//! (`--eviction-hard`), and the pressure conditions they set, held for
//! `--eviction-pressure-transition-period` after the last time a signal was
//! met (the kubelet's `synchronize` up to `nodeConditions`). Reclaiming
//! node-level resources and evicting pods are not done yet.
//!
//! Signals (`pkg/kubelet/eviction/helpers.go` `makeSignalObservations`):
//! `memory.available` = MemTotal − the root cgroup's working set;
//! `nodefs.available`/`nodefs.inodesFree` = statvfs of `--root-dir`;
//! `imagefs.*` = statvfs of the runtime's image filesystem (the runtime's
//! `ImageFsInfo` mountpoint, else the node filesystem, as upstream when the
//! image filesystem is not separate); `pid.available` = `pid_max` − the
//! processes running. The source is a trait, so tests feed values.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::allocatable::{Signal, Threshold};

/// How often signals are observed (the kubelet's housekeeping period).
pub const MONITORING_INTERVAL: Duration = Duration::from_secs(10);

/// The kubelet's default `--eviction-pressure-transition-period`.
pub const DEFAULT_PRESSURE_TRANSITION_PERIOD: Duration = Duration::from_secs(300);

/// One signal's reading: what is available of how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub available: i64,
    pub capacity: i64,
}

/// Where signals come from.
pub trait SignalSource: Send + Sync {
    /// The signals readable now (an unreadable one is left out).
    fn observe(&self) -> BTreeMap<Signal, Observation>;
}

/// The host's signals.
#[derive(Debug, Clone)]
pub struct HostSignals {
    /// `--root-dir` (the node filesystem).
    pub root_dir: PathBuf,
    /// The runtime's image filesystem, when it said where.
    pub image_dir: Option<PathBuf>,
}

impl SignalSource for HostSignals {
    fn observe(&self) -> BTreeMap<Signal, Observation> {
        use crate::stats::host;
        let mut out = BTreeMap::new();
        let cgroups = crate::stats::cgroup::CgroupFs::host();
        if let Ok(mem) = host::node_memory(&cgroups, std::path::Path::new("/proc"))
            && let Some(limit) = mem.limit
        {
            let available = mem.available().unwrap_or(0);
            out.insert(
                Signal::MemoryAvailable,
                Observation {
                    available: i64::try_from(available).unwrap_or(i64::MAX),
                    capacity: i64::try_from(limit).unwrap_or(i64::MAX),
                },
            );
        }
        let fs =
            |path: &std::path::Path, bytes: Signal, inodes: Signal, out: &mut BTreeMap<_, _>| {
                if let Ok(info) = host::fs_info(path) {
                    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                    out.insert(
                        bytes,
                        Observation {
                            available: n(info.available),
                            capacity: n(info.capacity),
                        },
                    );
                    out.insert(
                        inodes,
                        Observation {
                            available: n(info.inodes_free),
                            capacity: n(info.inodes),
                        },
                    );
                }
            };
        fs(
            &self.root_dir,
            Signal::NodeFsAvailable,
            Signal::NodeFsInodesFree,
            &mut out,
        );
        fs(
            self.image_dir.as_deref().unwrap_or(&self.root_dir),
            Signal::ImageFsAvailable,
            Signal::ImageFsInodesFree,
            &mut out,
        );
        if let (Ok(max), Some(running)) = (
            host::pid_max(std::path::Path::new("/proc")),
            host::process_count(),
        ) {
            out.insert(
                Signal::PidAvailable,
                Observation {
                    available: max.saturating_sub(running),
                    capacity: max,
                },
            );
        }
        out
    }
}

/// A node condition eviction sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pressure {
    Memory,
    Disk,
    Pid,
}

impl Pressure {
    /// The condition's type.
    pub fn condition_type(self) -> &'static str {
        match self {
            Pressure::Memory => "MemoryPressure",
            Pressure::Disk => "DiskPressure",
            Pressure::Pid => "PIDPressure",
        }
    }

    /// The condition a signal sets (`signalToNodeCondition`).
    pub fn of(signal: Signal) -> Option<Pressure> {
        match signal {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Some(Pressure::Memory),
            Signal::NodeFsAvailable
            | Signal::NodeFsInodesFree
            | Signal::ImageFsAvailable
            | Signal::ImageFsInodesFree
            | Signal::ContainerFsAvailable
            | Signal::ContainerFsInodesFree => Some(Pressure::Disk),
            Signal::PidAvailable => Some(Pressure::Pid),
        }
    }
}

/// A threshold met: the signal, what was observed, and the threshold's amount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Met {
    pub signal: &'static str,
    pub available: i64,
    pub threshold: i64,
}

/// The thresholds `observations` meet (`thresholdsMet`: available < amount).
pub fn thresholds_met(
    thresholds: &[Threshold],
    observations: &BTreeMap<Signal, Observation>,
) -> Vec<Met> {
    thresholds
        .iter()
        .filter_map(|t| {
            let o = observations.get(&t.signal)?;
            let amount = t.value.amount(o.capacity);
            (o.available < amount).then(|| Met {
                signal: t.signal.as_str(),
                available: o.available,
                threshold: amount,
            })
        })
        .collect()
}

/// The node's pressure as of the last observation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PressureState {
    /// Conditions in force (met now, or within the transition period).
    #[serde(skip)]
    pub conditions: std::collections::BTreeSet<Pressure>,
    /// The condition types in force, for `/status`.
    pub pressure: Vec<&'static str>,
    /// The thresholds met at the last observation.
    pub thresholds_met: Vec<Met>,
}

/// Pressure conditions with their transition period.
#[derive(Debug)]
pub struct PressureTracker {
    thresholds: Vec<Threshold>,
    transition: Duration,
    last_met: BTreeMap<Pressure, Instant>,
}

impl PressureTracker {
    /// A tracker for `thresholds`, holding a condition `transition` after it
    /// was last met.
    pub fn new(thresholds: Vec<Threshold>, transition: Duration) -> Self {
        PressureTracker {
            thresholds,
            transition,
            last_met: BTreeMap::new(),
        }
    }

    /// Take one observation at `now`.
    pub fn observe(
        &mut self,
        observations: &BTreeMap<Signal, Observation>,
        now: Instant,
    ) -> PressureState {
        let met = thresholds_met(&self.thresholds, observations);
        let met_now: std::collections::BTreeSet<Pressure> = met
            .iter()
            .filter_map(|m| Signal::parse_name(m.signal).and_then(Pressure::of))
            .collect();
        for p in &met_now {
            self.last_met.insert(*p, now);
        }
        let transition = self.transition;
        self.last_met
            .retain(|p, at| met_now.contains(p) || now.saturating_duration_since(*at) < transition);
        let conditions: std::collections::BTreeSet<Pressure> =
            self.last_met.keys().copied().collect();
        PressureState {
            pressure: conditions.iter().map(|p| p.condition_type()).collect(),
            conditions,
            thresholds_met: met,
        }
    }
}

/// The pressure the node status reads, shared.
pub type SharedPressure = Arc<RwLock<PressureState>>;

/// Observe `source` every [`MONITORING_INTERVAL`] until `cancel`, keeping
/// `shared` current; a condition that comes or goes is logged.
pub fn spawn(
    source: Arc<dyn SignalSource>,
    mut tracker: PressureTracker,
    shared: SharedPressure,
    cancel: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let src = source.clone();
            let observations = tokio::task::spawn_blocking(move || src.observe())
                .await
                .unwrap_or_default();
            let state = tracker.observe(&observations, Instant::now());
            {
                let mut s = shared.write().unwrap_or_else(|e| e.into_inner());
                if s.conditions != state.conditions {
                    tracing::warn!(
                        pressure = ?state.pressure,
                        thresholds_met = ?state.thresholds_met,
                        "node pressure changed"
                    );
                }
                *s = state;
            }
            if !crate::util::sleep_or_cancel(&cancel, MONITORING_INTERVAL).await {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocatable::parse_thresholds;

    fn obs(pairs: &[(Signal, i64, i64)]) -> BTreeMap<Signal, Observation> {
        pairs
            .iter()
            .map(|&(s, available, capacity)| {
                (
                    s,
                    Observation {
                        available,
                        capacity,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn thresholds_are_met_below_their_amount_absolute_or_percent() {
        let t = parse_thresholds("f", "memory.available<100Mi,nodefs.available<10%").unwrap();
        let gib = 1i64 << 30;
        let met = thresholds_met(
            &t,
            &obs(&[
                (Signal::MemoryAvailable, 99 << 20, 8 * gib),
                (Signal::NodeFsAvailable, 11 * gib, 100 * gib),
            ]),
        );
        assert_eq!(
            met,
            vec![Met {
                signal: "memory.available",
                available: 99 << 20,
                threshold: 100 << 20
            }]
        );
        // Exactly at the threshold is not below it; an unread signal meets nothing.
        assert!(
            thresholds_met(&t, &obs(&[(Signal::MemoryAvailable, 100 << 20, 8 * gib)])).is_empty()
        );
        let met = thresholds_met(&t, &obs(&[(Signal::NodeFsAvailable, 9 * gib, 100 * gib)]));
        assert_eq!(met.len(), 1);
    }

    #[test]
    fn a_condition_holds_for_the_transition_period_after_its_last_signal() {
        let t = parse_thresholds("f", "memory.available<100Mi,pid.available<10").unwrap();
        let mut tracker = PressureTracker::new(t, Duration::from_secs(300));
        let t0 = Instant::now();
        let low = obs(&[
            (Signal::MemoryAvailable, 1, 1 << 30),
            (Signal::PidAvailable, 5, 100),
        ]);
        let fine = obs(&[
            (Signal::MemoryAvailable, 1 << 29, 1 << 30),
            (Signal::PidAvailable, 50, 100),
        ]);
        let s = tracker.observe(&low, t0);
        assert_eq!(s.pressure, vec!["MemoryPressure", "PIDPressure"]);
        // Recovered, but within the period: still under pressure, nothing met.
        let s = tracker.observe(&fine, t0 + Duration::from_secs(60));
        assert_eq!(s.pressure, vec!["MemoryPressure", "PIDPressure"]);
        assert!(s.thresholds_met.is_empty());
        let s = tracker.observe(&fine, t0 + Duration::from_secs(301));
        assert!(s.pressure.is_empty(), "{s:?}");
        // No period: the condition follows the signal.
        let t = parse_thresholds("f", "nodefs.inodesFree<5%").unwrap();
        let mut tracker = PressureTracker::new(t, Duration::ZERO);
        let s = tracker.observe(&obs(&[(Signal::NodeFsInodesFree, 1, 100)]), t0);
        assert_eq!(s.pressure, vec!["DiskPressure"]);
        let s = tracker.observe(&obs(&[(Signal::NodeFsInodesFree, 50, 100)]), t0);
        assert!(s.pressure.is_empty());
    }

    #[test]
    fn the_host_is_readable() {
        let s = HostSignals {
            root_dir: std::env::temp_dir(),
            image_dir: None,
        }
        .observe();
        for sig in [Signal::NodeFsAvailable, Signal::ImageFsInodesFree] {
            let o = s.get(&sig).expect("statvfs of the temp dir");
            assert!(o.capacity > 0 && o.available <= o.capacity, "{o:?}");
        }
    }
}
