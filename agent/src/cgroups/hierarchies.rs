//! The host's cgroup mode: v1, hybrid (v1 controllers and a cgroup2 mount
//! at `/sys/fs/cgroup/unified`, which `cgroups-rs` does not see but runc
//! writes to) or v2.

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
