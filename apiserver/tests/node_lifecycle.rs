//! The node lifecycle controller over real storage (SQLite): a node whose
//! Lease and status go stale turns `Ready=Unknown`, is tainted unreachable,
//! its pods turn `Ready=False`; a fresh heartbeat brings it back.

use std::sync::Arc;

use berth_apiserver::api::{ApiConfig, ApiState};
use berth_apiserver::controllers::node_lifecycle::{
    NodeLifecycleConfig, TAINT_UNREACHABLE, monitor_once,
};
use berth_apiserver::storage::sqlite::{SqliteOptions, SqliteStorage};
use berth_apiserver::storage::{Storage, object_key};
use serde_json::{Value, json};

const T0: &str = "2026-01-01T00:00:00Z";

async fn get(storage: &dyn Storage, key: &str) -> Value {
    let stored = storage.get(key).await.unwrap().unwrap();
    serde_json::from_slice(&stored.value).unwrap()
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

#[tokio::test]
async fn silent_node_goes_unknown_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(dir.path(), SqliteOptions::default()).unwrap());
    let state = ApiState::new(storage.clone(), ApiConfig::default());
    let node_key = object_key("nodes", None, "n1").unwrap();
    let lease_key = object_key("leases", Some("kube-node-lease"), "n1").unwrap();
    let pod_key = object_key("pods", Some("default"), "p1").unwrap();
    let other_pod_key = object_key("pods", Some("default"), "p2").unwrap();
    let ready = |status: &str, hb: &str| {
        json!({"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": "n1", "creationTimestamp": T0},
            "spec": {},
            "status": {"conditions": [
                {"type": "Ready", "status": status, "reason": "KubeletReady",
                 "lastHeartbeatTime": hb, "lastTransitionTime": T0}]}})
    };
    storage
        .create(&node_key, serde_json::to_vec(&ready("True", T0)).unwrap())
        .await
        .unwrap();
    let lease = json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"name": "n1", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "n1", "renewTime": "2026-01-01T00:00:30.000000Z"}});
    storage
        .create(&lease_key, serde_json::to_vec(&lease).unwrap())
        .await
        .unwrap();
    let pod = |name: &str, node: &str| {
        json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}]}})
    };
    storage
        .create(&pod_key, serde_json::to_vec(&pod("p1", "n1")).unwrap())
        .await
        .unwrap();
    storage
        .create(
            &other_pod_key,
            serde_json::to_vec(&pod("p2", "n2")).unwrap(),
        )
        .await
        .unwrap();
    let config = NodeLifecycleConfig::default();

    // The lease renewed at 00:30 keeps the node alive at 01:05 even though
    // its status heartbeat is from 00:00.
    assert_eq!(
        monitor_once(&state, &config, at("2026-01-01T00:01:05Z"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        get(&*storage, &node_key).await["status"]["conditions"][0]["status"],
        "True"
    );

    // 00:30 + 40 s passed: Unknown, tainted, its pod not ready, the other pod untouched.
    assert_eq!(
        monitor_once(&state, &config, at("2026-01-01T00:01:11Z"))
            .await
            .unwrap(),
        1
    );
    let node = get(&*storage, &node_key).await;
    let cond = &node["status"]["conditions"][0];
    assert_eq!(cond["status"], "Unknown");
    assert_eq!(cond["reason"], "NodeStatusUnknown");
    assert_eq!(node["spec"]["taints"][0]["key"], TAINT_UNREACHABLE);
    assert_eq!(
        get(&*storage, &pod_key).await["status"]["conditions"][0]["status"],
        "False"
    );
    assert_eq!(
        get(&*storage, &other_pod_key).await["status"]["conditions"][0]["status"],
        "True"
    );
    // Idempotent.
    assert_eq!(
        monitor_once(&state, &config, at("2026-01-01T00:01:16Z"))
            .await
            .unwrap(),
        0
    );

    // The agent is back and posts Ready=True: the taints go.
    let rev = storage.get(&node_key).await.unwrap().unwrap().mod_revision;
    let mut back = ready("True", "2026-01-01T00:02:00Z");
    back["spec"] = node["spec"].clone();
    storage
        .update(&node_key, serde_json::to_vec(&back).unwrap(), Some(rev))
        .await
        .unwrap();
    assert_eq!(
        monitor_once(&state, &config, at("2026-01-01T00:02:05Z"))
            .await
            .unwrap(),
        1
    );
    let node = get(&*storage, &node_key).await;
    assert!(node["spec"].get("taints").is_none(), "{node}");
    assert_eq!(node["status"]["conditions"][0]["status"], "True");
}
