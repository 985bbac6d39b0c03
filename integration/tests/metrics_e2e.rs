//! `kubectl top` against berth-apiserver, which serves `metrics.k8s.io`
//! itself by scraping the agents' `/metrics/resource` (every 2 s here,
//! `--metric-resolution=2s`), on the whole-cluster harness with the real
//! `kubectl`:
//!
//! - discovery names the group, so `kubectl top` never says "Metrics API not
//!   available"; `kubectl top nodes` lists both nodes with non-zero CPU and
//!   memory;
//! - a busy pod (a shell loop under a 200m CPU limit) and an idle one:
//!   `kubectl top pods` (`--containers`, `-l`) lists them, and the busy
//!   pod's CPU agrees with its cgroup's own counter measured over the same
//!   seconds;
//! - the raw `NodeMetrics`/`PodMetrics` JSON has upstream's shape and the
//!   objects' labels; a `view` user may `kubectl top pods` in its namespace;
//! - `kill -9` of one agent: its node and pods go absent (404) within a few
//!   rounds while the other node stays, one warning is logged for the whole
//!   outage, and after the restart they come back;
//! - what one scrape of a real agent costs (printed).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail, ensure};
use berth_integration::cluster::{ClusterOptions, cluster_prerequisites};
use berth_integration::{BUSYBOX_IMAGE, Backend, Cluster, require};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);
const M: &str = "/apis/metrics.k8s.io/v1beta1";
/// The busy pod's CPU limit, in millicores.
const LIMIT_MILLI: f64 = 200.0;

fn pod_yaml(name: &str, node: &str, command: &str, extra_labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}{extra_labels}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, '{command}']\n    resources: {{limits: {{cpu: {}m, memory: 64Mi}}}}\n",
        LIMIT_MILLI as u64
    )
}

/// A CPU quantity as kubectl and the metrics API write it, in millicores.
fn cpu_milli(q: &str) -> anyhow::Result<f64> {
    let (num, scale) = if let Some(n) = q.strip_suffix('n') {
        (n, 1e-6)
    } else if let Some(n) = q.strip_suffix('u') {
        (n, 1e-3)
    } else if let Some(n) = q.strip_suffix('m') {
        (n, 1.0)
    } else {
        (q, 1000.0)
    };
    Ok(num
        .parse::<f64>()
        .with_context(|| format!("CPU quantity {q:?}"))?
        * scale)
}

/// A memory quantity (`123Ki`, `64Mi`, `1234`, `1k`) in bytes.
fn bytes(q: &str) -> anyhow::Result<f64> {
    let units = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ];
    for (suffix, scale) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return Ok(n.parse::<f64>().with_context(|| format!("memory {q:?}"))? * scale);
        }
    }
    q.parse::<f64>().with_context(|| format!("memory {q:?}"))
}

/// `kubectl get --raw path` parsed; `Err` with kubectl's words on failure.
fn raw(c: &Cluster, path: &str) -> anyhow::Result<Value> {
    let out = c.kubectl_ok(&["get", "--raw", path])?;
    serde_json::from_str(&out).with_context(|| format!("{path}: not JSON: {out}"))
}

/// The rows of a `kubectl top` table without its header, split on blanks.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Whether the host runs cgroup v2 only.
fn unified() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
}

/// The CPU time (ns) the cgroup `rel` has used, from the kernel.
fn cgroup_cpu_ns(rel: &str) -> anyhow::Result<u64> {
    let rel = rel.trim_start_matches('/');
    if unified() {
        let path = PathBuf::from("/sys/fs/cgroup").join(rel).join("cpu.stat");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let usec = text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .ok_or_else(|| anyhow!("no usage_usec in {}", path.display()))?;
        Ok(usec.trim().parse::<u64>()? * 1000)
    } else {
        let path = PathBuf::from("/sys/fs/cgroup/cpuacct")
            .join(rel)
            .join("cpuacct.usage");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().parse::<u64>()?)
    }
}

/// (wall time, cgroup CPU ns).
fn cgroup_sample(rel: &str) -> anyhow::Result<(SystemTime, u64)> {
    let now = SystemTime::now();
    Ok((now, cgroup_cpu_ns(rel)?))
}

fn seconds_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A `metav1.Time` as seconds since the epoch.
fn parse_time(v: &Value) -> anyhow::Result<f64> {
    let s = v.as_str().ok_or_else(|| anyhow!("not a time: {v}"))?;
    let t = berth_apiserver::api::objects::parse_time(s)
        .ok_or_else(|| anyhow!("not an RFC 3339 time: {s:?}"))?;
    Ok(t.as_second() as f64)
}

/// A `metav1.Duration` (`2s`, `2.001s`, `1m0s`) in seconds.
fn parse_window(v: &Value) -> anyhow::Result<f64> {
    let s = v.as_str().ok_or_else(|| anyhow!("not a duration: {v}"))?;
    let (minutes, rest) = match s.split_once('m') {
        Some((m, r)) if !r.is_empty() => (m.parse::<f64>()?, r),
        _ => (0.0, s),
    };
    let secs = if let Some(ms) = rest.strip_suffix("ms") {
        ms.parse::<f64>()? / 1000.0
    } else {
        rest.strip_suffix('s')
            .ok_or_else(|| anyhow!("duration {s:?}"))?
            .parse::<f64>()?
    };
    Ok(minutes * 60.0 + secs)
}

#[test]
fn kubectl_top_through_the_api_server() -> anyhow::Result<()> {
    let test = "kubectl_top_through_the_api_server";
    if require(test, cluster_prerequisites(Backend::Sqlite)).is_none() {
        return Ok(());
    }
    let t_start = Instant::now();
    let mut c = Cluster::start_with(
        Backend::Sqlite,
        ClusterOptions {
            apiserver_args: vec!["--metric-resolution=2s".to_string()],
            ..ClusterOptions::default()
        },
    )?;
    eprintln!("cluster up in {:.1?}", t_start.elapsed());
    let node = c.hosts()[0].name().to_string();
    let other = c.hosts()[1].name().to_string();

    // The group is discovered: kubectl top never says the API is missing.
    let out = c.kubectl(&["top", "nodes"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !stderr.contains("Metrics API not available"),
        "kubectl top nodes: {stderr}"
    );
    let groups = raw(&c, "/apis")?;
    ensure!(
        groups["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["name"] == "metrics.k8s.io")),
        "{groups}"
    );
    let api_resources = c.kubectl_ok(&["api-resources", "--api-group=metrics.k8s.io"])?;
    ensure!(
        api_resources.contains("NodeMetrics") && api_resources.contains("PodMetrics"),
        "{api_resources}"
    );

    for (name, cmd, extra) in [
        ("busy", "while :; do :; done", ", tier: compute"),
        ("idle", "sleep 3600", ""),
    ] {
        let file = c.write_file(&format!("{name}.yaml"), &pod_yaml(name, &node, cmd, extra))?;
        c.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    }
    let busy = c.poll(T, "busy and idle Running", || {
        let busy = c.kubectl_json(&["get", "pod", "busy"])?;
        let idle = c.kubectl_json(&["get", "pod", "idle"])?;
        let running = |p: &Value| p["status"]["phase"] == "Running";
        Ok((running(&busy) && running(&idle)).then_some(busy))
    })?;
    ensure!(busy["status"]["qosClass"] == "Guaranteed", "{busy}");
    let uid = busy["metadata"]["uid"]
        .as_str()
        .context("busy pod uid")?
        .to_string();
    let cgroup = format!("{}/pod{uid}", c.host(&node)?.containerd().cgroup_parent());

    // kubectl top nodes: both nodes, non-zero CPU and memory.
    let top = c.poll(T, "kubectl top nodes with both nodes", || {
        let out = c.kubectl(&["top", "nodes"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rs = rows(&text);
        let measured = |n: &str| rs.iter().any(|r| r[0] == n && r[1] != "<unknown>");
        Ok((out.status.success() && measured(&node) && measured(&other)).then_some(text))
    })?;
    eprintln!("kubectl top nodes:\n{top}");
    for r in rows(&top) {
        // NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%)
        ensure!(r.len() == 5, "{top}");
        ensure!(cpu_milli(&r[1])? > 0.0, "no CPU: {top}");
        ensure!(bytes(&r[3])? > 0.0, "no memory: {top}");
        ensure!(r[2].ends_with('%') && r[4].ends_with('%'), "{top}");
    }

    // kubectl top pods, with containers, with a selector.
    let top = c.poll(T, "kubectl top pods with busy and idle", || {
        let out = c.kubectl(&["top", "pods"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rs = rows(&text);
        let has = |n: &str| rs.iter().any(|r| r[0] == n);
        Ok((out.status.success() && has("busy") && has("idle")).then_some(text))
    })?;
    eprintln!("kubectl top pods:\n{top}");
    for r in rows(&top) {
        // Memory in whole Mi: a busybox shell's working set prints as 0Mi
        // (the raw objects below carry the bytes).
        ensure!(r.len() == 3, "{top}");
        cpu_milli(&r[1])?;
        bytes(&r[2])?;
    }
    let containers = c.kubectl_ok(&["top", "pods", "--containers"])?;
    eprintln!("kubectl top pods --containers:\n{containers}");
    let crs = rows(&containers);
    for pod in ["busy", "idle"] {
        ensure!(
            crs.iter()
                .any(|r| r.len() == 4 && r[0] == pod && r[1] == "main"),
            "{pod}/main in:\n{containers}"
        );
    }
    let selected = c.kubectl_ok(&["top", "pods", "-l", "tier=compute"])?;
    let names: Vec<String> = rows(&selected).into_iter().map(|r| r[0].clone()).collect();
    ensure!(
        names == ["busy"],
        "kubectl top pods -l tier=compute:\n{selected}"
    );
    let selected = c.kubectl_ok(&["top", "pods", "-l", "app in (idle)", "--no-headers"])?;
    ensure!(
        selected.lines().count() == 1 && selected.starts_with("idle "),
        "{selected}"
    );

    // The busy pod's CPU against its cgroup over the same seconds: sample
    // the cgroup, collect every distinct PodMetrics reading for ~10 s,
    // sample again.
    let (t0, u0) = cgroup_sample(&cgroup)?;
    let mut readings: Vec<(f64, f64, f64)> = Vec::new(); // (timestamp, window, millicores)
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let pm = raw(&c, &format!("{M}/namespaces/default/pods/busy"))?;
        let ts = parse_time(&pm["timestamp"])?;
        let window = parse_window(&pm["window"])?;
        let milli = cpu_milli(
            pm["containers"][0]["usage"]["cpu"]
                .as_str()
                .context("busy cpu")?,
        )?;
        if !readings.iter().any(|(t, _, _)| *t == ts) {
            readings.push((ts, window, milli));
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    let (t1, u1) = cgroup_sample(&cgroup)?;
    let elapsed = t1.duration_since(t0)?.as_secs_f64();
    let cgroup_milli = (u1 - u0) as f64 / 1e6 / elapsed;
    // Readings whose window lies within the cgroup's (timestamps are whole
    // seconds: one second of slack on each side).
    let (from, to) = (seconds_since_epoch(t0), seconds_since_epoch(t1));
    let inside: Vec<f64> = readings
        .iter()
        .filter(|(ts, w, _)| ts - w >= from - 1.0 && *ts <= to + 1.0)
        .map(|(_, _, m)| *m)
        .collect();
    eprintln!("busy: cgroup {cgroup_milli:.1}m over {elapsed:.1}s; metrics readings {readings:?}");
    ensure!(
        inside.len() >= 2,
        "too few readings inside the window: {readings:?}"
    );
    let mean = inside.iter().sum::<f64>() / inside.len() as f64;
    ensure!(
        cgroup_milli > 10.0 && cgroup_milli <= LIMIT_MILLI * 1.15,
        "the busy loop's cgroup rate {cgroup_milli:.1}m is not that of a busy loop under a {LIMIT_MILLI}m limit"
    );
    ensure!(
        (mean - cgroup_milli).abs() <= (cgroup_milli * 0.2).max(30.0),
        "metrics say {mean:.1}m, the cgroup {cgroup_milli:.1}m"
    );
    for m in &inside {
        ensure!(
            *m <= LIMIT_MILLI * 1.25,
            "{m}m above the {LIMIT_MILLI}m limit"
        );
    }

    // The raw objects' shapes.
    let nm = raw(&c, &format!("{M}/nodes/{node}"))?;
    ensure!(nm["kind"] == "NodeMetrics", "{nm}");
    ensure!(nm["apiVersion"] == "metrics.k8s.io/v1beta1", "{nm}");
    ensure!(nm["metadata"]["name"] == node.as_str(), "{nm}");
    let node_obj = c.kubectl_json(&["get", "node", &node])?;
    ensure!(
        nm["metadata"]["labels"] == node_obj["metadata"]["labels"],
        "labels: {nm} vs {}",
        node_obj["metadata"]["labels"]
    );
    ensure!(nm["metadata"]["creationTimestamp"].is_string(), "{nm}");
    let now = seconds_since_epoch(SystemTime::now());
    let ts = parse_time(&nm["timestamp"])?;
    ensure!((now - ts).abs() < 30.0, "timestamp {ts} vs now {now}: {nm}");
    let window = parse_window(&nm["window"])?;
    ensure!((1.0..=10.0).contains(&window), "window {window}: {nm}");
    ensure!(
        cpu_milli(nm["usage"]["cpu"].as_str().context("cpu")?)? > 0.0,
        "{nm}"
    );
    ensure!(
        bytes(nm["usage"]["memory"].as_str().context("memory")?)? > 0.0,
        "{nm}"
    );
    let mut keys: Vec<&String> = nm.as_object().context("object")?.keys().collect();
    keys.sort();
    ensure!(
        keys == [
            "apiVersion",
            "kind",
            "metadata",
            "timestamp",
            "usage",
            "window"
        ],
        "{nm}"
    );
    let pm = raw(&c, &format!("{M}/namespaces/default/pods/idle"))?;
    ensure!(pm["kind"] == "PodMetrics", "{pm}");
    ensure!(pm["metadata"]["namespace"] == "default", "{pm}");
    ensure!(pm["metadata"]["labels"]["app"] == "idle", "{pm}");
    ensure!(pm["containers"].as_array().map(Vec::len) == Some(1), "{pm}");
    ensure!(pm["containers"][0]["name"] == "main", "{pm}");
    let memory = pm["containers"][0]["usage"]["memory"]
        .as_str()
        .context("memory")?;
    ensure!(bytes(memory)? > 0.0, "{pm}");
    let list = raw(&c, &format!("{M}/pods"))?;
    ensure!(list["kind"] == "PodMetricsList", "{list}");
    let list = raw(
        &c,
        &format!("{M}/namespaces/default/pods?labelSelector=app%3Dbusy"),
    )?;
    ensure!(list["items"].as_array().map(Vec::len) == Some(1), "{list}");
    // kubectl get on the group: the server-side Table.
    let table = c.kubectl_ok(&["get", "nodes.metrics.k8s.io"])?;
    ensure!(
        table.starts_with("NAME") && table.contains("WINDOW") && table.contains(&node),
        "{table}"
    );
    let table = c.kubectl_ok(&["get", "pods.metrics.k8s.io", "busy"])?;
    ensure!(table.contains("busy") && table.contains("CPU"), "{table}");
    let out = c.kubectl(&["get", "--raw", &format!("{M}/nodes/no-such-node")])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("NotFound"),
        "{stderr}"
    );

    // A view user may kubectl top pods in its namespace, not nodes.
    let viewer = c.user_kubeconfig("viewer", "viewer")?;
    c.kubectl_ok(&[
        "create",
        "rolebinding",
        "viewer-view",
        "--clusterrole=view",
        "--user=viewer",
        "-n",
        "default",
    ])?;
    let out = c.kubectl_as(&viewer, &["top", "pods"])?;
    ensure!(
        out.status.success(),
        "viewer: kubectl top pods: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.kubectl_as(&viewer, &["top", "nodes"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("forbidden"),
        "viewer: kubectl top nodes: {stderr}"
    );

    // What one scrape of a real agent costs, as the API server does it.
    scrape_cost(&c, &node)?;

    // kill -9 of the agent: its node and pods go absent, the rest stays.
    let log = c.temp_dir().join("apiserver.log");
    let warnings = |log: &str| {
        log.lines()
            .filter(|l| l.contains("metrics scrape of the node failed") && l.contains(&node))
            .count()
    };
    let before = warnings(&std::fs::read_to_string(&log)?);
    c.host_mut(&node)?.agent_mut().kill9()?;
    let killed = Instant::now();
    c.poll(T, "the killed node's metrics gone", || {
        let out = c.kubectl(&["get", "--raw", &format!("{M}/nodes/{node}")])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        Ok((!out.status.success()
            && stderr.contains(&format!("nodemetrics.metrics.k8s.io \"{node}\" not found")))
        .then_some(()))
    })?;
    eprintln!(
        "metrics of {node} gone {:.1?} after kill -9",
        killed.elapsed()
    );
    let nodes = raw(&c, &format!("{M}/nodes"))?;
    let names: Vec<&str> = nodes["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(names == [other.as_str()], "only {other} left: {nodes}");
    let pods = raw(&c, &format!("{M}/namespaces/default/pods"))?;
    ensure!(pods["items"] == Value::Array(vec![]), "{pods}");
    let out = c.kubectl(&["get", "--raw", &format!("{M}/namespaces/default/pods/busy")])?;
    ensure!(
        String::from_utf8_lossy(&out.stderr)
            .contains("podmetrics.metrics.k8s.io \"default/busy\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top = c.kubectl_ok(&["top", "nodes"])?;
    eprintln!("kubectl top nodes with {node} down:\n{top}");
    ensure!(
        rows(&top)
            .iter()
            .any(|r| r[0] == other && cpu_milli(&r[1]).is_ok_and(|m| m > 0.0)),
        "{top}"
    );
    c.kubectl_ok(&["get", "pods"])?;
    // Several rounds of failures, one warning.
    std::thread::sleep(Duration::from_secs(5));
    // (A streak already under way before the kill would add none.)
    let during = warnings(&std::fs::read_to_string(&log)?);
    ensure!(
        (1..=before + 1).contains(&during),
        "{} warnings for one outage of {node}",
        during.saturating_sub(before)
    );

    c.host_mut(&node)?.agent_mut().restart()?;
    let restarted = Instant::now();
    c.poll(T, "the node's and pods' metrics back", || {
        let nodes = raw(&c, &format!("{M}/nodes"))?;
        let pods = raw(&c, &format!("{M}/namespaces/default/pods"))?;
        let n = nodes["items"].as_array().map_or(0, Vec::len);
        let p = pods["items"].as_array().map_or(0, Vec::len);
        Ok((n == 2 && p == 2).then_some(()))
    })?;
    eprintln!(
        "metrics of {node} back {:.1?} after the restart",
        restarted.elapsed()
    );
    let log_text = std::fs::read_to_string(&log)?;
    ensure!(
        log_text
            .lines()
            .any(|l| l.contains("metrics scrape of the node works again") && l.contains(&node)),
        "no recovery line in the API server log"
    );
    let top = c.kubectl_ok(&["top", "pods"])?;
    ensure!(top.contains("busy") && top.contains("idle"), "{top}");
    eprintln!("{test}: {:.1?}", t_start.elapsed());
    Ok(())
}

/// Scrape `node`'s agent as the API server does (its kubelet-client
/// certificate, a new connection each time) and print what it costs.
fn scrape_cost(c: &Cluster, node: &str) -> anyhow::Result<()> {
    use berth_apiserver::api::metrics::scraper::scrape_node;
    use berth_apiserver::api::proxy::KubeletClient;
    use berth_apiserver::api::tls::PkiPaths;

    let pki = PkiPaths::new(&c.data_dir());
    let client = KubeletClient::from_pem_files(&pki.kubelet_client_cert, &pki.kubelet_client_key)?;
    let node_obj = c.kubectl_json(&["get", "node", node])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rounds = 10u32;
    let (took, pods) = rt.block_on(async {
        let t0 = Instant::now();
        let mut pods = 0;
        for _ in 0..rounds {
            let batch = scrape_node(&client, node, &node_obj, Duration::from_secs(10)).await?;
            pods = batch.pods.len();
            if batch.node.is_none() {
                bail!("no node point from {node}");
            }
        }
        Ok::<_, anyhow::Error>((t0.elapsed(), pods))
    })?;
    eprintln!(
        "one scrape of {node}'s agent ({pods} pods; TLS connection, /metrics/resource, decode): {:.1} ms",
        (took / rounds).as_secs_f64() * 1000.0
    );
    Ok(())
}
