//! Issue 10's eviction through the control plane, with the real `kubectl`,
//! real containerd and the agent's eviction manager:
//!
//! - local storage limits: an emptyDir past its `sizeLimit` and a container
//!   past its `ephemeral-storage` limit are evicted (Failed, reason
//!   `Evicted`, the kubelet's message, an event), whatever the node's pressure;
//! - a `memory.available` signal below the hard threshold (fed through the
//!   agent's test signals file, the same `SignalSource` trait as the host's)
//!   sets `MemoryPressure` on the Node, the node lifecycle controller adds the
//!   `node.kubernetes.io/memory-pressure:NoSchedule` taint, the BestEffort pod
//!   using more than it requested is evicted first (with `DisruptionTarget`)
//!   while the Burstable one within its request still runs, and a new
//!   BestEffort pod is refused ("The node had condition: [MemoryPressure]");
//! - a `kill -9` of the agent keeps the evicted pods evicted (read back from
//!   the API, their containers never started again);
//! - the signal recovering ends the condition after the transition period and
//!   the taint goes.

use std::time::Duration;

use anyhow::Context as _;
use berth_integration::cluster::{ClusterOptions, cluster_prerequisites};
use berth_integration::{BUSYBOX_IMAGE, Backend, Cluster, require};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

fn bound_pod(name: &str, node: &str, script: &str, resources: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n{extra}  containers:\n  - name: c\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, '{script}']\n    resources: {resources}\n    volumeMounts: [{{name: scratch, mountPath: /data}}]\n"
    )
}

fn evicted(c: &Cluster, name: &str) -> anyhow::Result<Value> {
    c.poll(T, &format!("{name} Failed with Evicted"), || {
        let p = c.kubectl_json(&["get", "pod", name])?;
        let done = p["status"]["phase"] == "Failed" && p["status"]["reason"] == "Evicted";
        Ok(done.then_some(p))
    })
}

fn phase(c: &Cluster, name: &str) -> anyhow::Result<String> {
    let p = c.kubectl_json(&["get", "pod", name])?;
    Ok(p["status"]["phase"].as_str().unwrap_or("").to_string())
}

fn condition(node: &Value, kind: &str) -> Value {
    node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind).cloned())
        .unwrap_or(Value::Null)
}

fn has_taint(node: &Value, key: &str) -> bool {
    node["spec"]["taints"].as_array().is_some_and(|ts| {
        ts.iter()
            .any(|t| t["key"] == key && t["effect"] == "NoSchedule")
    })
}

#[test]
fn eviction_under_memory_pressure_and_local_storage_limits_through_kubectl() -> anyhow::Result<()> {
    let test = "eviction_under_memory_pressure_and_local_storage_limits_through_kubectl";
    if require(test, cluster_prerequisites(Backend::Sqlite)).is_none() {
        return Ok(());
    }
    let signals_dir = tempfile::tempdir()?;
    let signals = signals_dir.path().join("signals.json");
    let signals_arg = signals.display().to_string();
    let mut c = Cluster::start_with(
        Backend::Sqlite,
        ClusterOptions {
            agent_args: [
                "--eviction-hard",
                "memory.available<100Mi",
                "--eviction-pressure-transition-period",
                "5s",
                "--eviction-signals-file",
                &signals_arg,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            ..Default::default()
        },
    )?;
    let node = c.hosts()[0].name().to_string();
    let sleep = "while true; do sleep 1; done";
    let empty = "  volumes: [{name: scratch, emptyDir: {}}]\n";
    let pods = [
        // Local storage: 4Mi into an emptyDir limited to 1Mi.
        bound_pod(
            "scratch",
            &node,
            &format!("dd if=/dev/zero of=/data/f bs=1M count=4; {sleep}"),
            "{}",
            "  volumes: [{name: scratch, emptyDir: {sizeLimit: 1Mi}}]\n",
        ),
        // Local storage: 4Mi into the container's own layer, limited to 2Mi,
        // the pod as a whole within its containers' sum (2Mi + 100Mi), so the
        // container's own limit is what it breaks (the pod's is checked first).
        format!(
            "{}  - name: quiet\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, '{sleep}']\n    resources: {{limits: {{ephemeral-storage: 100Mi}}}}\n",
            bound_pod(
                "disk",
                &node,
                &format!("dd if=/dev/zero of=/tmp/f bs=1M count=4; {sleep}"),
                "{limits: {ephemeral-storage: 2Mi}}",
                empty,
            )
        ),
        // BestEffort: any use is above its request.
        bound_pod("greedy", &node, sleep, "{}", empty),
        // Burstable within its request.
        bound_pod(
            "within",
            &node,
            sleep,
            "{requests: {memory: 200Mi, cpu: 10m}}",
            empty,
        ),
    ];
    for (i, p) in pods.iter().enumerate() {
        let file = c.write_file(&format!("pod{i}.yaml"), p)?;
        c.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    }

    // Local storage limits are enforced without any node pressure.
    let scratch = evicted(&c, "scratch")?;
    assert_eq!(
        scratch["status"]["message"],
        "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "
    );
    let disk = evicted(&c, "disk")?;
    assert_eq!(
        disk["status"]["message"],
        "Container c exceeded its local ephemeral storage limit \"2Mi\". "
    );
    for name in ["greedy", "within"] {
        c.poll(T, &format!("{name} Running"), || {
            Ok((phase(&c, name)? == "Running").then_some(()))
        })?;
    }
    let n = c.kubectl_json(&["get", "node", &node])?;
    assert_eq!(condition(&n, "MemoryPressure")["status"], "False", "{n}");

    // memory.available 50Mi of 8Gi: below the 100Mi threshold.
    std::fs::write(
        &signals,
        r#"{"memory.available": {"available": 52428800, "capacity": 8589934592}}"#,
    )?;
    let greedy = evicted(&c, "greedy")?;
    assert_eq!(
        phase(&c, "within")?,
        "Running",
        "the pod within its request goes after the one above it"
    );
    let message = greedy["status"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with(
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. Container c was using "
        ) && message.ends_with(", request is 0, has larger consumption of memory. "),
        "{message}"
    );
    let disruption = greedy["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget").cloned())
        .context("DisruptionTarget condition")?;
    assert_eq!(disruption["reason"], "TerminationByKubelet", "{disruption}");
    // A new BestEffort pod is refused while the pressure lasts.
    let late = c.write_file("late.yaml", &bound_pod("late", &node, sleep, "{}", empty))?;
    c.kubectl_ok(&["apply", "-f", &late.display().to_string()])?;
    let late = evicted(&c, "late")?;
    assert_eq!(
        late["status"]["message"],
        "Pod was rejected: The node had condition: [MemoryPressure]. "
    );
    let n = c.poll(T, "MemoryPressure and its taint on the Node", || {
        let n = c.kubectl_json(&["get", "node", &node])?;
        let ok = condition(&n, "MemoryPressure")["status"] == "True"
            && has_taint(&n, "node.kubernetes.io/memory-pressure");
        Ok(ok.then_some(n))
    })?;
    assert_eq!(
        condition(&n, "MemoryPressure")["reason"],
        "KubeletHasInsufficientMemory"
    );
    // kubectl describe shows the reason, and the event (`kubectl get` shows
    // the killed container's reason, as upstream's printer does).
    c.poll(
        T,
        "the Evicted reason and event in kubectl describe",
        || {
            let out = c.kubectl_ok(&["describe", "pod", "greedy"])?;
            let reason = out
                .lines()
                .any(|l| l.starts_with("Reason:") && l.trim_end().ends_with("Evicted"));
            let event = out.lines().any(|l| {
                l.contains("Warning") && l.contains("Evicted") && l.contains("low on resource")
            });
            Ok((reason && event).then_some(()))
        },
    )?;

    // Recovered: the condition ends after the transition period, the taint goes.
    std::fs::write(
        &signals,
        r#"{"memory.available": {"available": 4294967296, "capacity": 8589934592}}"#,
    )?;
    c.poll(T, "MemoryPressure gone with its taint", || {
        let n = c.kubectl_json(&["get", "node", &node])?;
        let ok = condition(&n, "MemoryPressure")["status"] == "False"
            && !has_taint(&n, "node.kubernetes.io/memory-pressure");
        Ok(ok.then_some(()))
    })?;

    // kill -9 of the agent: evicted pods stay evicted, nothing of them runs.
    {
        let host = c.host_mut(&node)?;
        host.agent_mut().kill9()?;
        host.agent_mut().restart()?;
    }
    std::thread::sleep(Duration::from_secs(8));
    for name in ["scratch", "disk", "greedy", "late"] {
        let p = evicted(&c, name)?;
        assert_eq!(p["status"]["reason"], "Evicted", "{name}: {p}");
    }
    let running: Vec<String> = c
        .host(&node)?
        .containerd()
        .containers()?
        .iter()
        .filter(|k| k.state == berth_cri::api::ContainerState::ContainerRunning as i32)
        .filter_map(|k| k.labels.get("io.kubernetes.pod.name").cloned())
        .collect();
    for name in ["scratch", "disk", "greedy", "late"] {
        assert!(
            !running.iter().any(|r| r == name),
            "{name} runs again after the restart: {running:?}"
        );
    }
    // An evicted pod deletes cleanly.
    c.kubectl_ok(&["delete", "pod", "greedy", "--timeout=60s"])
        .context("deleting an evicted pod")?;
    Ok(())
}
