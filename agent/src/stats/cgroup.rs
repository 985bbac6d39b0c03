//! CPU, memory and process counts of one cgroup, read from cgroupfs as
//! cadvisor reads them for the kubelet.
//!
//! cgroup v1 (and hybrid hosts, whose controllers are v1): `cpuacct.usage`
//! (ns); `memory.usage_in_bytes`, `memory.limit_in_bytes` and the
//! hierarchical `total_*` lines of `memory.stat`; `pids.current`; each under
//! `<root>/<controller>/<cgroup>`. cgroup v2: `cpu.stat`'s `usage_usec`,
//! `memory.current`, `memory.max`, `memory.stat` (`inactive_file`, `anon`,
//! `pgfault`, `pgmajfault`) and `pids.current` under `<root>/<cgroup>`.
//! The working set is usage less inactive file pages, floored at 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Result, StatsError, read_file, read_u64};

/// A memory limit above this is "no limit" (the kernel rounds the v1
/// maximum, so it is not `i64::MAX`; cadvisor's `maxMemorySize`).
pub const UNLIMITED_MEMORY: u64 = 1 << 62;

/// Which cgroup interface the host's controllers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (also a hybrid host's controllers).
    V1,
    /// The unified hierarchy.
    V2,
}

/// Where cgroups are mounted and how to read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFs {
    pub version: CgroupVersion,
    /// The mount root (`/sys/fs/cgroup`).
    pub root: PathBuf,
}

/// What one cgroup reports; a field is `None` when its controller or file is
/// missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupSample {
    /// Cumulative CPU time of every task in the cgroup and below, in ns.
    pub cpu_usage_ns: Option<u64>,
    pub memory: Option<MemorySample>,
    /// Tasks in the cgroup and below.
    pub pids: Option<u64>,
}

/// Memory of a cgroup (or of the node), in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub usage: u64,
    /// Usage less inactive file pages, floored at 0.
    pub working_set: u64,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// The limit; `None` when unlimited.
    pub limit: Option<u64>,
}

impl MemorySample {
    /// The limit less the working set (`availableBytes`), when there is a limit.
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.working_set))
    }
}

impl CgroupFs {
    /// The host's cgroups at `/sys/fs/cgroup`: v2 on a unified host, v1 on a
    /// legacy or hybrid one.
    pub fn host() -> Self {
        let version = match crate::cgroups::detect_mode() {
            crate::cgroups::Mode::Unified => CgroupVersion::V2,
            crate::cgroups::Mode::Legacy | crate::cgroups::Mode::Hybrid => CgroupVersion::V1,
        };
        CgroupFs {
            version,
            root: PathBuf::from("/sys/fs/cgroup"),
        }
    }

    /// Read cgroup `cgroup` (a path below the hierarchy's root, e.g.
    /// `/kubepods/burstable/pod<uid>`; `/` for the root).
    pub fn read(&self, cgroup: &str) -> Result<CgroupSample> {
        match self.version {
            CgroupVersion::V1 => read_v1(&self.root, cgroup),
            CgroupVersion::V2 => read_v2(&self.root, cgroup),
        }
    }

    /// Whether the cgroup exists (in the memory or CPU hierarchy on v1).
    pub fn exists(&self, cgroup: &str) -> bool {
        let Ok(rel) = relative(cgroup) else {
            return false;
        };
        match self.version {
            CgroupVersion::V1 => {
                v1_dir(&self.root, "memory", &rel).is_dir()
                    || v1_cpuacct_dir(&self.root, &rel).is_some()
            }
            CgroupVersion::V2 => self.root.join(&rel).is_dir(),
        }
    }

    /// One process in the cgroup or below it (the first found), e.g. to find
    /// a pod's network namespace. Looks at no more than `MAX_DIRS` cgroups.
    pub fn any_pid(&self, cgroup: &str) -> Option<i32> {
        let rel = relative(cgroup).ok()?;
        let dir = match self.version {
            CgroupVersion::V1 => ["pids", "memory", "cpu"]
                .iter()
                .map(|c| v1_dir(&self.root, c, &rel))
                .find(|d| d.is_dir())?,
            CgroupVersion::V2 => self.root.join(&rel),
        };
        first_pid_below(&dir)
    }
}

/// How many cgroup directories [`CgroupFs::any_pid`] looks into.
const MAX_DIRS: usize = 256;

fn first_pid_below(dir: &Path) -> Option<i32> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        seen += 1;
        if seen > MAX_DIRS {
            return None;
        }
        let pid = std::fs::read_to_string(d.join("cgroup.procs"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                    .find(|&p| p > 0)
            });
        if pid.is_some() {
            return pid;
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            let mut children: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            children.sort();
            stack.extend(children.into_iter().rev());
        }
    }
    None
}

/// The cgroup path without its leading `/`, refusing anything that would
/// leave the hierarchy.
fn relative(cgroup: &str) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    for part in cgroup.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." || part.contains('\0') {
            return Err(StatsError::InvalidCgroupPath(cgroup.to_string()));
        }
        rel.push(part);
    }
    Ok(rel)
}

fn v1_dir(root: &Path, controller: &str, rel: &Path) -> PathBuf {
    root.join(controller).join(rel)
}

/// `cpuacct` is mounted alone or joined with `cpu` (`cpu,cpuacct`, often
/// with `cpuacct` a symlink to it).
fn v1_cpuacct_dir(root: &Path, rel: &Path) -> Option<PathBuf> {
    ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
        .iter()
        .map(|c| v1_dir(root, c, rel))
        .find(|d| d.is_dir())
}

/// A missing file is a missing reading; any other failure is an error.
fn optional<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// `memory.stat` and `cpu.stat`: `key value` lines (malformed lines skipped).
pub fn parse_flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let key = it.next()?;
            let value = it.next()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}

/// Read a v1 cgroup under `root` (`/sys/fs/cgroup`): cpuacct, memory and pids.
pub fn read_v1(root: &Path, cgroup: &str) -> Result<CgroupSample> {
    let rel = relative(cgroup)?;
    let cpu_dir = v1_cpuacct_dir(root, &rel);
    let mem_dir = v1_dir(root, "memory", &rel);
    if cpu_dir.is_none() && !mem_dir.is_dir() {
        return Err(StatsError::CgroupNotFound {
            cgroup: cgroup.to_string(),
            root: root.to_path_buf(),
        });
    }
    let cpu_usage_ns = match &cpu_dir {
        Some(dir) => optional(read_u64(&dir.join("cpuacct.usage")))?,
        None => None,
    };
    let memory = if mem_dir.is_dir() {
        read_memory_v1(&mem_dir)?
    } else {
        None
    };
    let pids = optional(read_u64(&v1_dir(root, "pids", &rel).join("pids.current")))?;
    Ok(CgroupSample {
        cpu_usage_ns,
        memory,
        pids,
    })
}

fn read_memory_v1(dir: &Path) -> Result<Option<MemorySample>> {
    let Some(usage) = optional(read_u64(&dir.join("memory.usage_in_bytes")))? else {
        return Ok(None);
    };
    let stat_text = optional(read_file(&dir.join("memory.stat")))?.unwrap_or_default();
    let stat = parse_flat_keyed(&stat_text);
    let limit =
        optional(read_u64(&dir.join("memory.limit_in_bytes")))?.filter(|&l| l <= UNLIMITED_MEMORY);
    Ok(Some(MemorySample {
        usage,
        working_set: working_set(usage, stat.get("total_inactive_file").copied()),
        rss: stat.get("total_rss").copied(),
        page_faults: stat.get("total_pgfault").copied(),
        major_page_faults: stat.get("total_pgmajfault").copied(),
        limit,
    }))
}

/// cadvisor's working set: usage less inactive file pages, floored at 0.
pub fn working_set(usage: u64, inactive_file: Option<u64>) -> u64 {
    usage.saturating_sub(inactive_file.unwrap_or(0))
}

/// Read a v2 cgroup under `root` (`/sys/fs/cgroup`).
pub fn read_v2(root: &Path, cgroup: &str) -> Result<CgroupSample> {
    let dir = root.join(relative(cgroup)?);
    if !dir.is_dir() {
        return Err(StatsError::CgroupNotFound {
            cgroup: cgroup.to_string(),
            root: root.to_path_buf(),
        });
    }
    let cpu_usage_ns = optional(read_file(&dir.join("cpu.stat")))?
        .and_then(|text| parse_flat_keyed(&text).get("usage_usec").copied())
        .and_then(|usec| usec.checked_mul(1000));
    let memory = match optional(read_u64(&dir.join("memory.current")))? {
        None => None,
        Some(usage) => {
            let stat_text = optional(read_file(&dir.join("memory.stat")))?.unwrap_or_default();
            let stat = parse_flat_keyed(&stat_text);
            let limit = match optional(read_file(&dir.join("memory.max")))? {
                Some(text) => parse_v2_max(&dir.join("memory.max"), &text)?,
                None => None,
            };
            Some(MemorySample {
                usage,
                working_set: working_set(usage, stat.get("inactive_file").copied()),
                rss: stat.get("anon").copied(),
                page_faults: stat.get("pgfault").copied(),
                major_page_faults: stat.get("pgmajfault").copied(),
                limit: limit.filter(|&l| l <= UNLIMITED_MEMORY),
            })
        }
    };
    let pids = optional(read_u64(&dir.join("pids.current")))?;
    Ok(CgroupSample {
        cpu_usage_ns,
        memory,
        pids,
    })
}

/// A v2 limit file: a number, or `max` for none.
fn parse_v2_max(path: &Path, text: &str) -> Result<Option<u64>> {
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| StatsError::Parse {
        path: path.to_path_buf(),
        message: format!("{text:?} is neither a number nor \"max\": {e}"),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A v1 cgroup as the kernel lays it out, with realistic values.
    pub(crate) fn write_v1(root: &Path, cgroup: &str, cpu_ns: u64, usage: u64, limit: u64) {
        let rel = relative(cgroup).unwrap();
        let cpu = root.join("cpuacct").join(&rel);
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), format!("{cpu_ns}\n")).unwrap();
        let mem = root.join("memory").join(&rel);
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), format!("{usage}\n")).unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), format!("{limit}\n")).unwrap();
        std::fs::write(
            mem.join("memory.stat"),
            "cache 11571200\nrss 3559424\nrss_huge 0\nshmem 10465280\nmapped_file 8650752\n\
             pgfault 26271\npgmajfault 0\ninactive_file 249856\nactive_file 856064\n\
             hierarchical_memory_limit 9223372036854771712\ntotal_cache 3650011136\n\
             total_rss 7610368\ntotal_rss_huge 0\ntotal_pgfault 39686091\ntotal_pgmajfault 4599\n\
             total_inactive_anon 3862528\ntotal_active_anon 24576\n\
             total_inactive_file 2398932992\ntotal_active_file 1223487488\n",
        )
        .unwrap();
        let pids = root.join("pids").join(&rel);
        std::fs::create_dir_all(&pids).unwrap();
        std::fs::write(pids.join("pids.current"), "7\n").unwrap();
    }

    /// A v2 cgroup, likewise.
    pub(crate) fn write_v2(root: &Path, cgroup: &str, usage_usec: u64, current: u64, max: &str) {
        let dir = root.join(relative(cgroup).unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cpu.stat"),
            format!(
                "usage_usec {usage_usec}\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n\
                 nr_throttled 0\nthrottled_usec 0\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("memory.current"), format!("{current}\n")).unwrap();
        std::fs::write(dir.join("memory.max"), format!("{max}\n")).unwrap();
        std::fs::write(
            dir.join("memory.stat"),
            "anon 4096000\nfile 8192000\nkernel_stack 16384\nshmem 0\nfile_mapped 1024\n\
             active_anon 0\ninactive_anon 4096000\nactive_file 4096000\ninactive_file 2048000\n\
             pgfault 1234\npgmajfault 5\n",
        )
        .unwrap();
        std::fs::write(dir.join("pids.current"), "3\n").unwrap();
    }

    #[test]
    fn v1_reads_cpuacct_memory_and_pids() {
        let dir = tempfile::tempdir().unwrap();
        write_v1(
            dir.path(),
            "/kubepods/burstable/podu1",
            2_429_203_330_297,
            3_657_367_552,
            536_870_912,
        );
        let fs = CgroupFs {
            version: CgroupVersion::V1,
            root: dir.path().to_path_buf(),
        };
        assert!(fs.exists("/kubepods/burstable/podu1"));
        let s = fs.read("/kubepods/burstable/podu1").unwrap();
        assert_eq!(s.cpu_usage_ns, Some(2_429_203_330_297));
        let m = s.memory.unwrap();
        assert_eq!(m.usage, 3_657_367_552);
        assert_eq!(m.working_set, 3_657_367_552 - 2_398_932_992);
        assert_eq!(m.rss, Some(7_610_368));
        assert_eq!(m.page_faults, Some(39_686_091));
        assert_eq!(m.major_page_faults, Some(4599));
        assert_eq!(m.limit, Some(536_870_912));
        // The working set exceeds the limit: nothing available, not a wrap.
        assert_eq!(m.available(), Some(0));
        assert_eq!(s.pids, Some(7));
    }

    #[test]
    fn v1_unlimited_missing_controllers_and_bad_paths() {
        let dir = tempfile::tempdir().unwrap();
        write_v1(dir.path(), "/kubepods", 1, 100, 9_223_372_036_854_771_712);
        std::fs::remove_dir_all(dir.path().join("pids")).unwrap();
        let s = read_v1(dir.path(), "/kubepods").unwrap();
        assert_eq!(s.memory.as_ref().unwrap().limit, None, "unlimited");
        assert_eq!(s.memory.as_ref().unwrap().available(), None);
        // Inactive file pages larger than usage: floored at 0.
        assert_eq!(s.memory.unwrap().working_set, 0);
        assert_eq!(s.pids, None, "no pids controller: no count");

        // `cpu,cpuacct` joined.
        std::fs::rename(dir.path().join("cpuacct"), dir.path().join("cpu,cpuacct")).unwrap();
        assert_eq!(
            read_v1(dir.path(), "/kubepods").unwrap().cpu_usage_ns,
            Some(1)
        );

        let missing = read_v1(dir.path(), "/kubepods/podgone").unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        assert!(matches!(
            read_v1(dir.path(), "/kubepods/../../etc"),
            Err(StatsError::InvalidCgroupPath(_))
        ));
        // A garbled single-number file is an error, not a zero.
        std::fs::write(
            dir.path().join("memory/kubepods/memory.usage_in_bytes"),
            "lots\n",
        )
        .unwrap();
        assert!(matches!(
            read_v1(dir.path(), "/kubepods"),
            Err(StatsError::Parse { .. })
        ));
    }

    #[test]
    fn v2_reads_cpu_stat_memory_and_pids() {
        let dir = tempfile::tempdir().unwrap();
        write_v2(
            dir.path(),
            "/kubepods/podu2",
            52_000,
            10_000_000,
            "268435456",
        );
        let fs = CgroupFs {
            version: CgroupVersion::V2,
            root: dir.path().to_path_buf(),
        };
        let s = fs.read("/kubepods/podu2").unwrap();
        assert_eq!(s.cpu_usage_ns, Some(52_000_000));
        let m = s.memory.unwrap();
        assert_eq!(m.usage, 10_000_000);
        assert_eq!(m.working_set, 10_000_000 - 2_048_000);
        assert_eq!(m.rss, Some(4_096_000));
        assert_eq!(m.page_faults, Some(1234));
        assert_eq!(m.major_page_faults, Some(5));
        assert_eq!(m.limit, Some(268_435_456));
        assert_eq!(m.available(), Some(268_435_456 - 7_952_000));
        assert_eq!(s.pids, Some(3));

        write_v2(dir.path(), "/kubepods/podu3", 1, 1, "max");
        let s = read_v2(dir.path(), "/kubepods/podu3").unwrap();
        assert_eq!(s.memory.unwrap().limit, None);
        assert!(
            read_v2(dir.path(), "/kubepods/podnone")
                .unwrap_err()
                .is_not_found()
        );
    }

    #[test]
    fn any_pid_finds_a_process_below() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("kubepods/podu1");
        std::fs::create_dir_all(pod.join("abc")).unwrap();
        std::fs::write(pod.join("cgroup.procs"), "").unwrap();
        std::fs::write(pod.join("abc/cgroup.procs"), "4242\n4243\n").unwrap();
        let fs = CgroupFs {
            version: CgroupVersion::V2,
            root: dir.path().to_path_buf(),
        };
        assert_eq!(fs.any_pid("/kubepods/podu1"), Some(4242));
        assert_eq!(fs.any_pid("/kubepods/podnone"), None);
    }
}
