//! berth's scheduler core: kube-scheduler's default profile, as a library with
//! no I/O — plus [`controller::run`], the loop that drives it against an API
//! server (the `berth-scheduler` binary).
//!
//! A [`ClusterSnapshot`] holds the nodes with what the plugins need
//! precomputed and the sums of the pods bound to them; a scheduler loop keeps
//! it current from watches (`add_node`, `update_node`, `remove_node`,
//! `add_pod`, `remove_pod`) and asks a [`Scheduler`] for a node per pending
//! pod. The filters are NodeUnschedulable, NodeName, TaintToleration,
//! NodeAffinity (with `spec.nodeSelector`), NodePorts and NodeResourcesFit;
//! the scores NodeResourcesFit (LeastAllocated), BalancedAllocation,
//! TaintToleration and NodeAffinity with the default weights
//! (pkg/scheduler/framework/plugins in kubernetes/kubernetes). A pod no node
//! fits gets kube-scheduler's `FitError` message.
//!
//! Not implemented: volume plugins, PodTopologySpread (including the system
//! default constraints), InterPodAffinity, ImageLocality, DRA, pod-level
//! resources, extenders, and preemption itself (the message's preemption
//! sentence is computed from a dry run; see [`ScheduleError::Unschedulable`]).

pub mod controller;
pub mod harness;
mod plugins;
pub mod queue;
/// The resource arithmetic lives in `berth-api`, shared with the agent.
pub use berth_api::resource as resources;
mod scheduler;
mod snapshot;

pub use plugins::{
    MAX_NODE_SCORE, REASON_AFFINITY_CONFLICT, REASON_NODE_AFFINITY, REASON_NODE_NAME,
    REASON_NODE_PORTS, REASON_TOO_MANY_PODS, REASON_UNSCHEDULABLE,
};
pub use scheduler::{
    MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND, MIN_FEASIBLE_NODES_TO_FIND, ScheduleError, Scheduler,
    SchedulerConfig, Weights,
};
pub use snapshot::{
    ClusterSnapshot, DEFAULT_BIND_ALL_HOST_IP, Effect, HostPort, NodeInfo, Taint, host_ports,
    pod_key,
};

pub use controller::{DEFAULT_SCHEDULER_NAME, RunConfig, client_from_kubeconfig, run};

#[cfg(test)]
mod tests;
