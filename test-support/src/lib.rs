//! What berth's tests share: the environment switches every suite reads the
//! same way, a seeded random generator whose seed is printed so a failure can
//! be replayed, and a free local port.
//!
//! - [`required`]: `CI=true` or `BERTH_REQUIRE_RUNTIME=1`; a missing
//!   prerequisite (etcd, kubectl, a binary) is then a failure, not a skip
//!   ([`skip_or_fail`]).
//! - [`soak`]: `BERTH_SOAK=1` (or `true`): run the long variants.
//! - [`seed`] and [`TestRng`]: `BERTH_SEED=<n>` replays a seeded run.
//!
//! A seed replays within one build (one `Cargo.lock`): the generator is
//! `rand`'s `StdRng`, which a `rand` upgrade may change.

use std::path::Path;
use std::time::Duration;

use rand::distr::uniform::SampleUniform;
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};

/// True when a missing prerequisite must fail the test instead of skipping
/// it: `CI=true` or `BERTH_REQUIRE_RUNTIME=1` (exactly those values).
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("BERTH_REQUIRE_RUNTIME").is_ok_and(|v| v == "1")
}

/// A missing prerequisite `what` of `test`: a panic under [`required`], else
/// `SKIPPED <test>: <reason>` on stderr (the caller then returns).
pub fn skip_or_fail(test: &str, what: &str, reason: &str) {
    assert!(
        !required(),
        "{test}: {what} is required (CI=true or BERTH_REQUIRE_RUNTIME=1) but: {reason}"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// True when `BERTH_SOAK` is `1` or `true` (any case): run the long variants.
pub fn soak() -> bool {
    std::env::var("BERTH_SOAK").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The seed of `test`'s run: `$BERTH_SEED`, else the clock. Printed either
/// way, as `<test>: seed <n> (replay with BERTH_SEED=<n>)`.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("BERTH_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with BERTH_SEED={seed})");
    seed
}

/// A seeded generator: one seed gives one sequence (within a build).
pub struct TestRng(StdRng);

impl TestRng {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> TestRng {
        TestRng(StdRng::seed_from_u64(seed))
    }

    /// The generator of `test`'s run: [`TestRng::new`] of [`seed`] (printed).
    pub fn for_test(test: &str) -> TestRng {
        TestRng::new(seed(test))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n`; `0` when `n` is `0` (or less).
    pub fn below<T>(&mut self, n: T) -> T
    where
        T: SampleUniform + PartialOrd + Default,
    {
        if n <= T::default() {
            return T::default();
        }
        self.0.random_range(T::default()..n)
    }

    /// True once in `one_in` draws, on average (always when `one_in` <= 1).
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    /// A duration from `lo` to `hi` milliseconds, both included (`lo` when
    /// `hi` < `lo`).
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.0.random_range(lo..=hi.max(lo)))
    }

    /// An independent generator seeded from this one: for a concurrent task,
    /// so its draws do not depend on how the tasks interleave.
    pub fn fork(&mut self) -> TestRng {
        TestRng::new(self.next_u64())
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory under `root` (an integration test's
/// `env!("CARGO_TARGET_TMPDIR")`), named after `test`; removed when dropped.
pub fn test_dir(root: impl AsRef<Path>, test: &str) -> tempfile::TempDir {
    let root = root.as_ref();
    std::fs::create_dir_all(root).unwrap();
    tempfile::Builder::new()
        .prefix(&format!("{test}-"))
        .tempdir_in(root)
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(rng: &mut TestRng) -> Vec<u64> {
        (0..32).map(|_| rng.below(1_000_000u64)).collect()
    }

    #[test]
    fn one_seed_replays_one_sequence() {
        assert_eq!(draws(&mut TestRng::new(7)), draws(&mut TestRng::new(7)));
        assert_ne!(draws(&mut TestRng::new(7)), draws(&mut TestRng::new(8)));
        let (mut a, mut b) = (TestRng::new(7), TestRng::new(7));
        assert_eq!(draws(&mut a.fork()), draws(&mut b.fork()));
        assert_eq!(draws(&mut a), draws(&mut b));
    }

    #[test]
    fn ranges_hold() {
        let mut rng = TestRng::new(1);
        for _ in 0..1000 {
            assert!(rng.below(5u64) < 5);
            assert!(rng.below(3usize) < 3);
            let d = rng.millis(10, 20);
            assert!((10..=20).contains(&d.as_millis()), "{d:?}");
        }
        assert_eq!(rng.below(0u64), 0);
        assert_eq!(rng.below(1usize), 0);
        assert_eq!(rng.millis(30, 10), Duration::from_millis(30));
        assert!(rng.chance(1));
        assert!(rng.chance(0));
    }

    #[test]
    fn free_ports_bind() {
        assert_ne!(free_port(), 0);
    }

    #[test]
    fn test_dirs_are_fresh() {
        let root = tempfile::tempdir().unwrap();
        let a = test_dir(root.path().join("t"), "x");
        let b = test_dir(root.path().join("t"), "x");
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_string_lossy();
        assert!(name.starts_with("x-"), "{name}");
    }
}
