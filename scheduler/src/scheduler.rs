//! One scheduling cycle (`schedulePod`): PreFilter, filter a rotating window
//! of nodes until enough are feasible (`percentageOfNodesToScore`), score the
//! feasible ones, pick the best (ties at random, seeded), or explain why no
//! node fits with kube-scheduler's `FitError` message.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use crate::plugins::{
    self, Failure, MAX_NODE_SCORE, PodInfo, REASON_AFFINITY_CONFLICT, balanced_allocation, filter,
    least_allocated, normalize,
};
use crate::resources::QuantityError;
use crate::snapshot::{ClusterSnapshot, NodeInfo};

/// Below this many nodes every node is filtered (`minFeasibleNodesToFind`).
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The adaptive percentage never goes below this (`minFeasibleNodesPercentageToFind`).
pub const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// Score plugin weights; the default is the default profile's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    /// NodeResourcesFit (LeastAllocated).
    pub node_resources_fit: i64,
    /// NodeResourcesBalancedAllocation.
    pub balanced_allocation: i64,
    /// TaintToleration.
    pub taint_toleration: i64,
    /// NodeAffinity.
    pub node_affinity: i64,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            node_resources_fit: 1,
            balanced_allocation: 1,
            taint_toleration: 3,
            node_affinity: 2,
        }
    }
}

/// Scheduler settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// `percentageOfNodesToScore`: 0 for kube-scheduler's adaptive default
    /// (50% − nodes/125, at least 5%); 100 filters every node. At least 100
    /// feasible nodes are looked for either way.
    pub percentage_of_nodes_to_score: u32,
    /// Seed of the generator that breaks ties between best-scoring nodes.
    pub seed: u64,
    /// Score weights.
    pub weights: Weights,
    /// Whether an unschedulable pod's message ends with DefaultPreemption's
    /// sentence (`preemption: …`), as kube-scheduler's does.
    pub preemption_message: bool,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            percentage_of_nodes_to_score: 0,
            seed: 0x5eed_ba5e_d00d_f00d,
            weights: Weights::default(),
            preemption_message: true,
        }
    }
}

/// Why a pod was not given a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The snapshot has no nodes (`ErrNoNodesAvailable`).
    #[error("no nodes available to schedule pods")]
    NoNodes,
    /// No node passes the filters.
    #[error("{message}")]
    Unschedulable {
        /// kube-scheduler's `FitError` message, e.g. `0/3 nodes are available:
        /// 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu.
        /// preemption: 0/3 nodes are available: 1 Preemption is not helpful for
        /// scheduling, 2 No preemption victims found for incoming pod.`
        message: String,
        /// Nodes where evicting every pod of lower priority would make room —
        /// where kube-scheduler's DefaultPreemption would look for victims.
        /// berth does not preempt; when this is non-empty the message has no
        /// preemption sentence, as upstream's does when preemption succeeds.
        preemption_candidates: Vec<String>,
    },
    /// The pod's resource quantities do not parse.
    #[error("invalid pod: {0}")]
    InvalidPod(#[from] QuantityError),
}

/// Raw per-node scores, normalized once every feasible node has one.
#[derive(Debug, Clone, Copy)]
struct Raw {
    node: usize,
    resources: i64,
    taints: i64,
    affinity: i64,
}

/// The scheduling algorithm, with the state kube-scheduler keeps between
/// cycles: where the next node window starts and the tie-break generator.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    rng: u64,
    next_start: usize,
    feasible: Vec<usize>,
    failures: Vec<(usize, Failure)>,
    raw: Vec<Raw>,
}

impl Scheduler {
    /// A scheduler with `config`.
    pub fn new(config: SchedulerConfig) -> Scheduler {
        Scheduler {
            rng: config.seed,
            config,
            next_start: 0,
            feasible: Vec::new(),
            failures: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// How many feasible nodes to look for among `num_nodes`
    /// (`numFeasibleNodesToFind`).
    pub fn num_feasible_nodes_to_find(&self, num_nodes: usize) -> usize {
        if num_nodes < MIN_FEASIBLE_NODES_TO_FIND {
            return num_nodes;
        }
        let mut percentage = self.config.percentage_of_nodes_to_score as usize;
        if percentage == 0 {
            percentage = (50usize.saturating_sub(num_nodes / 125))
                .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND);
        }
        let n = num_nodes.saturating_mul(percentage.min(100)) / 100;
        n.max(MIN_FEASIBLE_NODES_TO_FIND)
    }

    /// Chooses a node for `pod`, without changing the snapshot (see
    /// [`schedule_and_assume`](Self::schedule_and_assume)).
    pub fn schedule(
        &mut self,
        snapshot: &ClusterSnapshot,
        pod: &Pod,
    ) -> Result<String, ScheduleError> {
        let num_all = snapshot.nodes.len();
        if num_all == 0 {
            return Err(ScheduleError::NoNodes);
        }
        let pod = PodInfo::new(pod)?;

        // NodeAffinity's PreFilter: `metadata.name In` in every required term
        // narrows the nodes to look at.
        let restricted: Option<Vec<usize>> = match &pod.prefilter_names {
            Some(names) if names.is_empty() => {
                return Err(self.prefilter_failure(&pod, num_all));
            }
            Some(names) => Some(names.iter().filter_map(|n| snapshot.index_of(n)).collect()),
            None => None,
        };
        let num_nodes = restricted.as_ref().map_or(num_all, Vec::len);
        let to_find = self.num_feasible_nodes_to_find(num_nodes);

        self.feasible.clear();
        self.failures.clear();
        if num_nodes > 0 {
            let start = self.next_start % num_nodes;
            let mut processed = 0;
            for k in 0..num_nodes {
                let mut j = start + k;
                if j >= num_nodes {
                    j -= num_nodes;
                }
                let i = restricted.as_ref().map_or(j, |r| r[j]);
                processed += 1;
                match filter(&pod, &snapshot.nodes[i]) {
                    Ok(()) => {
                        self.feasible.push(i);
                        if self.feasible.len() >= to_find {
                            break;
                        }
                    }
                    Err(f) => self.failures.push((i, f)),
                }
            }
            self.next_start = (start + processed) % num_nodes;
        }

        match self.feasible.len() {
            0 => Err(self.fit_error(snapshot, &pod, num_all)),
            1 => Ok(snapshot.nodes[self.feasible[0]].name.clone()),
            _ => Ok(snapshot.nodes[self.select(snapshot, &pod)].name.clone()),
        }
    }

    /// [`schedule`](Self::schedule), then counts the pod against the chosen
    /// node in the snapshot (`AssumePod`).
    pub fn schedule_and_assume(
        &mut self,
        snapshot: &mut ClusterSnapshot,
        pod: &Pod,
    ) -> Result<String, ScheduleError> {
        let node = self.schedule(snapshot, pod)?;
        snapshot.assume_pod(pod, &node);
        Ok(node)
    }

    /// Scores the feasible nodes and picks the highest total; ties are broken
    /// by reservoir sampling (`selectHost`).
    fn select(&mut self, snapshot: &ClusterSnapshot, pod: &PodInfo) -> usize {
        let w = self.config.weights;
        let balance = !pod.best_effort_for_balance();
        self.raw.clear();
        for &i in &self.feasible {
            let node: &NodeInfo = &snapshot.nodes[i];
            let mut resources = w.node_resources_fit * least_allocated(pod, node);
            if balance {
                resources += w.balanced_allocation * balanced_allocation(pod, node);
            }
            self.raw.push(Raw {
                node: i,
                resources,
                taints: plugins::intolerable_prefer_no_schedule(pod, node),
                affinity: if pod.preferred.is_empty() {
                    0
                } else {
                    plugins::preferred_affinity(pod, node)
                },
            });
        }
        let taint = normalize(self.raw.iter().map(|r| r.taints), MAX_NODE_SCORE, true);
        let affinity = normalize(self.raw.iter().map(|r| r.affinity), MAX_NODE_SCORE, false);
        let mut best = i64::MIN;
        let mut count = 0u64;
        let mut chosen = self.raw[0].node;
        for r in &self.raw {
            let total = r.resources
                + w.taint_toleration * taint(r.taints)
                + w.node_affinity * affinity(r.affinity);
            if total > best {
                best = total;
                chosen = r.node;
                count = 1;
            } else if total == best {
                count += 1;
                if next_random(&mut self.rng).is_multiple_of(count) {
                    chosen = r.node;
                }
            }
        }
        chosen
    }

    fn prefilter_failure(&self, pod: &PodInfo, num_all: usize) -> ScheduleError {
        let mut message = format!("0/{num_all} nodes are available: {REASON_AFFINITY_CONFLICT}.");
        if self.config.preemption_message {
            message.push(' ');
            message.push_str(&if pod.preemption_never {
                NOT_ELIGIBLE.to_owned()
            } else {
                histogram_message(
                    num_all,
                    [(NOT_HELPFUL.to_owned(), num_all)].into_iter().collect(),
                    "preemption: ",
                )
            });
        }
        ScheduleError::Unschedulable {
            message,
            preemption_candidates: Vec::new(),
        }
    }

    /// The `FitError` for a pod no node fits, with DefaultPreemption's
    /// sentence as its dry run would word it.
    fn fit_error(
        &self,
        snapshot: &ClusterSnapshot,
        pod: &PodInfo,
        num_all: usize,
    ) -> ScheduleError {
        let mut reasons: HashMap<String, usize> = HashMap::new();
        let mut scratch = Vec::new();
        for (i, f) in &self.failures {
            scratch.clear();
            f.reasons(pod, &snapshot.nodes[*i], &mut scratch);
            for r in scratch.drain(..) {
                *reasons.entry(r).or_default() += 1;
            }
        }
        let absent = num_all - self.failures.len();
        if absent > 0 {
            *reasons
                .entry(NOT_SATISFIED_NODE_AFFINITY.to_owned())
                .or_default() += absent;
        }
        let mut message = histogram_message(num_all, reasons, "");
        let mut candidates = Vec::new();
        if self.config.preemption_message {
            let post = if pod.preemption_never {
                Some(NOT_ELIGIBLE.to_owned())
            } else {
                let mut statuses: HashMap<String, usize> = HashMap::new();
                if absent > 0 {
                    *statuses.entry(NOT_HELPFUL.to_owned()).or_default() += absent;
                }
                for (i, f) in &self.failures {
                    if f.unresolvable() {
                        *statuses.entry(NOT_HELPFUL.to_owned()).or_default() += 1;
                        continue;
                    }
                    match dry_run_preemption(snapshot, *i, pod) {
                        DryRun::NoVictims => {
                            *statuses.entry(NO_VICTIMS.to_owned()).or_default() += 1
                        }
                        DryRun::StillFails(f) => {
                            scratch.clear();
                            f.reasons(pod, &snapshot.nodes[*i], &mut scratch);
                            for r in scratch.drain(..) {
                                *statuses.entry(r).or_default() += 1;
                            }
                        }
                        DryRun::Candidate => candidates.push(snapshot.nodes[*i].name.clone()),
                    }
                }
                candidates
                    .is_empty()
                    .then(|| histogram_message(num_all, statuses, "preemption: "))
            };
            if let Some(post) = post {
                message.push(' ');
                message.push_str(&post);
            }
        }
        ScheduleError::Unschedulable {
            message,
            preemption_candidates: candidates,
        }
    }
}

/// DefaultPreemption's message for a pod with `preemptionPolicy: Never`.
const NOT_ELIGIBLE: &str = "preemption: not eligible due to preemptionPolicy=Never.";
/// DefaultPreemption's status for nodes that failed unresolvably.
const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
/// DefaultPreemption's status for nodes without lower-priority pods.
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// The status of nodes NodeAffinity's PreFilter ruled out.
const NOT_SATISFIED_NODE_AFFINITY: &str = "node(s) didn't satisfy plugin(s) [NodeAffinity]";

/// `FitError.Error()`: `0/N nodes are available: <count reason, …>.`, the
/// `count reason` strings sorted as strings (as `sort.Strings` does).
fn histogram_message(num_all: usize, reasons: HashMap<String, usize>, prefix: &str) -> String {
    let mut lines: Vec<String> = reasons
        .into_iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    lines.sort_unstable();
    let mut message = format!("{prefix}0/{num_all} nodes are available:");
    if !lines.is_empty() {
        message.push(' ');
        message.push_str(&lines.join(", "));
        message.push('.');
    }
    message
}

enum DryRun {
    NoVictims,
    StillFails(Failure),
    Candidate,
}

/// DefaultPreemption's dry run on one node (`SelectVictimsOnNode`'s first
/// step): without every pod of lower priority, would the pod fit?
fn dry_run_preemption(snapshot: &ClusterSnapshot, i: usize, pod: &PodInfo) -> DryRun {
    let victims: Vec<_> = snapshot
        .bound_pods(i)
        .filter(|b| b.priority < pod.priority)
        .collect();
    if victims.is_empty() {
        return DryRun::NoVictims;
    }
    let mut node = snapshot.nodes[i].clone();
    for v in &victims {
        node.requested.sub(&v.requests.requests);
        for p in &v.ports {
            if let Some(k) = node.used_ports.iter().position(|(u, _)| u == p) {
                node.used_ports[k].1 -= 1;
                if node.used_ports[k].1 == 0 {
                    node.used_ports.swap_remove(k);
                }
            }
        }
    }
    node.pods.truncate(node.pods.len() - victims.len());
    match filter(pod, &node) {
        Ok(()) => DryRun::Candidate,
        Err(f) => DryRun::StillFails(f),
    }
}

/// splitmix64: small, fast and good enough to break ties.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
