//! The scheduler's view of the cluster: nodes with what the filters and scores
//! need precomputed, and the sums of the pods bound to them (the scheduler
//! cache's `NodeInfo`s), kept current incrementally from watch events.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};

use crate::resources::{PodRequests, Resources, pod_requests};

pub use berth_api::scheduling::{DEFAULT_BIND_ALL_HOST_IP, Effect, HostPort, Taint, host_ports};

/// A node as the scheduler sees it, with the sums of the pods bound to it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) taints: Vec<Taint>,
    pub(crate) unschedulable: bool,
    pub(crate) allocatable: Resources,
    pub(crate) requested: Resources,
    pub(crate) non_zero_milli_cpu: i64,
    pub(crate) non_zero_memory: i64,
    /// Host ports in use, with how many pods use each.
    pub(crate) used_ports: Vec<(HostPort, u32)>,
    /// Keys of the pods bound here.
    pub(crate) pods: Vec<String>,
}

impl NodeInfo {
    fn new(node: &Node) -> NodeInfo {
        let mut info = NodeInfo {
            name: String::new(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            unschedulable: false,
            allocatable: Resources::default(),
            requested: Resources::default(),
            non_zero_milli_cpu: 0,
            non_zero_memory: 0,
            used_ports: Vec::new(),
            pods: Vec::new(),
        };
        info.set_node(node);
        info
    }

    fn set_node(&mut self, node: &Node) {
        self.name = node.metadata.name.clone().unwrap_or_default();
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        self.taints = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .map(Taint::from_api)
            .collect();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        // An allocatable the API server would have rejected counts as nothing.
        self.allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .map(|a| Resources::from_list(a).unwrap_or_default())
            .unwrap_or_default();
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    /// The node's taints.
    pub fn taints(&self) -> &[Taint] {
        &self.taints
    }
    /// `spec.unschedulable`.
    pub fn unschedulable(&self) -> bool {
        self.unschedulable
    }
    /// `status.allocatable` (pods in [`Resources::pods`]).
    pub fn allocatable(&self) -> &Resources {
        &self.allocatable
    }
    /// The sum of the requests of the pods bound here.
    pub fn requested(&self) -> &Resources {
        &self.requested
    }
    /// The sums of CPU and memory requests with the non-zero defaults, for scoring.
    pub fn non_zero_requested(&self) -> (i64, i64) {
        (self.non_zero_milli_cpu, self.non_zero_memory)
    }
    /// How many pods are bound here.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }
    /// The host ports in use.
    pub fn used_ports(&self) -> impl Iterator<Item = &HostPort> {
        self.used_ports.iter().map(|(p, _)| p)
    }

    /// Whether `want` conflicts with a port in use (`HostPortInfo.CheckConflict`):
    /// `0.0.0.0` conflicts with the same protocol/port on any IP; a specific IP
    /// with the same IP or `0.0.0.0`.
    pub(crate) fn port_conflicts(&self, want: &HostPort) -> bool {
        self.used_ports.iter().any(|(p, _)| p.conflicts(want))
    }

    fn add_bound(&mut self, key: &str, pod: &BoundPod) {
        self.requested.add(&pod.requests.requests);
        self.non_zero_milli_cpu = self
            .non_zero_milli_cpu
            .saturating_add(pod.requests.non_zero_milli_cpu);
        self.non_zero_memory = self
            .non_zero_memory
            .saturating_add(pod.requests.non_zero_memory);
        for port in &pod.ports {
            match self.used_ports.iter_mut().find(|(p, _)| p == port) {
                Some((_, n)) => *n += 1,
                None => self.used_ports.push((port.clone(), 1)),
            }
        }
        self.pods.push(key.to_owned());
    }

    fn remove_bound(&mut self, key: &str, pod: &BoundPod) {
        self.requested.sub(&pod.requests.requests);
        self.requested.scalar.retain(|(_, v)| *v != 0);
        self.non_zero_milli_cpu = self
            .non_zero_milli_cpu
            .saturating_sub(pod.requests.non_zero_milli_cpu);
        self.non_zero_memory = self
            .non_zero_memory
            .saturating_sub(pod.requests.non_zero_memory);
        for port in &pod.ports {
            if let Some(i) = self.used_ports.iter().position(|(p, _)| p == port) {
                self.used_ports[i].1 -= 1;
                if self.used_ports[i].1 == 0 {
                    self.used_ports.swap_remove(i);
                }
            }
        }
        if let Some(i) = self.pods.iter().position(|k| k == key) {
            self.pods.swap_remove(i);
        }
    }
}

/// What the snapshot remembers of a bound pod.
#[derive(Debug, Clone)]
pub(crate) struct BoundPod {
    pub(crate) node: String,
    pub(crate) requests: PodRequests,
    pub(crate) ports: Vec<HostPort>,
    pub(crate) priority: i32,
}

/// The key the snapshot files a pod under: its UID, or `namespace/name` when it
/// has none.
pub fn pod_key(pod: &Pod) -> String {
    match pod.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_owned(),
        _ => format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// Whether a pod occupies its node: bound (`spec.nodeName`) and not finished.
fn occupies_node(pod: &Pod) -> Option<&str> {
    let node = pod
        .spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    match phase {
        Some("Succeeded") | Some("Failed") => None,
        _ => Some(node),
    }
}

/// The cluster as the scheduler sees it. Nodes keep the order they were added
/// in (a removed node's place is taken by the last one).
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub(crate) nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, BoundPod>,
    /// Pods bound to nodes the snapshot does not (yet, or any more) have.
    pending: HashMap<String, Vec<String>>,
}

impl ClusterSnapshot {
    /// An empty snapshot.
    pub fn new() -> ClusterSnapshot {
        ClusterSnapshot::default()
    }

    /// A snapshot of `nodes` with `pods` bound (pods not bound, or finished, are
    /// skipped).
    pub fn from_objects<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> ClusterSnapshot {
        let mut s = ClusterSnapshot::new();
        for n in nodes {
            s.add_node(n);
        }
        for p in pods {
            s.add_pod(p);
        }
        s
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The number of pods counted against nodes (including pods bound to nodes
    /// the snapshot does not have).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Where node `name` is in [`nodes`](Self::nodes).
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The nodes, in scheduling order.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Adds a node, or updates it if one of that name exists (pods bound to it
    /// stay counted).
    pub fn add_node(&mut self, node: &Node) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if let Some(&i) = self.index.get(name) {
            self.nodes[i].set_node(node);
            return;
        }
        let mut info = NodeInfo::new(node);
        for key in self.pending.remove(name).unwrap_or_default() {
            if let Some(pod) = self.pods.get(&key) {
                info.add_bound(&key, pod);
            }
        }
        self.index.insert(info.name.clone(), self.nodes.len());
        self.nodes.push(info);
    }

    /// Updates a node (adds it if unknown).
    pub fn update_node(&mut self, node: &Node) {
        self.add_node(node);
    }

    /// Removes a node. Pods bound to it stay known, and count again if a node
    /// of that name comes back.
    pub fn remove_node(&mut self, name: &str) -> bool {
        let Some(i) = self.index.remove(name) else {
            return false;
        };
        let info = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        if !info.pods.is_empty() {
            self.pending.insert(info.name, info.pods);
        }
        true
    }

    /// Adds or updates a pod. A pod counts against its node while it is bound
    /// (`spec.nodeName`) and not `Succeeded` or `Failed`; an update that makes
    /// it finished (or moves it) releases what it held.
    pub fn add_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        self.remove_key(&key);
        let (Some(node), Some(spec)) = (occupies_node(pod), pod.spec.as_ref()) else {
            return;
        };
        // The API server validated the quantities; one it did not counts as none.
        let requests = pod_requests(spec).unwrap_or_default();
        self.insert(key, node, spec, requests);
    }

    /// Updates a pod (same as [`add_pod`](Self::add_pod)).
    pub fn update_pod(&mut self, pod: &Pod) {
        self.add_pod(pod);
    }

    /// Counts `pod` against `node_name` as if it were bound there — what a
    /// scheduler does after choosing a node, before the binding comes back
    /// through the watch (the scheduler cache's `AssumePod`).
    pub fn assume_pod(&mut self, pod: &Pod, node_name: &str) {
        let key = pod_key(pod);
        self.remove_key(&key);
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let requests = pod_requests(spec).unwrap_or_default();
        self.insert(key, node_name, spec, requests);
    }

    /// Forgets a pod, releasing what it held on its node.
    pub fn remove_pod(&mut self, pod: &Pod) -> bool {
        self.remove_key(&pod_key(pod))
    }

    /// Forgets a pod by its [`pod_key`].
    pub fn remove_pod_by_key(&mut self, key: &str) -> bool {
        self.remove_key(key)
    }

    fn insert(&mut self, key: String, node: &str, spec: &PodSpec, requests: PodRequests) {
        let bound = BoundPod {
            node: node.to_owned(),
            requests,
            ports: host_ports(spec),
            priority: spec.priority.unwrap_or(0),
        };
        match self.index.get(node) {
            Some(&i) => self.nodes[i].add_bound(&key, &bound),
            None => self
                .pending
                .entry(node.to_owned())
                .or_default()
                .push(key.clone()),
        }
        self.pods.insert(key, bound);
    }

    fn remove_key(&mut self, key: &str) -> bool {
        let Some(bound) = self.pods.remove(key) else {
            return false;
        };
        match self.index.get(&bound.node) {
            Some(&i) => self.nodes[i].remove_bound(key, &bound),
            None => {
                if let Some(keys) = self.pending.get_mut(&bound.node) {
                    keys.retain(|k| k != key);
                    if keys.is_empty() {
                        self.pending.remove(&bound.node);
                    }
                }
            }
        }
        true
    }

    /// The pods bound to node `i` (for the preemption dry run).
    pub(crate) fn bound_pods(&self, i: usize) -> impl Iterator<Item = &BoundPod> {
        self.nodes[i].pods.iter().filter_map(|k| self.pods.get(k))
    }
}
