//! The scheduling queue: kube-scheduler's activeQ / backoffQ /
//! unschedulablePods in simplified form.
//!
//! Pods wait in `active` ordered by priority (highest first), then creation
//! time (FIFO), then arrival. A pod that fails to schedule waits in `backoff`
//! for 1 s, doubling per attempt up to the maximum, and goes back to `active`
//! when that expires or when the cluster changes in a way that may make it fit
//! ([`move_all_to_active`](SchedulingQueue::move_all_to_active)). A pod taken
//! out with [`pop`](SchedulingQueue::pop) is in flight until it is
//! [`done`](SchedulingQueue::done) or sent to
//! [`backoff`](SchedulingQueue::backoff).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// Where a queued pod waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff(Instant),
    InFlight,
}

/// Active-queue order: highest priority first, then oldest, then first seen.
type Order = (i64, i128, u64);

#[derive(Debug, Clone)]
struct Entry {
    order: Order,
    attempts: u32,
    place: Place,
}

/// The queue of pods waiting for a node, by pod key.
#[derive(Debug)]
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: BTreeSet<(Order, String)>,
    backoff: BTreeSet<(Instant, u64, String)>,
    seq: u64,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl SchedulingQueue {
    /// An empty queue with the given backoff bounds.
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> SchedulingQueue {
        SchedulingQueue {
            entries: HashMap::new(),
            active: BTreeSet::new(),
            backoff: BTreeSet::new(),
            seq: 0,
            initial_backoff,
            max_backoff,
        }
    }

    /// Adds a pod to the active queue unless it is queued already.
    pub fn add(&mut self, key: &str, priority: i32, created_ns: i128) {
        if self.entries.contains_key(key) {
            return;
        }
        self.seq += 1;
        let order = (-(priority as i64), created_ns, self.seq);
        self.active.insert((order, key.to_owned()));
        self.entries.insert(
            key.to_owned(),
            Entry {
                order,
                attempts: 0,
                place: Place::Active,
            },
        );
    }

    /// Whether the pod is queued (anywhere, including in flight).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Whether the pod was popped and not yet settled.
    pub fn in_flight(&self, key: &str) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.place == Place::InFlight)
    }

    /// Forgets a pod wherever it is.
    pub fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.unlink(key, &e);
        }
    }

    fn unlink(&mut self, key: &str, e: &Entry) {
        match e.place {
            Place::Active => {
                self.active.remove(&(e.order, key.to_owned()));
            }
            Place::Backoff(at) => {
                self.backoff.remove(&(at, e.order.2, key.to_owned()));
            }
            Place::InFlight => {}
        }
    }

    /// Takes the first active pod; it is in flight until settled.
    pub fn pop(&mut self) -> Option<String> {
        let (_, key) = self.active.pop_first()?;
        if let Some(e) = self.entries.get_mut(&key) {
            e.place = Place::InFlight;
        }
        Some(key)
    }

    /// The pod was bound: forget it.
    pub fn done(&mut self, key: &str) {
        self.remove(key);
    }

    /// The pod did not get a node: it waits for its backoff (1 s doubling
    /// to the maximum). Returns the wait.
    pub fn backoff(&mut self, key: &str, now: Instant) -> Option<Duration> {
        let mut e = self.entries.remove(key)?;
        self.unlink(key, &e);
        e.attempts = e.attempts.saturating_add(1);
        let wait = self.backoff_duration(e.attempts);
        let at = now + wait;
        e.place = Place::Backoff(at);
        self.backoff.insert((at, e.order.2, key.to_owned()));
        self.entries.insert(key.to_owned(), e);
        Some(wait)
    }

    /// Backoff after `attempts` failures: initial × 2^(attempts−1), capped.
    pub fn backoff_duration(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }

    /// Moves pods whose backoff expired by `now` to the active queue.
    pub fn flush_backoff(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.backoff.first() {
            if *at > now {
                break;
            }
            let (_, _, key) = self.backoff.pop_first().expect("non-empty");
            self.activate(key);
        }
    }

    /// A cluster change that may make waiting pods fit (a node added or
    /// changed, a bound pod gone): every backing-off pod becomes active.
    /// Returns how many moved.
    pub fn move_all_to_active(&mut self) -> usize {
        let moved = std::mem::take(&mut self.backoff);
        let n = moved.len();
        for (_, _, key) in moved {
            self.activate(key);
        }
        n
    }

    fn activate(&mut self, key: String) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.place = Place::Active;
            self.active.insert((e.order, key));
        }
    }

    /// When the first backing-off pod's wait ends.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.first().map(|(at, _, _)| *at)
    }

    /// Whether a pod is ready to be popped.
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// (active, backing off, in flight) counts.
    pub fn lens(&self) -> (usize, usize, usize) {
        let a = self.active.len();
        let b = self.backoff.len();
        (a, b, self.entries.len() - a - b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_priority_backoff() {
        let mut q = SchedulingQueue::new(Duration::from_secs(1), Duration::from_secs(10));
        q.add("b", 0, 20);
        q.add("a", 0, 10);
        q.add("hi", 5, 30);
        q.add("a", 0, 10);
        assert_eq!(q.pop().as_deref(), Some("hi"));
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert!(q.in_flight("a"));
        let now = Instant::now();
        assert_eq!(q.backoff("a", now), Some(Duration::from_secs(1)));
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None);
        q.flush_backoff(now + Duration::from_millis(500));
        assert!(!q.has_active());
        q.flush_backoff(now + Duration::from_secs(1));
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.backoff("a", now), Some(Duration::from_secs(2)));
        assert_eq!(q.move_all_to_active(), 1);
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.done("a");
        assert!(!q.contains("a"));
        assert_eq!(q.backoff_duration(5), Duration::from_secs(10));
        q.remove("hi");
        q.remove("b");
        assert_eq!(q.lens(), (0, 0, 0));
    }
}
