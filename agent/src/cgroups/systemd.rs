//! The systemd cgroup driver (`--cgroup-driver=systemd`), as the kubelet's
//! cgroup manager runs it through libcontainer's systemd managers: every
//! cgroup is a slice unit (`kubepods-burstable-pod<uid>.slice`, its parent
//! named by its prefix), made with `StartTransientUnit`, changed with
//! `SetUnitProperties` and removed by stopping it. systemd lays the slices
//! out in cgroupfs (`/sys/fs/cgroup/<controller>/kubepods.slice/…` on v1 and
//! hybrid hosts, `/sys/fs/cgroup/kubepods.slice/…` on v2); the driver reads
//! processes and children there and, as libcontainer does after setting the
//! unit's properties, writes the values again as files: systemd keeps a CPU
//! quota in whole percent of a CPU (rounded up) and knows a quota period only
//! from version 242, the files take them exactly.
//!
//! The D-Bus calls sit behind [`SystemdBus`]: [`CgroupsRsBus`] on the
//! `cgroups-rs` crate's systemd client, and [`RecordingBus`] for tests. The
//! project's CI host (cgroup v1 hybrid, no systemd as PID 1, no system bus)
//! runs this driver against the recording bus only.
//!
//! What `cgroups-rs` 0.5.1 cannot do is start a slice: its client starts a
//! unit only with a `PIDs` property, which systemd takes on scopes and
//! services but refuses on slices ("Cannot set property PIDs, or unknown
//! property"), and its manager proxy is private. So [`CgroupsRsBus`] makes the
//! start-up check fail with that reason ([`SystemdBus::check`]) instead of
//! letting every pod fail later.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use cgroups_rs::systemd::{
    BLOCK_IO_ACCOUNTING, CPU_ACCOUNTING, CPU_QUOTA_PER_SEC_US, CPU_QUOTA_PERIOD_US, CPU_SHARES,
    CPU_WEIGHT, DEFAULT_DEPENDENCIES, DESCRIPTION, IO_ACCOUNTING, MEMORY_ACCOUNTING, MEMORY_LIMIT,
    MEMORY_MAX, SystemdClient, TASKS_ACCOUNTING, TASKS_MAX, WANTS,
};

use super::fs::{procs_below, remove_tree};
use super::resources::{QUOTA_PERIOD, shares_to_weight};
use super::{CgroupError, CgroupManager, CgroupName, Driver, Mode, ResourceConfig};

/// A directory only while systemd runs as PID 1 (runc's `IsRunningSystemd`,
/// which the kubelet's systemd driver relies on).
pub const SYSTEMD_RUN_DIR: &str = "/run/systemd/system";

/// Where cgroupfs is mounted.
const CGROUPFS: &str = "/sys/fs/cgroup";

/// The v1 hierarchies the driver reads and writes (those the cgroupfs driver
/// checks too).
const V1_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// systemd's "infinity" for limits and time spans (`CGROUP_LIMIT_MAX`,
/// `USEC_INFINITY`).
const INFINITY: u64 = u64::MAX;

/// Whether systemd runs as PID 1 here: `run_dir` ([`SYSTEMD_RUN_DIR`]) is a
/// directory (not followed if a symlink, as runc's check).
pub fn is_running_systemd(run_dir: &Path) -> bool {
    std::fs::symlink_metadata(run_dir).is_ok_and(|m| m.is_dir())
}

/// A unit property's value, as the D-Bus call carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    /// `b`
    Bool(bool),
    /// `t`
    U64(u64),
    /// `s`
    Str(String),
    /// `as`
    StrList(Vec<String>),
}

/// One unit property: its name (`CPUShares`) and value.
pub type UnitProperty = (&'static str, PropertyValue);

/// What a call to systemd can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The unit is loaded already (`org.freedesktop.systemd1.UnitExists`).
    #[error("the unit already exists")]
    UnitExists,
    /// The unit is not loaded (`org.freedesktop.systemd1.NoSuchUnit`).
    #[error("the unit is not loaded")]
    NoSuchUnit,
    /// This D-Bus client cannot make the call.
    #[error("{0}")]
    Unsupported(String),
    /// The system bus could not be reached, or systemd refused the call.
    #[error("{0}")]
    Call(String),
}

/// The calls the driver makes on systemd's manager
/// (`org.freedesktop.systemd1.Manager` on the system bus).
pub trait SystemdBus: Send + Sync + std::fmt::Debug {
    /// `StartTransientUnit(unit, "replace", props, [])`, returning once the
    /// start job is done (as libcontainer's `startUnit` waits for it);
    /// [`BusError::UnitExists`] when the unit is loaded already.
    fn start_transient_slice(&self, unit: &str, props: &[UnitProperty]) -> Result<(), BusError>;
    /// `SetUnitProperties(unit, runtime = true, props)`: until reboot, not
    /// written to `/etc`.
    fn set_properties(&self, unit: &str, props: &[UnitProperty]) -> Result<(), BusError>;
    /// `StopUnit(unit, "replace")`, then `ResetFailedUnit`; a unit that is
    /// not loaded is stopped already.
    fn stop(&self, unit: &str) -> Result<(), BusError>;
    /// At start-up: systemd answers on the system bus and this client can
    /// make the calls above.
    fn check(&self) -> Result<(), BusError>;
}

/// The systemd driver over `bus`, reading and writing cgroupfs.
#[derive(Debug)]
pub struct SystemdManager {
    bus: Arc<dyn SystemdBus>,
    mode: Mode,
    cgroupfs: PathBuf,
}

impl SystemdManager {
    /// The driver for this host's cgroup `mode` (hybrid counts as v1, as
    /// for the kubelet), on cgroupfs at `/sys/fs/cgroup`.
    pub fn new(bus: Arc<dyn SystemdBus>, mode: Mode) -> Self {
        SystemdManager {
            bus,
            mode,
            cgroupfs: PathBuf::from(CGROUPFS),
        }
    }

    /// Read and write cgroupfs under `root` instead (tests).
    pub fn with_cgroupfs_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cgroupfs = root.into();
        self
    }

    fn v2(&self) -> bool {
        self.mode == Mode::Unified
    }

    /// The slice unit of `name` and its parent slice (`-.slice` for a
    /// top-level one); the root is systemd's own.
    fn unit(name: &CgroupName) -> Result<(String, String), CgroupError> {
        let path = name.to_systemd();
        let mut slices = path.rsplit('/').filter(|s| !s.is_empty());
        let Some(unit) = slices.next() else {
            return Err(CgroupError::Unsupported(
                "the root slice (-.slice) is systemd's own: the systemd cgroup driver does not \
                 create, change or stop it"
                    .into(),
            ));
        };
        let parent = slices.next().unwrap_or("-.slice");
        Ok((unit.to_string(), parent.to_string()))
    }

    /// The cgroup's directories: one per v1 hierarchy that is mounted
    /// (named by its controller), or the one v2 directory (named "").
    fn dirs(&self, name: &CgroupName) -> Vec<(&'static str, PathBuf)> {
        let path = name.to_systemd();
        let relative = path.trim_start_matches('/');
        if self.v2() {
            return vec![("", self.cgroupfs.join(relative))];
        }
        V1_CONTROLLERS
            .iter()
            .filter(|c| self.cgroupfs.join(c).is_dir())
            .map(|c| (*c, self.cgroupfs.join(c).join(relative)))
            .collect()
    }

    /// The first of `controllers`' directories that is mounted.
    fn dir_of(&self, name: &CgroupName, controllers: &[&str]) -> Option<PathBuf> {
        let dirs = self.dirs(name);
        controllers
            .iter()
            .find_map(|want| dirs.iter().find(|(c, _)| c == want))
            .map(|(_, d)| d.clone())
    }

    /// Set the unit's resource properties (none set: no call).
    fn set_unit(
        &self,
        name: &CgroupName,
        unit: &str,
        config: &ResourceConfig,
    ) -> Result<(), CgroupError> {
        let props = resource_properties(config, self.v2());
        if props.is_empty() {
            return Ok(());
        }
        self.bus
            .set_properties(unit, &props)
            .map_err(|e| bus_error(name, unit, "SetUnitProperties", e))
    }

    /// Write `config`'s values as cgroupfs files (libcontainer's `Set`
    /// after the unit's properties: exact where systemd rounds).
    fn write_files(&self, name: &CgroupName, config: &ResourceConfig) -> Result<(), CgroupError> {
        let files = cgroupfs_files(config, self.v2());
        if files.is_empty() {
            return Ok(());
        }
        let dirs = self.dirs(name);
        for (controller, file, value) in files {
            let Some((_, dir)) = dirs.iter().find(|(c, _)| *c == controller) else {
                return Err(io(
                    name,
                    file,
                    format!("the {controller} controller is not mounted"),
                ));
            };
            std::fs::write(dir.join(file), &value)
                .map_err(|e| io(name, &format!("writing {value:?} to {file}"), e))?;
        }
        Ok(())
    }
}

fn io(name: &CgroupName, what: &str, e: impl std::fmt::Display) -> CgroupError {
    CgroupError::Io {
        cgroup: name.to_systemd(),
        message: format!("{what}: {e}"),
    }
}

/// A failed D-Bus call as a cgroup error naming the unit and the call.
fn bus_error(name: &CgroupName, unit: &str, call: &str, e: BusError) -> CgroupError {
    match e {
        BusError::Unsupported(reason) => {
            CgroupError::Unsupported(format!("systemd unit {unit}: {call}: {reason}"))
        }
        e => CgroupError::Io {
            cgroup: name.to_systemd(),
            message: format!("systemd unit {unit}: {call}: {e}"),
        },
    }
}

/// A limit as systemd takes it: negative (unlimited) is infinity.
fn limit_value(limit: i64) -> u64 {
    u64::try_from(limit).unwrap_or(INFINITY)
}

/// systemd's `CPUQuotaPerSecUSec` for a CFS `quota` over `period` µs
/// (libcontainer's `addCpuQuota`): µs of CPU time per second, rounded up to
/// a whole percent of a CPU (10 ms), as systemd keeps the quota in percent
/// and a child's exact quota must still fit; infinity for no quota.
pub fn quota_per_sec(quota: i64, period: u64) -> u64 {
    let Ok(quota) = u64::try_from(quota) else {
        return INFINITY;
    };
    if quota == 0 {
        return INFINITY;
    }
    let period = if period == 0 { QUOTA_PERIOD } else { period };
    let per_sec = u128::from(quota) * 1_000_000 / u128::from(period);
    u64::try_from(per_sec.div_ceil(10_000) * 10_000).unwrap_or(INFINITY)
}

/// The unit properties for `config` (libcontainer's
/// `genV1ResourcesProperties` / `genV2ResourcesProperties`): a memory limit,
/// CPU shares (v2: the weight converted from them), the quota period and the
/// quota per second, the most tasks. Values left `None` (or 0) are not set.
pub fn resource_properties(config: &ResourceConfig, v2: bool) -> Vec<UnitProperty> {
    let mut props = Vec::new();
    if let Some(memory) = config.memory.filter(|&m| m != 0) {
        let key = if v2 { MEMORY_MAX } else { MEMORY_LIMIT };
        props.push((key, PropertyValue::U64(limit_value(memory))));
    }
    if let Some(shares) = config.cpu_shares.filter(|&s| s != 0) {
        props.push(if v2 {
            (CPU_WEIGHT, PropertyValue::U64(shares_to_weight(shares)))
        } else {
            (CPU_SHARES, PropertyValue::U64(shares))
        });
    }
    let quota = config.cpu_quota.unwrap_or(0);
    let period = config.cpu_period.unwrap_or(0);
    if period != 0 {
        // systemd 242 or later.
        props.push((CPU_QUOTA_PERIOD_US, PropertyValue::U64(period)));
    }
    if quota != 0 || period != 0 {
        props.push((
            CPU_QUOTA_PER_SEC_US,
            PropertyValue::U64(quota_per_sec(quota, period)),
        ));
    }
    if let Some(pids) = config.pids_limit.filter(|&p| p > 0 || p == -1) {
        props.push((TASKS_MAX, PropertyValue::U64(limit_value(pids))));
    }
    props
}

/// The properties a slice is started with (libcontainer's `Apply` for a
/// `.slice`): its parent through `Wants=` (not `Slice=`, which is a
/// scope's; no `Delegate=`), accounting in every controller, no default
/// dependencies, and the resource properties.
pub fn start_properties(
    unit: &str,
    parent: &str,
    config: &ResourceConfig,
    v2: bool,
) -> Vec<UnitProperty> {
    let mut props = vec![
        (
            DESCRIPTION,
            PropertyValue::Str(format!("berth-agent cgroup {unit}")),
        ),
        (WANTS, PropertyValue::StrList(vec![parent.to_string()])),
        (MEMORY_ACCOUNTING, PropertyValue::Bool(true)),
        (CPU_ACCOUNTING, PropertyValue::Bool(true)),
        (
            if v2 {
                IO_ACCOUNTING
            } else {
                BLOCK_IO_ACCOUNTING
            },
            PropertyValue::Bool(true),
        ),
        (TASKS_ACCOUNTING, PropertyValue::Bool(true)),
        (DEFAULT_DEPENDENCIES, PropertyValue::Bool(false)),
    ];
    props.extend(resource_properties(config, v2));
    props
}

/// The cgroupfs files for `config`, in the order written: (controller
/// directory, file, value), libcontainer's fs `Set` (v1) and fs2 `Set`
/// (v2). v1 writes the period before the quota, so the quota is judged
/// against its own period.
fn cgroupfs_files(config: &ResourceConfig, v2: bool) -> Vec<(&'static str, &'static str, String)> {
    let mut files = Vec::new();
    let quota = config.cpu_quota.unwrap_or(0);
    let period = config.cpu_period.unwrap_or(0);
    let max_or = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if v2 {
        if let Some(shares) = config.cpu_shares.filter(|&s| s != 0) {
            files.push(("", "cpu.weight", shares_to_weight(shares).to_string()));
        }
        if quota != 0 || period != 0 {
            let mut value = if quota > 0 {
                quota.to_string()
            } else {
                "max".to_string()
            };
            if period != 0 {
                value.push_str(&format!(" {period}"));
            }
            files.push(("", "cpu.max", value));
        }
        if let Some(memory) = config.memory.filter(|&m| m != 0) {
            files.push(("", "memory.max", max_or(memory)));
        }
        if let Some(pids) = config.pids_limit.filter(|&p| p != 0) {
            files.push(("", "pids.max", max_or(pids)));
        }
    } else {
        if let Some(shares) = config.cpu_shares.filter(|&s| s != 0) {
            files.push(("cpu", "cpu.shares", shares.to_string()));
        }
        if period != 0 {
            files.push(("cpu", "cpu.cfs_period_us", period.to_string()));
        }
        if quota != 0 {
            files.push(("cpu", "cpu.cfs_quota_us", quota.to_string()));
        }
        if let Some(memory) = config.memory.filter(|&m| m != 0) {
            let value = if memory < 0 { -1 } else { memory };
            files.push(("memory", "memory.limit_in_bytes", value.to_string()));
        }
        if let Some(pids) = config.pids_limit.filter(|&p| p != 0) {
            files.push(("pids", "pids.max", max_or(pids)));
        }
    }
    files
}

/// The component a child slice's directory stands for (upstream's
/// `ParseSystemdToCgroupName`, last part): `kubepods-burstable-podab_12.slice`
/// below `kubepods-burstable.slice` is `podab-12`. Anything else there (a
/// container's scope, a file) is not a child cgroup of ours.
fn child_component(dir_name: &str, prefix: &str) -> Option<String> {
    let rest = dir_name.strip_suffix(".slice")?.strip_prefix(prefix)?;
    if rest.is_empty() || rest.contains('-') {
        return None;
    }
    Some(rest.replace('_', "-"))
}

impl CgroupManager for SystemdManager {
    fn driver(&self) -> Driver {
        Driver::Systemd
    }

    fn name(&self, name: &CgroupName) -> String {
        name.to_systemd()
    }

    fn exists(&self, name: &CgroupName) -> bool {
        let dirs = self.dirs(name);
        !dirs.is_empty() && dirs.iter().all(|(_, d)| d.is_dir())
    }

    fn create(&self, name: &CgroupName, config: &ResourceConfig) -> Result<(), CgroupError> {
        let (unit, parent) = Self::unit(name)?;
        let props = start_properties(&unit, &parent, config, self.v2());
        match self.bus.start_transient_slice(&unit, &props) {
            Ok(()) => tracing::debug!(unit, parent, "started transient slice"),
            // Made before (by an earlier start of the agent, or a sync that
            // raced this one): as libcontainer's Apply, that is fine; its
            // values are set below, as Set after Apply does.
            Err(BusError::UnitExists) => self.set_unit(name, &unit, config)?,
            Err(e) => return Err(bus_error(name, &unit, "StartTransientUnit", e)),
        }
        // libcontainer makes the directories in every hierarchy itself
        // (systemd realizes only the controllers it accounts), then writes.
        for (_, dir) in self.dirs(name) {
            std::fs::create_dir_all(&dir)
                .map_err(|e| io(name, &format!("creating {}", dir.display()), e))?;
        }
        self.write_files(name, config)
    }

    fn update(&self, name: &CgroupName, config: &ResourceConfig) -> Result<(), CgroupError> {
        let (unit, _) = Self::unit(name)?;
        self.set_unit(name, &unit, config)?;
        self.write_files(name, config)
    }

    fn pids(&self, name: &CgroupName) -> Vec<i32> {
        // One hierarchy holds every process of the cgroup (pids, else memory, else cpu).
        let mut pids = Vec::new();
        if let Some(dir) = self.dir_of(name, &["pids", "memory", "cpu", ""]) {
            procs_below(&dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn children(&self, name: &CgroupName) -> Vec<String> {
        let Some(dir) = self.dir_of(name, &["cpu", "memory", ""]) else {
            return Vec::new();
        };
        // Children of `a-b.slice` are `a-b-<child>.slice`; of the root, `<child>.slice`.
        let prefix = match Self::unit(name) {
            Ok((unit, _)) => format!("{}-", unit.trim_end_matches(".slice")),
            Err(_) => String::new(),
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| child_component(e.file_name().to_str()?, &prefix))
            .collect();
        names.sort();
        names
    }

    fn destroy(&self, name: &CgroupName) -> Result<(), CgroupError> {
        let (unit, _) = Self::unit(name)?;
        let dirs: Vec<PathBuf> = self
            .dirs(name)
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| d.exists())
            .collect();
        if dirs.is_empty() {
            // No directory anywhere: no active slice to stop (a pod's cgroup
            // is looked for in every QoS tier).
            return Ok(());
        }
        // Stopping a slice kills what runs in it. Killing is the caller's
        // decision (as the cgroupfs driver cannot remove a cgroup with
        // processes either), so a cgroup that still has some is busy.
        if !self.pids(name).is_empty() {
            return Err(CgroupError::Busy {
                cgroup: name.to_systemd(),
            });
        }
        self.bus
            .stop(&unit)
            .map_err(|e| bus_error(name, &unit, "StopUnit", e))?;
        // What systemd leaves: the directories made in hierarchies it does
        // not manage (libcontainer's RemovePaths after stopping the unit).
        for dir in dirs {
            remove_tree(&dir).map_err(|e| match e.raw_os_error() {
                Some(code) if code == nix::errno::Errno::EBUSY as i32 => CgroupError::Busy {
                    cgroup: dir.display().to_string(),
                },
                _ => io(name, &format!("removing {}", dir.display()), e),
            })?;
        }
        Ok(())
    }
}

/// The system bus through `cgroups-rs`'s systemd client (a connection per
/// call, blocking: call it off the async runtime).
#[derive(Debug, Default, Clone, Copy)]
pub struct CgroupsRsBus;

impl CgroupsRsBus {
    fn client(unit: &str) -> Result<SystemdClient<'static>, BusError> {
        SystemdClient::new(unit, Vec::new()).map_err(|e| BusError::Call(e.to_string()))
    }
}

fn to_dbus(props: &[UnitProperty]) -> Vec<cgroups_rs::systemd::Property<'static>> {
    props
        .iter()
        .map(|(key, value)| {
            let value = match value.clone() {
                PropertyValue::Bool(b) => b.into(),
                PropertyValue::U64(n) => n.into(),
                PropertyValue::Str(s) => s.into(),
                PropertyValue::StrList(l) => l.into(),
            };
            (*key, value)
        })
        .collect()
}

impl SystemdBus for CgroupsRsBus {
    fn start_transient_slice(&self, unit: &str, props: &[UnitProperty]) -> Result<(), BusError> {
        if Self::client(unit)?.exists() {
            return Err(BusError::UnitExists);
        }
        // cgroups-rs's client starts a unit only with a PIDs property (which
        // systemd refuses on slices) and keeps its proxy private: the call is
        // made here, `StartTransientUnit(name, "replace", a(sv), a(sa(sv)))`.
        let connection =
            zbus::blocking::Connection::system().map_err(|e| BusError::Call(e.to_string()))?;
        let props = to_dbus(props);
        let aux: Vec<(&str, Vec<cgroups_rs::systemd::Property<'static>>)> = Vec::new();
        connection
            .call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "StartTransientUnit",
                &(unit, "replace", props, aux),
            )
            .map_err(|e| match &e {
                zbus::Error::MethodError(name, _, _)
                    if name.as_str() == "org.freedesktop.systemd1.UnitExists" =>
                {
                    BusError::UnitExists
                }
                _ => BusError::Call(e.to_string()),
            })?;
        Ok(())
    }

    fn set_properties(&self, unit: &str, props: &[UnitProperty]) -> Result<(), BusError> {
        let mut client = Self::client(unit)?;
        // The client skips the call, saying nothing, for a unit not loaded.
        if !client.exists() {
            return Err(BusError::NoSuchUnit);
        }
        client
            .set_properties(&to_dbus(props))
            .map_err(|e| BusError::Call(e.to_string()))
    }

    fn stop(&self, unit: &str) -> Result<(), BusError> {
        Self::client(unit)?
            .stop()
            .map_err(|e| BusError::Call(e.to_string()))
    }

    fn check(&self) -> Result<(), BusError> {
        // GetUnit of the root slice, which systemd always has: false when the
        // system bus or systemd does not answer.
        if !Self::client("-.slice")?.exists() {
            return Err(BusError::Call(
                "systemd does not answer on the system bus (GetUnit -.slice failed; is \
                 /run/dbus/system_bus_socket there?)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One call to the [`RecordingBus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusCall {
    Start(String, Vec<UnitProperty>),
    Set(String, Vec<UnitProperty>),
    Stop(String),
}

/// The [`RecordingBus`] methods, to script failures of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusMethod {
    Start,
    Set,
    Stop,
}

#[derive(Debug, Default)]
struct BusState {
    calls: Vec<BusCall>,
    units: BTreeSet<String>,
    failures: HashMap<BusMethod, VecDeque<BusError>>,
    check: Option<BusError>,
}

/// A systemd that records every call and keeps its units in memory: a
/// started unit exists until stopped; starting it again is `UnitExists`,
/// setting properties of a unit not started `NoSuchUnit`.
#[derive(Debug, Default)]
pub struct RecordingBus {
    state: Mutex<BusState>,
}

impl RecordingBus {
    fn state(&self) -> MutexGuard<'_, BusState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<BusCall> {
        self.state().calls.clone()
    }

    /// The units started and not stopped.
    pub fn units(&self) -> Vec<String> {
        self.state().units.iter().cloned().collect()
    }

    /// The next call of `method` fails with `error` (n times: the next n).
    pub fn fail_next(&self, method: BusMethod, error: BusError) {
        self.state()
            .failures
            .entry(method)
            .or_default()
            .push_back(error);
    }

    /// The start-up check fails with `error`.
    pub fn fail_check(&self, error: BusError) {
        self.state().check = Some(error);
    }

    fn failure(state: &mut BusState, method: BusMethod) -> Option<BusError> {
        state
            .failures
            .get_mut(&method)
            .and_then(VecDeque::pop_front)
    }
}

impl SystemdBus for RecordingBus {
    fn start_transient_slice(&self, unit: &str, props: &[UnitProperty]) -> Result<(), BusError> {
        let mut s = self.state();
        s.calls
            .push(BusCall::Start(unit.to_string(), props.to_vec()));
        if let Some(e) = Self::failure(&mut s, BusMethod::Start) {
            return Err(e);
        }
        if !s.units.insert(unit.to_string()) {
            return Err(BusError::UnitExists);
        }
        Ok(())
    }

    fn set_properties(&self, unit: &str, props: &[UnitProperty]) -> Result<(), BusError> {
        let mut s = self.state();
        s.calls.push(BusCall::Set(unit.to_string(), props.to_vec()));
        if let Some(e) = Self::failure(&mut s, BusMethod::Set) {
            return Err(e);
        }
        if !s.units.contains(unit) {
            return Err(BusError::NoSuchUnit);
        }
        Ok(())
    }

    fn stop(&self, unit: &str) -> Result<(), BusError> {
        let mut s = self.state();
        s.calls.push(BusCall::Stop(unit.to_string()));
        if let Some(e) = Self::failure(&mut s, BusMethod::Stop) {
            return Err(e);
        }
        s.units.remove(unit);
        Ok(())
    }

    fn check(&self) -> Result<(), BusError> {
        self.state().check.clone().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PropertyValue::{Bool, StrList, U64};

    /// A v1 or v2 cgroupfs in a temporary directory.
    struct Host {
        dir: tempfile::TempDir,
        bus: Arc<RecordingBus>,
        manager: SystemdManager,
    }

    fn host(mode: Mode) -> Host {
        let dir = tempfile::tempdir().unwrap();
        if mode != Mode::Unified {
            for c in V1_CONTROLLERS {
                std::fs::create_dir(dir.path().join(c)).unwrap();
            }
        }
        let bus = Arc::new(RecordingBus::default());
        let manager = SystemdManager::new(bus.clone(), mode).with_cgroupfs_root(dir.path());
        Host { dir, bus, manager }
    }

    fn name(path: &str) -> CgroupName {
        CgroupName::from_cgroupfs(path).unwrap()
    }

    fn read(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file)).unwrap()
    }

    const POD: &str =
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b1f_22aa.slice";

    fn guaranteed() -> ResourceConfig {
        ResourceConfig {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory: Some(128 << 20),
            pids_limit: Some(1024),
        }
    }

    #[test]
    fn create_starts_a_transient_slice_then_writes_the_files_v1() {
        let h = host(Mode::Hybrid);
        let pod = name("/kubepods/burstable/pod6b1f-22aa");
        h.manager.create(&pod, &guaranteed()).unwrap();
        let unit = "kubepods-burstable-pod6b1f_22aa.slice";
        assert_eq!(
            h.bus.calls(),
            [BusCall::Start(
                unit.into(),
                vec![
                    (
                        "Description",
                        PropertyValue::Str(format!("berth-agent cgroup {unit}"))
                    ),
                    ("Wants", StrList(vec!["kubepods-burstable.slice".into()])),
                    ("MemoryAccounting", Bool(true)),
                    ("CPUAccounting", Bool(true)),
                    ("BlockIOAccounting", Bool(true)),
                    ("TasksAccounting", Bool(true)),
                    ("DefaultDependencies", Bool(false)),
                    ("MemoryLimit", U64(128 << 20)),
                    ("CPUShares", U64(512)),
                    ("CPUQuotaPeriodUSec", U64(100_000)),
                    ("CPUQuotaPerSecUSec", U64(500_000)),
                    ("TasksMax", U64(1024)),
                ]
            )]
        );
        let root = h.dir.path();
        assert_eq!(read(&root.join("cpu").join(POD), "cpu.shares"), "512");
        assert_eq!(
            read(&root.join("cpu").join(POD), "cpu.cfs_period_us"),
            "100000"
        );
        assert_eq!(
            read(&root.join("cpu").join(POD), "cpu.cfs_quota_us"),
            "50000"
        );
        assert_eq!(
            read(&root.join("memory").join(POD), "memory.limit_in_bytes"),
            (128u64 << 20).to_string()
        );
        assert_eq!(read(&root.join("pids").join(POD), "pids.max"), "1024");
        assert!(h.manager.exists(&pod));
        assert_eq!(
            h.manager.name(&pod),
            format!("/{POD}"),
            "the runtime's cgroup parent"
        );
        assert_eq!(h.manager.driver(), Driver::Systemd);
    }

    #[test]
    fn create_on_v2_sets_weight_max_and_io_accounting() {
        let h = host(Mode::Unified);
        let kubepods = name("/kubepods");
        h.manager
            .create(
                &kubepods,
                &ResourceConfig {
                    cpu_shares: Some(1024),
                    cpu_quota: Some(-1),
                    cpu_period: Some(100_000),
                    memory: Some(-1),
                    pids_limit: Some(-1),
                },
            )
            .unwrap();
        let calls = h.bus.calls();
        let [BusCall::Start(unit, props)] = calls.as_slice() else {
            panic!("one start: {calls:?}");
        };
        assert_eq!(unit, "kubepods.slice");
        assert!(props.contains(&("Wants", StrList(vec!["-.slice".into()]))));
        assert!(props.contains(&("IOAccounting", Bool(true))));
        assert!(!props.iter().any(|(k, _)| *k == "BlockIOAccounting"));
        // No Delegate= on a slice, and no PIDs (systemd refuses both there).
        assert!(!props.iter().any(|(k, _)| *k == "Delegate" || *k == "PIDs"));
        for want in [
            ("CPUWeight", U64(39)),
            ("MemoryMax", U64(u64::MAX)),
            ("CPUQuotaPerSecUSec", U64(u64::MAX)),
            ("TasksMax", U64(u64::MAX)),
        ] {
            assert!(props.contains(&want), "{want:?} in {props:?}");
        }
        let dir = h.dir.path().join("kubepods.slice");
        assert_eq!(read(&dir, "cpu.weight"), "39");
        assert_eq!(read(&dir, "cpu.max"), "max 100000");
        assert_eq!(read(&dir, "memory.max"), "max");
        assert_eq!(read(&dir, "pids.max"), "max");
    }

    #[test]
    fn an_existing_unit_gets_its_values_set_instead() {
        let h = host(Mode::Legacy);
        let tier = name("/kubepods/besteffort");
        let config = ResourceConfig {
            cpu_shares: Some(2),
            ..Default::default()
        };
        h.manager.create(&tier, &config).unwrap();
        h.manager.create(&tier, &config).unwrap();
        let calls = h.bus.calls();
        assert!(matches!(
            &calls[..],
            [BusCall::Start(..), BusCall::Start(..), BusCall::Set(..)]
        ));
        assert_eq!(
            calls[2],
            BusCall::Set(
                "kubepods-besteffort.slice".into(),
                vec![("CPUShares", U64(2))]
            )
        );
    }

    #[test]
    fn update_sets_runtime_properties_and_files() {
        let h = host(Mode::Hybrid);
        let tier = name("/kubepods/burstable");
        h.manager.create(&tier, &ResourceConfig::default()).unwrap();
        let config = ResourceConfig {
            cpu_shares: Some(1792),
            ..Default::default()
        };
        h.manager.update(&tier, &config).unwrap();
        assert_eq!(
            h.bus.calls().last(),
            Some(&BusCall::Set(
                "kubepods-burstable.slice".into(),
                vec![("CPUShares", U64(1792))]
            ))
        );
        let dir = h
            .dir
            .path()
            .join("cpu/kubepods.slice/kubepods-burstable.slice");
        assert_eq!(read(&dir, "cpu.shares"), "1792");

        // A unit systemd does not have: the error names it and the call.
        let gone = name("/kubepods/besteffort");
        let e = h.manager.update(&gone, &config).unwrap_err().to_string();
        assert_eq!(
            e,
            "cgroup /kubepods.slice/kubepods-besteffort.slice: systemd unit \
             kubepods-besteffort.slice: SetUnitProperties: the unit is not loaded"
        );
    }

    #[test]
    fn bus_failures_name_the_unit() {
        let h = host(Mode::Hybrid);
        let pod = name("/kubepods/podx");
        h.bus.fail_next(
            BusMethod::Start,
            BusError::Call("org.freedesktop.DBus.Error.AccessDenied: denied".into()),
        );
        let e = h.manager.create(&pod, &guaranteed()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cgroup /kubepods.slice/kubepods-podx.slice: systemd unit kubepods-podx.slice: \
             StartTransientUnit: org.freedesktop.DBus.Error.AccessDenied: denied"
        );
        // Nothing was written for a slice that did not start.
        assert!(!h.manager.exists(&pod));
        h.bus
            .fail_next(BusMethod::Start, BusError::Unsupported("no slices".into()));
        assert!(matches!(
            h.manager.create(&pod, &guaranteed()),
            Err(CgroupError::Unsupported(m)) if m.contains("kubepods-podx.slice")
        ));
        // The root slice is systemd's.
        assert!(matches!(
            h.manager.create(&CgroupName::root(), &guaranteed()),
            Err(CgroupError::Unsupported(_))
        ));
    }

    #[test]
    fn reads_processes_and_children_where_systemd_puts_them() {
        let h = host(Mode::Hybrid);
        let tier = name("/kubepods/burstable");
        let pod = tier.child("pod6b1f-22aa").unwrap();
        h.manager.create(&tier, &ResourceConfig::default()).unwrap();
        h.manager.create(&pod, &ResourceConfig::default()).unwrap();
        let pod_dir = h.dir.path().join("pids").join(POD);
        // A container's scope below the pod's slice, with processes.
        let scope = pod_dir.join("cri-containerd-abc.scope");
        std::fs::create_dir(&scope).unwrap();
        std::fs::write(pod_dir.join("cgroup.procs"), "7\n").unwrap();
        std::fs::write(scope.join("cgroup.procs"), "12\n9\n").unwrap();
        assert_eq!(h.manager.pids(&pod), [7, 9, 12]);
        assert_eq!(h.manager.pids(&tier), [7, 9, 12]);
        // Children as components, read back from the slice names; scopes
        // and files are not children.
        std::fs::create_dir(
            h.dir
                .path()
                .join("cpu")
                .join(POD)
                .join("cri-containerd-abc.scope"),
        )
        .unwrap();
        assert_eq!(h.manager.children(&tier), ["pod6b1f-22aa"]);
        assert_eq!(
            h.manager.children(&name("/kubepods")),
            ["burstable"],
            "the Guaranteed pods' tier holds the other tiers"
        );
        assert_eq!(h.manager.children(&CgroupName::root()), ["kubepods"]);
        assert!(h.manager.children(&pod).is_empty());
    }

    #[test]
    fn destroy_stops_the_unit_and_removes_what_systemd_leaves() {
        let h = host(Mode::Hybrid);
        let pod = name("/kubepods/burstable/pod6b1f-22aa");
        h.manager.create(&pod, &guaranteed()).unwrap();
        let procs = h.dir.path().join("pids").join(POD).join("cgroup.procs");
        std::fs::write(&procs, "42\n").unwrap();
        // Processes remain: busy, and the unit is not stopped (that would kill them).
        assert!(matches!(
            h.manager.destroy(&pod),
            Err(CgroupError::Busy { cgroup }) if cgroup == format!("/{POD}")
        ));
        assert!(!h.bus.calls().contains(&BusCall::Stop(
            "kubepods-burstable-pod6b1f_22aa.slice".into()
        )));
        std::fs::write(&procs, "").unwrap();
        h.bus.fail_next(
            BusMethod::Stop,
            BusError::Call("org.freedesktop.systemd1.JobFailed".into()),
        );
        let e = h.manager.destroy(&pod).unwrap_err().to_string();
        assert!(
            e.contains("systemd unit kubepods-burstable-pod6b1f_22aa.slice: StopUnit"),
            "{e}"
        );
        // Plain files stand for cgroupfs's, which go with their directory.
        for c in V1_CONTROLLERS {
            let dir = h.dir.path().join(c).join(POD);
            for f in std::fs::read_dir(&dir).unwrap().flatten() {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
        h.manager.destroy(&pod).unwrap();
        assert_eq!(
            h.bus.calls().last(),
            Some(&BusCall::Stop(
                "kubepods-burstable-pod6b1f_22aa.slice".into()
            ))
        );
        assert!(h.bus.units().is_empty());
        assert!(!h.manager.exists(&pod));
        // A cgroup that is nowhere: nothing to stop, no call.
        let calls = h.bus.calls().len();
        h.manager
            .destroy(&name("/kubepods/besteffort/pod6b1f-22aa"))
            .unwrap();
        assert_eq!(h.bus.calls().len(), calls);
    }

    #[test]
    fn quota_per_second_rounds_up_to_a_whole_percent() {
        assert_eq!(quota_per_sec(50_000, 100_000), 500_000);
        // 1.5 ms of 100 ms is 1.5 %: 2 % (20 ms per second).
        assert_eq!(quota_per_sec(1_500, 100_000), 20_000);
        assert_eq!(quota_per_sec(1_000, 0), 10_000, "the default period");
        assert_eq!(quota_per_sec(-1, 100_000), u64::MAX);
        assert_eq!(quota_per_sec(0, 100_000), u64::MAX);
        assert_eq!(
            quota_per_sec(super::super::resources::MAX_QUOTA, 1000),
            17_592_186_044_420_000
        );
        assert_eq!(
            quota_per_sec(i64::MAX, 1),
            u64::MAX,
            "infinity, not overflowed"
        );
        // Values left unset set nothing.
        assert!(resource_properties(&ResourceConfig::default(), false).is_empty());
    }

    #[test]
    fn systemd_as_pid_1_is_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_running_systemd(dir.path()));
        assert!(!is_running_systemd(&dir.path().join("absent")));
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(!is_running_systemd(&file));
    }

    #[test]
    fn the_cgroups_rs_bus_fails_its_check_without_panicking() {
        // Here: no system bus, and the check says so.
        if !is_running_systemd(Path::new(SYSTEMD_RUN_DIR)) {
            let e = CgroupsRsBus.check().unwrap_err();
            assert!(matches!(e, BusError::Call(_)), "{e:?}");
        }
        assert!(
            CgroupsRsBus
                .set_properties("berth-test.slice", &[])
                .is_err()
        );
    }
}
