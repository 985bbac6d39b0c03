//! Pod cgroups (cgroupfs driver). The runtime creates a container's cgroup
//! under the pod's cgroup parent and removes it with the container; the pod's
//! own cgroup directory is left behind, and removed here once the pod is gone.
//! (Full cgroup management — QoS tiers, pod-level limits — is its own piece of work.)

use std::path::{Path, PathBuf};

/// Every mounted cgroup hierarchy (v1 controllers and the v2/unified mount).
fn hierarchies() -> Vec<PathBuf> {
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
