//! `kill -9` of the `berth-scheduler` binary mid-scheduling (issue 11,
//! "Reliability suite", item 2): a real `berth-apiserver`, fake Nodes, a few
//! hundred pending pods, and the scheduler killed at seeded random moments
//! and started again. A watch from before the first pod sees every pod's
//! `spec.nodeName` set once and never changed; every pod ends bound; no node
//! holds more pods than it allows; and the API server refuses a second
//! binding with upstream's 409 (`pod x is already assigned to node "y"`),
//! also to the loser of bindings racing for one pod.
//!
//! The seed is printed; `BERTH_SEED=<n>` replays it, `BERTH_SOAK=1` runs more
//! pods and kills. Needs the `berth-apiserver` binary (`cargo build
//! --workspace`, or `$BERTH_APISERVER_BIN`): skipped with a printed reason
//! without it, a failure under `CI=true` or `BERTH_REQUIRE_RUNTIME=1`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_scheduler::harness::{Apiserver, apiserver_binary};
use berth_test_support::{TestRng, skip_or_fail, soak};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

/// The API server binary, or `None` (skip, reason printed); a failure under CI.
fn apiserver(test: &str) -> Option<PathBuf> {
    match apiserver_binary() {
        Some(p) if p.is_file() => Some(p),
        _ => {
            let reason = "berth-apiserver binary not found (run `cargo build --workspace` or set \
                          BERTH_APISERVER_BIN)";
            skip_or_fail(test, "berth-apiserver", reason);
            None
        }
    }
}

/// A fresh directory for `test` under Cargo's per-target test directory.
fn test_dir(test: &str) -> tempfile::TempDir {
    berth_test_support::test_dir(env!("CARGO_TARGET_TMPDIR"), test)
}

/// A `berth-scheduler` process, SIGKILLed by PID when dropped.
struct Scheduler {
    child: Child,
    log: PathBuf,
}

impl Scheduler {
    fn start(kubeconfig: &Path, log: PathBuf) -> Scheduler {
        let child = Command::new(env!("CARGO_BIN_EXE_berth-scheduler"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Scheduler { child, log }
    }

    /// SIGKILL by PID; the PID.
    fn kill9(mut self) -> u32 {
        let pid = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        pid
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NODES: usize = 6;
/// Each node's `pods` allocatable: 6 × 60 = 360 places for 300 pods, so the
/// scheduler must count every bound pod, also those bound before its restart.
const PODS_PER_NODE: usize = 60;

async fn create_nodes(client: &Client) {
    let api = Api::<Node>::all(client.clone());
    for i in 0..NODES {
        let name = format!("node-{i}");
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": PODS_PER_NODE.to_string()},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": PODS_PER_NODE.to_string()}
            }
        }))
        .unwrap();
        api.create(&PostParams::default(), &node).await.unwrap();
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
    }))
    .unwrap()
}

async fn create_pods(client: &Client, names: &[String]) {
    let api = Api::<Pod>::namespaced(client.clone(), "default");
    futures::stream::iter(names.iter().map(|n| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &pod(n))
                .await
                .map(|_| ())
        }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<()>>()
    .await
    .unwrap();
}

/// What a watch of all pods saw: each pod's first `spec.nodeName`, and every
/// time one changed or vanished.
#[derive(Default)]
struct Seen {
    bound: HashMap<String, String>,
    violations: Vec<String>,
    events: u64,
}

fn observe(seen: &Mutex<Seen>, pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let mut s = seen.lock().unwrap();
    s.events += 1;
    match (s.bound.get(&name).cloned(), node) {
        (None, Some(n)) => {
            s.bound.insert(name, n);
        }
        (Some(first), Some(n)) if first != n => s
            .violations
            .push(format!("pod {name} moved from {first} to {n}")),
        (Some(first), None) => s
            .violations
            .push(format!("pod {name} lost its node {first}")),
        _ => {}
    }
}

/// Watch every pod from before the first is created (re-listing on 410,
/// as reflectors do: a re-list still shows a changed nodeName).
fn watch_pods(client: &Client, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    let api = Api::<Pod>::namespaced(client.clone(), "default");
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => observe(&seen, &p),
                Ok(watcher::Event::Delete(p)) => seen.lock().unwrap().violations.push(format!(
                    "pod {} deleted",
                    p.metadata.name.unwrap_or_default()
                )),
                Ok(_) => {}
                Err(e) => eprintln!("pod watch: {e} (retrying)"),
            }
        }
    })
}

async fn wait_bound(seen: &Mutex<Seen>, at_least: usize, within: Duration, what: &str) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = seen.lock().unwrap().bound.len();
        if n >= at_least {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} pods bound, waited for {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// POST a binding as `client`; the status code and the answer.
async fn post_binding(client: &Client, pod: &str, node: &str) -> (u16, Value) {
    let body = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod, "namespace": "default"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    let api = Api::<Pod>::namespaced(client.clone(), "default");
    match api
        .create_subresource::<_, Value>("binding", pod, &PostParams::default(), &body)
        .await
    {
        Ok(v) => (201, v),
        Err(kube::Error::Api(s)) => (
            s.code,
            json!({"message": s.message, "reason": s.reason, "code": s.code}),
        ),
        Err(e) => panic!("binding {pod}: {e}"),
    }
}

fn already_assigned(pod: &str, node: &str) -> String {
    format!(
        "Operation cannot be fulfilled on pods/binding \"{pod}\": pod {pod} is already assigned to node \"{node}\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_kill9_mid_scheduling_never_binds_a_pod_twice() {
    let test = "scheduler_kill9_mid_scheduling";
    let Some(bin) = apiserver(test) else { return };
    let mut rng = TestRng::for_test(test);
    let started = Instant::now();
    let dir = test_dir(test);
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (server, client) = Apiserver::start_in(&bin, tempfile::tempdir_in(dir.path()).unwrap())
        .await
        .unwrap();
    create_nodes(&client).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = watch_pods(&client, seen.clone());
    let total = if soak() { 340 } else { 300 };
    let names: Vec<String> = (0..total).map(|i| format!("pod-{i:03}")).collect();
    create_pods(&client, &names).await;
    let kubeconfig = server.user_kubeconfig("system:kube-scheduler").unwrap();

    // Kill points: one seeded bound-pod count in each of `kills` equal
    // stretches of the run (so every run binds some pods), each kill also a
    // few seeded milliseconds late so it lands among binds in flight.
    let kills = if soak() { 12 } else { 4 };
    let stretch = total / (kills + 1);
    let points: Vec<usize> = (0..kills)
        .map(|i| stretch * (i + 1) + rng.below(stretch as u64 / 2) as usize)
        .collect();
    let mut at_kill = Vec::new();
    for (i, point) in points.iter().enumerate() {
        let mut s = Scheduler::start(&kubeconfig, logs.join(format!("scheduler-{i}.log")));
        let what = format!("run {i} (kill at {point} bound)");
        wait_bound(&seen, *point, Duration::from_secs(60), &what).await;
        tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
        if let Some(status) = s.exited() {
            panic!(
                "berth-scheduler exited by itself ({status}):\n{}",
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
        }
        let pid = s.kill9();
        let bound = seen.lock().unwrap().bound.len();
        eprintln!("{test}: kill -9 of berth-scheduler pid {pid} at {bound}/{total} bound");
        at_kill.push(bound);
    }
    // The last run finishes the job.
    let last = Scheduler::start(&kubeconfig, logs.join("scheduler-last.log"));
    wait_bound(&seen, total, Duration::from_secs(60), "last run").await;
    // Bindings still in flight when the watch saw the last pod: settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(last);
    watch.abort();

    let (bound, violations, events) = {
        let s = seen.lock().unwrap();
        (s.bound.clone(), s.violations.clone(), s.events)
    };
    assert!(violations.is_empty(), "pods rebound: {:#?}", violations);
    // The store agrees with the watch, and no node is over its pod count.
    let listed = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), total);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &listed.items {
        let name = p.metadata.name.clone().unwrap();
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| panic!("pod {name} not bound"));
        assert_eq!(
            bound.get(&name),
            Some(&node),
            "pod {name}: the watch saw another node first"
        );
        *per_node.entry(node).or_default() += 1;
    }
    assert!(
        per_node.values().all(|n| *n <= PODS_PER_NODE),
        "a node holds more pods than it allows: {per_node:?}"
    );
    // A second binding, as the scheduler would send it: 409 as upstream.
    let sched = server.scheduler_client().await.unwrap();
    for name in names.iter().take(3) {
        let node = &bound[name];
        let other = if node == "node-0" { "node-1" } else { "node-0" };
        let (code, body) = post_binding(&sched, name, other).await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(body["reason"], "Conflict", "{body}");
        assert_eq!(body["message"], already_assigned(name, node), "{body}");
    }
    eprintln!(
        "{test}: {total} pods on {} nodes {per_node:?}; kills at {at_kill:?} bound; {} watch events; {:?}",
        NODES,
        events,
        started.elapsed()
    );
    drop(server);
}

/// Bindings racing for one pod: one wins, every other is told the pod is
/// already assigned (upstream's `assignPod` re-reads the pod after losing
/// the write), never merely "the object has been modified".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_bindings_of_one_pod_one_wins_the_rest_are_409_already_assigned() {
    let test = "racing_bindings_of_one_pod";
    let Some(bin) = apiserver(test) else { return };
    let dir = test_dir(test);
    let (server, client) = Apiserver::start_in(&bin, tempfile::tempdir_in(dir.path()).unwrap())
        .await
        .unwrap();
    create_nodes(&client).await;
    let names: Vec<String> = (0..20).map(|i| format!("race-{i:02}")).collect();
    create_pods(&client, &names).await;
    let sched = server.scheduler_client().await.unwrap();
    for name in &names {
        let attempts = futures::future::join_all((0..4).map(|n| {
            let sched = sched.clone();
            async move {
                let node = format!("node-{n}");
                (node.clone(), post_binding(&sched, name, &node).await)
            }
        }))
        .await;
        let winners: Vec<&String> = attempts
            .iter()
            .filter(|(_, (code, _))| *code == 201)
            .map(|(node, _)| node)
            .collect();
        assert_eq!(winners.len(), 1, "{name}: {attempts:?}");
        let winner = winners[0];
        for (_, (code, body)) in attempts.iter().filter(|(_, (c, _))| *c != 201) {
            assert_eq!(*code, 409, "{name}: {body}");
            assert_eq!(
                body["message"],
                already_assigned(name, winner),
                "{name}: {body}"
            );
        }
        let stored = Api::<Pod>::namespaced(client.clone(), "default")
            .get(name)
            .await
            .unwrap();
        assert_eq!(
            stored.spec.and_then(|s| s.node_name).as_deref(),
            Some(winner.as_str())
        );
    }
    drop(server);
}
