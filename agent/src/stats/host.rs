//! The node as a whole: memory and CPU (from the root cgroup, else /proc),
//! boot time, filesystem usage (statvfs) and process limits.
//!
//! The node's memory is the root cgroup's, as cadvisor gives the kubelet:
//! on v1 the root memory cgroup (`usage_in_bytes`, `total_*` of
//! `memory.stat`); on v2, whose root cgroup has no `memory.current`, what
//! runc derives from /proc/meminfo (usage = MemTotal − MemFree, working set =
//! usage − Inactive(file)). `availableBytes` is MemTotal − working set, as the
//! kubelet computes it from the root container's limit (the machine's memory).

use std::path::Path;

use super::cgroup::{
    CgroupFs, CgroupSample, CgroupVersion, MemorySample, parse_flat_keyed, working_set,
};
use super::{Result, StatsError, read_file, read_u64};

/// The kernel's `USER_HZ`: /proc/stat counts in these ticks on every
/// architecture Kubernetes runs on.
const USER_HZ: u64 = 100;

/// What /proc/meminfo says, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meminfo {
    pub total: u64,
    pub free: u64,
    pub active_anon: u64,
    pub inactive_anon: u64,
    pub inactive_file: u64,
}

/// Parse /proc/meminfo (`Key:   123 kB` lines).
pub fn parse_meminfo(text: &str) -> Meminfo {
    let mut info = Meminfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(value) = parts.next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            _ => value,
        };
        match key.trim() {
            "MemTotal" => info.total = bytes,
            "MemFree" => info.free = bytes,
            "Active(anon)" => info.active_anon = bytes,
            "Inactive(anon)" => info.inactive_anon = bytes,
            "Inactive(file)" => info.inactive_file = bytes,
            _ => {}
        }
    }
    info
}

/// The node's memory from /proc/meminfo alone (runc's root-cgroup stats on v2).
pub fn memory_from_meminfo(info: &Meminfo) -> MemorySample {
    let usage = info.total.saturating_sub(info.free);
    MemorySample {
        usage,
        working_set: working_set(usage, Some(info.inactive_file)),
        rss: Some(info.active_anon.saturating_add(info.inactive_anon)),
        page_faults: None,
        major_page_faults: None,
        limit: Some(info.total),
    }
}

/// The node's memory: the root cgroup on v1, /proc/meminfo on v2 (page
/// faults from the root `memory.stat` where the kernel has one). The limit is
/// always MemTotal, so `available()` is MemTotal − working set.
pub fn node_memory(cgroups: &CgroupFs, proc_root: &Path) -> Result<MemorySample> {
    let info = parse_meminfo(&read_file(&proc_root.join("meminfo"))?);
    let mut sample = match cgroups.version {
        CgroupVersion::V1 => match cgroups.read("/") {
            Ok(s) => s.memory.unwrap_or_else(|| memory_from_meminfo(&info)),
            Err(e) if e.is_not_found() => memory_from_meminfo(&info),
            Err(e) => return Err(e),
        },
        CgroupVersion::V2 => {
            let mut sample = memory_from_meminfo(&info);
            if let Ok(text) = read_file(&cgroups.root.join("memory.stat")) {
                let stat = parse_flat_keyed(&text);
                sample.page_faults = stat.get("pgfault").copied();
                sample.major_page_faults = stat.get("pgmajfault").copied();
            }
            sample
        }
    };
    sample.limit = (info.total > 0).then_some(info.total);
    Ok(sample)
}

/// What /proc/stat says of the whole machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStat {
    /// CPU time spent not idle (user, nice, system, irq, softirq, steal), ns.
    pub cpu_busy_ns: Option<u64>,
    /// Boot time, seconds since the epoch.
    pub boot_time: Option<i64>,
}

/// Parse /proc/stat's aggregate `cpu` line and `btime`.
pub fn parse_proc_stat(text: &str) -> ProcStat {
    let mut stat = ProcStat::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("cpu") => {
                let fields: Vec<u64> = parts.map_while(|f| f.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal (guest is in user).
                if fields.len() >= 8 {
                    let busy = [0usize, 1, 2, 5, 6, 7]
                        .iter()
                        .try_fold(0u64, |acc, &i| acc.checked_add(fields[i]));
                    stat.cpu_busy_ns =
                        busy.and_then(|ticks| ticks.checked_mul(1_000_000_000 / USER_HZ));
                }
            }
            Some("btime") => stat.boot_time = parts.next().and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    stat
}

/// The node's cumulative CPU time in ns: the root cgroup's (cpuacct.usage on
/// v1, cpu.stat on v2), else the busy time of /proc/stat.
pub fn node_cpu_ns(cgroups: &CgroupFs, proc_root: &Path) -> Result<u64> {
    match cgroups.read("/") {
        Ok(CgroupSample {
            cpu_usage_ns: Some(ns),
            ..
        }) => return Ok(ns),
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    let path = proc_root.join("stat");
    parse_proc_stat(&read_file(&path)?)
        .cpu_busy_ns
        .ok_or_else(|| StatsError::Parse {
            path,
            message: "no aggregate cpu line".into(),
        })
}

/// The node's boot time, ns since the epoch.
pub fn boot_time_ns(proc_root: &Path) -> Result<i64> {
    let path = proc_root.join("stat");
    parse_proc_stat(&read_file(&path)?)
        .boot_time
        .and_then(|s| s.checked_mul(1_000_000_000))
        .ok_or_else(|| StatsError::Parse {
            path,
            message: "no btime line".into(),
        })
}

/// A filesystem's size and free space, from statvfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsInfo {
    pub capacity: u64,
    /// Free to unprivileged users.
    pub available: u64,
    /// Capacity less all free blocks.
    pub used: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

impl FsInfo {
    pub fn inodes_used(&self) -> u64 {
        self.inodes.saturating_sub(self.inodes_free)
    }
}

/// statvfs of the filesystem holding `path`.
pub fn fs_info(path: &Path) -> Result<FsInfo> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| StatsError::Statvfs {
        path: path.to_path_buf(),
        source,
    })?;
    // The field types differ between targets (u32 or u64).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let (frsize, blocks, bfree, bavail, files, ffree) = (
        st.fragment_size() as u64,
        st.blocks() as u64,
        st.blocks_free() as u64,
        st.blocks_available() as u64,
        st.files() as u64,
        st.files_free() as u64,
    );
    Ok(FsInfo {
        capacity: blocks.saturating_mul(frsize),
        available: bavail.saturating_mul(frsize),
        used: blocks.saturating_sub(bfree).saturating_mul(frsize),
        inodes: files,
        inodes_free: ffree,
    })
}

/// `/proc/sys/kernel/pid_max`.
pub fn pid_max(proc_root: &Path) -> Result<i64> {
    let path = proc_root.join("sys/kernel/pid_max");
    let v = read_u64(&path)?;
    i64::try_from(v).map_err(|e| StatsError::Parse {
        path,
        message: e.to_string(),
    })
}

/// The number of processes (sysinfo's `procs`, as upstream's
/// `syscall.Sysinfo().Procs`).
pub fn process_count() -> Option<i64> {
    nix::sys::sysinfo::sysinfo()
        .ok()
        .map(|s| i64::from(s.process_count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:        8040516 kB\nMemFree:          512000 kB\n\
MemAvailable:    6000000 kB\nBuffers:          100000 kB\nCached:          4000000 kB\n\
Active(anon):      20000 kB\nInactive(anon):    30000 kB\nActive(file):    1000000 kB\n\
Inactive(file):  2000000 kB\nHugePages_Total:       0\n";

    #[test]
    fn meminfo_gives_the_nodes_memory_on_v2() {
        let info = parse_meminfo(MEMINFO);
        assert_eq!(info.total, 8_040_516 * 1024);
        assert_eq!(info.inactive_file, 2_000_000 * 1024);
        let m = memory_from_meminfo(&info);
        assert_eq!(m.usage, (8_040_516 - 512_000) * 1024);
        assert_eq!(m.working_set, (8_040_516 - 512_000 - 2_000_000) * 1024);
        assert_eq!(m.rss, Some(50_000 * 1024));
        assert_eq!(m.available(), Some((512_000 + 2_000_000) * 1024));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meminfo"), MEMINFO).unwrap();
        let cg = tempfile::tempdir().unwrap();
        std::fs::write(
            cg.path().join("memory.stat"),
            "anon 1\npgfault 77\npgmajfault 2\n",
        )
        .unwrap();
        let v2 = CgroupFs {
            version: CgroupVersion::V2,
            root: cg.path().to_path_buf(),
        };
        let m = node_memory(&v2, dir.path()).unwrap();
        assert_eq!(m.page_faults, Some(77));
        assert_eq!(m.major_page_faults, Some(2));
        assert_eq!(m.limit, Some(8_040_516 * 1024));
    }

    #[test]
    fn v1_node_memory_is_the_root_cgroups_with_memtotal_as_limit() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::write(proc.path().join("meminfo"), MEMINFO).unwrap();
        let cg = tempfile::tempdir().unwrap();
        super::super::cgroup::tests::write_v1(
            cg.path(),
            "/",
            2_429_203_330_297,
            3_657_367_552,
            9_223_372_036_854_771_712,
        );
        let v1 = CgroupFs {
            version: CgroupVersion::V1,
            root: cg.path().to_path_buf(),
        };
        let m = node_memory(&v1, proc.path()).unwrap();
        assert_eq!(m.usage, 3_657_367_552);
        assert_eq!(m.working_set, 3_657_367_552 - 2_398_932_992);
        assert_eq!(
            m.available(),
            Some(8_040_516 * 1024 - (3_657_367_552 - 2_398_932_992))
        );
        assert_eq!(node_cpu_ns(&v1, proc.path()).unwrap(), 2_429_203_330_297);
    }

    #[test]
    fn proc_stat_busy_time_and_boot_time() {
        let text = "cpu  227207 0 14827 58036 832 0 68 298 0 0\n\
                    cpu0 112682 0 7019 30624 157 0 5 145 0 0\nintr 1 2 3\nbtime 1796420895\n";
        let s = parse_proc_stat(text);
        assert_eq!(
            s.cpu_busy_ns,
            Some((227_207 + 14_827 + 68 + 298) * 10_000_000)
        );
        assert_eq!(s.boot_time, Some(1_796_420_895));
        assert_eq!(parse_proc_stat("cpu 1 2\n"), ProcStat::default());

        // No root cgroup CPU file: /proc/stat.
        let proc = tempfile::tempdir().unwrap();
        std::fs::write(proc.path().join("stat"), text).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let v2 = CgroupFs {
            version: CgroupVersion::V2,
            root: empty.path().to_path_buf(),
        };
        assert_eq!(
            node_cpu_ns(&v2, proc.path()).unwrap(),
            (227_207 + 14_827 + 68 + 298) * 10_000_000
        );
        assert_eq!(
            boot_time_ns(proc.path()).unwrap(),
            1_796_420_895_000_000_000
        );
    }

    #[test]
    fn statvfs_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let fs = fs_info(dir.path()).unwrap();
        assert!(fs.capacity > 0);
        assert!(fs.available <= fs.capacity);
        assert!(fs.used <= fs.capacity);
        assert!(fs.inodes_free <= fs.inodes || fs.inodes == 0);
        assert!(
            fs_info(&dir.path().join("gone"))
                .unwrap_err()
                .is_not_found()
        );

        std::fs::create_dir_all(dir.path().join("sys/kernel")).unwrap();
        std::fs::write(dir.path().join("sys/kernel/pid_max"), "32768\n").unwrap();
        assert_eq!(pid_max(dir.path()).unwrap(), 32768);
        assert!(process_count().is_some_and(|n| n > 0));
    }
}
