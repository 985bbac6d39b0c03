//! The node's capacity as the kernel reports it: CPUs, memory, and the size of
//! the filesystem holding the agent's root directory. Read by the Node status
//! and by what defaults to it (a container's memory capacity for its OOM score,
//! a `resourceFieldRef` limit the container does not set). A leaf module.

use std::path::Path;

/// The number of CPUs the agent may use.
pub fn cpus() -> i64 {
    std::thread::available_parallelism().map_or(1, |n| i64::try_from(n.get()).unwrap_or(1))
}

/// MemTotal from /proc/meminfo, in KiB.
pub fn mem_total_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

/// MemTotal in bytes (0 if unreadable).
pub fn memory_bytes() -> i64 {
    mem_total_kib()
        .and_then(|kib| i64::try_from(kib).ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

pub(crate) fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The size of the filesystem holding `path`, in bytes.
pub fn fs_capacity(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    #[allow(clippy::unnecessary_cast)]
    Some((st.blocks() as u64).saturating_mul(st.fragment_size() as u64))
}

/// The node's ephemeral storage: the filesystem of `root_dir` (else `/`).
pub fn ephemeral_storage_bytes(root_dir: &Path) -> Option<u64> {
    fs_capacity(root_dir).or_else(|| fs_capacity(Path::new("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total() {
        assert_eq!(
            parse_mem_total("MemTotal:        8040516 kB\nMemFree: 1 kB\n"),
            Some(8040516)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }
}
