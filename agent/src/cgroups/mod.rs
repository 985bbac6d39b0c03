//! The node's cgroups, as the kubelet's container manager (`pkg/kubelet/cm`)
//! keeps them: one [`CgroupManager`] trait over the hierarchy and driver, a
//! cgroupfs implementation on the `cgroups-rs` crate ([`FsManager`], cgroup
//! v1, hybrid and v2), the systemd driver ([`SystemdManager`]: slices over
//! systemd's D-Bus API, [`systemd`]), and a recording fake for tests
//! ([`RecordingManager`]); the driver chosen at start-up from the runtime's
//! `RuntimeConfig` or `--cgroup-driver` ([`driver`]);
//! cgroup names as the kubelet's `CgroupName` with both drivers' spellings
//! ([`names`]); the kubelet's formulas from a pod to cgroup values
//! ([`resources`]); and the pod and QoS cgroups built on them ([`pod`]).
//!
//! The layout under the cgroup root (`--cgroup-root`, the kubelet's
//! `kubepods`): Guaranteed pods as `pod<uid>`, `burstable/pod<uid>`,
//! `besteffort/pod<uid>`. The agent creates a pod's cgroup with its values
//! before the sandbox starts, and passes it to the runtime as the cgroup
//! parent; the runtime makes the containers' cgroups below it.

pub mod driver;
mod fake;
mod fs;
mod hierarchies;
pub mod names;
pub mod pod;
pub mod resources;
pub mod systemd;

pub use driver::{DriverChoice, DriverError, DriverSource, Host, driver_from_cri, new_manager};
pub use fake::{Call, RecordingManager};
pub use fs::FsManager;
pub use hierarchies::{Mode, detect_mode};
pub use names::{CgroupName, Driver};
pub use pod::PodCgroups;
pub use resources::ResourceConfig;
pub use systemd::{CgroupsRsBus, RecordingBus, SystemdBus, SystemdManager};

/// What a cgroup operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup still has processes or children (EBUSY): try again later.
    #[error("cgroup {cgroup} is busy (processes or child cgroups remain)")]
    Busy { cgroup: String },
    /// A file of the cgroup could not be read or written, or the directory made.
    #[error("cgroup {cgroup}: {message}")]
    Io { cgroup: String, message: String },
    /// The host or the driver cannot do this.
    #[error("{0}")]
    Unsupported(String),
}

/// One cgroup hierarchy and driver (the kubelet's `CgroupManager`).
pub trait CgroupManager: Send + Sync + std::fmt::Debug {
    /// The cgroup driver this manager is.
    fn driver(&self) -> Driver;
    /// The cgroup's path as the runtime is given it (`cgroup_parent`): the
    /// cgroupfs path, or the systemd slice path.
    fn name(&self, name: &CgroupName) -> String;
    /// The cgroup exists in every hierarchy the node needs.
    fn exists(&self, name: &CgroupName) -> bool;
    /// Make the cgroup (and its parents) and set `config`'s values.
    fn create(&self, name: &CgroupName, config: &ResourceConfig) -> Result<(), CgroupError>;
    /// Set `config`'s values on an existing cgroup (values left `None` are not touched).
    fn update(&self, name: &CgroupName, config: &ResourceConfig) -> Result<(), CgroupError>;
    /// Every process in the cgroup and below it.
    fn pids(&self, name: &CgroupName) -> Vec<i32>;
    /// The names of the cgroups directly below `name`.
    fn children(&self, name: &CgroupName) -> Vec<String>;
    /// Remove the cgroup (processes must be gone: [`CgroupError::Busy`] if not).
    fn destroy(&self, name: &CgroupName) -> Result<(), CgroupError>;
}
