//! Issue 10's allocatable and admission through the control plane, with the
//! real `kubectl`: the Node reports capacity and allocatable (capacity −
//! `--kube-reserved` − the hard eviction threshold); a pod bound straight to
//! a node (`spec.nodeName`, past the scheduler) that does not fit is Failed
//! with `OutOfcpu`, the kubelet's message and event; a node selector the node
//! does not satisfy is `NodeAffinity`; an untolerated `NoExecute` taint is
//! `TaintToleration`. A `kill -9` of the agent keeps the refusals; a static
//! (critical) pod that does not fit preempts the running pod (`Preempting`);
//! a refused pod deletes cleanly.

use std::time::Duration;

use anyhow::Context as _;
use berth_integration::cluster::cluster_prerequisites;
use berth_integration::{BUSYBOX_IMAGE, Backend, Cluster, require};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn bound_pod(name: &str, node: &str, cpu: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n{extra}  containers:\n  - name: c\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'while true; do sleep 1; done']\n    resources: {{requests: {{cpu: {cpu}}}}}\n"
    )
}

fn refused(c: &Cluster, name: &str, reason: &str) -> anyhow::Result<Value> {
    c.poll(T, &format!("{name} Failed with {reason}"), || {
        let p = c.kubectl_json(&["get", "pod", name])?;
        let done = p["status"]["phase"] == "Failed" && p["status"]["reason"] == reason;
        Ok(done.then_some(p))
    })
}

#[test]
fn allocatable_and_admission_through_kubectl() -> anyhow::Result<()> {
    let test = "allocatable_and_admission_through_kubectl";
    if require(test, cluster_prerequisites(Backend::Sqlite)).is_none() {
        return Ok(());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reserved = format!("cpu={}m", cpus * 1000 - 500);
    // Pressure and eviction have their own test (eviction_cluster_e2e).
    let mut c = Cluster::start(
        Backend::Sqlite,
        &[
            "--kube-reserved",
            &reserved,
            "--eviction-hard",
            "memory.available<100Mi",
        ],
    )?;
    let node = c.hosts()[0].name().to_string();

    let n = c.poll(T, "the node's allocatable", || {
        let n = c.kubectl_json(&["get", "node", &node])?;
        Ok((n["status"]["allocatable"]["cpu"] == "500m").then_some(n))
    })?;
    let status = &n["status"];
    assert_eq!(status["capacity"]["cpu"], cpus.to_string(), "{status}");
    assert_eq!(status["capacity"]["pods"], "110", "{status}");
    // memory.available<100Mi comes off allocatable memory.
    let ki = |v: &Value| -> i64 {
        v.as_str()
            .and_then(|s| s.strip_suffix("Ki"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1)
    };
    assert_eq!(
        ki(&status["capacity"]["memory"]) - ki(&status["allocatable"]["memory"]),
        100 * 1024,
        "{status}"
    );

    let n = c.kubectl_json(&["get", "node", &node])?;
    let memory = n["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "MemoryPressure").cloned())
        .context("MemoryPressure condition")?;
    assert_eq!(memory["status"], "False", "{memory}");

    // Too much CPU, bound past the scheduler: refused by the node.
    let file = c.write_file("big.yaml", &bound_pod("big", &node, "2", ""))?;
    c.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    let big = refused(&c, "big", "OutOfcpu")?;
    assert_eq!(
        big["status"]["message"],
        "Pod was rejected: Node didn't have enough resource: cpu, requested: 2000, used: 0, capacity: 500"
    );
    let table = c.kubectl_ok(&["get", "pod", "big"])?;
    assert!(table.contains("OutOfcpu"), "{table}");
    c.poll(T, "the OutOfcpu event in kubectl describe", || {
        let out = c.kubectl_ok(&["describe", "pod", "big"])?;
        Ok(
            (out.contains("OutOfcpu") && out.contains("Node didn't have enough resource: cpu"))
                .then_some(()),
        )
    })?;

    // A pod that fits runs beside it.
    let file = c.write_file("fits.yaml", &bound_pod("fits", &node, "100m", ""))?;
    c.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    c.poll(T, "fits Running", || {
        let p = c.kubectl_json(&["get", "pod", "fits"])?;
        Ok((p["status"]["phase"] == "Running").then_some(()))
    })?;

    // A node selector the node does not satisfy.
    let file = c.write_file(
        "picky.yaml",
        &bound_pod("picky", &node, "10m", "  nodeSelector: {disk: ssd}\n"),
    )?;
    c.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    let picky = refused(&c, "picky", "NodeAffinity")?;
    assert_eq!(
        picky["status"]["message"],
        "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
    );

    // An untolerated NoExecute taint, once the agent has seen it (it reads
    // its Node every 10 s).
    c.kubectl_ok(&["taint", "node", &node, "maint=yes:NoExecute"])?;
    std::thread::sleep(Duration::from_secs(12));
    let file = c.write_file("plain.yaml", &bound_pod("plain", &node, "10m", ""))?;
    c.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    refused(&c, "plain", "TaintToleration")?;
    c.kubectl_ok(&["taint", "node", &node, "maint=yes:NoExecute-"])?;

    // kill -9 of the agent: the refusals hold (read back from the API), the
    // running pod keeps its container.
    let before =
        c.kubectl_json(&["get", "pod", "fits"])?["status"]["containerStatuses"][0]["containerID"]
            .clone();
    {
        let host = c.host_mut(&node)?;
        host.agent_mut().kill9()?;
        host.agent_mut().restart()?;
    }
    std::thread::sleep(Duration::from_secs(5));
    refused(&c, "big", "OutOfcpu")?;
    refused(&c, "picky", "NodeAffinity")?;
    let after = c.poll(T, "fits Running after the restart", || {
        let p = c.kubectl_json(&["get", "pod", "fits"])?;
        Ok((p["status"]["phase"] == "Running").then_some(p))
    })?;
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"], before,
        "fits was not restarted"
    );
    let sandboxes = c.host(&node)?.containerd().sandboxes()?;
    assert!(
        !sandboxes
            .iter()
            .any(|s| s.metadata.as_ref().is_some_and(|m| m.name == "big")),
        "a refused pod never reaches the runtime"
    );

    // A static (critical) pod that does not fit preempts: 450m wanted, 400m
    // free, so `fits` (100m, Burstable) goes with the kubelet's reason.
    c.host(&node)?.agent().write_manifest(
        "critical.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: critical, namespace: default}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'while true; do sleep 1; done']\n    resources: {{requests: {{cpu: 450m}}}}\n"
        ),
    )?;
    let preempted = refused(&c, "fits", "Preempting")?;
    assert_eq!(
        preempted["status"]["message"],
        "Preempted in order to admit critical pod"
    );
    let mirror = format!("critical-{node}");
    c.poll(T, "the critical pod Running", || {
        let p = c.kubectl_json(&["get", "pod", &mirror])?;
        Ok((p["status"]["phase"] == "Running").then_some(()))
    })?;
    c.poll(T, "the Preempting event", || {
        let out = c.kubectl_ok(&["describe", "pod", "fits"])?;
        Ok(out
            .contains("Preempted in order to admit critical pod")
            .then_some(()))
    })?;

    // A refused pod deletes cleanly.
    c.kubectl_ok(&["delete", "pod", "big", "--timeout=60s"])
        .context("deleting a refused pod")?;
    Ok(())
}
