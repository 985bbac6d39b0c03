//! Probe types and results, keyed by container ID (the kubelet's
//! `results.Manager`): a leaf module, so the status (which reads results) and
//! the prober (which writes them) both stand on it.
//!
//! A result belongs to one container instance: a restarted container has a new
//! ID, so its probes start again from [`ProbeType::initial`](ProbeType::initial).
//! The results are kept per pod in the status module's `TransientStore`,
//! beside the workers' other in-memory knowledge, and shown to the status
//! computation and the pod sync as `Transient::probes`.

use k8s_openapi::api::core::v1::{Container, Probe};

/// The three kinds of probe, named as the kubelet's events and metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeType {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeType {
    /// `Liveness`, `Readiness`, `Startup` (events, the `probe_type` label).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeType::Liveness => "Liveness",
            ProbeType::Readiness => "Readiness",
            ProbeType::Startup => "Startup",
        }
    }

    /// The result a new container starts with: live until proven otherwise, not
    /// ready until proven ready, not known to be started.
    pub fn initial(self) -> ProbeResult {
        match self {
            ProbeType::Liveness => ProbeResult::Success,
            ProbeType::Readiness => ProbeResult::Failure,
            ProbeType::Startup => ProbeResult::Unknown,
        }
    }

    /// The container's probe of this type.
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeType::Liveness => c.liveness_probe.as_ref(),
            ProbeType::Readiness => c.readiness_probe.as_ref(),
            ProbeType::Startup => c.startup_probe.as_ref(),
        }
    }

    pub const ALL: [ProbeType; 3] = [
        ProbeType::Liveness,
        ProbeType::Readiness,
        ProbeType::Startup,
    ];
}

/// A probe's current verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Failure,
    /// Not known yet (a startup probe that has not run).
    Unknown,
}

impl ProbeResult {
    /// The `result` label of `prober_probe_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            ProbeResult::Success => "successful",
            ProbeResult::Failure => "failed",
            ProbeResult::Unknown => "unknown",
        }
    }
}

/// The results of one container's probes (None: that probe has no result).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerProbes {
    pub liveness: Option<ProbeResult>,
    pub readiness: Option<ProbeResult>,
    pub startup: Option<ProbeResult>,
}

impl ContainerProbes {
    pub fn get(&self, t: ProbeType) -> Option<ProbeResult> {
        match t {
            ProbeType::Liveness => self.liveness,
            ProbeType::Readiness => self.readiness,
            ProbeType::Startup => self.startup,
        }
    }

    pub fn set(&mut self, t: ProbeType, r: Option<ProbeResult>) {
        match t {
            ProbeType::Liveness => self.liveness = r,
            ProbeType::Readiness => self.readiness = r,
            ProbeType::Startup => self.startup = r,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == ContainerProbes::default()
    }

    /// Why the container must be killed, if a probe says so: the kubelet's
    /// `computePodActions` checks liveness first, then startup.
    pub fn kill_reason(&self) -> Option<ProbeType> {
        if self.liveness == Some(ProbeResult::Failure) {
            Some(ProbeType::Liveness)
        } else if self.startup == Some(ProbeResult::Failure) {
            Some(ProbeType::Startup)
        } else {
            None
        }
    }
}
