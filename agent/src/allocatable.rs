//! The node's capacity and allocatable, as the kubelet's container manager
//! computes them (`pkg/kubelet/cm/node_container_manager_linux.go`,
//! `GetNodeAllocatableReservation`): allocatable = capacity −
//! `--system-reserved` − `--kube-reserved` − the hard eviction threshold of
//! `memory.available` (memory) and `nodefs.available` (ephemeral storage),
//! never below zero; the memory of pre-allocated hugepages comes off
//! allocatable memory too (`nodestatus.MachineInfo`).
//!
//! Also the parsing of those flags, with the kubelet's spellings:
//! `--system-reserved cpu=500m,memory=1Gi,ephemeral-storage=1Gi,pid=1000` and
//! `--eviction-hard memory.available<100Mi,nodefs.available<10%`.

use std::collections::BTreeMap;
use std::path::Path;

use berth_api::resource::Resources;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The kubelet's default `--max-pods`.
pub const DEFAULT_MAX_PODS: i64 = 110;

/// The kubelet's default hard eviction thresholds on Linux.
pub const DEFAULT_EVICTION_HARD: &str =
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%";

/// Resources held back from pods (`--system-reserved`, `--kube-reserved`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// cpu in millicores, memory and ephemeral storage in bytes.
    pub resources: Resources,
    /// `pid`: process IDs held back (for the pod tier's `pids.max`).
    pub pids: i64,
}

/// Parse `--system-reserved`/`--kube-reserved` (`name` is the flag, for the
/// message): `cpu`, `memory`, `ephemeral-storage` and `pid`, as the kubelet's
/// `parseResourceList` allows, each a non-negative quantity.
pub fn parse_reserved(name: &str, text: &str) -> Result<Reserved, String> {
    let mut list = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("{name}: {item:?} is not RESOURCE=QUANTITY"));
        };
        list.insert(key.trim().to_string(), value.trim().to_string());
    }
    reserved_from_map(name, &list)
}

/// [`parse_reserved`] for the config file's map form (`systemReserved: {cpu: 500m}`).
pub fn reserved_from_map(name: &str, list: &BTreeMap<String, String>) -> Result<Reserved, String> {
    let mut out = Reserved::default();
    for (key, value) in list {
        let q = berth_api::quantity::Quantity::parse(value)
            .map_err(|e| format!("{name}: {key}={value}: {e}"))?;
        if q.signum() < 0 {
            return Err(format!(
                "{name}: resource quantity for {key:?} cannot be negative: {value}"
            ));
        }
        match key.as_str() {
            "cpu" => out.resources.milli_cpu = q.milli_value(),
            "memory" => out.resources.memory = q.value(),
            "ephemeral-storage" => out.resources.ephemeral_storage = q.value(),
            "pid" => out.pids = q.value(),
            other => return Err(format!("{name}: cannot reserve {other:?} resource")),
        }
    }
    Ok(out)
}

/// An eviction signal (`pkg/kubelet/eviction/api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signal {
    MemoryAvailable,
    AllocatableMemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
    ImageFsInodesFree,
    ContainerFsAvailable,
    ContainerFsInodesFree,
    PidAvailable,
}

impl Signal {
    const ALL: [(&'static str, Signal); 9] = [
        ("memory.available", Signal::MemoryAvailable),
        (
            "allocatableMemory.available",
            Signal::AllocatableMemoryAvailable,
        ),
        ("nodefs.available", Signal::NodeFsAvailable),
        ("nodefs.inodesFree", Signal::NodeFsInodesFree),
        ("imagefs.available", Signal::ImageFsAvailable),
        ("imagefs.inodesFree", Signal::ImageFsInodesFree),
        ("containerfs.available", Signal::ContainerFsAvailable),
        ("containerfs.inodesFree", Signal::ContainerFsInodesFree),
        ("pid.available", Signal::PidAvailable),
    ];

    /// The signal's name, as flags and conditions spell it.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("", |(n, _)| n)
    }

    /// The signal named `s` (`memory.available`).
    pub fn parse_name(s: &str) -> Option<Signal> {
        Self::parse(s)
    }

    fn parse(s: &str) -> Option<Signal> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, s)| *s)
    }
}

/// A threshold's value: an absolute quantity or a share of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    /// An amount (bytes, inodes or process IDs).
    Quantity(i64),
    /// A fraction of the capacity, in [0, 1].
    Percentage(f64),
}

impl ThresholdValue {
    /// The amount this value stands for against `capacity`.
    pub fn amount(self, capacity: i64) -> i64 {
        match self {
            ThresholdValue::Quantity(q) => q,
            // The kubelet's `GetThresholdQuantity`: int64(float64(capacity) * percentage).
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            ThresholdValue::Percentage(p) => (capacity as f64 * p) as i64,
        }
    }
}

/// An eviction threshold: `signal < value`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: ThresholdValue,
    /// How long the threshold must be met before pods are evicted for it:
    /// zero for a hard threshold, `--eviction-soft-grace-period` for a soft one.
    pub grace_period: std::time::Duration,
    /// `--eviction-minimum-reclaim`: once met, the threshold holds until this
    /// much more than its amount is available again.
    pub min_reclaim: Option<ThresholdValue>,
}

impl Threshold {
    /// A hard threshold (no grace period).
    pub fn is_hard(&self) -> bool {
        self.grace_period.is_zero()
    }
}

/// Parse `--eviction-hard` (`name` is the flag): comma-separated
/// `<signal><<value>`, the value a quantity or a percentage; an empty text
/// means no threshold. Messages follow the kubelet's `ParseThresholdConfig`.
pub fn parse_thresholds(name: &str, text: &str) -> Result<Vec<Threshold>, String> {
    let mut map = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((signal, value)) = item.split_once('<') else {
            return Err(format!(
                "{name}: invalid eviction threshold syntax {item:?}, expected <signal><operator><value>"
            ));
        };
        map.insert(signal.trim().to_string(), value.trim().to_string());
    }
    thresholds_from_map(name, &map)
}

/// [`parse_thresholds`] for the config file's map form
/// (`evictionHard: {memory.available: 100Mi}`).
pub fn thresholds_from_map(
    name: &str,
    map: &BTreeMap<String, String>,
) -> Result<Vec<Threshold>, String> {
    let mut out = Vec::new();
    for (signal_name, value) in map {
        let signal = Signal::parse(signal_name)
            .ok_or_else(|| format!("{name}: unsupported eviction signal {signal_name:?}"))?;
        let value = threshold_value(name, signal_name, value, "eviction threshold")?;
        out.push(Threshold {
            signal,
            value,
            grace_period: std::time::Duration::ZERO,
            min_reclaim: None,
        });
    }
    out.sort_by_key(|t| t.signal);
    Ok(out)
}

/// A quantity or a percentage of `signal_name` in flag `name`; `what` names
/// it in the error (the kubelet's `parsePercentage`/`ParseQuantity` checks).
fn threshold_value(
    name: &str,
    signal_name: &str,
    value: &str,
    what: &str,
) -> Result<ThresholdValue, String> {
    if let Some(pct) = value.strip_suffix('%') {
        let p: f64 = pct
            .trim()
            .parse()
            .map_err(|_| format!("{name}: {signal_name}: invalid percentage {value:?}"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!(
                "{name}: {signal_name}: {what} percentage must be >= 0% and <= 100%: {value}"
            ));
        }
        Ok(ThresholdValue::Percentage(p / 100.0))
    } else {
        let q = berth_api::quantity::Quantity::parse(value)
            .map_err(|e| format!("{name}: {signal_name}: {value:?}: {e}"))?;
        if q.signum() < 0 {
            return Err(format!(
                "{name}: {signal_name}: {what} must be positive: {value}"
            ));
        }
        Ok(ThresholdValue::Quantity(q.value()))
    }
}

/// Parse `signal=value,...` (`--eviction-soft-grace-period`,
/// `--eviction-minimum-reclaim`) into a map; `name` is the flag.
pub fn parse_signal_map(name: &str, text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((signal, value)) = item.split_once('=') else {
            return Err(format!(
                "{name}: invalid item {item:?}, expected <signal>=<value>"
            ));
        };
        map.insert(signal.trim().to_string(), value.trim().to_string());
    }
    Ok(map)
}

/// The soft thresholds with their grace periods, and the minimum reclaim of
/// every threshold, as the kubelet's `ParseThresholdConfig`: a soft threshold
/// without a grace period, a grace period or minimum reclaim of an unknown
/// signal, a negative or unparsable value are errors naming the setting.
pub fn complete_thresholds(
    hard: Vec<Threshold>,
    soft: Vec<Threshold>,
    grace_periods: &BTreeMap<String, String>,
    min_reclaims: &BTreeMap<String, String>,
) -> Result<Vec<Threshold>, String> {
    let mut grace = BTreeMap::new();
    for (signal_name, text) in grace_periods {
        let signal = Signal::parse(signal_name).ok_or_else(|| {
            format!("--eviction-soft-grace-period: unsupported eviction signal {signal_name:?}")
        })?;
        let d = humantime::parse_duration(text).map_err(|e| {
            format!("--eviction-soft-grace-period: {signal_name}: invalid duration {text:?}: {e}")
        })?;
        if d.is_zero() {
            return Err(format!(
                "--eviction-soft-grace-period: {signal_name}: must be greater than zero: {text}"
            ));
        }
        grace.insert(signal, d);
    }
    let mut out = hard;
    for mut t in soft {
        t.grace_period = *grace.get(&t.signal).ok_or_else(|| {
            format!(
                "--eviction-soft: grace period must be specified for the soft eviction threshold {}",
                t.signal.as_str()
            )
        })?;
        out.push(t);
    }
    for (signal_name, text) in min_reclaims {
        let signal = Signal::parse(signal_name).ok_or_else(|| {
            format!("--eviction-minimum-reclaim: unsupported eviction signal {signal_name:?}")
        })?;
        let value = threshold_value(
            "--eviction-minimum-reclaim",
            signal_name,
            text,
            "minimum reclaim",
        )?;
        for t in out.iter_mut().filter(|t| t.signal == signal) {
            t.min_reclaim = Some(value);
        }
    }
    Ok(out)
}

/// The node's capacity and what pods may be given of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeResources {
    pub capacity: Resources,
    pub allocatable: Resources,
}

impl NodeResources {
    /// `status.capacity` as a resource list.
    pub fn capacity_list(&self) -> BTreeMap<String, Quantity> {
        resource_list(&self.capacity)
    }

    /// `status.allocatable` as a resource list.
    pub fn allocatable_list(&self) -> BTreeMap<String, Quantity> {
        resource_list(&self.allocatable)
    }
}

/// allocatable = capacity − reserved − the hard eviction reservation, each at
/// least zero; hugepage capacity comes off allocatable memory.
pub fn allocatable(
    capacity: &Resources,
    system_reserved: &Reserved,
    kube_reserved: &Reserved,
    eviction_hard: &[Threshold],
) -> Resources {
    let mut reservation = system_reserved.resources.clone();
    reservation.add(&kube_reserved.resources);
    for t in eviction_hard {
        match t.signal {
            Signal::MemoryAvailable => {
                reservation.memory = reservation
                    .memory
                    .saturating_add(t.value.amount(capacity.memory))
            }
            Signal::NodeFsAvailable => {
                reservation.ephemeral_storage = reservation
                    .ephemeral_storage
                    .saturating_add(t.value.amount(capacity.ephemeral_storage))
            }
            _ => {}
        }
    }
    let mut out = capacity.clone();
    out.milli_cpu = out.milli_cpu.saturating_sub(reservation.milli_cpu).max(0);
    out.memory = out.memory.saturating_sub(reservation.memory).max(0);
    out.ephemeral_storage = out
        .ephemeral_storage
        .saturating_sub(reservation.ephemeral_storage)
        .max(0);
    let hugepages: i64 = capacity
        .scalar
        .iter()
        .filter(|(n, _)| n.starts_with("hugepages-"))
        .fold(0i64, |sum, (_, v)| sum.saturating_add(*v));
    out.memory = out.memory.saturating_sub(hugepages).max(0);
    out
}

/// The values of the cgroup root (`kubepods`), as the kubelet's
/// `enforceNodeAllocatableCgroups`: its CPU shares, memory limit and
/// `pids.max` from the node's capacity (`pid_max` counting as the pid
/// capacity), less `--system-reserved` and `--kube-reserved` when
/// `enforce_pods` (`--enforce-node-allocatable=pods`, the default). The hard
/// eviction threshold is not taken off (`getNodeAllocatableAbsolute`): pods
/// may use that memory until the agent evicts them.
pub fn node_cgroup_config(
    capacity: &Resources,
    pid_max: i64,
    system_reserved: &Reserved,
    kube_reserved: &Reserved,
    enforce_pods: bool,
) -> crate::cgroups::ResourceConfig {
    let (mut cpu, mut memory, mut pids) = (capacity.milli_cpu, capacity.memory, pid_max);
    if enforce_pods {
        for r in [system_reserved, kube_reserved] {
            cpu = cpu.saturating_sub(r.resources.milli_cpu);
            memory = memory.saturating_sub(r.resources.memory);
            pids = pids.saturating_sub(r.pids);
        }
    }
    crate::cgroups::ResourceConfig {
        cpu_shares: Some(crate::cgroups::resources::milli_cpu_to_shares(cpu.max(0))),
        memory: (memory > 0).then_some(memory),
        pids_limit: (pids > 0).then_some(pids),
        ..Default::default()
    }
}

/// `/proc/sys/kernel/pid_max` (the node's pid capacity), if readable.
pub fn pid_max() -> Option<i64> {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Parse `--enforce-node-allocatable`: `pods` (the default), or `none` /
/// empty. `system-reserved` and `kube-reserved` need their own cgroups
/// (`--system-reserved-cgroup`), which berth does not manage: refused.
pub fn parse_enforce(name: &str, items: &[String]) -> Result<bool, String> {
    let mut pods = false;
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match item {
            "pods" => pods = true,
            "none" => {}
            "system-reserved"
            | "kube-reserved"
            | "system-reserved-compressible"
            | "kube-reserved-compressible" => {
                return Err(format!(
                    "{name}: {item:?} needs --{}-cgroup, which berth does not manage (only \"pods\" is enforced)",
                    item.trim_end_matches("-compressible")
                ));
            }
            other => {
                return Err(format!(
                    "{name}: invalid option {other:?}: only \"pods\", \"system-reserved\", \"kube-reserved\" and \"none\" are known"
                ));
            }
        }
    }
    if pods && items.iter().any(|s| s.trim() == "none") {
        return Err(format!(
            "{name}: \"none\" cannot be combined with other options"
        ));
    }
    Ok(pods)
}

/// The host's capacity: CPUs, MemTotal, the filesystem of `root_dir`,
/// pre-allocated hugepages of every size, and `max_pods`.
pub fn host_capacity(root_dir: &Path, max_pods: i64) -> Resources {
    let mut r = Resources {
        milli_cpu: crate::capacity::cpus().saturating_mul(1000),
        memory: crate::capacity::memory_bytes(),
        ephemeral_storage: crate::capacity::ephemeral_storage_bytes(root_dir)
            .and_then(|b| i64::try_from(b).ok())
            .unwrap_or(0),
        pods: max_pods,
        scalar: Vec::new(),
    };
    r.scalar = hugepages(Path::new("/sys/kernel/mm/hugepages"));
    r
}

/// `hugepages-<size>` → bytes pre-allocated, from `dir`'s
/// `hugepages-<kB>kB/nr_hugepages` (every size the kernel offers, zeros too,
/// as cadvisor reports them).
pub fn hugepages(dir: &Path) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(kb) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hugepages-"))
            .and_then(|n| n.strip_suffix("kB"))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let pages = std::fs::read_to_string(entry.path().join("nr_hugepages"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let size = kb.saturating_mul(1024);
        out.push((
            format!("hugepages-{}", binary_si(size)),
            pages.saturating_mul(size),
        ));
    }
    out.sort();
    out
}

/// A byte count in the largest binary suffix that divides it (`2Mi`, `1Gi`).
pub fn binary_si(bytes: i64) -> String {
    for (suffix, unit) in [
        ("Ei", 1i64 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes != 0 && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// `r` as the Node status spells it: cpu in cores or millicores, memory in
/// Ki when whole, the rest as plain integers.
pub fn resource_list(r: &Resources) -> BTreeMap<String, Quantity> {
    let cpu = if r.milli_cpu % 1000 == 0 {
        (r.milli_cpu / 1000).to_string()
    } else {
        format!("{}m", r.milli_cpu)
    };
    let memory = if r.memory % 1024 == 0 {
        format!("{}Ki", r.memory / 1024)
    } else {
        r.memory.to_string()
    };
    let mut out = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu)),
        ("memory".to_string(), Quantity(memory)),
        (
            "ephemeral-storage".to_string(),
            Quantity(r.ephemeral_storage.to_string()),
        ),
        ("pods".to_string(), Quantity(r.pods.to_string())),
    ]);
    for (name, v) in &r.scalar {
        let q = if name.starts_with("hugepages-") && *v != 0 {
            binary_si(*v)
        } else {
            v.to_string()
        };
        out.insert(name.clone(), Quantity(q));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Resources {
        Resources {
            milli_cpu: 2000,
            memory: 8 << 30,
            ephemeral_storage: 100 << 30,
            pods: 110,
            scalar: vec![("hugepages-2Mi".into(), 64 << 20)],
        }
    }

    #[test]
    fn allocatable_is_capacity_minus_reservations_and_hard_eviction() {
        let sys = parse_reserved("--system-reserved", "cpu=500m,memory=1Gi,pid=100").unwrap();
        let kube = parse_reserved("--kube-reserved", "cpu=100m, ephemeral-storage=10Gi").unwrap();
        let hard = parse_thresholds("--eviction-hard", DEFAULT_EVICTION_HARD).unwrap();
        let a = allocatable(&caps(), &sys, &kube, &hard);
        assert_eq!(a.milli_cpu, 1400);
        // 8Gi − 1Gi − 100Mi − 64Mi of hugepages.
        assert_eq!(a.memory, (8 << 30) - (1 << 30) - (100 << 20) - (64 << 20));
        // 100Gi − 10Gi − 10% of 100Gi.
        assert_eq!(
            a.ephemeral_storage,
            (100i64 << 30) - (10 << 30) - ((100i64 << 30) as f64 * 0.1) as i64
        );
        assert_eq!(a.pods, 110);
        assert_eq!(sys.pids, 100);
        assert_eq!(resource_list(&a)["cpu"].0, "1400m");
        assert_eq!(resource_list(&caps())["cpu"].0, "2");
        assert_eq!(resource_list(&caps())["memory"].0, "8388608Ki");
        assert_eq!(resource_list(&caps())["hugepages-2Mi"].0, "64Mi");
    }

    #[test]
    fn reservations_beyond_capacity_leave_zero_not_a_negative() {
        let sys = parse_reserved("--system-reserved", "cpu=64,memory=1Ei").unwrap();
        let a = allocatable(&caps(), &sys, &Reserved::default(), &[]);
        assert_eq!((a.milli_cpu, a.memory), (0, 0));
        // A threshold of 100% takes all; none takes nothing.
        let all = parse_thresholds("f", "nodefs.available<100%").unwrap();
        assert_eq!(
            allocatable(&caps(), &Reserved::default(), &Reserved::default(), &all)
                .ephemeral_storage,
            0
        );
        assert!(parse_thresholds("f", "").unwrap().is_empty());
    }

    #[test]
    fn bad_flags_name_the_flag_the_item_and_the_reason() {
        let e = parse_reserved("--kube-reserved", "nvidia.com/gpu=1").unwrap_err();
        assert_eq!(
            e,
            "--kube-reserved: cannot reserve \"nvidia.com/gpu\" resource"
        );
        let e = parse_reserved("--kube-reserved", "cpu=-1").unwrap_err();
        assert!(e.contains("cannot be negative"), "{e}");
        let e = parse_reserved("--kube-reserved", "cpu").unwrap_err();
        assert!(e.contains("not RESOURCE=QUANTITY"), "{e}");
        let e = parse_reserved("--kube-reserved", "memory=lots").unwrap_err();
        assert!(e.starts_with("--kube-reserved: memory=lots: "), "{e}");
        let e = parse_thresholds("--eviction-hard", "memory.free<1Gi").unwrap_err();
        assert_eq!(
            e,
            "--eviction-hard: unsupported eviction signal \"memory.free\""
        );
        let e = parse_thresholds("--eviction-hard", "memory.available>1Gi").unwrap_err();
        assert!(e.contains("expected <signal><operator><value>"), "{e}");
        let e = parse_thresholds("--eviction-hard", "nodefs.available<120%").unwrap_err();
        assert!(e.contains("<= 100%"), "{e}");
        let e = parse_thresholds("--eviction-hard", "memory.available<-5Mi").unwrap_err();
        assert!(e.contains("must be positive"), "{e}");
    }

    #[test]
    fn the_cgroup_root_holds_allocatable_without_the_eviction_threshold() {
        let sys = parse_reserved("f", "cpu=500m,memory=1Gi,pid=1000").unwrap();
        let kube = parse_reserved("f", "memory=512Mi").unwrap();
        let c = node_cgroup_config(&caps(), 4_194_304, &sys, &kube, true);
        // 1500m -> 1536 shares; 8Gi - 1.5Gi; pid_max - 1000.
        assert_eq!(c.cpu_shares, Some(1536));
        assert_eq!(c.memory, Some((8 << 30) - (1 << 30) - (512 << 20)));
        assert_eq!(c.pids_limit, Some(4_194_304 - 1000));
        assert_eq!(c.cpu_quota, None);
        // Not enforced: the capacity.
        let c = node_cgroup_config(&caps(), 4_194_304, &sys, &kube, false);
        assert_eq!((c.cpu_shares, c.memory), (Some(2048), Some(8 << 30)));
        // Reserving everything leaves the least shares, no memory limit of zero.
        let all = parse_reserved("f", "cpu=100,memory=1Ei").unwrap();
        let c = node_cgroup_config(&caps(), 100, &all, &Reserved::default(), true);
        assert_eq!((c.cpu_shares, c.memory), (Some(2), None));
    }

    #[test]
    fn enforce_node_allocatable_knows_pods_and_none() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_enforce("f", &v(&["pods"])), Ok(true));
        assert_eq!(parse_enforce("f", &v(&["none"])), Ok(false));
        assert_eq!(parse_enforce("f", &v(&[])), Ok(false));
        let e = parse_enforce("f", &v(&["pods", "system-reserved"])).unwrap_err();
        assert!(e.contains("--system-reserved-cgroup"), "{e}");
        assert!(parse_enforce("f", &v(&["pods", "none"])).is_err());
        assert!(
            parse_enforce("f", &v(&["everything"]))
                .unwrap_err()
                .contains("invalid option")
        );
    }

    #[test]
    fn hugepages_read_from_sysfs_layout() {
        let dir = tempfile::tempdir().unwrap();
        for (d, n) in [("hugepages-2048kB", "3\n"), ("hugepages-1048576kB", "0\n")] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
            std::fs::write(dir.path().join(d).join("nr_hugepages"), n).unwrap();
        }
        assert_eq!(
            hugepages(dir.path()),
            vec![
                ("hugepages-1Gi".to_string(), 0),
                ("hugepages-2Mi".to_string(), 3 << 21)
            ]
        );
    }
}
