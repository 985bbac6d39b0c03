//! Numbered per-instance directories under `/tmp/berth-it`, owned through an
//! `flock` that dies with the owning process.
//!
//! Why not `tempfile::tempdir()`: the number `N` also names the instance's
//! bridge and subnet, so it must be unique across concurrently running test
//! processes (nextest runs one process per test); a lock file per number gives
//! that, and a lock the kernel releases when the owner dies tells a live
//! instance from a leftover of a killed test run, which we can then sweep. The
//! paths also stay short, as unix socket paths must (108 bytes).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};

/// The parent of all instance directories; `$BERTH_TEST_TMP` overrides it
/// (keep it short: sockets live below it).
pub(crate) fn base_dir() -> PathBuf {
    match std::env::var_os("BERTH_TEST_TMP") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/tmp/berth-it"),
    }
}

/// One owned instance directory, `<base>/<kind><index>`.
#[derive(Debug)]
pub(crate) struct InstanceDir {
    pub path: PathBuf,
    pub index: u32,
    /// Held for as long as the instance lives; released on drop or process death.
    _lock: Flock<File>,
}

/// A file that keeps a dead owner's instance directory from being swept, so
/// a test can inspect what a killed test process leaves behind (the harness's
/// own sweep test); whoever inspects it removes the file, then sweeps.
pub const NO_SWEEP: &str = ".no-sweep";

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl InstanceDir {
    /// Take the first free number in `1..=max` for `kind`. When the directory
    /// of a free number still exists, its owner died: `sweep` cleans it up
    /// (it gets the path and the index) before the directory is recreated empty.
    pub fn allocate(
        kind: &str,
        max: u32,
        sweep: impl Fn(&Path, u32) -> anyhow::Result<()>,
    ) -> anyhow::Result<InstanceDir> {
        // Start at a different number per process and call, so concurrent
        // allocations rarely contend for the same lock.
        let start = std::process::id()
            .wrapping_mul(7)
            .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(13));
        for i in 0..max {
            let index = (start.wrapping_add(i) % max) + 1;
            if let Some(dir) = Self::try_take(kind, index, &sweep)? {
                std::fs::create_dir(&dir.path)
                    .with_context(|| format!("creating {}", dir.path.display()))?;
                return Ok(dir);
            }
        }
        anyhow::bail!(
            "all {max} instance numbers for {kind:?} under {} are in use",
            base_dir().display()
        )
    }

    /// Lock `<base>/<kind><index>`; `None` when another live instance holds it.
    /// A directory left behind by a dead owner is swept and removed.
    fn try_take(
        kind: &str,
        index: u32,
        sweep: &impl Fn(&Path, u32) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<InstanceDir>> {
        let base = base_dir();
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let lock_path = base.join(format!("{kind}{index}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        };
        let path = base.join(format!("{kind}{index}"));
        if path.join(NO_SWEEP).exists() {
            // Kept for inspection (see NO_SWEEP); not ours to take.
            return Ok(None);
        }
        if path.exists() {
            eprintln!(
                "berth-integration: sweeping {} left behind by a test process that died",
                path.display()
            );
            sweep(&path, index)
                .with_context(|| format!("sweeping the stale instance {}", path.display()))?;
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing the stale {}", path.display()))?;
            }
        }
        Ok(Some(InstanceDir {
            path,
            index,
            _lock: lock,
        }))
    }

    /// Sweep every directory of `kind` whose owner died; returns their paths.
    pub fn sweep_all(
        kind: &str,
        sweep: impl Fn(&Path, u32) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<PathBuf>> {
        let base = base_dir();
        let mut swept = Vec::new();
        let Ok(entries) = std::fs::read_dir(&base) else {
            return Ok(swept);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(index) = name
                .strip_suffix(".lock")
                .and_then(|n| n.strip_prefix(kind))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let path = base.join(format!("{kind}{index}"));
            if !path.exists() {
                continue;
            }
            // Taking the lock sweeps the directory; dropping it releases the number.
            if Self::try_take(kind, index, &sweep)?.is_some() {
                swept.push(path);
            }
        }
        Ok(swept)
    }
}
