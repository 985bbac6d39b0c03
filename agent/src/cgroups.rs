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
