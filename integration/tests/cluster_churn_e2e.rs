//! Pod churn through the API server (issue 11, reliability suite item 1): the
//! real berth-apiserver, scheduler and agents (each host its own containerd
//! in its own network namespace), pods created and deleted with the real
//! kubectl in batches of mixed shape (emptyDirs, an init container with an
//! exec readiness probe, a hostPort). After the churn nothing of any pod is
//! left on any node: no sandbox or container, pod or log directory, mount,
//! allocated pod IP (host-local IPAM) or hostPort NAT rule; the API server
//! has no pod left. CI: 4 batches of 10; `BERTH_SOAK=1`: 100 batches.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_integration::cluster::cluster_prerequisites;
use berth_integration::{BUSYBOX_IMAGE, Backend, Cluster, ClusterHost, require, soak};

const T: Duration = Duration::from_secs(120);
const BATCH: usize = 10;

/// Pod `i` of batch `b`, of shape `i % 3`; hostPorts are unique per batch.
fn pod(b: usize, i: usize) -> String {
    let name = format!("churn-{b}-{i}");
    let (extra_spec, extra_container) = match i % 3 {
        0 => (
            "  volumes:\n  - {name: disk, emptyDir: {}}\n  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 4Mi}}\n".to_string(),
            "    volumeMounts: [{name: disk, mountPath: /disk}, {name: mem, mountPath: /mem}]\n".to_string(),
        ),
        1 => (
            format!("  initContainers:\n  - name: init\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'echo init > /work/ready']\n    volumeMounts: [{{name: work, mountPath: /work}}]\n  volumes:\n  - {{name: work, emptyDir: {{}}}}\n"),
            "    volumeMounts: [{name: work, mountPath: /work}]\n    readinessProbe:\n      exec: {command: [cat, /work/ready]}\n      periodSeconds: 1\n".to_string(),
        ),
        _ => (
            String::new(),
            format!("    ports:\n    - {{containerPort: 8080, hostPort: {}}}\n", 31000 + i),
        ),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{churn: \"yes\"}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'exec sleep 3600']\n{extra_container}{extra_spec}"
    )
}

/// What of any pod is left on `host` (empty: nothing).
fn leftovers(host: &ClusterHost) -> Result<Vec<String>> {
    let mut left = Vec::new();
    let cd = host.containerd();
    let sandboxes = cd.sandboxes()?;
    if !sandboxes.is_empty() {
        left.push(format!("{} sandbox(es)", sandboxes.len()));
    }
    let containers = cd.containers()?;
    if !containers.is_empty() {
        left.push(format!("{} container(s)", containers.len()));
    }
    let agent = host.agent();
    let list = |dir: std::path::PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pods = list(agent.root_dir().join("pods"));
    if !pods.is_empty() {
        left.push(format!("pod dirs {pods:?}"));
    }
    let logs = list(agent.pod_logs_dir());
    if !logs.is_empty() {
        left.push(format!("log dirs {logs:?}"));
    }
    let mounts = berth_integration::mounts_under(&agent.root_dir().join("pods"))?;
    if !mounts.is_empty() {
        left.push(format!("mounts {mounts:?}"));
    }
    // host-local keeps one file per allocated IP (plus its own bookkeeping)
    // under its dataDir, one directory per network.
    let networks = cd.temp_dir().join("cni");
    for net in list(networks.clone()) {
        let ips: Vec<String> = list(networks.join(&net))
            .into_iter()
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .collect();
        if !ips.is_empty() {
            left.push(format!("pod IPs still allocated in {net}: {ips:?}"));
        }
    }
    // portmap's per-sandbox DNAT chains (CNI-DN-…) in the host's namespace.
    let out = Command::new("ip")
        .args(["netns", "exec", host.netns(), "iptables", "-t", "nat", "-S"])
        .output()
        .context("iptables -t nat -S")?;
    let rules: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("CNI-DN-"))
        .map(str::to_string)
        .collect();
    if !rules.is_empty() {
        left.push(format!("hostPort NAT rules {rules:?}"));
    }
    Ok(left)
}

#[test]
fn pod_churn_through_the_api_server_leaves_nothing() -> Result<()> {
    let test = "pod_churn_through_the_api_server_leaves_nothing";
    if require(test, cluster_prerequisites(Backend::Sqlite)).is_none() {
        return Ok(());
    }
    let batches = if soak() { 100 } else { 4 };
    let c = Cluster::start(Backend::Sqlite, &[])?;
    for host in c.hosts() {
        c.wait_node_ready(host.name(), T)?;
    }
    let mut nodes_used = BTreeSet::new();
    for b in 0..batches {
        let docs: Vec<String> = (0..BATCH).map(|i| pod(b, i)).collect();
        let file = c.write_file(&format!("batch-{b}.yaml"), &docs.join("---\n"))?;
        c.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
        let running = c.poll(
            T,
            &format!("batch {b}: {BATCH} pods Running and ready"),
            || {
                let list = c.kubectl_json(&["get", "pods", "-l", "churn=yes"])?;
                let items = list["items"].as_array().cloned().unwrap_or_default();
                let ready = items
                    .iter()
                    .filter(|p| {
                        p["status"]["phase"] == "Running"
                            && p["status"]["containerStatuses"][0]["ready"] == true
                    })
                    .count();
                Ok((ready == BATCH).then_some(items))
            },
        )?;
        for p in &running {
            if let Some(n) = p["spec"]["nodeName"].as_str() {
                nodes_used.insert(n.to_string());
            }
        }
        if b == 0 {
            // The leftover checks see live pods: they can fail.
            let mut seen = Vec::new();
            for host in c.hosts() {
                seen.extend(leftovers(host)?);
            }
            for what in [
                "sandbox(es)",
                "pod dirs",
                "log dirs",
                "mounts",
                "pod IPs still allocated",
                "hostPort NAT rules",
            ] {
                assert!(
                    seen.iter().any(|l| l.contains(what)),
                    "with pods running, no {what} seen: {seen:?}"
                );
            }
        }
        c.kubectl_ok(&[
            "delete",
            "pods",
            "-l",
            "churn=yes",
            "--wait=true",
            "--timeout=120s",
        ])?;
        eprintln!(
            "cluster churn: batch {}/{batches} created and deleted",
            b + 1
        );
    }
    // The API server has none left; no node has anything left of any.
    let left = c.kubectl_json(&["get", "pods", "-A"])?;
    assert_eq!(
        left["items"].as_array().map(Vec::len),
        Some(0),
        "pods left in the API server: {left}"
    );
    for host in c.hosts() {
        let mut last = Vec::new();
        let r = c.poll(
            T,
            &format!("{}: nothing of any pod left", host.name()),
            || {
                last = leftovers(host)?;
                Ok(last.is_empty().then_some(()))
            },
        );
        r.with_context(|| format!("{}: left: {last:?}", host.name()))?;
    }
    eprintln!(
        "cluster churn: {} pods over nodes {nodes_used:?}",
        batches * BATCH
    );
    Ok(())
}
