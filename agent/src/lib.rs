//! berth-agent: a node agent (kubelet) that runs pods on containerd over CRI.
//!
//! A pod's path from manifest to running container, by module:
//! [`source`] (manifest files → desired pods) → [`workers`] (one sync at a time
//! per pod UID) → [`runtime`] (compare desired with [`observed`] runtime state and
//! act over CRI) → [`pleg`] (relist: notice what changed) → [`status`] (pod status
//! from what the runtime reports) → [`server`] (`/pods`, `/healthz`, `/metrics`).

pub mod admission;
pub mod agent;
pub mod allocatable;
pub mod backoff;
pub mod capacity;
pub mod cgroups;
pub mod cluster;
pub mod config;
pub mod crilog;
pub mod events;
pub mod eviction;
pub mod hostcheck;
pub mod housekeeping;
pub mod metrics;
pub mod notify;
pub mod objects;
pub mod observed;
pub mod pleg;
pub mod probe_results;
pub mod prober;
pub mod runtime;
pub mod runtime_events;
pub mod server;
pub mod source;
pub mod stats;
pub mod status;
pub mod streaming;
pub mod util;
pub mod workers;

/// A pod's UID, as a string (the key of everything per pod).
pub type Uid = String;
