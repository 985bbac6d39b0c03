//! Resource usage of the node, its pods and their containers: the kubelet's
//! Summary API (`GET /stats/summary`, [`summary`]) and its `/metrics/resource`
//! Prometheus text ([`metrics`]), from what the host and the runtime report.
//!
//! The pipeline, one module per stage: the readers turn host files into
//! numbers ([`cgroup`]: v1 and v2 cgroups; [`host`]: /proc and statvfs;
//! [`network`]: `net/dev`; [`du`]: directory usage); [`sampler`] turns two
//! cumulative CPU readings into a rate (`usageNanoCores`); [`provider`] asks
//! the runtime (CRI `ListContainerStats`, `ImageFsInfo`), reads the host for
//! the node and each pod, and assembles a [`summary::Summary`];
//! [`metrics::resource_metrics`] renders one as the kubelet's text.
//!
//! Every reader is a function over a directory (the cgroup mount, `/proc`),
//! so tests run them against temporary trees with real file contents; the
//! provider takes those roots as [`provider::HostPaths`].

pub mod cgroup;
pub mod du;
pub mod host;
pub mod metrics;
pub mod network;
pub mod provider;
pub mod sampler;
pub mod summary;

use std::path::PathBuf;

pub use metrics::{CONTENT_TYPE, resource_metrics, resource_scrape_failed};
pub use provider::{HostPaths, StatsProvider, StatsSettings};
pub use summary::Summary;

/// `Result` with this module's [`StatsError`].
pub type Result<T, E = StatsError> = std::result::Result<T, E>;

/// What reading resource usage can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A file or directory of the host could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A host file did not hold what the kernel writes there.
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The cgroup exists in none of the hierarchies read.
    #[error("cgroup {cgroup:?} not found under {root}")]
    CgroupNotFound { cgroup: String, root: PathBuf },
    /// A cgroup path that would leave the hierarchy (`..`, an empty component).
    #[error("invalid cgroup path {0:?}")]
    InvalidCgroupPath(String),
    /// `statvfs` of a path failed.
    #[error("statvfs {path}: {source}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    /// The runtime failed a stats call (other than not implementing it).
    #[error("container runtime: {0}")]
    Runtime(#[source] berth_cri::Error),
    /// The blocking collection task did not finish (panicked or cancelled).
    #[error("stats collection task failed: {0}")]
    Task(String),
}

impl StatsError {
    /// True when the file or cgroup does not exist (a reading to leave out,
    /// not a failure).
    pub fn is_not_found(&self) -> bool {
        match self {
            StatsError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            StatsError::CgroupNotFound { .. } => true,
            StatsError::Statvfs { source, .. } => *source == nix::errno::Errno::ENOENT,
            _ => false,
        }
    }
}

/// Read a whole host file, naming the path in the error.
pub(crate) fn read_file(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| StatsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Read a file that holds one unsigned number (`memory.usage_in_bytes`,
/// `pids.current`).
pub(crate) fn read_u64(path: &std::path::Path) -> Result<u64> {
    let text = read_file(path)?;
    text.trim().parse().map_err(|e| StatsError::Parse {
        path: path.to_path_buf(),
        message: format!("{:?} is not a number: {e}", text.trim()),
    })
}

/// Wall-clock nanoseconds since the epoch (0 if the clock is before it).
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
