//! Per-key exponential back-off, as the kubelet's `flowcontrol.Backoff`.
//!
//! Used for container restarts (CrashLoopBackOff: 10 s doubling to 5 min) and
//! image pulls (ImagePullBackOff). Times are `tokio::time::Instant`, so tests
//! run under paused time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Entry {
    backoff: Duration,
    last_update: Instant,
}

/// Exponential back-off per key.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Backoff {
    /// Back-off starting at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The kubelet's container restart back-off: 10 s doubling to 5 min.
    pub fn crash_loop() -> Self {
        Self::new(Duration::from_secs(10), Duration::from_secs(300))
    }

    /// The kubelet's image pull back-off: 10 s doubling to 5 min.
    pub fn image_pull() -> Self {
        Self::new(Duration::from_secs(10), Duration::from_secs(300))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An entry is forgotten once nothing happened to it for twice the maximum.
    fn expired(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.last_update) > 2 * self.max
    }

    /// Record one more failure of `key` at `at`: start at the initial delay, or
    /// double the current one (up to the maximum).
    pub fn next(&self, key: &str, at: Instant) {
        let mut entries = self.lock();
        let next = match entries.get(key) {
            Some(e) if !self.expired(e, at) => (e.backoff * 2).min(self.max),
            _ => self.initial,
        };
        entries.insert(
            key.to_string(),
            Entry {
                backoff: next,
                last_update: at,
            },
        );
    }

    /// The current delay of `key` (zero when it has none).
    pub fn get(&self, key: &str) -> Duration {
        self.lock()
            .get(key)
            .map(|e| e.backoff)
            .unwrap_or(Duration::ZERO)
    }

    /// How long `key` must still wait, counting from `since` (when the failure
    /// happened): `None` when it may go ahead now.
    pub fn remaining_since(&self, key: &str, since: Instant, now: Instant) -> Option<Duration> {
        let entries = self.lock();
        let e = entries.get(key)?;
        if self.expired(e, now) {
            return None;
        }
        let ready_at = since + e.backoff;
        (ready_at > now).then(|| ready_at - now)
    }

    /// How long `key` must still wait, counting from its last recorded failure:
    /// `None` when it may go ahead now.
    pub fn remaining(&self, key: &str, now: Instant) -> Option<Duration> {
        let entries = self.lock();
        let e = entries.get(key)?;
        let ready_at = e.last_update + e.backoff;
        (ready_at > now).then(|| ready_at - now)
    }

    /// Forget `key` (after a success long enough to reset the back-off).
    pub fn reset(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Forget every key for which `keep` returns false.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_to_the_cap_and_resets() {
        let b = Backoff::crash_loop();
        let mut delays = Vec::new();
        for _ in 0..7 {
            b.next("web", Instant::now());
            delays.push(b.get("web").as_secs());
        }
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300]);
        b.reset("web");
        assert_eq!(b.get("web"), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_from_the_failure_time() {
        let b = Backoff::crash_loop();
        let failed = Instant::now();
        assert_eq!(b.remaining_since("web", failed, Instant::now()), None);
        b.next("web", failed);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            b.remaining_since("web", failed, Instant::now()),
            Some(Duration::from_secs(6))
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.remaining_since("web", failed, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_after_twice_the_max_without_failures() {
        let b = Backoff::crash_loop();
        for _ in 0..4 {
            b.next("web", Instant::now());
        }
        assert_eq!(b.get("web"), Duration::from_secs(80));
        tokio::time::advance(Duration::from_secs(601)).await;
        b.next("web", Instant::now());
        assert_eq!(b.get("web"), Duration::from_secs(10));
    }
}
