//! The cgroupfs driver on the `cgroups-rs` crate (its low-level `fs` API:
//! the directory in every mounted v1 hierarchy, or the one v2 directory).
//!
//! Written here, around the crate: names are always relative to the mount
//! points (the crate would follow an absolute path out of cgroupfs); values
//! are set with the setters one by one so every failed write is an error
//! (its `apply` drops some); v2's weight is converted from shares; the
//! processes of a cgroup are read recursively (the crate reads one level);
//! and on a hybrid host what runc made in the `unified` mount, which the
//! crate does not see, is removed too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controller, Hierarchy, MaxValue, Subsystem, hierarchies};

use super::resources::shares_to_weight;
use super::{CgroupError, CgroupManager, CgroupName, Driver, Mode, ResourceConfig};

/// The cgroupfs driver over the host's hierarchies.
#[derive(Debug)]
pub struct FsManager {
    mode: Mode,
    hierarchy: Arc<dyn Hierarchy>,
}

/// The host's hierarchies, found once. `hierarchies::auto()` reads and parses
/// `/proc/self/mountinfo` at every call on v1, a table that grows with every
/// pod's mounts, and the agent loads a pod's cgroup at every sync: at 100
/// pods that was a steady share of the agent's idle CPU. Where the
/// controllers are mounted does not change while the agent runs.
#[derive(Debug, Clone)]
struct SharedHierarchy(Arc<dyn Hierarchy>);

impl Hierarchy for SharedHierarchy {
    fn subsystems(&self) -> Vec<Subsystem> {
        self.0.subsystems()
    }
    fn root(&self) -> PathBuf {
        self.0.root()
    }
    fn root_control_group(&self) -> Cgroup {
        self.0.root_control_group()
    }
    fn parent_control_group(&self, path: &str) -> Cgroup {
        self.0.parent_control_group(path)
    }
    fn v2(&self) -> bool {
        self.0.v2()
    }
}

impl FsManager {
    /// The driver for this host's cgroup mode.
    pub fn new(mode: Mode) -> Self {
        FsManager {
            mode,
            hierarchy: Arc::from(hierarchies::auto()),
        }
    }

    fn hierarchy(&self) -> Box<dyn Hierarchy> {
        Box::new(SharedHierarchy(Arc::clone(&self.hierarchy)))
    }

    fn load(&self, name: &CgroupName) -> Cgroup {
        Cgroup::load(self.hierarchy(), name.relative())
    }

    fn io(name: &CgroupName, what: &str, e: impl std::fmt::Display) -> CgroupError {
        CgroupError::Io {
            cgroup: name.to_cgroupfs(),
            message: format!("{what}: {e}"),
        }
    }

    fn set(
        &self,
        name: &CgroupName,
        cg: &Cgroup,
        config: &ResourceConfig,
    ) -> Result<(), CgroupError> {
        let v2 = cg.v2();
        if config.cpu_shares.is_some() || config.cpu_quota.is_some() || config.cpu_period.is_some()
        {
            let cpu = cg
                .controller_of::<CpuController>()
                .ok_or_else(|| Self::io(name, "cpu", "the cpu controller is not mounted"))?;
            if let Some(shares) = config.cpu_shares {
                let value = if v2 { shares_to_weight(shares) } else { shares };
                cpu.set_shares(value)
                    .map_err(|e| Self::io(name, if v2 { "cpu.weight" } else { "cpu.shares" }, e))?;
            }
            if v2 {
                if config.cpu_quota.is_some() || config.cpu_period.is_some() {
                    // One file, `cpu.max`: "<quota|max> <period>".
                    cpu.set_cfs_quota_and_period(config.cpu_quota, config.cpu_period)
                        .map_err(|e| Self::io(name, "cpu.max", e))?;
                }
            } else {
                // v1: the period first, so a quota is judged against the
                // period it is meant for; each file written once.
                if let Some(period) = config.cpu_period {
                    cpu.set_cfs_period(period)
                        .map_err(|e| Self::io(name, "cpu.cfs_period_us", e))?;
                }
                if let Some(quota) = config.cpu_quota {
                    cpu.set_cfs_quota(quota)
                        .map_err(|e| Self::io(name, "cpu.cfs_quota_us", e))?;
                }
            }
        }
        if let Some(limit) = config.memory {
            let mem = cg
                .controller_of::<MemController>()
                .ok_or_else(|| Self::io(name, "memory", "the memory controller is not mounted"))?;
            mem.set_limit(limit).map_err(|e| {
                Self::io(
                    name,
                    if v2 {
                        "memory.max"
                    } else {
                        "memory.limit_in_bytes"
                    },
                    e,
                )
            })?;
        }
        if let Some(limit) = config.pids_limit {
            let pids = cg
                .controller_of::<PidController>()
                .ok_or_else(|| Self::io(name, "pids", "the pids controller is not mounted"))?;
            let value = if limit < 0 {
                MaxValue::Max
            } else {
                MaxValue::Value(limit)
            };
            pids.set_pid_max(value)
                .map_err(|e| Self::io(name, "pids.max", e))?;
        }
        Ok(())
    }

    /// The directory of `name` in a hybrid host's unified mount.
    fn unified_dir(&self, name: &CgroupName) -> Option<PathBuf> {
        (self.mode == Mode::Hybrid)
            .then(|| Path::new("/sys/fs/cgroup/unified").join(name.relative()))
    }
}

/// The processes in `dir` and every cgroup below it.
pub(super) fn procs_below(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            procs_below(&entry.path(), out);
        }
    }
}

impl CgroupManager for FsManager {
    fn driver(&self) -> Driver {
        Driver::Cgroupfs
    }

    fn name(&self, name: &CgroupName) -> String {
        name.to_cgroupfs()
    }

    fn exists(&self, name: &CgroupName) -> bool {
        // In every hierarchy the node sets values in (upstream's Validate).
        let cg = self.load(name);
        let cpu = cg
            .controller_of::<CpuController>()
            .map(|c| c.path().is_dir());
        let mem = cg
            .controller_of::<MemController>()
            .map(|c| c.path().is_dir());
        let pids = cg
            .controller_of::<PidController>()
            .map(|c| c.path().is_dir());
        let found: Vec<bool> = [cpu, mem, pids].into_iter().flatten().collect();
        !found.is_empty() && found.iter().all(|&e| e)
    }

    fn create(&self, name: &CgroupName, config: &ResourceConfig) -> Result<(), CgroupError> {
        let cg = Cgroup::new(self.hierarchy(), name.relative())
            .map_err(|e| Self::io(name, "creating", e))?;
        self.set(name, &cg, config)
    }

    fn update(&self, name: &CgroupName, config: &ResourceConfig) -> Result<(), CgroupError> {
        let cg = self.load(name);
        self.set(name, &cg, config)
    }

    fn pids(&self, name: &CgroupName) -> Vec<i32> {
        let cg = self.load(name);
        let mut pids = Vec::new();
        // One hierarchy holds every process of the cgroup (pids, else memory, else cpu).
        let dir = cg
            .controller_of::<PidController>()
            .map(|c| c.path().to_path_buf())
            .or_else(|| {
                cg.controller_of::<MemController>()
                    .map(|c| c.path().to_path_buf())
            })
            .or_else(|| {
                cg.controller_of::<CpuController>()
                    .map(|c| c.path().to_path_buf())
            });
        if let Some(dir) = dir {
            procs_below(&dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn children(&self, name: &CgroupName) -> Vec<String> {
        let cg = self.load(name);
        let Some(dir) = cg
            .controller_of::<CpuController>()
            .map(|c| c.path().to_path_buf())
            .or_else(|| {
                cg.controller_of::<MemController>()
                    .map(|c| c.path().to_path_buf())
            })
        else {
            return Vec::new();
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    fn destroy(&self, name: &CgroupName) -> Result<(), CgroupError> {
        let cg = self.load(name);
        if cg.exists() {
            cg.delete().map_err(|e| {
                let busy = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .and_then(std::io::Error::raw_os_error)
                    == Some(nix::errno::Errno::EBUSY as i32);
                if busy {
                    CgroupError::Busy {
                        cgroup: name.to_cgroupfs(),
                    }
                } else {
                    Self::io(name, "removing", e)
                }
            })?;
        }
        if let Some(dir) = self.unified_dir(name) {
            remove_tree(&dir).map_err(|e| match e.raw_os_error() {
                Some(code) if code == nix::errno::Errno::EBUSY as i32 => CgroupError::Busy {
                    cgroup: dir.display().to_string(),
                },
                _ => Self::io(name, "removing from the unified hierarchy", e),
            })?;
        }
        Ok(())
    }
}

/// Remove an (empty) cgroup directory and the empty cgroups below it.
pub(super) fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
