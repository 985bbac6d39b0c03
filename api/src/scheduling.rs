//! Scheduling rules a pod states about nodes, shared by the scheduler's
//! filters and the kubelet's admission (`pkg/kubelet/lifecycle/predicate.go`):
//! taints and tolerations (`Toleration.ToleratesTaint`) and the required node
//! affinity (`component-helpers/scheduling/corev1/nodeaffinity`:
//! `GetRequiredNodeAffinity(pod).Match(node)`, the node selector and the
//! required terms).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

/// A taint's or toleration's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `NoSchedule`.
    NoSchedule,
    /// `PreferNoSchedule`.
    PreferNoSchedule,
    /// `NoExecute`.
    NoExecute,
    /// Any other value (matches none of the above).
    Other,
}

impl Effect {
    /// The effect named by `s` (a taint's or toleration's `effect`).
    pub fn parse(s: &str) -> Effect {
        match s {
            "NoSchedule" => Effect::NoSchedule,
            "PreferNoSchedule" => Effect::PreferNoSchedule,
            "NoExecute" => Effect::NoExecute,
            _ => Effect::Other,
        }
    }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// `key`.
    pub key: String,
    /// `value` (empty when unset).
    pub value: String,
    /// `effect`.
    pub effect: Effect,
}

impl Taint {
    /// The taint as the Node spec carries it.
    pub fn from_api(t: &k8s_openapi::api::core::v1::Taint) -> Taint {
        Taint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
            effect: Effect::parse(&t.effect),
        }
    }
}

/// A toleration operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TolerationOp {
    Equal,
    Exists,
    Invalid,
}

/// A pod toleration, parsed.
#[derive(Debug, Clone)]
pub struct Toleration {
    pub key: String,
    pub op: TolerationOp,
    pub value: String,
    /// `None` when empty: every effect.
    pub effect: Option<Effect>,
}

impl Toleration {
    /// The toleration `t` as written in a pod spec.
    pub fn from_api(t: &k8s_openapi::api::core::v1::Toleration) -> Toleration {
        Toleration {
            key: t.key.clone().unwrap_or_default(),
            op: match t.operator.as_deref() {
                None | Some("") | Some("Equal") => TolerationOp::Equal,
                Some("Exists") => TolerationOp::Exists,
                Some(_) => TolerationOp::Invalid,
            },
            value: t.value.clone().unwrap_or_default(),
            effect: t
                .effect
                .as_deref()
                .filter(|e| !e.is_empty())
                .map(Effect::parse),
        }
    }

    /// `Toleration.ToleratesTaint`: the effect matches (or is empty), the key
    /// matches (or is empty), and `Exists`, or `Equal` with the same value.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.op {
            TolerationOp::Equal => self.value == taint.value,
            TolerationOp::Exists => true,
            TolerationOp::Invalid => false,
        }
    }
}

/// A pod's tolerations, parsed.
pub fn tolerations(spec: &PodSpec) -> Vec<Toleration> {
    spec.tolerations
        .iter()
        .flatten()
        .map(Toleration::from_api)
        .collect()
}

/// True when some toleration tolerates `taint` (`TolerationsTolerateTaint`).
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Debug, Clone)]
struct LabelReq {
    key: String,
    op: LabelOp,
    values: Vec<String>,
    /// The bound of `Gt`/`Lt`.
    bound: i64,
}

impl LabelReq {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            LabelOp::In => value.is_some_and(|v| self.values.contains(v)),
            LabelOp::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
            LabelOp::Gt => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > self.bound),
            LabelOp::Lt => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < self.bound),
        }
    }
}

/// A node selector term: label requirements and `metadata.name` field
/// requirements, ANDed. `None` fields mean the term is invalid (matches no node).
#[derive(Debug, Clone)]
pub struct Term {
    labels: Vec<LabelReq>,
    /// (`In`?, name)
    names: Vec<(bool, String)>,
}

impl Term {
    /// Parses a term; `None` if empty (matches nothing) or invalid.
    pub fn parse(t: &NodeSelectorTerm) -> Option<Term> {
        let exprs = t.match_expressions.as_deref().unwrap_or_default();
        let fields = t.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            return None;
        }
        let labels = exprs.iter().map(parse_label_req).collect::<Option<_>>()?;
        let names = fields
            .iter()
            .map(|f| {
                let [value] = f.values.as_deref().unwrap_or_default() else {
                    return None;
                };
                if f.key != "metadata.name" {
                    return None;
                }
                match f.operator.as_str() {
                    "In" => Some((true, value.clone())),
                    "NotIn" => Some((false, value.clone())),
                    _ => None,
                }
            })
            .collect::<Option<_>>()?;
        Some(Term { labels, names })
    }

    /// True when a node with these labels and this name matches every
    /// requirement of the term.
    pub fn matches(&self, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
        self.labels.iter().all(|r| r.matches(labels))
            && self
                .names
                .iter()
                .all(|(is_in, name)| (name == node_name) == *is_in)
    }
}

fn parse_label_req(r: &NodeSelectorRequirement) -> Option<LabelReq> {
    let values = r.values.clone().unwrap_or_default();
    let (op, bound) = match r.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => return None,
        "In" => (LabelOp::In, 0),
        "NotIn" => (LabelOp::NotIn, 0),
        "Exists" | "DoesNotExist" if !values.is_empty() => return None,
        "Exists" => (LabelOp::Exists, 0),
        "DoesNotExist" => (LabelOp::DoesNotExist, 0),
        "Gt" | "Lt" => {
            let [v] = values.as_slice() else {
                return None;
            };
            let bound = v.parse::<i64>().ok()?;
            let op = if r.operator == "Gt" {
                LabelOp::Gt
            } else {
                LabelOp::Lt
            };
            (op, bound)
        }
        _ => return None,
    };
    Some(LabelReq {
        key: r.key.clone(),
        op,
        values,
        bound,
    })
}

/// A pod's required node affinity: `spec.nodeSelector` and the terms of
/// `requiredDuringSchedulingIgnoredDuringExecution` (upstream's
/// `RequiredNodeAffinity`).
#[derive(Debug, Clone, Default)]
pub struct RequiredNodeAffinity {
    /// `spec.nodeSelector`: every label must be present with this value.
    pub node_selector: Vec<(String, String)>,
    /// `None`: no required node affinity; `Some(terms)`: any term must match
    /// (no valid term: no node matches).
    pub terms: Option<Vec<Term>>,
}

impl RequiredNodeAffinity {
    /// The requirements of `spec`.
    pub fn new(spec: &PodSpec) -> RequiredNodeAffinity {
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|sel| {
                sel.node_selector_terms
                    .iter()
                    .filter_map(Term::parse)
                    .collect::<Vec<_>>()
            });
        RequiredNodeAffinity {
            node_selector: spec
                .node_selector
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            terms,
        }
    }

    /// True when a node with `labels` and `node_name` satisfies both.
    pub fn matches(&self, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .terms
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(labels, node_name)))
    }
}

/// A host port in use, or wanted (`HostPortInfo` entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// `hostIP`, `0.0.0.0` when unset.
    pub ip: String,
    /// `protocol`, `TCP` when unset.
    pub protocol: String,
    /// `hostPort` (> 0).
    pub port: i32,
}

/// The host ports a pod uses: its containers' and its restartable init
/// containers' ports with a `hostPort` (`schedutil.GetHostPorts`).
pub fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    sidecars
        .chain(&spec.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|&h| h > 0)?;
            Some(HostPort {
                ip: match p.host_ip.as_deref() {
                    None | Some("") => DEFAULT_BIND_ALL_HOST_IP.to_owned(),
                    Some(ip) => ip.to_owned(),
                },
                protocol: match p.protocol.as_deref() {
                    None | Some("") => "TCP".to_owned(),
                    Some(p) => p.to_owned(),
                },
                port,
            })
        })
        .collect()
}

impl HostPort {
    /// `HostPortInfo.CheckConflict`: the same port and protocol on the same
    /// IP, or on the wildcard IP on either side.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == DEFAULT_BIND_ALL_HOST_IP
                || other.ip == DEFAULT_BIND_ALL_HOST_IP
                || self.ip == other.ip)
    }
}

/// The wildcard host IP.
pub const DEFAULT_BIND_ALL_HOST_IP: &str = "0.0.0.0";
