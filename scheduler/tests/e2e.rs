//! berth-scheduler against a real `berth-apiserver` (HTTPS, token auth,
//! SQLite), through kube-rs.
//!
//! Needs the `berth-apiserver` binary (`cargo build -p berth-apiserver`, or
//! `$BERTH_APISERVER_BIN`). Skipped with a printed reason when it is missing,
//! unless `CI=true` or `BERTH_REQUIRE_RUNTIME=1`, where that is a failure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_scheduler::harness::{Apiserver, apiserver_binary};
use berth_scheduler::{RunConfig, run};
use berth_test_support::required;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn binary() -> Option<PathBuf> {
    match apiserver_binary() {
        Some(p) if p.is_file() => Some(p),
        _ => {
            if required() {
                panic!(
                    "berth-apiserver is required (CI=true or BERTH_REQUIRE_RUNTIME=1) but was not \
                     found: run `cargo build -p berth-apiserver` or set BERTH_APISERVER_BIN"
                );
            }
            eprintln!(
                "SKIPPED: berth-apiserver binary not found (run `cargo build -p berth-apiserver` \
                 or set BERTH_APISERVER_BIN)"
            );
            None
        }
    }
}

async fn create_node(client: &Client, name: &str, cpu: &str, extra: serde_json::Value) {
    let mut node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}
        }
    });
    if let Some(labels) = extra.get("labels") {
        for (k, v) in labels.as_object().unwrap() {
            node["metadata"]["labels"][k] = v.clone();
        }
    }
    if let Some(spec) = extra.get("spec") {
        node["spec"] = spec.clone();
    }
    let node: Node = serde_json::from_value(node).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

async fn create_pod(client: &Client, name: &str, cpu: &str, extra_spec: serde_json::Value) {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        pod["spec"][k] = v.clone();
    }
    let pod: Pod = serde_json::from_value(pod).unwrap();
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

/// Polls pod `name` until `f` holds (or panics after `secs`).
async fn wait_pod(client: &Client, name: &str, secs: u64, f: impl Fn(&Pod) -> bool) -> Pod {
    let api = Api::<Pod>::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let pod = api.get(name).await.unwrap();
        if f(&pod) {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} did not reach the expected state: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn scheduled_condition(pod: &Pod) -> Option<(String, String, String)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

async fn events_for(client: &Client, pod: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_through_the_api() {
    let Some(bin) = binary() else { return };
    let (server, client) = Apiserver::start(&bin).await.unwrap();

    create_node(&client, "node-a", "4", json!({})).await;
    create_node(&client, "node-b", "4", json!({})).await;
    create_node(
        &client,
        "node-gpu",
        "4",
        json!({"labels": {"dedicated": "gpu"},
               "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
    )
    .await;

    // The scheduler runs with its own least-privileged identity, as in a
    // real cluster: everything below must be allowed by the bootstrap
    // system:kube-scheduler role.
    let sched_client = server.scheduler_client().await.unwrap();
    // ...and nothing more: it reads no Secrets and creates no pods.
    let denied = Api::<k8s_openapi::api::core::v1::Secret>::all(sched_client.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&denied, kube::Error::Api(e) if e.code == 403),
        "{denied:?}"
    );
    let cancel = CancellationToken::new();
    let scheduler = tokio::spawn(run(sched_client, RunConfig::default(), cancel.clone()));

    // Ordinary pods: bound, spread over the untainted nodes.
    for i in 0..4 {
        create_pod(&client, &format!("web-{i}"), "500m", json!({})).await;
    }
    let mut placed = Vec::new();
    for i in 0..4 {
        let pod = wait_pod(&client, &format!("web-{i}"), 20, |p| node_of(p).is_some()).await;
        placed.push(node_of(&pod).unwrap().to_owned());
    }
    assert!(!placed.iter().any(|n| n == "node-gpu"), "{placed:?}");
    assert_eq!(
        placed.iter().filter(|n| *n == "node-a").count(),
        2,
        "{placed:?}"
    );
    assert_eq!(
        placed.iter().filter(|n| *n == "node-b").count(),
        2,
        "{placed:?}"
    );
    let pod = wait_pod(&client, "web-0", 5, |p| {
        scheduled_condition(p).is_some_and(|c| c.0 == "True")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = events_for(&client, "web-0").await;
        if let Some(e) = events
            .iter()
            .find(|e| e.reason.as_deref() == Some("Scheduled"))
        {
            assert_eq!(
                e.message.as_deref(),
                Some(
                    format!(
                        "Successfully assigned default/web-0 to {}",
                        node_of(&pod).unwrap()
                    )
                    .as_str()
                )
            );
            assert_eq!(e.type_.as_deref(), Some("Normal"));
            break;
        }
        assert!(Instant::now() < deadline, "no Scheduled event: {events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Too big for any node: stays pending with the FitError message.
    create_pod(&client, "huge", "16", json!({})).await;
    let pod = wait_pod(&client, "huge", 20, |p| scheduled_condition(p).is_some()).await;
    assert_eq!(node_of(&pod), None);
    let (status, reason, message) = scheduled_condition(&pod).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Unschedulable")
    );
    assert!(
        message.starts_with("0/3 nodes are available: "),
        "{message}"
    );
    assert!(
        message.contains("1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu."),
        "{message}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = events_for(&client, "huge").await;
        if let Some(e) = events
            .iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
        {
            assert_eq!(e.message.as_deref(), Some(message.as_str()));
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            break;
        }
        assert!(Instant::now() < deadline, "no FailedScheduling event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A tolerating pod may land on the tainted node.
    create_pod(
        &client,
        "trainer",
        "1",
        json!({"nodeSelector": {"dedicated": "gpu"},
               "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu",
                                "effect": "NoSchedule"}]}),
    )
    .await;
    let pod = wait_pod(&client, "trainer", 20, |p| node_of(p).is_some()).await;
    assert_eq!(node_of(&pod), Some("node-gpu"));
    // Without the toleration the selector alone does not get it there.
    create_pod(
        &client,
        "intruder",
        "1",
        json!({"nodeSelector": {"dedicated": "gpu"}}),
    )
    .await;
    let pod = wait_pod(&client, "intruder", 20, |p| {
        scheduled_condition(p).is_some()
    })
    .await;
    assert_eq!(node_of(&pod), None);
    let msg = scheduled_condition(&pod).unwrap().2;
    assert!(msg.contains("untolerated taint {dedicated: gpu}"), "{msg}");

    // Let the huge pod back off a few times, then add a node that fits: the
    // node event moves it back to the active queue at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node_of(&wait_pod(&client, "huge", 1, |_| true).await), None);
    let added = Instant::now();
    create_node(&client, "node-big", "32", json!({})).await;
    let pod = wait_pod(&client, "huge", 20, |p| node_of(p).is_some()).await;
    assert_eq!(node_of(&pod), Some("node-big"));
    let took = added.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}: not moved on NodeAdd?"
    );

    // Deleting a bound pod (at once: no kubelet here) frees its room for a
    // waiting one.
    create_pod(&client, "filler", "16", json!({})).await;
    wait_pod(&client, "filler", 20, |p| node_of(p) == Some("node-big")).await;
    create_pod(&client, "late", "8", json!({})).await;
    wait_pod(&client, "late", 20, |p| scheduled_condition(p).is_some()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Api::<Pod>::namespaced(client.clone(), "default")
        .delete(
            "filler",
            &kube::api::DeleteParams::default().grace_period(0),
        )
        .await
        .unwrap();
    let deleted = Instant::now();
    let pod = wait_pod(&client, "late", 20, |p| node_of(p).is_some()).await;
    assert_eq!(node_of(&pod), Some("node-big"));
    assert!(deleted.elapsed() < Duration::from_secs(2));

    // Pods for another scheduler are left alone.
    create_pod(
        &client,
        "other",
        "100m",
        json!({"schedulerName": "other-scheduler"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node_of(&wait_pod(&client, "other", 1, |_| true).await),
        None
    );

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(15), scheduler)
        .await
        .expect("scheduler did not stop")
        .unwrap()
        .unwrap();
    drop(server);
}

/// The `berth-scheduler` binary: schedules a pod, exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_schedules_and_stops_on_sigterm() {
    let Some(bin) = binary() else { return };
    let (server, client) = Apiserver::start(&bin).await.unwrap();
    create_node(&client, "node-a", "4", json!({})).await;
    create_pod(&client, "web", "100m", json!({})).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth-scheduler"))
        .arg("--kubeconfig")
        .arg(server.user_kubeconfig("system:kube-scheduler").unwrap())
        .arg("--log-json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pod = wait_pod(&client, "web", 20, |p| node_of(p).is_some()).await;
    assert_eq!(node_of(&pod), Some("node-a"));
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "berth-scheduler ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    assert!(log.contains("\"message\":\"bound\""), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    drop(server);
}
