//! Choosing the cgroup driver at start-up, as the kubelet does
//! (`getCgroupDriverFromCRI` in `cmd/kubelet/app/server.go`, then its
//! container manager): the runtime's own choice where it tells it (CRI
//! `RuntimeConfig`, containerd 2.0 and CRI-O 1.28 on), else `--cgroup-driver`
//! (containerd 1.6 and 1.7 answer Unimplemented); then the driver is checked
//! against the host, and a driver the host cannot run stops the start, never
//! falling back to the other one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_cri::{RuntimeClient, api};

use super::systemd::{self, SystemdBus};
use super::{CgroupManager, Driver, FsManager, Mode, SystemdManager};

/// Where the driver in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverSource {
    /// `--cgroup-driver` (or `cgroupDriver`): the runtime has no
    /// `RuntimeConfig`, or did not say.
    Flag,
    /// The runtime's `RuntimeConfig`, which wins over the flag.
    Runtime,
}

/// The cgroup driver to run with, and who chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverChoice {
    pub driver: Driver,
    pub source: DriverSource,
    /// What `--cgroup-driver` said.
    pub flag: Driver,
}

/// How often `RuntimeConfig` is tried when it fails with something other
/// than Unimplemented (the runtime may still be starting), and the first
/// pause; each pause doubles.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first_delay: Duration,
}

impl Default for Retry {
    /// Three attempts, as upstream, 1 s and then 2 s apart.
    fn default() -> Self {
        Retry {
            attempts: 3,
            first_delay: Duration::from_secs(1),
        }
    }
}

/// Why the agent cannot run with a cgroup driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// `RuntimeConfig` failed every time, and not as Unimplemented.
    #[error(
        "cannot learn the cgroup driver from the container runtime: CRI RuntimeConfig failed \
         {attempts} times: {source}"
    )]
    RuntimeConfig {
        attempts: u32,
        #[source]
        source: berth_cri::Error,
    },
    /// The runtime named a driver this agent does not know.
    #[error("the container runtime's RuntimeConfig names an unknown cgroup driver ({value})")]
    UnknownDriver { value: i32 },
    /// The driver cannot run on this host.
    #[error("{origin}: {reason}; {advice}")]
    Unavailable {
        /// The flag, or the runtime overriding it.
        origin: String,
        reason: String,
        /// What to change.
        advice: String,
    },
}

/// The cgroup driver: the runtime's when its `RuntimeConfig` names one,
/// else `flag`. Unimplemented (containerd before 2.0) falls back to the
/// flag at once; other failures are retried per `retry`, then fail.
pub async fn driver_from_cri(
    client: &RuntimeClient,
    flag: Driver,
    retry: Retry,
) -> Result<DriverChoice, DriverError> {
    let from_flag = DriverChoice {
        driver: flag,
        source: DriverSource::Flag,
        flag,
    };
    let mut delay = retry.first_delay;
    let mut attempt = 0;
    let answer = loop {
        attempt += 1;
        match client.runtime_config(api::RuntimeConfigRequest {}).await {
            Ok(answer) => break answer,
            Err(e) if e.is_unimplemented() => {
                tracing::info!(
                    cgroup_driver = flag.as_str(),
                    "the container runtime does not implement CRI RuntimeConfig (containerd before \
                     2.0): using the cgroup driver of --cgroup-driver"
                );
                return Ok(from_flag);
            }
            Err(source) if attempt >= retry.attempts.max(1) => {
                return Err(DriverError::RuntimeConfig {
                    attempts: attempt,
                    source,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, retry_in = ?delay, "CRI RuntimeConfig failed; trying again");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
        }
    };
    // An answer without its Linux part would read as systemd (the enum's
    // zero): upstream keeps the flag then.
    let Some(linux) = answer.linux else {
        tracing::info!(
            cgroup_driver = flag.as_str(),
            "the container runtime's RuntimeConfig has no Linux part: using --cgroup-driver"
        );
        return Ok(from_flag);
    };
    let driver = match api::CgroupDriver::try_from(linux.cgroup_driver) {
        Ok(api::CgroupDriver::Systemd) => Driver::Systemd,
        Ok(api::CgroupDriver::Cgroupfs) => Driver::Cgroupfs,
        Err(_) => {
            return Err(DriverError::UnknownDriver {
                value: linux.cgroup_driver,
            });
        }
    };
    if driver == flag {
        tracing::info!(
            cgroup_driver = driver.as_str(),
            "Using cgroup driver setting received from the CRI runtime"
        );
    } else {
        tracing::info!(
            cgroup_driver = driver.as_str(),
            flag = flag.as_str(),
            "Using cgroup driver setting received from the CRI runtime, not --cgroup-driver's"
        );
    }
    Ok(DriverChoice {
        driver,
        source: DriverSource::Runtime,
        flag,
    })
}

/// What the host offers the drivers.
#[derive(Debug, Clone)]
pub struct Host {
    /// The cgroup mode.
    pub mode: Mode,
    /// A directory while systemd runs as PID 1 ([`systemd::SYSTEMD_RUN_DIR`]).
    pub systemd_run_dir: PathBuf,
    /// systemd's D-Bus API.
    pub bus: Arc<dyn SystemdBus>,
}

impl Host {
    /// This host: its cgroup mode, `/run/systemd/system`, the system bus.
    pub fn detect() -> Self {
        Host {
            mode: super::detect_mode(),
            systemd_run_dir: PathBuf::from(systemd::SYSTEMD_RUN_DIR),
            bus: Arc::new(systemd::CgroupsRsBus),
        }
    }
}

/// The cgroup manager for `choice` on `host`. The systemd driver needs
/// systemd as PID 1 (runc's `IsRunningSystemd`, as libcontainer checks
/// before making a systemd manager) and its D-Bus API; without them this
/// fails, naming the flag (or the runtime that chose systemd) and the reason.
/// Blocking (the D-Bus check): call it off the async runtime.
pub fn new_manager(
    choice: DriverChoice,
    host: &Host,
) -> Result<Arc<dyn CgroupManager>, DriverError> {
    match choice.driver {
        Driver::Cgroupfs => Ok(Arc::new(FsManager::new(host.mode))),
        Driver::Systemd => {
            let (origin, advice) = match choice.source {
                DriverSource::Flag => (
                    "--cgroup-driver=systemd".to_string(),
                    "use --cgroup-driver=cgroupfs".to_string(),
                ),
                DriverSource::Runtime => (
                    format!(
                        "--cgroup-driver: the container runtime's RuntimeConfig chose the systemd \
                         cgroup driver (over --cgroup-driver={})",
                        choice.flag.as_str()
                    ),
                    "configure the runtime for cgroupfs (containerd: SystemdCgroup = false)"
                        .to_string(),
                ),
            };
            let unavailable = |reason: String| DriverError::Unavailable {
                origin: origin.clone(),
                reason,
                advice: advice.clone(),
            };
            if !systemd::is_running_systemd(&host.systemd_run_dir) {
                return Err(unavailable(format!(
                    "systemd is not running as PID 1 on this host ({} is not a directory), and \
                     the systemd cgroup driver makes every cgroup a systemd slice",
                    host.systemd_run_dir.display()
                )));
            }
            host.bus
                .check()
                .map_err(|e| unavailable(format!("systemd's D-Bus API: {e}")))?;
            Ok(Arc::new(SystemdManager::new(host.bus.clone(), host.mode)))
        }
    }
}
