//! Disk usage of a directory tree (emptyDir volumes, container logs), as the
//! kubelet's `MetricsDu` measures it: bytes from allocated blocks (`du`),
//! inodes counted once each (hard links deduplicated), the root included.
//! The walk does not follow symlinks, stays on the root's filesystem, skips
//! what it cannot read, and stops after a bounded number of entries.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Result, StatsError};

/// How many entries one walk visits at most.
pub const MAX_ENTRIES: usize = 1_000_000;

/// What a directory tree uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirUsage {
    /// Allocated bytes (`st_blocks` × 512).
    pub bytes: u64,
    /// Inodes (the root, every entry below it, hard links once).
    pub inodes: u64,
    /// False when the walk stopped at its bound.
    pub complete: bool,
}

/// Measure the tree at `root` (visiting at most `max_entries` entries).
pub fn dir_usage(root: &Path, max_entries: usize) -> Result<DirUsage> {
    let meta = std::fs::symlink_metadata(root).map_err(|source| StatsError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let dev = meta.dev();
    let mut usage = DirUsage {
        complete: true,
        ..Default::default()
    };
    let mut seen_links: HashSet<(u64, u64)> = HashSet::new();
    let mut visited = 0usize;
    let mut count = |m: &std::fs::Metadata, usage: &mut DirUsage| {
        if !m.is_dir() && m.nlink() > 1 && !seen_links.insert((m.dev(), m.ino())) {
            return;
        }
        usage.bytes = usage.bytes.saturating_add(m.blocks().saturating_mul(512));
        usage.inodes = usage.inodes.saturating_add(1);
    };
    count(&meta, &mut usage);
    if !meta.is_dir() {
        return Ok(usage);
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > max_entries {
                usage.complete = false;
                return Ok(usage);
            }
            let Ok(m) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if m.dev() != dev {
                // A mount below the root (du -x).
                continue;
            }
            count(&m, &mut usage);
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Directory usage remembered for a while: walking a big emptyDir on every
/// request would cost more than the answer is worth (the kubelet measures
/// volumes once a minute, `--volume-stats-agg-period`).
#[derive(Debug)]
pub struct DuCache {
    ttl: Duration,
    entries: HashMap<PathBuf, (Instant, DirUsage)>,
}

impl DuCache {
    /// A cache whose readings live `ttl` (zero: measure every time).
    pub fn new(ttl: Duration) -> Self {
        DuCache {
            ttl,
            entries: HashMap::new(),
        }
    }

    /// The usage of `path`, measured now unless a fresh enough reading exists.
    pub fn usage(&mut self, path: &Path) -> Result<DirUsage> {
        if let Some((at, usage)) = self.entries.get(path)
            && at.elapsed() < self.ttl
        {
            return Ok(*usage);
        }
        let usage = dir_usage(path, MAX_ENTRIES)?;
        self.entries
            .insert(path.to_path_buf(), (Instant::now(), usage));
        Ok(usage)
    }

    /// Forget every path not in `keep` (volumes and logs that are gone).
    pub fn retain(&mut self, keep: &HashSet<PathBuf>) {
        self.entries.retain(|p, _| keep.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_and_inodes_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::write(root.join("sub/b"), vec![2u8; 5000]).unwrap();
        std::fs::hard_link(root.join("a"), root.join("a-again")).unwrap();
        // A symlink out of the tree counts as itself, not as its target.
        let outside = dir.path().join("big");
        std::fs::write(&outside, vec![3u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        let u = dir_usage(&root, MAX_ENTRIES).unwrap();
        // vol, sub, a (once for both names), sub/b, link.
        assert_eq!(u.inodes, 5);
        assert!(u.complete);
        let blocks = |p: &Path| std::fs::symlink_metadata(p).unwrap().blocks() * 512;
        let want = blocks(&root)
            + blocks(&root.join("sub"))
            + blocks(&root.join("a"))
            + blocks(&root.join("sub/b"))
            + blocks(&root.join("link"));
        assert_eq!(u.bytes, want);
        assert!(u.bytes < 1 << 20, "the link's target is not counted");

        let partial = dir_usage(&root, 2).unwrap();
        assert!(!partial.complete);
        assert!(
            dir_usage(&dir.path().join("none"), 10)
                .unwrap_err()
                .is_not_found()
        );
    }

    #[test]
    fn the_cache_remembers_until_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let mut cache = DuCache::new(Duration::from_secs(3600));
        let first = cache.usage(dir.path()).unwrap();
        std::fs::write(dir.path().join("b"), b"y").unwrap();
        assert_eq!(cache.usage(dir.path()).unwrap(), first);
        cache.retain(&HashSet::new());
        assert_eq!(cache.usage(dir.path()).unwrap().inodes, first.inodes + 1);
        let mut fresh = DuCache::new(Duration::ZERO);
        fresh.usage(dir.path()).unwrap();
        std::fs::write(dir.path().join("c"), b"z").unwrap();
        assert_eq!(fresh.usage(dir.path()).unwrap().inodes, first.inodes + 2);
    }
}
