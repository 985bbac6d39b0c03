//! The agent against the real `berth-apiserver` binary (with a node
//! kubeconfig) and the in-process fake CRI runtime: node registration, lease,
//! pods bound to the node, their status, graceful deletion, and an API server
//! outage that must not touch running pods.
//!
//! Skipped with a printed reason when target/debug/berth-apiserver is missing
//! (integration/test.sh builds the workspace first), unless `CI=true` or
//! `BERTH_REQUIRE_RUNTIME=1`, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_agent::config::{Config, Flags};
use berth_cri::fake::FakeRuntime;
use berth_test_support::{free_port, required};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use tokio_util::sync::CancellationToken;

const NODE: &str = "node-a";
const IMAGE: &str = "localhost/berth/busybox:1.36";

fn apiserver_binary() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/berth-apiserver");
    if bin.is_file() {
        return Some(bin);
    }
    if required() {
        panic!(
            "{} is required (CI=true or BERTH_REQUIRE_RUNTIME=1): build the workspace first",
            bin.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found (run `cargo build -p berth-apiserver` first)",
        bin.display()
    );
    None
}

struct Apiserver {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Apiserver {
    fn start(bin: PathBuf, dir: &Path) -> Apiserver {
        let mut s = Apiserver {
            bin,
            dir: dir.to_path_buf(),
            port: free_port(),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            // Every request the agent makes, for counting its attempts.
            .arg("--audit-log-path")
            .arg(self.dir.join("audit.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("berth-apiserver starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.dir.join("admin.kubeconfig").exists()
            && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok())
        {
            assert!(Instant::now() < deadline, "berth-apiserver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A kubeconfig for the node (user `system:node:<node>`).
    fn node_kubeconfig(&self, node: &str) -> PathBuf {
        let out = Command::new(&self.bin)
            .args(["kubeconfig", "--data-dir"])
            .arg(&self.dir)
            .args(["--node", node, "--server"])
            .arg(format!("https://127.0.0.1:{}", self.port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir.join(format!("{node}.kubeconfig"));
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `f` until it yields `Some`, or panic with `what` after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Containers of the API pod (container `app`) running in the fake runtime.
/// Create pod `name` (from [`POD`]) and wait until its container runs; its UID.
async fn create_running(pods: &Api<Pod>, fake: &FakeRuntime, name: &str) -> String {
    let mut pod: Pod = serde_json::from_str(POD).unwrap();
    pod.metadata.name = Some(name.into());
    let uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    eventually(
        Duration::from_secs(30),
        &format!("{name} pod running"),
        || {
            let n = fake
                .containers()
                .iter()
                .filter(|c| c.labels.get("io.kubernetes.pod.uid") == Some(&uid))
                .count();
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    uid
}

fn running_containers(fake: &FakeRuntime) -> usize {
    fake.containers()
        .iter()
        .filter(|c| {
            c.metadata.name == "app" && c.state == berth_cri::api::ContainerState::ContainerRunning
        })
        .count()
}

const STATIC_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: static-web
  namespace: default
spec:
  containers:
  - name: s
    image: localhost/berth/busybox:1.36
";

/// A static pod NodeRestriction refuses to mirror (a node may not create
/// pods naming a service account): it runs, without a mirror pod.
const REFUSED_STATIC_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: static-sa
  namespace: default
spec:
  serviceAccountName: build-bot
  containers:
  - name: s
    image: localhost/berth/busybox:1.36
";

const POD: &str = r#"{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {"name": "web", "namespace": "default"},
  "spec": {
    "nodeName": "node-a",
    "terminationGracePeriodSeconds": 25,
    "containers": [{"name": "app", "image": "localhost/berth/busybox:1.36",
                    "command": ["sleep", "3600"]}]
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_lease_pods_status_deletion_and_outage() {
    let Some(bin) = apiserver_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = Apiserver::start(bin, &dir.path().join("apiserver"));
    let node_kubeconfig = server.node_kubeconfig(NODE);
    let (admin, _) = berth_agent::cluster::client_from_kubeconfig(
        &dir.path().join("apiserver/admin.kubeconfig"),
    )
    .await
    .unwrap();

    let fake = FakeRuntime::start().await;
    fake.add_image(IMAGE);
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(agent_dir.join("manifests")).unwrap();
    std::fs::write(agent_dir.join("manifests/static-web.yaml"), STATIC_POD).unwrap();
    std::fs::write(
        agent_dir.join("manifests/static-sa.yaml"),
        REFUSED_STATIC_POD,
    )
    .unwrap();
    let status_port = free_port();
    // The authenticated server runs (the kubeconfig has a CA): its port is the
    // Node's kubelet port.
    let kubelet_port = free_port();
    let config = Config::load(Flags {
        container_runtime_endpoint: Some(fake.endpoint()),
        pod_manifest_path: Some(agent_dir.join("manifests")),
        root_dir: Some(agent_dir.join("root")),
        pod_logs_dir: Some(agent_dir.join("logs")),
        node_name: Some(NODE.into()),
        node_ip: Some("10.0.0.7".into()),
        status_address: Some(format!("127.0.0.1:{status_port}").parse().unwrap()),
        kubeconfig: Some(node_kubeconfig),
        port: Some(kubelet_port),
        address: Some([127, 0, 0, 1].into()),
        // Memory only: how full this host's disk is must not put the node
        // under DiskPressure (which refuses pods and reclaims images).
        eviction_hard: Some("memory.available<100Mi".into()),
        ..Default::default()
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let agent = tokio::spawn(berth_agent::agent::run(config, cancel.clone()));

    // 1. The Node: Ready, capacity, nodeInfo, addresses, kubelet port.
    let nodes: Api<Node> = Api::all(admin.clone());
    let node = eventually(Duration::from_secs(30), "node Ready", || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get_opt(NODE).await.ok().flatten()?;
            let ready = n
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(n)
        }
    })
    .await;
    let status = node.status.unwrap();
    let capacity = status.capacity.unwrap();
    for r in ["cpu", "memory", "pods", "ephemeral-storage"] {
        assert!(capacity.contains_key(r), "capacity lacks {r}: {capacity:?}");
    }
    assert_eq!(capacity["pods"].0, "110");
    let info = status.node_info.unwrap();
    assert_eq!(info.kubelet_version, "v1.33.0-berth");
    assert!(info.container_runtime_version.contains("://"), "{info:?}");
    assert_eq!(info.operating_system, "linux");
    assert!(!info.kernel_version.is_empty());
    let addresses = status.addresses.unwrap();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "10.0.0.7")
    );
    assert_eq!(
        status
            .daemon_endpoints
            .unwrap()
            .kubelet_endpoint
            .unwrap()
            .port,
        i32::from(kubelet_port)
    );
    let conds = status.conditions.unwrap();
    for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(conds.iter().any(|c| c.type_ == t && c.status == "False"));
    }

    // 1b. A host fault (the runtime's network not ready) makes the node
    // NotReady with upstream's message and a NodeNotReady event on the Node;
    // fixed, Ready again with NodeReady.
    fake.set_network_ready(false);
    let ready_condition = |want: &'static str, part: &'static str| {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get_opt(NODE).await.ok().flatten()?;
            n.status?.conditions?.into_iter().find(|c| {
                c.type_ == "Ready"
                    && c.status == want
                    && c.message.as_deref().is_some_and(|m| m.contains(part))
            })
        }
    };
    let not_ready = eventually(Duration::from_secs(45), "node NotReady (network)", || {
        ready_condition(
            "False",
            "container runtime network not ready: NetworkReady=false reason:FakeNotReady",
        )
    })
    .await;
    assert_eq!(not_ready.reason.as_deref(), Some("KubeletNotReady"));
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    let node_event = |reason: &'static str| {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.involved_object.kind.as_deref() == Some("Node")
                    && e.involved_object.name.as_deref() == Some(NODE)
                    && e.message.as_deref() == Some(&format!("Node {NODE} status is now: {reason}"))
            })
        }
    };
    eventually(Duration::from_secs(30), "a NodeNotReady event", || {
        node_event("NodeNotReady")
    })
    .await;
    fake.set_network_ready(true);
    eventually(Duration::from_secs(45), "node Ready again", || {
        ready_condition("True", "kubelet is posting ready status")
    })
    .await;
    eventually(Duration::from_secs(30), "a NodeReady event", || {
        node_event("NodeReady")
    })
    .await;

    // 6. The static pod's mirror pod: annotated with its config hash, Running.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    eventually(Duration::from_secs(30), "mirror pod Running", || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt("static-web-node-a").await.ok().flatten()?;
            let hash = p
                .metadata
                .annotations
                .as_ref()?
                .get("kubernetes.io/config.mirror")?;
            let running = p.status?.phase.as_deref() == Some("Running");
            (!hash.is_empty() && running).then_some(())
        }
    })
    .await;
    // Owned by our Node (this incarnation), as NodeRestriction demands of a
    // node's mirror pods: the agent's node credential could not create it otherwise.
    let mirror = pods.get("static-web-node-a").await.unwrap();
    let node_uid = nodes.get(NODE).await.unwrap().metadata.uid;
    let owners = mirror.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (
            owners[0].api_version.as_str(),
            owners[0].kind.as_str(),
            owners[0].name.as_str()
        ),
        ("v1", "Node", NODE)
    );
    assert_eq!(Some(owners[0].uid.clone()), node_uid);
    assert_eq!(owners[0].controller, Some(true));

    // The refused static pod: no mirror, and the agent does not hammer the
    // API server with the same refused create every second (one attempt per
    // MIRROR_REFUSED_RETRY, counted in the audit log).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(pods.get_opt("static-sa-node-a").await.unwrap().is_none());
    let audit = std::fs::read_to_string(dir.path().join("apiserver/audit.log")).unwrap();
    let attempts: Vec<&str> = audit
        .lines()
        .filter(|l| {
            l.contains("\"stage\":\"ResponseComplete\"")
                && l.contains("\"verb\":\"create\"")
                && l.contains("\"name\":\"static-sa-node-a\"")
        })
        .collect();
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert!(attempts[0].contains("\"code\":403"), "{}", attempts[0]);

    // 2. The Lease: held by the node, renewed.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    let first = eventually(Duration::from_secs(20), "lease", || {
        let leases = leases.clone();
        async move { leases.get_opt(NODE).await.ok().flatten()?.spec }
    })
    .await;
    assert_eq!(first.holder_identity.as_deref(), Some(NODE));
    assert_eq!(first.lease_duration_seconds, Some(40));
    let first_renew = first.renew_time.clone().unwrap();
    eventually(Duration::from_secs(25), "lease renewal", || {
        let leases = leases.clone();
        let first_renew = first_renew.clone();
        async move {
            let spec = leases.get_opt(NODE).await.ok().flatten()?.spec?;
            (spec.renew_time? != first_renew).then_some(())
        }
    })
    .await;

    // 3 + 4. A pod bound to the node runs, and its status reaches Running via the API.
    let pod: Pod = serde_json::from_str(POD).unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    eventually(Duration::from_secs(30), "pod Running via the API", || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt("web").await.ok().flatten()?;
            let st = p.status?;
            let ready = st.container_statuses.as_ref()?.iter().any(|c| c.ready);
            (st.phase.as_deref() == Some("Running") && ready).then_some(())
        }
    })
    .await;
    assert_eq!(running_containers(&fake), 1);
    kubectl_sees_running(&dir.path().join("apiserver/admin.kubeconfig"), dir.path());
    let p = pods.get("web").await.unwrap();
    let st = p.status.unwrap();
    assert_eq!(st.host_ip.as_deref(), Some("10.0.0.7"));
    assert!(
        st.conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // The API server goes away for a while: the pod keeps running, /healthz stays ok.
    server.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(running_containers(&fake), 1, "pod kept running");
    let health = reqwest_get(status_port, "/healthz").await;
    assert_eq!(health.as_deref(), Some("ok"));
    // A container exit while the API server is away is acted on locally…
    assert_eq!(fake.exit_containers_named("app", 1), 1);
    server.spawn();
    // …and reported once it is back.
    eventually(
        Duration::from_secs(40),
        "status resumed after the outage",
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get_opt("web").await.ok().flatten()?;
                let st = p.status?;
                let cs = st.container_statuses?;
                (cs.iter().any(|c| c.restart_count >= 1 && c.ready)
                    && st.phase.as_deref() == Some("Running"))
                .then_some(())
            }
        },
    )
    .await;
    assert_eq!(running_containers(&fake), 1);

    // 5. Graceful deletion: containers stopped, then the object deleted by the agent
    // (well before the 25 s grace period would let the server drop it).
    let started = Instant::now();
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(20), "pod object deleted", || {
        let pods = pods.clone();
        let uid = uid.clone();
        async move {
            match pods.get_opt("web").await {
                Ok(None) => Some(()),
                Ok(Some(p)) if p.metadata.uid.as_deref() != Some(uid.as_str()) => Some(()),
                _ => None,
            }
        }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(running_containers(&fake), 0);
    let left: Vec<_> = fake
        .sandboxes()
        .into_iter()
        .filter(|sb| sb.metadata.uid == uid)
        .collect();
    assert!(left.is_empty(), "sandbox of the deleted pod left: {left:?}");

    // A deletion asking for less than terminationGracePeriodSeconds gets it.
    let quick_uid = create_running(&pods, &fake, "quick").await;
    let of_quick = |c: &berth_cri::fake::FakeContainer| {
        c.labels.get("io.kubernetes.pod.uid") == Some(&quick_uid)
    };
    // Slow stops and removals, so both stop calls are seen.
    fake.delay("StopContainer", Duration::from_secs(2));
    fake.delay("RemoveContainer", Duration::from_secs(6));
    pods.delete(
        "quick",
        &DeleteParams {
            grace_period_seconds: Some(5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(15),
        "stop with the deletion's grace",
        || {
            let seen = fake
                .containers()
                .iter()
                .any(|c| of_quick(c) && c.stop_timeouts.contains(&5));
            async move { seen.then_some(()) }
        },
    )
    .await;
    // One actor per pod: the worker stopped it once, with the deletion's grace
    // (no stop with the spec's 25 s from the worker and a second one beside it).
    eventually(Duration::from_secs(15), "quick pod stopped", || {
        let stops: Vec<Vec<i64>> = fake
            .containers()
            .iter()
            .filter(|c| of_quick(c))
            .map(|c| c.stop_timeouts.clone())
            .collect();
        async move { (stops.iter().all(|s| !s.is_empty())).then_some(stops) }
    })
    .await
    .iter()
    .for_each(|s| assert_eq!(s, &vec![5], "stop calls of the quick pod"));
    fake.clear_delays();

    // A deletion shortened while its stop is under way (kubectl delete, then
    // delete --grace-period=1): the worker abandons the slow stop and stops again
    // with the shorter grace, long before the first one would have returned.
    let slow_uid = create_running(&pods, &fake, "slow").await;
    let of_slow = |c: &berth_cri::fake::FakeContainer| {
        c.labels.get("io.kubernetes.pod.uid") == Some(&slow_uid)
    };
    fake.delay("StopContainer", Duration::from_secs(20));
    let stops_before = fake
        .calls()
        .iter()
        .filter(|c| c.contains("StopContainer"))
        .count();
    pods.delete("slow", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(10), "first stop under way", || {
        let n = fake
            .calls()
            .iter()
            .filter(|c| c.contains("StopContainer"))
            .count();
        async move { (n > stops_before).then_some(()) }
    })
    .await;
    fake.delay("StopContainer", Duration::from_millis(100));
    // Removal held back, so the stopped container can still be inspected.
    fake.delay("RemoveContainer", Duration::from_secs(5));
    let shortened = Instant::now();
    pods.delete(
        "slow",
        &DeleteParams {
            grace_period_seconds: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let stops = eventually(
        Duration::from_secs(10),
        "stop with the shorter grace",
        || {
            let stops: Vec<i64> = fake
                .containers()
                .iter()
                .filter(|c| of_slow(c))
                .flat_map(|c| c.stop_timeouts.clone())
                .collect();
            async move { stops.contains(&1).then_some(stops) }
        },
    )
    .await;
    assert!(shortened.elapsed() < Duration::from_secs(10));
    assert_eq!(stops, vec![1], "the 25 s stop was abandoned, not completed");
    eventually(Duration::from_secs(20), "slow pod object deleted", || {
        let pods = pods.clone();
        async move { pods.get_opt("slow").await.ok()?.is_none().then_some(()) }
    })
    .await;
    fake.clear_delays();

    // The static pod's manifest goes away: so does its mirror pod.
    std::fs::remove_file(agent_dir.join("manifests/static-web.yaml")).unwrap();
    eventually(Duration::from_secs(30), "mirror pod deleted", || {
        let pods = pods.clone();
        async move {
            pods.get_opt("static-web-node-a")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;

    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
}

/// GET a path of the agent's status server; the body when 200.
async fn reqwest_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.trim().to_string())
}

/// `kubectl get pod web` shows it Running (skipped when kubectl is not installed).
fn kubectl_sees_running(kubeconfig: &Path, home: &Path) {
    let Some(kubectl) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    }) else {
        if required() {
            panic!("kubectl is required (CI=true or BERTH_REQUIRE_RUNTIME=1) but not on PATH");
        }
        eprintln!("SKIPPED: kubectl not on PATH: skipping the kubectl check");
        return;
    };
    let out = Command::new(kubectl)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .args(["get", "pod", "web", "--no-headers"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Running") && text.contains("1/1"),
        "kubectl get pod web: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agent (fake CRI, node kubeconfig) against a fresh `berth-apiserver`;
/// returns the admin client and what keeps them running.
struct Cluster {
    admin: kube::Client,
    fake: FakeRuntime,
    cancel: CancellationToken,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
    _server: Apiserver,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(bin: PathBuf) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let server = Apiserver::start(bin, &dir.path().join("apiserver"));
        let node_kubeconfig = server.node_kubeconfig(NODE);
        let (admin, _) = berth_agent::cluster::client_from_kubeconfig(
            &dir.path().join("apiserver/admin.kubeconfig"),
        )
        .await
        .unwrap();
        let fake = FakeRuntime::start().await;
        fake.add_image(IMAGE);
        let agent_dir = dir.path().join("agent");
        std::fs::create_dir_all(agent_dir.join("manifests")).unwrap();
        let config = Config::load(Flags {
            container_runtime_endpoint: Some(fake.endpoint()),
            pod_manifest_path: Some(agent_dir.join("manifests")),
            root_dir: Some(agent_dir.join("root")),
            pod_logs_dir: Some(agent_dir.join("logs")),
            node_name: Some(NODE.into()),
            node_ip: Some("10.0.0.7".into()),
            status_address: Some(format!("127.0.0.1:{}", free_port()).parse().unwrap()),
            // Not 10250 on every interface: tests run in parallel.
            port: Some(free_port()),
            address: Some([127, 0, 0, 1].into()),
            kubeconfig: Some(node_kubeconfig),
            // Memory only: how full this host's disk is must not put the node
            // under DiskPressure (which refuses pods and reclaims images).
            eviction_hard: Some("memory.available<100Mi".into()),
            ..Default::default()
        })
        .unwrap();
        let cancel = CancellationToken::new();
        let agent = tokio::spawn(berth_agent::agent::run(config, cancel.clone()));
        Cluster {
            admin,
            fake,
            cancel,
            agent,
            _server: server,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.agent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_reach_the_api_server_and_are_aggregated() {
    let Some(bin) = apiserver_binary() else {
        return;
    };
    let cluster = Cluster::start(bin).await;
    cluster.fake.on_start_exit("crash", 1);
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crashy", "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "crash", "image": IMAGE}]}
    }))
    .unwrap();
    let uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(cluster.admin.clone(), "default");
    let list = eventually(
        Duration::from_secs(60),
        "a BackOff event with count > 1",
        || {
            let events = events.clone();
            async move {
                let list = events.list(&Default::default()).await.ok()?;
                list.items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("BackOff") && e.count.unwrap_or(0) > 1)
                    .then_some(list.items)
            }
        },
    )
    .await;
    let of_pod: Vec<_> = list
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("crashy"))
        .collect();
    for reason in ["Pulled", "Created", "Started", "BackOff"] {
        assert!(
            of_pod.iter().any(|e| e.reason.as_deref() == Some(reason)),
            "no {reason} event in {of_pod:#?}"
        );
    }
    // The same event is aggregated, not repeated.
    let back_offs: Vec<_> = of_pod
        .iter()
        .filter(|e| e.reason.as_deref() == Some("BackOff"))
        .collect();
    assert_eq!(back_offs.len(), 1, "{back_offs:#?}");
    let b = back_offs[0];
    assert_eq!(b.type_.as_deref(), Some("Warning"));
    assert_eq!(
        b.message.as_deref(),
        Some(
            format!("Back-off restarting failed container crash in pod crashy_default({uid})")
                .as_str()
        )
    );
    assert!(b.last_timestamp.as_ref().unwrap().0 >= b.first_timestamp.as_ref().unwrap().0);
    let o = &b.involved_object;
    assert_eq!(o.kind.as_deref(), Some("Pod"));
    assert_eq!(o.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(o.field_path.as_deref(), Some("spec.containers{crash}"));
    let source = b.source.as_ref().unwrap();
    assert_eq!(source.component.as_deref(), Some("kubelet"));
    assert_eq!(source.host.as_deref(), Some(NODE));
    assert_eq!(b.reporting_instance.as_deref(), Some(NODE));
    assert!(b.metadata.name.as_deref().unwrap().starts_with("crashy."));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_maps_and_secrets_in_env_and_volumes() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let Some(bin) = apiserver_binary() else {
        return;
    };
    let cluster = Cluster::start(bin).await;
    let admin = cluster.admin.clone();
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cfg"},
            "data": {"MODE": "fast", "LEVEL": "3", "1bad": "x"}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "creds"},
                "data": {"token": "aHVudGVyMg=="}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "configured", "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "containers": [{
                "name": "app", "image": IMAGE,
                "envFrom": [{"configMapRef": {"name": "cfg"}},
                            {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                            {"secretRef": {"name": "absent", "optional": true}}],
                "env": [
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
                    {"name": "LATE", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "k"}}},
                    {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}}
                ],
                "volumeMounts": [{"name": "conf", "mountPath": "/etc/conf"}]
            }],
            "volumes": [{"name": "conf", "configMap": {"name": "cfg", "items": [{"key": "MODE", "path": "mode.txt"}]}}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    // A missing ConfigMap: CreateContainerConfigError with upstream's message.
    eventually(
        Duration::from_secs(30),
        "CreateContainerConfigError for the missing configmap",
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get_opt("configured").await.ok().flatten()?;
                let w = p
                    .status?
                    .container_statuses?
                    .first()?
                    .state
                    .clone()?
                    .waiting?;
                (w.reason.as_deref() == Some("CreateContainerConfigError")
                    && w.message.as_deref() == Some("configmap \"late\" not found"))
                .then_some(())
            }
        },
    )
    .await;
    assert_eq!(running_containers(&cluster.fake), 1 - 1);

    // Created: the pod recovers at its next retry.
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            serde_json::json!({"metadata": {"name": "late"}, "data": {"k": "v"}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(40),
        "pod Running after the configmap appears",
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get_opt("configured").await.ok().flatten()?;
                (p.status?.phase.as_deref() == Some("Running")).then_some(())
            }
        },
    )
    .await;
    let c = cluster
        .fake
        .containers()
        .into_iter()
        .find(|c| c.metadata.name == "app")
        .unwrap();
    let env: std::collections::HashMap<_, _> = c
        .config
        .envs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    assert_eq!(env.get("CFG_MODE"), Some(&"fast"));
    assert_eq!(env.get("CFG_LEVEL"), Some(&"3"));
    assert_eq!(env.get("LEVEL"), Some(&"3"));
    assert_eq!(env.get("1bad"), None, "invalid names skipped");
    assert_eq!(env.get("CFG_1bad"), Some(&"x"), "valid with the prefix");
    assert_eq!(env.get("TOKEN"), Some(&"hunter2"));
    assert_eq!(env.get("MODE"), Some(&"fast"));
    assert_eq!(env.get("LATE"), Some(&"v"));
    assert!(!env.contains_key("MAYBE"), "optional missing key left out");
    // The configMap volume: the item's file, behind the ..data symlink.
    let mount = c
        .config
        .mounts
        .iter()
        .find(|m| m.container_path == "/etc/conf")
        .expect("the configMap volume is mounted");
    let host = Path::new(&mount.host_path);
    assert_eq!(
        std::fs::read_to_string(host.join("mode.txt")).unwrap(),
        "fast"
    );
    assert!(host.join("..data").is_symlink());
    // Updated when the object changes (at the next sync: a container exit triggers one).
    let mut cfg = cms.get("cfg").await.unwrap();
    cfg.data
        .as_mut()
        .unwrap()
        .insert("MODE".into(), "slow".into());
    cfg.metadata.managed_fields = None;
    cms.replace("cfg", &PostParams::default(), &cfg)
        .await
        .unwrap();
    cluster.fake.exit_containers_named("app", 1);
    let host = host.to_path_buf();
    eventually(Duration::from_secs(30), "volume file updated", || {
        let text = std::fs::read_to_string(host.join("mode.txt")).unwrap_or_default();
        async move { (text == "slow").then_some(()) }
    })
    .await;
    // The invalid key is reported as upstream does.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), "default");
    eventually(Duration::from_secs(20), "InvalidEnvironmentVariableNames event", || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("InvalidEnvironmentVariableNames")
                        && e.message.as_deref()
                            == Some("Keys [1bad] from the EnvFrom configMap default/cfg were skipped since they are considered invalid environment variable names.")
                })
                .then_some(())
        }
    })
    .await;

    // A missing configMap volume: ContainerCreating and FailedMount.
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "novol", "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "c", "image": IMAGE}],
            "volumes": [{"name": "v", "configMap": {"name": "ghost"}}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually(Duration::from_secs(30), "FailedMount event", || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("FailedMount")
                        && e.involved_object.name.as_deref() == Some("novol")
                        && e.message.as_deref()
                            == Some("MountVolume.SetUp failed for volume \"v\" : configmap \"ghost\" not found")
                })
                .then_some(())
        }
    })
    .await;
    eventually(Duration::from_secs(20), "novol ContainerCreating", || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt("novol").await.ok().flatten()?;
            let w = p
                .status?
                .container_statuses?
                .first()?
                .state
                .clone()?
                .waiting?;
            (w.reason.as_deref() == Some("ContainerCreating")).then_some(())
        }
    })
    .await;
    assert!(
        !cluster
            .fake
            .sandboxes()
            .iter()
            .any(|s| s.metadata.name == "novol"),
        "no sandbox before the volumes are there"
    );
    cluster.stop().await;
}

/// Regression (issue 7): the agent validates what the API server hands it.
/// A pod an older (or foreign) API server stored without upstream's validation
/// is written straight into the storage; the agent must not run it, and must
/// say why: phase Failed, reason InvalidPod, every bad field named. A valid pod
/// beside it keeps running, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_pod_from_the_api_is_refused_not_run() {
    use berth_apiserver::storage::{Storage, object_key, sqlite::SqliteStorage};

    let Some(bin) = apiserver_binary() else {
        return;
    };
    let mut cluster = Cluster::start(bin).await;
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), "default");
    let good: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "good", "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": IMAGE}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &good).await.unwrap();
    let running = |fake: &FakeRuntime| -> Vec<String> {
        fake.containers()
            .into_iter()
            .filter(|c| c.state == berth_cri::api::ContainerState::ContainerRunning)
            .map(|c| c.id)
            .collect()
    };
    let before = eventually(Duration::from_secs(30), "good pod running", || {
        let ids = running(&cluster.fake);
        async move { (ids.len() == 1).then_some(ids) }
    })
    .await;

    // Written while the API server is down, as an older one would have stored it.
    cluster._server.stop();
    let bad = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "default",
                     "uid": "7d1f6a52-0000-4000-8000-00000000bad1",
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     "labels": {"app": "a b;c"}},
        "spec": {"nodeName": NODE, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                 "containers": [{"name": "c", "image": IMAGE,
                                 "ports": [{"containerPort": 70000}]}]},
        "status": {"phase": "Pending"}
    });
    {
        let storage =
            SqliteStorage::open(&cluster._dir.path().join("apiserver"), Default::default())
                .unwrap();
        let key = object_key("pods", Some("default"), "bad").unwrap();
        storage
            .create(&key, serde_json::to_vec(&bad).unwrap())
            .await
            .unwrap();
    }
    cluster._server.spawn();

    let status = eventually(Duration::from_secs(60), "bad pod reported Failed", || {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt("bad").await.ok()??;
            let s = p.status?;
            (s.phase.as_deref() == Some("Failed")).then_some(s)
        }
    })
    .await;
    assert_eq!(status.reason.as_deref(), Some("InvalidPod"));
    let message = status.message.unwrap_or_default();
    for field in [
        "metadata.labels: Invalid value: \"a b;c\"",
        "spec.containers[0].ports[0].containerPort: Invalid value: 70000",
    ] {
        assert!(message.contains(field), "{field} in {message}");
    }
    // Never run; the good pod's container is the same one, still running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cluster
            .fake
            .sandboxes()
            .iter()
            .all(|sb| sb.metadata.name != "bad"),
        "a sandbox was created for the refused pod"
    );
    assert_eq!(running(&cluster.fake), before);
    cluster.stop().await;
}
