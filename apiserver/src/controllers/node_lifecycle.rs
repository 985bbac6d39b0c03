//! The node lifecycle controller (upstream
//! `pkg/controller/nodelifecycle/node_lifecycle_controller.go`, the part that
//! runs without cloud providers and without eviction):
//!
//! - Every [`NodeLifecycleConfig::monitor_period`], each node's last sign of
//!   life is the newer of its Lease's `renewTime` (`kube-node-lease/<node>`)
//!   and its `Ready` condition's `lastHeartbeatTime`, or the node's creation
//!   when it never posted status.
//! - Older than [`NodeLifecycleConfig::grace_period`] (upstream's
//!   `--node-monitor-grace-period`; [`NodeLifecycleConfig::startup_grace_period`]
//!   for a node that never posted status): the conditions `Ready`,
//!   `MemoryPressure`, `DiskPressure` and `PIDPressure` become `Unknown`
//!   with reason `NodeStatusUnknown`, "Kubelet stopped posting node status."
//!   (`NodeStatusNeverUpdated`, "Kubelet never posted node status." for a
//!   condition that was never there). `lastHeartbeatTime` is kept; the
//!   transition time is now.
//! - Taints follow `Ready` (upstream `TaintNodesByCondition` plus the
//!   `NoExecute` taints of taint-based eviction): `False` →
//!   `node.kubernetes.io/not-ready`, `Unknown` → `node.kubernetes.io/unreachable`,
//!   each with effects `NoSchedule` and `NoExecute`; `True` removes them.
//!   `MemoryPressure`/`DiskPressure`/`PIDPressure`/`NetworkUnavailable`
//!   `True` → the matching `NoSchedule` taint (`node.kubernetes.io/memory-pressure`,
//!   ...), removed when the condition goes. The scheduler's TaintToleration
//!   filter then keeps new pods off the node.
//! - When a node stops being Ready, its pods get `Ready=False`
//!   (upstream `MarkPodsNotReady`), so nothing reads them as serving.
//!
//! Not done: evicting pods from an unreachable node once their
//! `NoExecute` toleration runs out (upstream's taint eviction controller), and
//! the `DefaultTolerationSeconds` admission that gives every pod 300 s of
//! toleration. Pods stay bound to an unreachable node until it comes back or
//! they are deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ApiState;
use crate::storage::{self, ListOptions, collection_prefix};

/// The taint of a node whose `Ready` condition is `Unknown`.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose `Ready` condition is `False`.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The conditions a silent node's agent can no longer vouch for.
const MONITORED_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Timing of the controller.
#[derive(Debug, Clone)]
pub struct NodeLifecycleConfig {
    /// How often nodes are checked (upstream `--node-monitor-period`, 5 s).
    pub monitor_period: Duration,
    /// How long a node may be silent before it is `Unknown` (upstream
    /// `--node-monitor-grace-period`: 40 s until 1.31, 50 s since 1.32).
    pub grace_period: Duration,
    /// The same for a node that never posted status (upstream
    /// `--node-startup-grace-period`, 60 s).
    pub startup_grace_period: Duration,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            startup_grace_period: Duration::from_secs(60),
        }
    }
}

/// Run the controller until the task is dropped.
pub fn spawn(state: Arc<ApiState>, config: NodeLifecycleConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = monitor_once(&state, &config, Timestamp::now()).await {
                tracing::warn!(error = %e, "node lifecycle: monitoring nodes failed");
            }
        }
    })
}

/// Why a pass of the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the storage failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// An object would not encode (a bug: typed objects always do).
    #[error("{key}: encoding the updated object: {source}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One stored object, decoded as its type, with what an update needs.
struct Stored<T> {
    key: String,
    mod_revision: i64,
    object: T,
}

/// Every object under `prefix` that decodes as `T` (one that does not is
/// logged and skipped: the API server stored it, so it is not ours to judge).
async fn list<T: DeserializeOwned>(
    state: &ApiState,
    prefix: &str,
) -> Result<Vec<Stored<T>>, storage::Error> {
    let listed = state.storage.list(prefix, ListOptions::default()).await?;
    Ok(listed
        .items
        .into_iter()
        .filter_map(|kv| match serde_json::from_slice::<T>(&kv.value) {
            Ok(object) => Some(Stored {
                key: kv.key,
                mod_revision: kv.mod_revision,
                object,
            }),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "node lifecycle: skipping an object that does not decode");
                None
            }
        })
        .collect())
}

/// Write `object` back if nobody wrote it since it was read; false when someone did
/// (or it is gone): the next pass looks again.
async fn update<T: Serialize>(
    state: &ApiState,
    stored: &Stored<T>,
    object: &T,
) -> Result<bool, Error> {
    let encode = |source| Error::Encode {
        key: stored.key.clone(),
        source,
    };
    let mut value = serde_json::to_value(object).map_err(encode)?;
    if let Some(m) = value
        .pointer_mut("/metadata")
        .and_then(|m| m.as_object_mut())
    {
        m.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&value).map_err(encode)?;
    match state
        .storage
        .update(&stored.key, bytes, Some(stored.mod_revision))
        .await
    {
        Ok(_) => Ok(true),
        Err(storage::Error::Conflict { .. } | storage::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// One pass over every node at time `now`; how many nodes were written.
pub async fn monitor_once(
    state: &ApiState,
    config: &NodeLifecycleConfig,
    now: Timestamp,
) -> Result<usize, Error> {
    let renewals = lease_renewals(state).await?;
    let nodes: Vec<Stored<Node>> = list(state, &collection_prefix("nodes", None)?).await?;
    let mut written = 0;
    for stored in nodes {
        let mut node = stored.object.clone();
        let name = node.metadata.name.clone().unwrap_or_default();
        let was_ready = condition_status(&node, "Ready") == "True";
        let changed = reconcile_node(&mut node, renewals.get(&name).copied(), config, now);
        // Someone (the agent) wrote the node meanwhile: look again next tick.
        if !changed || !update(state, &stored, &node).await? {
            continue;
        }
        written += 1;
        let ready = condition_status(&node, "Ready");
        if ready != "True" {
            if was_ready {
                tracing::warn!(node = %name, ready, "node is no longer ready");
            }
            mark_pods_not_ready(state, &name, now).await?;
        } else if !was_ready {
            tracing::info!(node = %name, "node is ready");
        }
    }
    Ok(written)
}

/// When each node's Lease was last renewed.
async fn lease_renewals(state: &ApiState) -> Result<HashMap<String, Timestamp>, storage::Error> {
    let prefix = collection_prefix("leases", Some(crate::api::authz::NODE_LEASE_NAMESPACE))?;
    let leases: Vec<Stored<Lease>> = list(state, &prefix).await?;
    Ok(leases
        .into_iter()
        .filter_map(|l| {
            let renewed = l.object.spec?.renew_time?.0;
            Some((l.object.metadata.name?, renewed))
        })
        .collect())
}

fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn condition_status<'a>(node: &'a Node, kind: &str) -> &'a str {
    condition(node, kind).map_or("", |c| c.status.as_str())
}

/// Bring one node's conditions and taints in line with its last sign of life
/// (`lease_renewed`: its Lease's renewTime). Whether anything changed.
pub fn reconcile_node(
    node: &mut Node,
    lease_renewed: Option<Timestamp>,
    config: &NodeLifecycleConfig,
    now: Timestamp,
) -> bool {
    let heartbeat = condition(node, "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    let never_posted = condition(node, "Ready").is_none();
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let last_seen = [heartbeat, lease_renewed, created]
        .into_iter()
        .flatten()
        .max();
    let grace = if never_posted {
        config.startup_grace_period
    } else {
        config.grace_period
    };
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    let silent = match last_seen {
        Some(t) => now.duration_since(t) > grace,
        None => true,
    };
    let mut changed = false;
    if silent {
        changed |= mark_unknown(node, now);
    }
    changed |= reconcile_taints(node, now);
    changed
}

/// Set the monitored conditions to `Unknown`; whether any changed.
fn mark_unknown(node: &mut Node, now: Timestamp) -> bool {
    let list = node
        .status
        .get_or_insert_with(NodeStatus::default)
        .conditions
        .get_or_insert_with(Vec::new);
    let mut changed = false;
    for kind in MONITORED_CONDITIONS {
        match list.iter_mut().find(|c| c.type_ == *kind) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
            None => {
                list.push(NodeCondition {
                    type_: kind.to_string(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: Some(Time(now)),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
        }
    }
    changed
}

/// The `NoSchedule` taints of a node under pressure (upstream
/// `nodeConditionToTaintKeyStatusMap`: the condition `True` → the taint).
pub const PRESSURE_TAINTS: &[(&str, &str)] = &[
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];

/// Make the node's condition taints match its conditions (upstream
/// `doNoScheduleTaintingPass` and the `NoExecute` pass): `Ready` `False` or
/// `Unknown` → `not-ready`/`unreachable` with `NoSchedule` and `NoExecute`;
/// each pressure condition `True` → its `NoSchedule` taint. Whether they changed.
fn reconcile_taints(node: &mut Node, now: Timestamp) -> bool {
    let mut wanted: Vec<(&str, &[&str])> = Vec::new();
    match condition_status(node, "Ready") {
        "False" => wanted.push((TAINT_NOT_READY, &["NoSchedule", "NoExecute"])),
        "Unknown" => wanted.push((TAINT_UNREACHABLE, &["NoSchedule", "NoExecute"])),
        // True, or not posted yet (a node that just registered).
        _ => {}
    }
    for (kind, key) in PRESSURE_TAINTS {
        if condition_status(node, kind) == "True" {
            wanted.push((key, &["NoSchedule"]));
        }
    }
    let spec = node.spec.get_or_insert_with(NodeSpec::default);
    let current: Vec<Taint> = spec.taints.clone().unwrap_or_default();
    let ours = |t: &Taint| {
        matches!(t.key.as_str(), TAINT_NOT_READY | TAINT_UNREACHABLE)
            || PRESSURE_TAINTS.iter().any(|(_, k)| *k == t.key)
    };
    let mut next: Vec<Taint> = current.iter().filter(|t| !ours(t)).cloned().collect();
    for (key, effects) in wanted {
        for effect in effects {
            // Keep an existing taint as it is (its timeAdded).
            let existing = current.iter().find(|t| t.key == key && t.effect == *effect);
            next.push(match existing {
                Some(t) => t.clone(),
                None => Taint {
                    key: key.to_string(),
                    effect: effect.to_string(),
                    time_added: (*effect == "NoExecute").then_some(Time(now)),
                    value: None,
                },
            });
        }
    }
    if next == current {
        return false;
    }
    spec.taints = (!next.is_empty()).then_some(next);
    true
}

/// Set `Ready=False` on the pods bound to `node` (upstream `MarkPodsNotReady`).
async fn mark_pods_not_ready(state: &ApiState, node: &str, now: Timestamp) -> Result<(), Error> {
    let pods: Vec<Stored<Pod>> = list(state, &collection_prefix("pods", None)?).await?;
    for stored in pods {
        let mut pod = stored.object.clone();
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
            continue;
        }
        let mut changed = false;
        let conditions = pod.status.as_mut().and_then(|s| s.conditions.as_mut());
        for c in conditions.into_iter().flatten() {
            if c.type_ == "Ready" && c.status != "False" {
                c.status = "False".into();
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
        }
        if changed && update(state, &stored, &pod).await? {
            tracing::info!(node, pod = %stored.key, "marked pod not ready: its node is not ready");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
        v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
    }

    /// `reconcile_node` on a node written as JSON (the tests read like the objects).
    fn reconcile_json(
        n: &mut Value,
        lease: Option<Timestamp>,
        config: &NodeLifecycleConfig,
        now: Timestamp,
    ) -> bool {
        let mut node: Node = serde_json::from_value(n.clone()).expect("a node");
        let changed = reconcile_node(&mut node, lease, config, now);
        *n = serde_json::to_value(&node).expect("serialises");
        changed
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn node_with_ready(name: &str, ready: &str, heartbeat: &str) -> Value {
        let mut conds = Map::new();
        conds.insert("type".into(), json!("Ready"));
        conds.insert("status".into(), json!(ready));
        conds.insert("lastHeartbeatTime".into(), json!(heartbeat));
        conds.insert("lastTransitionTime".into(), json!(heartbeat));
        json!({
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "creationTimestamp": heartbeat},
            "spec": {},
            "status": {"conditions": [Value::Object(conds)]},
        })
    }

    fn cfg() -> NodeLifecycleConfig {
        NodeLifecycleConfig::default()
    }

    #[test]
    fn a_fresh_node_is_left_alone() {
        let mut n = node_with_ready("n1", "True", "2026-01-01T00:00:00Z");
        assert!(!reconcile_json(
            &mut n,
            None,
            &cfg(),
            t("2026-01-01T00:00:30Z")
        ));
    }

    #[test]
    fn a_silent_node_goes_unknown_and_gets_the_unreachable_taints() {
        let mut n = node_with_ready("n1", "True", "2026-01-01T00:00:00Z");
        assert!(reconcile_json(
            &mut n,
            None,
            &cfg(),
            t("2026-01-01T00:00:41Z")
        ));
        let ready = &n["status"]["conditions"][0];
        assert_eq!(ready["status"], "Unknown");
        assert_eq!(ready["reason"], "NodeStatusUnknown");
        assert_eq!(ready["message"], "Kubelet stopped posting node status.");
        assert_eq!(ready["lastHeartbeatTime"], "2026-01-01T00:00:00Z");
        assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:41Z");
        // The other monitored conditions appear as never updated.
        let kinds: Vec<&str> = n["status"]["conditions"]
            .as_array()
            .map(|a| a.iter().map(|c| str_at(c, "/type")).collect())
            .unwrap_or_default();
        assert_eq!(
            kinds,
            ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
        );
        let taints = &n["spec"]["taints"];
        assert_eq!(taints[0]["key"], TAINT_UNREACHABLE);
        assert_eq!(taints[0]["effect"], "NoSchedule");
        assert_eq!(taints[1]["effect"], "NoExecute");
        assert_eq!(taints[1]["timeAdded"], "2026-01-01T00:00:41Z");
        // A second pass changes nothing.
        assert!(!reconcile_json(
            &mut n,
            None,
            &cfg(),
            t("2026-01-01T00:00:46Z")
        ));
    }

    #[test]
    fn a_renewed_lease_keeps_the_node_ready() {
        let mut n = node_with_ready("n1", "True", "2026-01-01T00:00:00Z");
        let lease = Some(t("2026-01-01T00:04:55Z"));
        assert!(!reconcile_json(
            &mut n,
            lease,
            &cfg(),
            t("2026-01-01T00:05:00Z")
        ));
        assert_eq!(n["status"]["conditions"][0]["status"], "True");
    }

    #[test]
    fn ready_again_removes_the_taints_but_keeps_others() {
        let mut n = node_with_ready("n1", "True", "2026-01-01T00:01:00Z");
        n["spec"]["taints"] = json!([
            {"key": "dedicated", "value": "x", "effect": "NoSchedule"},
            {"key": TAINT_UNREACHABLE, "effect": "NoSchedule"},
            {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:41Z"},
        ]);
        assert!(reconcile_json(
            &mut n,
            None,
            &cfg(),
            t("2026-01-01T00:01:05Z")
        ));
        assert_eq!(
            n["spec"]["taints"],
            json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}])
        );
    }

    #[test]
    fn pressure_conditions_get_their_no_schedule_taints_and_lose_them_after() {
        let mut n = node_with_ready("n1", "True", "2026-01-01T00:01:00Z");
        n["status"]["conditions"]
            .as_array_mut()
            .unwrap()
            .extend([
                json!({"type": "MemoryPressure", "status": "True", "reason": "KubeletHasInsufficientMemory"}),
                json!({"type": "DiskPressure", "status": "False"}),
                json!({"type": "PIDPressure", "status": "True"}),
            ]);
        let now = t("2026-01-01T00:01:05Z");
        assert!(reconcile_json(&mut n, None, &cfg(), now));
        assert_eq!(
            n["spec"]["taints"],
            json!([
                {"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/pid-pressure", "effect": "NoSchedule"},
            ])
        );
        // The same again: nothing to write.
        assert!(!reconcile_json(&mut n, None, &cfg(), now));
        n["status"]["conditions"][1]["status"] = json!("False");
        n["status"]["conditions"][3]["status"] = json!("False");
        assert!(reconcile_json(&mut n, None, &cfg(), now));
        assert!(n["spec"]["taints"].is_null(), "{}", n["spec"]);
    }

    #[test]
    fn not_ready_gets_the_not_ready_taints() {
        let mut n = node_with_ready("n1", "False", "2026-01-01T00:00:00Z");
        assert!(reconcile_json(
            &mut n,
            None,
            &cfg(),
            t("2026-01-01T00:00:05Z")
        ));
        assert_eq!(n["spec"]["taints"][0]["key"], TAINT_NOT_READY);
    }

    #[test]
    fn a_node_that_never_posted_status_gets_the_startup_grace() {
        let mut n = json!({"kind": "Node", "metadata": {"name": "n1",
            "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {}});
        assert!(!reconcile_json(
            &mut n,
            None,
            &cfg(),
            t("2026-01-01T00:00:50Z")
        ));
        assert!(reconcile_json(
            &mut n,
            None,
            &cfg(),
            t("2026-01-01T00:01:01Z")
        ));
        assert_eq!(
            n["status"]["conditions"][0]["reason"],
            "NodeStatusNeverUpdated"
        );
    }
}
