//! Issue 9's workload fields through the control plane, with the real
//! `kubectl`: a probed pod shows READY 0/1 then 1/1 in `kubectl get pods`,
//! `kubectl describe` shows the kubelet's Unhealthy events; a RuntimeClass
//! object sends a pod to the node's second CRI handler; a pod naming an
//! unknown class is refused at create.

use std::time::Duration;

use anyhow::Context as _;
use berth_integration::cluster::cluster_prerequisites;
use berth_integration::{BUSYBOX_IMAGE, Backend, Cluster, require};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
}

#[test]
fn probes_events_and_runtime_class_through_kubectl() -> anyhow::Result<()> {
    let test = "probes_events_and_runtime_class_through_kubectl";
    if require(test, cluster_prerequisites(Backend::Sqlite)).is_none() {
        return Ok(());
    }
    let c = Cluster::start(Backend::Sqlite, &[])?;
    let file = c.write_file(
        "workload.yaml",
        &format!(
            r#"apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: recorded
handler: berth-recorded
---
apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  runtimeClassName: recorded
  terminationGracePeriodSeconds: 1
  volumes: [{{name: state, emptyDir: {{}}}}]
  containers:
  - name: web
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: IfNotPresent
    volumeMounts: [{{name: state, mountPath: /state}}]
    command: ["sh", "-c", "mkdir -p /www; echo ok > /www/index.html; httpd -p 8080 -h /www; sleep 4; touch /tmp/ready; if [ ! -f /state/broke ]; then touch /state/broke; sleep 2; rm /www/index.html; fi; while true; do sleep 1; done"]
    readinessProbe:
      exec: {{command: [test, -f, /tmp/ready]}}
      periodSeconds: 1
    livenessProbe:
      httpGet: {{path: /index.html, port: 8080}}
      periodSeconds: 1
      failureThreshold: 2
"#
        ),
    )?;
    c.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;

    // READY 0/1 while the readiness probe fails, then 1/1.
    let not_ready = c.poll(T, "probed Running but 0/1", || {
        let table = c.kubectl_ok(&["get", "pods", "probed"])?;
        Ok(row(&table, "probed").filter(|r| {
            r.get(1).map(String::as_str) == Some("0/1")
                && r.get(2).map(String::as_str) == Some("Running")
        }))
    })?;
    eprintln!("{not_ready:?}");
    c.poll(T, "probed 1/1", || {
        let table = c.kubectl_ok(&["get", "pods", "probed"])?;
        Ok(row(&table, "probed").filter(|r| r.get(1).map(String::as_str) == Some("1/1")))
    })?;
    // The page goes once: the liveness probe restarts the container.
    let pod: Value = c.poll(T, "probed restarted by its liveness probe", || {
        let p = c.kubectl_json(&["get", "pod", "probed"])?;
        let restarted = p["status"]["containerStatuses"][0]["restartCount"] == 1;
        Ok(restarted.then_some(p))
    })?;
    let describe = c.poll(T, "the Unhealthy events in kubectl describe", || {
        let out = c.kubectl_ok(&["describe", "pod", "probed"])?;
        let has = out.contains("Unhealthy")
            && out.contains("Liveness probe failed: HTTP probe failed with statuscode: 404")
            && out.contains("Readiness probe failed");
        Ok(has.then_some(out))
    })?;
    assert!(
        describe.contains("failed liveness probe, will be restarted"),
        "{describe}"
    );

    // It ran under the RuntimeClass's handler on its node.
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("containerd://")
        .to_string();
    let log_path = c
        .host(&node)?
        .containerd()
        .state_dir()
        .join("runc-recorded.log");
    let log = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    assert!(log.contains(&id), "{id} not in the wrapper's log: {log}");

    // An unknown class is refused at create, as upstream's admission does.
    let bad = c.write_file(
        "bad.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: lost}}\nspec:\n  runtimeClassName: nope\n  containers: [{{name: c, image: {BUSYBOX_IMAGE}}}]\n"
        ),
    )?;
    let out = c.kubectl(&["apply", "-f", &bad.display().to_string()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("pod rejected: RuntimeClass \"nope\" not found"),
        "{stderr}"
    );
    Ok(())
}
