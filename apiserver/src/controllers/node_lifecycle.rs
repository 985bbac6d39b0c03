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
//!   each with effects `NoSchedule` and `NoExecute`; `True` removes them. The
//!   scheduler's TaintToleration filter then keeps new pods off the node.
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
use serde_json::{Value, json};

use crate::api::ApiState;
use crate::api::objects::{format_time, parse_time, str_at};
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

/// One pass over every node at time `now`; how many nodes were written.
pub async fn monitor_once(
    state: &ApiState,
    config: &NodeLifecycleConfig,
    now: Timestamp,
) -> Result<usize, storage::Error> {
    let renewals = lease_renewals(state).await?;
    let nodes = state
        .storage
        .list(&collection_prefix("nodes", None)?, ListOptions::default())
        .await?;
    let mut written = 0;
    for kv in nodes.items {
        let Ok(mut node) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let name = str_at(&node, "/metadata/name").to_string();
        let was_ready = condition_status(&node, "Ready") == "True";
        let changed = reconcile_node(&mut node, renewals.get(&name).copied(), config, now);
        if !changed {
            continue;
        }
        if let Some(m) = node.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let bytes = serde_json::to_vec(&node).unwrap_or_default();
        match state
            .storage
            .update(&kv.key, bytes, Some(kv.mod_revision))
            .await
        {
            Ok(_) => written += 1,
            // Someone (the agent) wrote the node meanwhile: look again next tick.
            Err(storage::Error::Conflict { .. } | storage::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
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
    let leases = state.storage.list(&prefix, ListOptions::default()).await?;
    Ok(leases
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter_map(|l| {
            let t = parse_time(str_at(&l, "/spec/renewTime"))?;
            Some((str_at(&l, "/metadata/name").to_string(), t))
        })
        .collect())
}

fn condition_status<'a>(node: &'a Value, kind: &str) -> &'a str {
    conditions(node)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == kind))
        .map_or("", |c| str_at(c, "/status"))
}

fn conditions(node: &Value) -> Option<&Vec<Value>> {
    node.pointer("/status/conditions").and_then(Value::as_array)
}

/// Bring one node's conditions and taints in line with its last sign of life
/// (`lease_renewed`: its Lease's renewTime). Whether anything changed.
pub fn reconcile_node(
    node: &mut Value,
    lease_renewed: Option<Timestamp>,
    config: &NodeLifecycleConfig,
    now: Timestamp,
) -> bool {
    let heartbeat = conditions(node)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == "Ready"))
        .and_then(|c| parse_time(str_at(c, "/lastHeartbeatTime")));
    let never_posted = condition_status(node, "Ready").is_empty();
    let created = parse_time(str_at(node, "/metadata/creationTimestamp"));
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
fn mark_unknown(node: &mut Value, now: Timestamp) -> bool {
    let Some(obj) = node.as_object_mut() else {
        return false;
    };
    let status = obj.entry("status").or_insert_with(|| json!({}));
    let Some(status) = status.as_object_mut() else {
        return false;
    };
    let list = status.entry("conditions").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return false;
    };
    let now_s = format_time(now);
    let mut changed = false;
    for kind in MONITORED_CONDITIONS {
        match list.iter_mut().find(|c| str_at(c, "/type") == *kind) {
            Some(c) if str_at(c, "/status") == "Unknown" => {}
            Some(c) => {
                if let Some(c) = c.as_object_mut() {
                    c.insert("status".into(), json!("Unknown"));
                    c.insert("reason".into(), json!("NodeStatusUnknown"));
                    c.insert(
                        "message".into(),
                        json!("Kubelet stopped posting node status."),
                    );
                    c.insert("lastTransitionTime".into(), json!(now_s));
                    changed = true;
                }
            }
            None => {
                list.push(json!({
                    "type": kind, "status": "Unknown",
                    "reason": "NodeStatusNeverUpdated",
                    "message": "Kubelet never posted node status.",
                    "lastHeartbeatTime": now_s, "lastTransitionTime": now_s,
                }));
                changed = true;
            }
        }
    }
    changed
}

/// Make the node's `not-ready`/`unreachable` taints match its `Ready`
/// condition; whether they changed.
fn reconcile_taints(node: &mut Value, now: Timestamp) -> bool {
    let wanted: Option<&str> = match condition_status(node, "Ready") {
        "False" => Some(TAINT_NOT_READY),
        "Unknown" => Some(TAINT_UNREACHABLE),
        // True, or not posted yet (a node that just registered).
        _ => None,
    };
    let Some(obj) = node.as_object_mut() else {
        return false;
    };
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else {
        return false;
    };
    let current: Vec<Value> = spec
        .get("taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours = |t: &Value| matches!(str_at(t, "/key"), TAINT_NOT_READY | TAINT_UNREACHABLE);
    let mut next: Vec<Value> = current.iter().filter(|t| !ours(t)).cloned().collect();
    if let Some(key) = wanted {
        for effect in ["NoSchedule", "NoExecute"] {
            // Keep an existing taint as it is (its timeAdded).
            let existing = current
                .iter()
                .find(|t| str_at(t, "/key") == key && str_at(t, "/effect") == effect);
            next.push(match existing {
                Some(t) => t.clone(),
                None if effect == "NoExecute" => {
                    json!({"key": key, "effect": effect, "timeAdded": format_time(now)})
                }
                None => json!({"key": key, "effect": effect}),
            });
        }
    }
    if next == current {
        return false;
    }
    if next.is_empty() {
        spec.remove("taints");
    } else {
        spec.insert("taints".into(), Value::Array(next));
    }
    true
}

/// Set `Ready=False` on the pods bound to `node` (upstream `MarkPodsNotReady`).
async fn mark_pods_not_ready(
    state: &ApiState,
    node: &str,
    now: Timestamp,
) -> Result<(), storage::Error> {
    let pods = state
        .storage
        .list(&collection_prefix("pods", None)?, ListOptions::default())
        .await?;
    for kv in pods.items {
        let Ok(mut pod) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        if str_at(&pod, "/spec/nodeName") != node {
            continue;
        }
        let Some(list) = pod
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        let mut changed = false;
        for c in list.iter_mut() {
            if str_at(c, "/type") == "Ready"
                && str_at(c, "/status") != "False"
                && let Some(c) = c.as_object_mut()
            {
                c.insert("status".into(), json!("False"));
                c.insert("lastTransitionTime".into(), json!(format_time(now)));
                changed = true;
            }
        }
        if !changed {
            continue;
        }
        if let Some(m) = pod.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let bytes = serde_json::to_vec(&pod).unwrap_or_default();
        match state
            .storage
            .update(&kv.key, bytes, Some(kv.mod_revision))
            .await
        {
            Ok(_) => {
                tracing::info!(node, pod = %kv.key, "marked pod not ready: its node is not ready");
            }
            Err(storage::Error::Conflict { .. } | storage::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

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
        assert!(!reconcile_node(
            &mut n,
            None,
            &cfg(),
            t("2026-01-01T00:00:30Z")
        ));
    }

    #[test]
    fn a_silent_node_goes_unknown_and_gets_the_unreachable_taints() {
        let mut n = node_with_ready("n1", "True", "2026-01-01T00:00:00Z");
        assert!(reconcile_node(
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
        assert!(!reconcile_node(
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
        assert!(!reconcile_node(
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
        assert!(reconcile_node(
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
    fn not_ready_gets_the_not_ready_taints() {
        let mut n = node_with_ready("n1", "False", "2026-01-01T00:00:00Z");
        assert!(reconcile_node(
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
        assert!(!reconcile_node(
            &mut n,
            None,
            &cfg(),
            t("2026-01-01T00:00:50Z")
        ));
        assert!(reconcile_node(
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
