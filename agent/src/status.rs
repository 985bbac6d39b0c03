//! Pod status from observed runtime state (skeleton; filled in by the status work).

use std::collections::BTreeMap;

/// Why a container is waiting, as the kubelet reports it (`ErrImagePull`,
/// `ImagePullBackOff`, `ErrImageNeverPull`, `CrashLoopBackOff`,
/// `CreateContainerError`, `CreateContainerConfigError`, `RunContainerError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// What the pod worker knows that the runtime does not hold: why a container is
/// waiting, and why the sandbox could not be created. Lost on restart, rebuilt
/// by the next sync — as the kubelet's own in-memory sync results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transient {
    /// Keyed by container name (init and app container names are unique together).
    pub waiting: BTreeMap<String, Waiting>,
    /// A pod-level problem (e.g. RunPodSandbox failed), shown as the pod's
    /// `status.reason`/`status.message` while no container runs.
    pub pod_error: Option<Waiting>,
}
