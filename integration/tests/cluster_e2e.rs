//! The whole cluster end to end, against real processes: `berth-apiserver`
//! (SQLite, or etcd started by the harness), `berth-scheduler`, and two
//! agents, each with its own containerd, in their own network namespaces as
//! two hosts with their own addresses (see `berth_integration::cluster`).
//! Driven by the real `kubectl` with the admin kubeconfig, raw HTTPS (curl)
//! where kubectl cannot say it, and the official Python client.
//!
//! One cluster per backend runs scenarios 1, 3, 4, 6 and 7 in sequence
//! ([`kubectl_scenarios`]); scenario 5 (agent `kill -9`) and 2 (the Python
//! client) get their own cluster per backend.
//!
//! Some checks are collected rather than fatal at once: they are all tried,
//! every failure is remembered, and the test fails at the end naming each one
//! (see [`Checks`]). Marked `STREAMING` (kubectl logs/exec: the API server's
//! pods/log and pods/exec proxy to the agent's authenticated port) and
//! `NODE-LIFECYCLE` (NotReady after the grace period).

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use berth_integration::cluster::{Auth, ClusterOptions, cluster_prerequisites, python_client};
use berth_integration::{BUSYBOX_IMAGE, Backend, Cluster, require, workspace_dir};
use serde_json::{Value, json};

const NS: &str = "default";
/// `--node-monitor-grace-period` of the kill -9 clusters' API server (the
/// node lifecycle controller; upstream default 40 s): a node whose Lease is
/// not renewed for this long goes Ready=Unknown. Shorter than the default to
/// keep the test short, still twice the agents' 10 s lease renewal.
const NODE_MONITOR_GRACE: Duration = Duration::from_secs(20);
/// The agent's lease renewal interval (agent/src/cluster/lease.rs).
const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// Collected checks: run them all, remember each failure, fail at the end.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn soft(&mut self, what: &str, f: impl FnOnce() -> anyhow::Result<()>) {
        let t = Instant::now();
        match f() {
            Ok(()) => eprintln!("ok   {what} ({:.1?})", t.elapsed()),
            Err(e) => {
                eprintln!("FAIL {what}: {e:#}");
                self.failures.push(format!("{what}: {e:#}"));
            }
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.failures.is_empty() {
            Ok(())
        } else {
            bail!(
                "{} check(s) failed:\n- {}",
                self.failures.len(),
                self.failures.join("\n- ")
            )
        }
    }
}

fn start(test: &str, backend: Backend) -> anyhow::Result<Option<Cluster>> {
    start_with(test, backend, ClusterOptions::default())
}

fn start_with(
    test: &str,
    backend: Backend,
    opts: ClusterOptions,
) -> anyhow::Result<Option<Cluster>> {
    if require(test, cluster_prerequisites(backend)).is_none() {
        return Ok(None);
    }
    let t = Instant::now();
    let cluster = Cluster::start_with(backend, opts)?;
    eprintln!(
        "{test}: cluster k{} ({}) up with both nodes Ready in {:.1?}",
        cluster.index(),
        backend.as_str(),
        t.elapsed()
    );
    Ok(Some(cluster))
}

/// A busybox pod that logs a line a second and exits at once on SIGTERM.
fn pod_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    e2e: cluster
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "trap 'exit 0' TERM; echo started on $(hostname); i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
{extra_spec}"#
    )
}

fn apply(c: &Cluster, name: &str, yaml: &str) -> anyhow::Result<String> {
    let file = c.write_file(&format!("{name}.yaml"), yaml)?;
    c.kubectl_ok(&["apply", "-f", &file.display().to_string()])
}

fn pod(c: &Cluster, name: &str) -> anyhow::Result<Value> {
    c.kubectl_json(&["get", "pod", name, "-n", NS])
}

fn wait_running(c: &Cluster, name: &str, timeout: Duration) -> anyhow::Result<Value> {
    c.poll(
        timeout,
        &format!("pod {name} to be Running with an IP"),
        || {
            let p = pod(c, name)?;
            let running = p["status"]["phase"] == "Running"
                && p["status"]["podIP"]
                    .as_str()
                    .is_some_and(|ip| !ip.is_empty());
            Ok(running.then_some(p))
        },
    )
}

fn wait_scheduled(c: &Cluster, name: &str) -> anyhow::Result<String> {
    c.poll(
        Duration::from_secs(30),
        &format!("pod {name} to be bound"),
        || {
            let p = pod(c, name)?;
            Ok(p["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_string))
        },
    )
}

/// Columns of a kubectl table row whose first column is `name`.
fn row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
}

fn uid(p: &Value) -> String {
    p["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------
// Scenarios 1, 3, 4, 6, 7 on one cluster per backend.

#[test]
fn kubectl_scenarios_sqlite() -> anyhow::Result<()> {
    kubectl_scenarios("kubectl_scenarios_sqlite", Backend::Sqlite)
}

#[test]
fn kubectl_scenarios_etcd() -> anyhow::Result<()> {
    kubectl_scenarios("kubectl_scenarios_etcd", Backend::Etcd)
}

/// The SQLite cluster's watch history: this many changes (and no minimum
/// age), compacted every second, so scenario 3 can push a resourceVersion out
/// of the window and see 410 (etcd is compacted with etcdctl instead).
const SQLITE_HISTORY_EVENTS: u64 = 150;

fn kubectl_scenarios(test: &str, backend: Backend) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let opts = ClusterOptions {
        apiserver_args: match backend {
            Backend::Sqlite => vec![
                format!("--sqlite-history-events={SQLITE_HISTORY_EVENTS}"),
                "--sqlite-history-age=0s".into(),
                "--sqlite-compaction-interval=1s".into(),
            ],
            Backend::Etcd => Vec::new(),
        },
        ..ClusterOptions::default()
    };
    let Some(c) = start_with(test, backend, opts)? else {
        return Ok(());
    };
    let mut checks = Checks::default();
    scenario_1_kubectl(&c, &mut checks).context("scenario 1 (kubectl)")?;
    scenario_3_watch_and_conflicts(&c, &mut checks).context("scenario 3 (watch, 410, 409)")?;
    scenario_4_scheduling(&c).context("scenario 4 (scheduling)")?;
    scenario_6_node_authz(&c).context("scenario 6 (node credentials)")?;
    scenario_7_bad_requests(&c).context("scenario 7 (bad requests)")?;
    eprintln!("{test}: done in {:.1?}", t0.elapsed());
    checks.finish()
}

/// Scenario 1: Nodes Ready; apply; get -o wide; logs, logs -f; exec; delete returns
/// once the containers are gone; `get pods -w` streams the transitions.
fn scenario_1_kubectl(c: &Cluster, checks: &mut Checks) -> anyhow::Result<()> {
    let nodes = c.kubectl_ok(&["get", "nodes"])?;
    for h in c.hosts() {
        let r = row(&nodes, h.name()).ok_or_else(|| anyhow!("{} missing: {nodes}", h.name()))?;
        ensure!(r.get(1).map(String::as_str) == Some("Ready"), "{nodes}");
    }
    let wide = c.kubectl_ok(&["get", "nodes", "-o", "wide"])?;
    for h in c.hosts() {
        let r = row(&wide, h.name()).ok_or_else(|| anyhow!("{wide}"))?;
        ensure!(
            r.contains(&h.ip().to_string()),
            "INTERNAL-IP of {}: {wide}",
            h.name()
        );
        // Two hosts: own namespace, address, pod subnet; the agent's status
        // port answers on the host's address.
        ensure!(h.containerd().netns() == Some(h.netns()));
        let health = berth_integration::http_get(&format!("http://{}:10255/healthz", h.ip()))?;
        ensure!(health.status == 200, "{}: {health:?}", h.name());
        let node = c.kubectl_json(&["get", "node", h.name()])?;
        let port = &node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"];
        ensure!(
            port == 10250,
            "{}: the Node's kubelet port is {port}, not the agent's streaming server",
            h.name()
        );
    }
    ensure!(c.hosts()[0].containerd().subnet() != c.hosts()[1].containerd().subnet());

    // The watch runs from before the pod exists to after it is gone.
    let watch_out = c.temp_dir().join("files/watch.txt");
    let mut watch = c
        .kubectl_command(&["get", "pods", "-w"])
        .stdout(std::fs::File::create(&watch_out)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting kubectl get pods -w")?;
    std::thread::sleep(Duration::from_millis(500));

    let out = apply(c, "web", &pod_yaml("web", ""))?;
    ensure!(out.contains("pod/web created"), "{out}");
    let p = wait_running(c, "web", Duration::from_secs(60))?;
    let node = p["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ip = p["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let host = c.host(&node)?;
    ensure!(
        host.containerd().contains_ip(&ip),
        "pod IP {ip} is not in {}'s pod subnet {}",
        node,
        host.containerd().subnet()
    );
    ensure!(
        p["status"]["hostIP"] == host.ip(),
        "hostIP: {}",
        p["status"]
    );
    let table = c.kubectl_ok(&["get", "pods", "-o", "wide"])?;
    let r = row(&table, "web").ok_or_else(|| anyhow!("{table}"))?;
    // NAME READY STATUS RESTARTS AGE IP NODE NOMINATED-NODE READINESS-GATES
    ensure!(
        r.get(2).map(String::as_str) == Some("Running")
            && r.get(5) == Some(&ip)
            && r.get(6) == Some(&node),
        "kubectl get pods -o wide: {table}"
    );

    // Events: the scheduler's and the agent's, as `kubectl describe` and
    // `kubectl get events` show them.
    checks.soft("EVENTS kubectl describe pod web", || {
        let out = c.kubectl_ok(&["describe", "pod", "web"])?;
        let events = out
            .split("Events:")
            .nth(1)
            .ok_or_else(|| anyhow!("no Events section: {out}"))?;
        for reason in ["Scheduled", "Pulled", "Created", "Started"] {
            ensure!(events.contains(reason), "no {reason} event in:{events}");
        }
        ensure!(
            events.contains(&format!("Successfully assigned {NS}/web to {node}")),
            "{events}"
        );
        let table = c.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web",
        ])?;
        ensure!(
            table.starts_with("LAST SEEN") && table.contains("pod/web"),
            "kubectl get events: {table}"
        );
        Ok(())
    });
    // STREAMING: pods/log through the API server to the agent.
    checks.soft("STREAMING kubectl logs", || {
        let logs = c.kubectl_ok(&["logs", "web"])?;
        ensure!(
            logs.contains("started on web"),
            "kubectl logs web: {logs:?}"
        );
        Ok(())
    });
    checks.soft("STREAMING kubectl logs -f", || {
        kubectl_logs_follow(c, "web")
    });
    // STREAMING: pods/exec (WebSocket v5 with kubectl 1.33).
    checks.soft("STREAMING kubectl exec -- cat /etc/hostname", || {
        let out = c.kubectl_ok(&["exec", "web", "--", "cat", "/etc/hostname"])?;
        ensure!(out.trim() == "web", "exec output {out:?}");
        Ok(())
    });
    checks.soft("STREAMING kubectl exec exit code", || {
        let out = c.kubectl(&["exec", "web", "--", "sh", "-c", "exit 3"])?;
        ensure!(
            out.status.code() == Some(3),
            "kubectl exec ... exit 3 exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    });
    // STREAMING: stdin that ends (v5's close of stdin, carried to the
    // runtime over SPDY by the agent): the command sees its end and returns.
    checks.soft("STREAMING echo hi | kubectl exec -i -- cat", || {
        let out = kubectl_stdin(c, &["exec", "-i", "web", "--", "cat"], b"hi\n")?;
        ensure!(
            out.status.success() && out.stdout == b"hi\n",
            "exited {:?}, stdout {:?}, stderr {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    });
    checks.soft("STREAMING kubectl cp into the pod and back", || {
        let dir = c.temp_dir().join("files");
        let sent = dir.join("cp-in.bin");
        let back = dir.join("cp-back.bin");
        std::fs::create_dir_all(&dir)?;
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&sent, &bytes)?;
        let sent_s = sent.display().to_string();
        let back_s = back.display().to_string();
        let into = kubectl_stdin(c, &["cp", &sent_s, "web:/tmp/cp-in.bin"], b"")?;
        ensure!(
            into.status.success(),
            "kubectl cp into the pod exited {:?}: {}",
            into.status.code(),
            String::from_utf8_lossy(&into.stderr)
        );
        let out = kubectl_stdin(c, &["cp", "web:/tmp/cp-in.bin", &back_s], b"")?;
        ensure!(
            out.status.success(),
            "kubectl cp from the pod exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(&back).context("the copied-back file")?;
        ensure!(
            got == bytes,
            "copied back {} bytes, sent {}",
            got.len(),
            bytes.len()
        );
        Ok(())
    });

    // delete waits for the object to go, which the agent allows once the
    // containers are stopped: by then none may run.
    let pod_uid = uid(&p);
    let t = Instant::now();
    let out = c.kubectl_ok(&["delete", "pod", "web"])?;
    ensure!(out.contains("pod \"web\" deleted"), "{out}");
    let took = t.elapsed();
    let cd = host.containerd();
    let running: Vec<_> = cd
        .containers_labeled("io.kubernetes.pod.uid", &pod_uid)?
        .into_iter()
        .filter(|k| k.state == berth_integration::api::ContainerState::ContainerRunning as i32)
        .map(|k| k.id)
        .collect();
    ensure!(
        running.is_empty(),
        "kubectl delete returned ({took:.1?}) while containers {running:?} still run"
    );
    let ready_sandboxes: Vec<_> = cd
        .sandboxes_labeled("io.kubernetes.pod.uid", &pod_uid)?
        .into_iter()
        .filter(|s| s.state == berth_integration::api::PodSandboxState::SandboxReady as i32)
        .collect();
    ensure!(
        ready_sandboxes.is_empty(),
        "the sandbox still runs after delete"
    );
    eprintln!("kubectl delete pod returned after {took:.1?}, containers gone");
    let gone = c.kubectl(&["get", "pod", "web"])?;
    ensure!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "pod web still exists"
    );

    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let _ = watch.wait();
    let streamed = std::fs::read_to_string(&watch_out)?;
    let statuses: Vec<String> = streamed
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&"web")).then(|| cols.get(2).unwrap_or(&"").to_string())
        })
        .collect();
    let first = |s: &str| statuses.iter().position(|x| x == s);
    match (first("Pending"), first("Running"), first("Terminating")) {
        (Some(p), Some(r), Some(t)) if p < r && r < t => {}
        _ => bail!(
            "kubectl get pods -w did not stream Pending → Running → Terminating: {statuses:?}\n{streamed}"
        ),
    }
    eprintln!("kubectl get pods -w streamed {statuses:?}");
    Ok(())
}

/// Run kubectl (admin) with `input` as its stdin (then closed); at most 60 s,
/// after which it is killed and that is an error (a session that never sees
/// the end of its stdin hangs).
fn kubectl_stdin(c: &Cluster, args: &[&str], input: &[u8]) -> anyhow::Result<std::process::Output> {
    use std::io::Write as _;
    let mut child = c
        .kubectl_command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting kubectl {args:?}"))?;
    let mut stdin = child.stdin.take().context("kubectl's stdin")?;
    stdin.write_all(input)?;
    drop(stdin);
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // Only the kubectl started here, by its pid.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            bail!("kubectl {args:?} did not return within 60 s")
        }
    }
}

/// `kubectl logs -f`: new lines arrive while the container runs.
fn kubectl_logs_follow(c: &Cluster, pod: &str) -> anyhow::Result<()> {
    let mut child = c
        .kubectl_command(&["logs", "-f", pod, "--tail=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ticks = Vec::new();
    while ticks.len() < 3 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200))
            && l.starts_with("tick ")
        {
            ticks.push(l);
        }
    }
    let still_running = child.try_wait()?.is_none();
    let _ = child.kill();
    let out = child.wait_with_output()?;
    ensure!(
        ticks.len() >= 3 && still_running,
        "kubectl logs -f streamed {ticks:?} in 15 s (still following: {still_running}); stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn rv(v: &Value) -> anyhow::Result<u64> {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no resourceVersion in {v}"))
}

/// The events of a finished watch response (one JSON object per line).
fn watch_events(body: &str) -> anyhow::Result<Vec<(String, Value)>> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).with_context(|| format!("watch line {l:?}"))?;
            Ok((
                v["type"].as_str().unwrap_or_default().to_string(),
                v["object"].clone(),
            ))
        })
        .collect()
}

/// Scenario 3: Watch resumes from a resourceVersion without missing or repeating an
/// event; an expired one gives 410; concurrent updates with a stale
/// resourceVersion get 409. Through the cluster's API server over HTTPS.
fn scenario_3_watch_and_conflicts(c: &Cluster, checks: &mut Checks) -> anyhow::Result<()> {
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    let t = Duration::from_secs(10);
    let list = c.api("GET", &base, None, Auth::Admin, t)?;
    ensure!(list.status == 200, "list: {}", list.body);
    let rv0 = rv(&list.json()?)?;
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w3"}, "data": {"k": v}});
    let body = serde_json::to_vec(&cm("1"))?;
    let created = c.api(
        "POST",
        &base,
        Some(("application/json", &body)),
        Auth::Admin,
        t,
    )?;
    ensure!(created.status == 201, "create: {}", created.body);
    let rv1 = rv(&created.json()?)?;
    let patch = br#"{"data":{"k":"2"}}"#;
    let patched = c.api(
        "PATCH",
        &format!("{base}/w3"),
        Some(("application/merge-patch+json", patch)),
        Auth::Admin,
        t,
    )?;
    ensure!(patched.status == 200, "patch: {}", patched.body);
    let rv2 = rv(&patched.json()?)?;
    let deleted = c.api("DELETE", &format!("{base}/w3"), None, Auth::Admin, t)?;
    ensure!(deleted.status == 200, "delete: {}", deleted.body);
    ensure!(rv0 < rv1 && rv1 < rv2, "resourceVersions {rv0} {rv1} {rv2}");

    // From each point, exactly the events after it, in order, once.
    for (from, want) in [
        (rv0, vec!["ADDED", "MODIFIED", "DELETED"]),
        (rv1, vec!["MODIFIED", "DELETED"]),
        (rv2, vec!["DELETED"]),
    ] {
        let w = c.api(
            "GET",
            &format!(
                "{base}?watch=1&resourceVersion={from}&fieldSelector=metadata.name%3Dw3&timeoutSeconds=2"
            ),
            None,
            Auth::Admin,
            Duration::from_secs(15),
        )?;
        ensure!(
            w.status == 200,
            "watch from {from}: {} {}",
            w.status,
            w.body
        );
        let events = watch_events(&w.body)?;
        let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
        ensure!(
            types == want,
            "watch from {from}: got {types:?}, want {want:?}\n{}",
            w.body
        );
        let rvs: Vec<u64> = events
            .iter()
            .map(|(_, o)| rv(o))
            .collect::<anyhow::Result<_>>()?;
        ensure!(
            rvs.windows(2).all(|p| p[0] < p[1]) && rvs.iter().all(|r| *r > from),
            "watch from {from}: resourceVersions {rvs:?}"
        );
        ensure!(events[0].1["data"]["k"] == if from == rv0 { "1" } else { "2" });
    }
    // Through kubectl (HTTP/2) too: `get --raw` of the watch from rv1 (kubectl
    // get has no --resource-version any more).
    let out = c.kubectl_ok(&[
        "get",
        "--raw",
        &format!(
            "{base}?watch=1&resourceVersion={rv1}&fieldSelector=metadata.name%3Dw3&timeoutSeconds=2"
        ),
    ])?;
    let types: Vec<String> = watch_events(&out)?.into_iter().map(|(t, _)| t).collect();
    ensure!(
        types == ["MODIFIED", "DELETED"],
        "kubectl get --raw watch from {rv1}: {types:?}"
    );

    // 410: history older than what the store keeps.
    match c.etcd_endpoint() {
        Some(endpoint) => checks.soft("410 Expired after etcd compaction", || {
            expired_watch(c, Some(&endpoint), &base, rv0)
        }),
        None => checks.soft("410 Expired after SQLite compaction", || {
            expired_watch(c, None, &base, rv0)
        }),
    }

    // 409: two writers with the same resourceVersion; one wins.
    let body = serde_json::to_vec(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c409"}, "data": {"n": "0"}}),
    )?;
    let created = c.api(
        "POST",
        &base,
        Some(("application/json", &body)),
        Auth::Admin,
        t,
    )?;
    ensure!(created.status == 201, "create c409: {}", created.body);
    let current = created.json()?;
    let stale_rv = current["metadata"]["resourceVersion"].clone();
    let results: Vec<anyhow::Result<(u16, Value)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=2)
            .map(|n| {
                let mut obj = current.clone();
                obj["data"]["n"] = json!(n.to_string());
                let base = &base;
                s.spawn(move || -> anyhow::Result<(u16, Value)> {
                    let body = serde_json::to_vec(&obj)?;
                    let r = c.api(
                        "PUT",
                        &format!("{base}/c409"),
                        Some(("application/json", &body)),
                        Auth::Admin,
                        Duration::from_secs(10),
                    )?;
                    Ok((r.status, r.json()?))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("writer panicked"))))
            .collect()
    });
    let results: Vec<(u16, Value)> = results.into_iter().collect::<anyhow::Result<_>>()?;
    let mut codes: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    codes.sort();
    ensure!(
        codes == [200, 409],
        "concurrent updates with one resourceVersion: {results:?}"
    );
    let conflict = &results
        .iter()
        .find(|(s, _)| *s == 409)
        .ok_or_else(|| anyhow!("no 409"))?
        .1;
    ensure!(
        conflict["kind"] == "Status" && conflict["reason"] == "Conflict" && conflict["code"] == 409,
        "409 body: {conflict}"
    );
    // A third writer, still with the old resourceVersion: 409, nothing changes.
    let mut obj = current.clone();
    obj["metadata"]["resourceVersion"] = stale_rv;
    obj["data"]["n"] = json!("3");
    let r = c.api(
        "PUT",
        &format!("{base}/c409"),
        Some(("application/json", &serde_json::to_vec(&obj)?)),
        Auth::Admin,
        t,
    )?;
    ensure!(r.status == 409, "stale update: {} {}", r.status, r.body);
    let now = c.kubectl_json(&["get", "configmap", "c409"])?;
    ensure!(
        now["data"]["n"] == "1" || now["data"]["n"] == "2",
        "after the conflict: {now}"
    );
    c.kubectl_ok(&["delete", "configmap", "c409"])?;
    Ok(())
}

/// Compact etcd past `old_rv`, then watch and list from it: 410 Expired.
/// Make `old_rv` older than the store's history and check that a watch and an
/// exact list from it get 410 Expired. etcd (`Some(endpoint)`): compact it with
/// etcdctl. SQLite (`None`): write more changes than the server keeps
/// (`--sqlite-history-events`) and let its compaction run.
fn expired_watch(c: &Cluster, etcd: Option<&str>, base: &str, old_rv: u64) -> anyhow::Result<()> {
    let t = Duration::from_secs(10);
    match etcd {
        Some(etcd) => {
            let list = c.api("GET", base, None, Auth::Admin, t)?;
            let current = rv(&list.json()?)?;
            let out = std::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", etcd, "compact", &current.to_string()])
                .output()
                .context("running etcdctl compact")?;
            ensure!(
                out.status.success(),
                "etcdctl compact {current}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => {
            // One kubectl run creating more objects than the history holds.
            let items: Vec<Value> = (0..=SQLITE_HISTORY_EVENTS)
                .map(|i| {
                    json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("churn-{i}")}})
                })
                .collect();
            let file = c.temp_dir().join("files/churn.json");
            std::fs::write(
                &file,
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?,
            )?;
            let path = file.to_string_lossy().into_owned();
            c.kubectl_ok(&["create", "-f", &path])?;
            // The server compacts every second.
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    let w = c.api(
        "GET",
        &format!("{base}?watch=1&resourceVersion={old_rv}&timeoutSeconds=2"),
        None,
        Auth::Admin,
        Duration::from_secs(15),
    )?;
    // Either the request fails with 410 or the stream's only event is an
    // ERROR carrying a 410 Status (what kube-apiserver sends once a watch has
    // started).
    let status = if w.status == 410 {
        w.json()?
    } else {
        ensure!(
            w.status == 200,
            "watch from {old_rv}: {} {}",
            w.status,
            w.body
        );
        let events = watch_events(&w.body)?;
        ensure!(
            events.len() == 1 && events[0].0 == "ERROR",
            "watch from compacted {old_rv}: {events:?}"
        );
        events[0].1.clone()
    };
    ensure!(
        status["kind"] == "Status" && status["code"] == 410 && status["reason"] == "Expired",
        "watch from compacted {old_rv}: {status}"
    );
    let l = c.api(
        "GET",
        &format!("{base}?resourceVersion={old_rv}&resourceVersionMatch=Exact"),
        None,
        Auth::Admin,
        t,
    )?;
    ensure!(
        l.status == 410,
        "exact list at compacted {old_rv}: {} {}",
        l.status,
        l.body
    );
    Ok(())
}

/// Scenario 4: Pods spread across the two nodes; a pod too big for either stays
/// Pending with the scheduler's reason; a tainted node gets only tolerating pods.
fn scenario_4_scheduling(c: &Cluster) -> anyhow::Result<()> {
    let requests = "    resources:\n      requests:\n        cpu: 50m\n        memory: 16Mi\n";
    let spread: Vec<String> = (0..4).map(|i| format!("spread-{i}")).collect();
    let mut yaml = String::new();
    for name in &spread {
        yaml.push_str(&pod_yaml(name, ""));
        yaml.push_str(requests);
        yaml.push_str("---\n");
    }
    apply(c, "spread", &yaml)?;
    let mut on = std::collections::BTreeMap::<String, Vec<String>>::new();
    for name in &spread {
        let p = wait_running(c, name, Duration::from_secs(60))?;
        let node = p["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(
            c.host(&node)?
                .containerd()
                .contains_ip(p["status"]["podIP"].as_str().unwrap_or_default())
        );
        on.entry(node).or_default().push(name.clone());
    }
    ensure!(
        c.hosts()
            .iter()
            .all(|h| on.get(h.name()).is_some_and(|v| !v.is_empty())),
        "4 pods not spread over both nodes: {on:?}"
    );
    eprintln!("spread: {on:?}");

    // Too big for either node.
    apply(
        c,
        "huge",
        &format!(
            "{}    resources:\n      requests:\n        cpu: \"1000\"\n",
            pod_yaml("huge", "")
        ),
    )?;
    let cond = c.poll(
        Duration::from_secs(30),
        "pod huge to be Unschedulable",
        || {
            let p = pod(c, "huge")?;
            Ok(p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                .cloned())
        },
    )?;
    let msg = cond["message"].as_str().unwrap_or_default();
    ensure!(
        cond["reason"] == "Unschedulable"
            && msg.contains("0/2 nodes are available")
            && msg.contains("2 Insufficient cpu"),
        "PodScheduled condition of huge: {cond}"
    );
    let p = pod(c, "huge")?;
    ensure!(
        p["status"]["phase"] == "Pending" && p["spec"]["nodeName"].is_null(),
        "{p}"
    );
    let table = c.kubectl_ok(&["get", "pod", "huge"])?;
    ensure!(
        row(&table, "huge")
            .and_then(|r| r.get(2).cloned())
            .as_deref()
            == Some("Pending"),
        "{table}"
    );

    // Taint node-b: plain pods go to node-a only, a tolerating pod may land on node-b.
    c.kubectl_ok(&["taint", "nodes", "node-b", "e2e=only:NoSchedule"])?;
    let plain: Vec<String> = (0..3).map(|i| format!("plain-{i}")).collect();
    let mut yaml = String::new();
    for name in &plain {
        yaml.push_str(&pod_yaml(name, ""));
        yaml.push_str("---\n");
    }
    apply(c, "plain", &yaml)?;
    for name in &plain {
        let node = wait_scheduled(c, name)?;
        ensure!(node == "node-a", "{name} went to the tainted {node}");
    }
    let pinned = "  nodeSelector:\n    kubernetes.io/hostname: node-b\n";
    apply(c, "untolerating", &pod_yaml("untolerating", pinned))?;
    let tolerating = format!(
        "{pinned}  tolerations:\n  - key: e2e\n    operator: Equal\n    value: only\n    effect: NoSchedule\n"
    );
    apply(c, "tolerating", &pod_yaml("tolerating", &tolerating))?;
    ensure!(wait_scheduled(c, "tolerating")? == "node-b");
    let cond = c.poll(
        Duration::from_secs(30),
        "pod untolerating to be Unschedulable",
        || {
            let p = pod(c, "untolerating")?;
            Ok(p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                .cloned())
        },
    )?;
    let msg = cond["message"].as_str().unwrap_or_default();
    ensure!(
        msg.contains("0/2 nodes are available") && msg.contains("untolerated taint"),
        "untolerating: {cond}"
    );
    wait_running(c, "tolerating", Duration::from_secs(60))?;

    c.kubectl_ok(&["taint", "nodes", "node-b", "e2e=only:NoSchedule-"])?;
    c.kubectl_ok(&[
        "delete",
        "pods",
        "-l",
        "e2e=cluster",
        "--wait=true",
        "--timeout=90s",
    ])?;
    Ok(())
}

/// Scenario 6: A node credential cannot modify the other node or its pods (403); no
/// token gives 401.
fn scenario_6_node_authz(c: &Cluster) -> anyhow::Result<()> {
    apply(c, "victim", &pod_yaml("victim", "  nodeName: node-b\n"))?;
    let victim = wait_running(c, "victim", Duration::from_secs(60))?;
    let a = c.host("node-a")?;
    let t = Duration::from_secs(10);

    // kubectl as node-a.
    for args in [
        vec!["label", "node", "node-b", "e2e=hijacked"],
        vec!["label", "pod", "victim", "e2e=hijacked"],
        vec!["delete", "pod", "victim", "--wait=false"],
    ] {
        let out = c.kubectl_as(a.kubeconfig(), &args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success()
                && err.contains("Forbidden")
                && err.contains("system:node:node-a"),
            "kubectl {args:?} as node-a: {} {err}",
            out.status
        );
    }
    // Raw: 403 Status bodies.
    let merge = br#"{"metadata":{"labels":{"e2e":"hijacked"}}}"#;
    let status = br#"{"status":{"phase":"Failed"}}"#;
    for (method, path, body) in [
        (
            "PATCH",
            "/api/v1/nodes/node-b".to_string(),
            Some(&merge[..]),
        ),
        (
            "PATCH",
            "/api/v1/nodes/node-b/status".to_string(),
            Some(&status[..]),
        ),
        (
            "PATCH",
            format!("/api/v1/namespaces/{NS}/pods/victim/status"),
            Some(&status[..]),
        ),
        ("DELETE", "/api/v1/nodes/node-b".to_string(), None),
        (
            "DELETE",
            format!("/api/v1/namespaces/{NS}/pods/victim"),
            None,
        ),
    ] {
        let r = c.api(
            method,
            &path,
            body.map(|b| ("application/merge-patch+json", b)),
            Auth::Node("node-a"),
            t,
        )?;
        let s = r.json()?;
        ensure!(
            r.status == 403 && s["kind"] == "Status" && s["reason"] == "Forbidden",
            "{method} {path} as node-a: {} {}",
            r.status,
            r.body
        );
    }
    // Its own node it may touch.
    let r = c.api("GET", "/api/v1/nodes/node-a", None, Auth::Node("node-a"), t)?;
    ensure!(
        r.status == 200,
        "node-a reading itself: {} {}",
        r.status,
        r.body
    );
    // Nothing changed.
    let b = c.kubectl_json(&["get", "node", "node-b"])?;
    ensure!(b["metadata"]["labels"].get("e2e").is_none(), "node-b: {b}");
    let v = pod(c, "victim")?;
    ensure!(
        uid(&v) == uid(&victim)
            && v["metadata"]["deletionTimestamp"].is_null()
            && v["status"]["phase"] == "Running"
            && v["metadata"]["labels"]["e2e"] == "cluster",
        "victim changed: {v}"
    );

    // No token, or a wrong one: 401.
    for auth in ["none", "bogus"] {
        let r = if auth == "none" {
            c.api(
                "GET",
                "/api/v1/namespaces/default/pods",
                None,
                Auth::Anonymous,
                t,
            )?
        } else {
            curl_with_token(c, "GET", "/api/v1/namespaces/default/pods", "not-a-token")?
        };
        let s = r.json()?;
        ensure!(
            r.status == 401
                && s["kind"] == "Status"
                && s["reason"] == "Unauthorized"
                && s["code"] == 401,
            "{auth} token: {} {}",
            r.status,
            r.body
        );
    }
    c.kubectl_ok(&["delete", "pod", "victim", "--wait=true", "--timeout=60s"])?;
    Ok(())
}

fn curl_with_token(
    c: &Cluster,
    method: &str,
    path: &str,
    token: &str,
) -> anyhow::Result<berth_integration::cluster::ApiResponse> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", "10", "-X", method, "--cacert"])
        .arg(c.ca_cert())
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("-w")
        .arg("\n%{http_code}")
        .arg(format!("{}{path}", c.api_url()))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text
        .rsplit_once('\n')
        .ok_or_else(|| anyhow!("curl: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(berth_integration::cluster::ApiResponse {
        status: code.trim().parse()?,
        body: body.to_string(),
    })
}

/// Scenario 7: Bad requests get Kubernetes-style Status errors and change nothing.
fn scenario_7_bad_requests(c: &Cluster) -> anyhow::Result<()> {
    let names = |c: &Cluster| -> anyhow::Result<Vec<String>> {
        let l = c.kubectl_json(&["get", "pods,configmaps", "-n", NS])?;
        let mut v: Vec<String> = l["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{}/{}", i["kind"], i["metadata"]["name"]))
            .collect();
        v.sort();
        Ok(v)
    };
    let before = names(c)?;
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let t = Duration::from_secs(20);
    let valid = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"containers": [{"name": "main", "image": BUSYBOX_IMAGE}]}})
    };
    let wrong_kind = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad-kind"}, "data": {}});
    let mut bad_name = valid("Bad_Name");
    bad_name["metadata"]["name"] = json!("Bad_Name");
    let no_containers = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-empty"}, "spec": {"containers": []}});
    let mut huge = valid("bad-huge");
    huge["metadata"]["annotations"] = json!({"big": "x".repeat(4 * 1024 * 1024)});
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            br#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"#.to_vec(),
            400,
            "BadRequest",
        ),
        (
            "wrong kind",
            serde_json::to_vec(&wrong_kind)?,
            400,
            "BadRequest",
        ),
        (
            "invalid name",
            serde_json::to_vec(&bad_name)?,
            422,
            "Invalid",
        ),
        (
            "no containers",
            serde_json::to_vec(&no_containers)?,
            422,
            "Invalid",
        ),
        (
            "huge body",
            serde_json::to_vec(&huge)?,
            413,
            "RequestEntityTooLarge",
        ),
    ];
    for (what, body, code, reason) in cases {
        let r = c.api(
            "POST",
            &pods,
            Some(("application/json", &body)),
            Auth::Admin,
            t,
        )?;
        let s = r.json().with_context(|| what.to_string())?;
        ensure!(
            r.status == code
                && s["kind"] == "Status"
                && s["apiVersion"] == "v1"
                && s["status"] == "Failure"
                && s["code"] == code
                && s["reason"] == reason
                && s["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: want {code} {reason}, got {} {}",
            r.status,
            r.body.chars().take(500).collect::<String>()
        );
        let field = match what {
            "invalid name" => "metadata.name",
            "no containers" => "spec.containers",
            _ => continue,
        };
        let causes = s["details"]["causes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ensure!(
            s["details"]["kind"] == "Pod" && causes.iter().any(|c| c["field"] == field),
            "{what}: want a cause for {field}: {s}"
        );
    }
    // The huge body through kubectl (HTTP/2) too.
    let file = c.write_file("huge.json", &serde_json::to_string(&huge)?)?;
    let out = c.kubectl(&["create", "-f", &file.display().to_string()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("RequestEntityTooLarge"),
        "kubectl create with a 4 MiB pod: {} {}",
        out.status,
        err.chars().take(300).collect::<String>()
    );
    // kubectl's default (strict) validation: an unknown field is refused by the server.
    let typo = pod_yaml("bad-typo", "").replace("imagePullPolicy:", "imagePullPolicyy:");
    let file = c.write_file("typo.yaml", &typo)?;
    let out = c.kubectl(&["apply", "-f", &file.display().to_string()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("unknown field") && err.contains("imagePullPolicyy"),
        "kubectl apply with a typo: {} {err}",
        out.status
    );
    let after = names(c)?;
    ensure!(
        before == after,
        "bad requests changed the cluster: {before:?} → {after:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Scenario 5: an agent killed with SIGKILL.

#[test]
fn agent_kill9_sqlite() -> anyhow::Result<()> {
    agent_kill9("agent_kill9_sqlite", Backend::Sqlite)
}

#[test]
fn agent_kill9_etcd() -> anyhow::Result<()> {
    agent_kill9("agent_kill9_etcd", Backend::Etcd)
}

fn lease_renew_time(c: &Cluster, node: &str) -> anyhow::Result<String> {
    let l = c.kubectl_json(&["get", "lease", node, "-n", "kube-node-lease"])?;
    l["spec"]["renewTime"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("lease {node} has no renewTime: {l}"))
}

/// The effects of node `name`'s `node.kubernetes.io/unreachable` taints, sorted.
fn unreachable_taints(c: &Cluster, name: &str) -> anyhow::Result<Vec<String>> {
    let n = c.kubectl_json(&["get", "node", name])?;
    let mut effects: Vec<String> = n["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] == "node.kubernetes.io/unreachable")
        .filter_map(|t| t["effect"].as_str().map(str::to_string))
        .collect();
    effects.sort();
    Ok(effects)
}

/// The status of a pod's Ready condition.
fn pod_ready(p: &Value) -> Option<String> {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// Scenario 5: `kill -9` an agent: its Lease stops renewing and the node goes NotReady
/// (Ready=Unknown, NodeStatusUnknown) after the grace period; on restart it is
/// Ready again and its pods were never restarted.
fn agent_kill9(test: &str, backend: Backend) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let opts = ClusterOptions {
        apiserver_args: vec![format!(
            "--node-monitor-grace-period={}s",
            NODE_MONITOR_GRACE.as_secs()
        )],
        ..ClusterOptions::default()
    };
    let Some(mut c) = start_with(test, backend, opts)? else {
        return Ok(());
    };
    let mut checks = Checks::default();
    apply(
        &c,
        "steady",
        &pod_yaml(
            "steady",
            "  nodeSelector:\n    kubernetes.io/hostname: node-b\n",
        ),
    )?;
    let before = wait_running(&c, "steady", Duration::from_secs(60))?;
    let pod_uid = uid(&before);
    let cstatus = |p: &Value| p["status"]["containerStatuses"][0].clone();
    let ids_before = {
        let cd = c.host("node-b")?.containerd();
        let mut ids: Vec<String> = cd
            .containers_labeled("io.kubernetes.pod.uid", &pod_uid)?
            .into_iter()
            .map(|k| k.id)
            .collect();
        ids.sort();
        ids
    };
    ensure!(!ids_before.is_empty(), "no containers of steady on node-b");

    let a_lease = lease_renew_time(&c, "node-a")?;
    let b_lease = lease_renew_time(&c, "node-b")?;
    c.host_mut("node-b")?.agent_mut().kill9()?;
    let killed = Instant::now();
    eprintln!("{test}: killed node-b's agent");

    // The lease renews every 10 s: after 11 s node-a's moved, node-b's did not.
    std::thread::sleep(LEASE_RENEW_INTERVAL + Duration::from_secs(1));
    let (a_now, b_now) = (
        lease_renew_time(&c, "node-a")?,
        lease_renew_time(&c, "node-b")?,
    );
    ensure!(a_now != a_lease, "node-a's lease was not renewed in 12 s");
    ensure!(
        b_now == b_lease,
        "node-b's lease was renewed after its agent died: {b_lease} → {b_now}"
    );

    // NODE-LIFECYCLE: the node lifecycle controller (kube-controller-manager
    // upstream) marks it Unknown after the grace period.
    checks.soft("NODE-LIFECYCLE node-b Ready=Unknown (NodeStatusUnknown) after the grace period", || {
        let limit = NODE_MONITOR_GRACE + Duration::from_secs(15);
        let remaining = limit.saturating_sub(killed.elapsed());
        let (status, reason) = c.poll(remaining, "node-b to become Ready=Unknown", || {
            Ok(c.node_ready("node-b")?.filter(|(s, _)| s != "True"))
        })?;
        let after = killed.elapsed();
        ensure!(
            status == "Unknown" && reason == "NodeStatusUnknown",
            "node-b Ready={status} reason {reason}"
        );
        // The last renewal was up to one interval before the kill.
        ensure!(
            after + LEASE_RENEW_INTERVAL + Duration::from_secs(2) >= NODE_MONITOR_GRACE,
            "node-b went {status} {after:.1?} after the kill, before the {NODE_MONITOR_GRACE:?} grace period"
        );
        let table = c.kubectl_ok(&["get", "nodes"])?;
        ensure!(
            row(&table, "node-b").and_then(|r| r.get(1).cloned()).as_deref() == Some("NotReady"),
            "{table}"
        );
        eprintln!("node-b NotReady {after:.1?} after the kill");
        // Tainted unreachable, and its pods no longer Ready.
        c.poll(Duration::from_secs(10), "node-b to be tainted unreachable and steady not Ready", || {
            let taints = unreachable_taints(&c, "node-b")?;
            let ready = pod_ready(&pod(&c, "steady")?);
            Ok((taints == ["NoExecute", "NoSchedule"] && ready.as_deref() == Some("False")).then_some(()))
        })?;
        Ok(())
    });
    ensure!(
        c.node_ready("node-a")?.map(|(s, _)| s).as_deref() == Some("True"),
        "node-a is not Ready any more"
    );

    // The pod kept running without its agent.
    let p = pod(&c, "steady")?;
    ensure!(
        p["status"]["phase"] == "Running",
        "steady while its agent is down: {}",
        p["status"]
    );

    let t = Instant::now();
    c.host_mut("node-b")?.agent_mut().restart()?;
    c.wait_node_ready("node-b", Duration::from_secs(30))?;
    eprintln!(
        "{test}: node-b Ready again {:.1?} after the restart",
        t.elapsed()
    );
    checks.soft(
        "NODE-LIFECYCLE unreachable taints removed, pod Ready again",
        || {
            c.poll(
                Duration::from_secs(20),
                "node-b untainted and steady Ready",
                || {
                    let taints = unreachable_taints(&c, "node-b")?;
                    let ready = pod_ready(&pod(&c, "steady")?);
                    Ok((taints.is_empty() && ready.as_deref() == Some("True")).then_some(()))
                },
            )
        },
    );
    // Give the agent a sync or two to (wrongly) replace anything.
    std::thread::sleep(Duration::from_secs(3));
    let after = wait_running(&c, "steady", Duration::from_secs(10))?;
    let ids_after = {
        let mut ids: Vec<String> = c
            .host("node-b")?
            .containerd()
            .containers_labeled("io.kubernetes.pod.uid", &pod_uid)?
            .into_iter()
            .map(|k| k.id)
            .collect();
        ids.sort();
        ids
    };
    ensure!(
        ids_after == ids_before,
        "containers of steady changed: {ids_before:?} → {ids_after:?}"
    );
    let (cb, ca) = (cstatus(&before), cstatus(&after));
    ensure!(
        ca["restartCount"] == 0
            && ca["containerID"] == cb["containerID"]
            && ca["state"]["running"]["startedAt"] == cb["state"]["running"]["startedAt"],
        "steady's container status changed: {cb} → {ca}"
    );
    eprintln!("{test}: done in {:.1?}", t0.elapsed());
    checks.finish()
}

// ---------------------------------------------------------------------------
// Scenario 2: the official Python client.

#[test]
fn python_client_sqlite() -> anyhow::Result<()> {
    python_client_scenario("python_client_sqlite", Backend::Sqlite)
}

#[test]
fn python_client_etcd() -> anyhow::Result<()> {
    python_client_scenario("python_client_etcd", Backend::Etcd)
}

/// Scenario 2: The official Python `kubernetes` client creates, lists, watches,
/// patches and deletes pods and reads a node (integration/tests/python/client_test.py).
fn python_client_scenario(test: &str, backend: Backend) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let Some(python) = require(test, python_client()) else {
        return Ok(());
    };
    let Some(c) = start(test, backend)? else {
        return Ok(());
    };
    let script = workspace_dir().join("integration/tests/python/client_test.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg("--kubeconfig")
        .arg(c.admin_kubeconfig())
        .args([
            "--node",
            "node-a",
            "--namespace",
            NS,
            "--image",
            BUSYBOX_IMAGE,
        ])
        .env("HOME", c.temp_dir().join("home"))
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    if !out.status.success() {
        bail!(
            "{} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
            script.display(),
            out.status,
            c.diagnostics()
        );
    }
    ensure!(stdout.contains("python client: OK"), "{stdout}");
    eprintln!("{test}: done in {:.1?}", t0.elapsed());
    Ok(())
}
