//! The host's cgroup hierarchies: which mode it runs (v1, hybrid, v2) and
//! every mounted hierarchy, for removing what the runtime left of a pod's
//! cgroup in all of them (including a hybrid host's `unified` mount, which
//! `cgroups-rs` does not see but runc writes to).

use std::path::{Path, PathBuf};

/// How the host mounts cgroups (upstream's `CgroupSetup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// cgroup v1 only.
    Legacy,
    /// cgroup v1 controllers, and a cgroup2 mount at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// cgroup v2 only (`/sys/fs/cgroup` is cgroup2).
    Unified,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Legacy => "cgroup v1",
            Mode::Hybrid => "cgroup v1 (hybrid: v2 mounted at /sys/fs/cgroup/unified)",
            Mode::Unified => "cgroup v2",
        })
    }
}

/// The host's cgroup mode, from the file system types of `/sys/fs/cgroup`
/// and `/sys/fs/cgroup/unified` (as runc's `IsCgroup2UnifiedMode`).
pub fn detect_mode() -> Mode {
    let cgroup2 = |path: &str| {
        nix::sys::statfs::statfs(path)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    };
    if cgroup2("/sys/fs/cgroup") {
        Mode::Unified
    } else if cgroup2("/sys/fs/cgroup/unified") {
        Mode::Hybrid
    } else {
        Mode::Legacy
    }
}

/// Every mounted cgroup hierarchy (v1 controllers and the v2/unified mount).
pub(crate) fn hierarchies() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            // mountinfo: ... mount-point ... - fstype source options
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect()
}

/// Remove the pod's cgroup directories (`<root>/pod<uid>`, `<root>/burstable/pod<uid>`,
/// `<root>/besteffort/pod<uid>`) in every hierarchy. Only empty cgroups can be
/// removed, so this never harms a running process; failures are logged.
pub fn remove_pod_cgroups(cgroup_root: &str, uid: &str) {
    let root = cgroup_root.trim_matches('/');
    for h in hierarchies() {
        for tier in ["", "burstable", "besteffort"] {
            let dir = Path::new(&h)
                .join(root)
                .join(tier)
                .join(format!("pod{uid}"));
            match std::fs::remove_dir(&dir) {
                Ok(()) => tracing::debug!(cgroup = %dir.display(), "removed pod cgroup"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "removing pod cgroup failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root and a writable cgroup hierarchy; skipped (with a reason) otherwise.
    #[test]
    fn removes_empty_pod_cgroups_in_every_hierarchy() {
        let uid = format!("test{}", std::process::id());
        let root = format!("/berth-cgroup-test-{}", std::process::id());
        let mut made = Vec::new();
        for h in hierarchies() {
            let dir = h
                .join(root.trim_start_matches('/'))
                .join("besteffort")
                .join(format!("pod{uid}"));
            if std::fs::create_dir_all(&dir).is_ok() {
                made.push(dir);
            }
        }
        if made.is_empty() {
            eprintln!(
                "SKIP removes_empty_pod_cgroups_in_every_hierarchy: cannot create cgroups here (not root?)"
            );
            return;
        }
        remove_pod_cgroups(&root, &uid);
        for dir in &made {
            assert!(!dir.exists(), "{} is left", dir.display());
            // Clean up the test's own parents.
            let _ = std::fs::remove_dir(dir.parent().unwrap());
            let _ = std::fs::remove_dir(dir.parent().unwrap().parent().unwrap());
        }
    }
}
