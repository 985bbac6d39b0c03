//! `usageNanoCores` from two readings of a cumulative CPU counter, as the
//! kubelet's CRI stats provider computes it (`getAndUpdateContainerUsageNanoCores`):
//! (Δusage ns / Δtime ns) × 1e9. The first reading of an id gives no rate; a
//! counter that went backwards (a restarted container, a recreated cgroup)
//! starts over and gives no rate; readings closer together than the minimum
//! window reuse the last rate rather than divide by a tiny interval. Ids not
//! read in a collection are forgotten.

use std::collections::{HashMap, HashSet};

/// Readings closer than this (ns) reuse the previous rate.
pub const MIN_WINDOW_NS: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    at_ns: i64,
    usage_ns: u64,
    rate: Option<u64>,
}

/// The last reading of each CPU counter, by id (`node`, `pod/<uid>`,
/// `container/<id>`, …).
#[derive(Debug)]
pub struct CpuSampler {
    min_window_ns: i64,
    last: HashMap<String, Record>,
}

impl Default for CpuSampler {
    fn default() -> Self {
        CpuSampler::new(MIN_WINDOW_NS)
    }
}

impl CpuSampler {
    /// A sampler that computes a new rate only over windows of at least
    /// `min_window_ns`.
    pub fn new(min_window_ns: i64) -> Self {
        CpuSampler {
            min_window_ns: min_window_ns.max(1),
            last: HashMap::new(),
        }
    }

    /// Record that `id`'s counter read `usage_ns` at `at_ns` (ns since the
    /// epoch) and return its rate in nano-cores, if one can be known.
    pub fn observe(&mut self, id: &str, at_ns: i64, usage_ns: u64) -> Option<u64> {
        let fresh = Record {
            at_ns,
            usage_ns,
            rate: None,
        };
        let Some(prev) = self.last.get(id).copied() else {
            self.last.insert(id.to_string(), fresh);
            return None;
        };
        if usage_ns < prev.usage_ns {
            // Reset: this reading is a new start, not a negative rate.
            self.last.insert(id.to_string(), fresh);
            return None;
        }
        let Some(elapsed) = at_ns.checked_sub(prev.at_ns) else {
            return prev.rate;
        };
        if elapsed < self.min_window_ns {
            // Too close (or the clock stepped back): keep the last window.
            return prev.rate;
        }
        let used = u128::from(usage_ns - prev.usage_ns);
        let elapsed = u128::try_from(elapsed).ok()?;
        let rate = used
            .checked_mul(1_000_000_000)
            .map(|n| n / elapsed)
            .and_then(|r| u64::try_from(r).ok());
        self.last.insert(
            id.to_string(),
            Record {
                at_ns,
                usage_ns,
                rate,
            },
        );
        rate
    }

    /// Forget every id not in `seen` (containers and pods that are gone).
    pub fn retain(&mut self, seen: &HashSet<String>) {
        self.last.retain(|id, _| seen.contains(id));
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn two_samples_give_a_rate() {
        let mut s = CpuSampler::default();
        assert_eq!(
            s.observe("c1", 10 * S, 5_000_000_000),
            None,
            "first reading"
        );
        // 1.5 CPU-seconds over 2 s: 0.75 cores.
        assert_eq!(s.observe("c1", 12 * S, 6_500_000_000), Some(750_000_000));
        // Within the window: the same rate again, the window kept.
        assert_eq!(
            s.observe("c1", 12 * S + S / 2, 9_000_000_000),
            Some(750_000_000)
        );
        // Idle: zero, not nothing.
        assert_eq!(s.observe("c1", 14 * S, 6_500_000_000), Some(0));
        // The upstream test's numbers: elapsed usage above u64/1e9 does not overflow.
        let mut s = CpuSampler::default();
        s.observe("x", 0, 67_983_588_375_722);
        assert_eq!(s.observe("x", S, 68_172_016_162_105), Some(188_427_786_383));
    }

    #[test]
    fn a_counter_that_went_backwards_gives_no_rate() {
        let mut s = CpuSampler::default();
        s.observe("c1", 10 * S, 10_000_000_000);
        s.observe("c1", 12 * S, 12_000_000_000);
        // The container restarted: its counter starts again from zero.
        assert_eq!(s.observe("c1", 14 * S, 100_000_000), None);
        // The next window is measured from the reset.
        assert_eq!(s.observe("c1", 16 * S, 1_100_000_000), Some(500_000_000));
        // A clock that stepped back reuses the last rate.
        assert_eq!(s.observe("c1", 15 * S, 1_200_000_000), Some(500_000_000));
    }

    #[test]
    fn ids_not_seen_are_forgotten() {
        let mut s = CpuSampler::default();
        s.observe("a", S, 1);
        s.observe("b", S, 1);
        s.retain(&HashSet::from(["a".to_string()]));
        assert_eq!(s.len(), 1);
        assert_eq!(s.observe("b", 3 * S, 2), None, "b starts over");
        assert_eq!(s.observe("a", 3 * S, 1), Some(0));
    }
}
