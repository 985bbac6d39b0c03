//! Runtime faults (issue 11), the whole agent against the fake CRI: a hung
//! `StopContainer`, a runtime that fails its lists, `NotFound` between a list
//! and a status, a `DeadlineExceeded` create. The agent neither crashes nor
//! duplicates nor loses pods, one hung pod never stalls the others or the
//! relist, `/healthz` tells the truth, and it recovers without help.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_agent::config::{Config, Flags};
use berth_cri::fake::FakeRuntime;
use berth_test_support::free_port;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "busybox:1.36";

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n"
    )
}

struct Agent {
    dir: tempfile::TempDir,
    port: u16,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    cgroup_root: String,
}

impl Agent {
    fn start(fake: &FakeRuntime, name: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        let port = free_port();
        // A cgroup root of its own: tests run side by side, and each agent's
        // orphan sweep owns everything under its root.
        let cgroup_root = format!("/berth-faults-{}-{name}", std::process::id());
        let config = Config::load(Flags {
            container_runtime_endpoint: Some(fake.endpoint()),
            pod_manifest_path: Some(dir.path().join("manifests")),
            root_dir: Some(dir.path().join("root")),
            pod_logs_dir: Some(dir.path().join("logs")),
            node_name: Some("node-a".into()),
            node_ip: Some("10.0.0.7".into()),
            status_address: Some(format!("127.0.0.1:{port}").parse().unwrap()),
            cgroup_root: Some(cgroup_root.clone()),
            eviction_hard: Some("memory.available<100Mi".into()),
            ..Default::default()
        })
        .unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(berth_agent::agent::run(config, cancel.clone()));
        Agent {
            dir,
            port,
            cancel,
            task,
            cgroup_root,
        }
    }

    fn write(&self, name: &str) {
        let path = self
            .dir
            .path()
            .join("manifests")
            .join(format!("{name}.yaml"));
        std::fs::write(path, manifest(name)).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(
            self.dir
                .path()
                .join("manifests")
                .join(format!("{name}.yaml")),
        )
        .unwrap();
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
            .await
            .ok()?
            .ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// name → the running container's ID, for every Running pod on `/pods`.
    async fn running(&self) -> BTreeMap<String, String> {
        let Some((200, body)) = self.get("/pods").await else {
            return BTreeMap::new();
        };
        let list: Value = serde_json::from_str(&body).unwrap_or_default();
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["status"]["phase"] == "Running"
                    && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
            })
            .map(|p| {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                let name = name.strip_suffix("-node-a").unwrap_or(name).to_string();
                let id = p["status"]["containerStatuses"][0]["containerID"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (name, id)
            })
            .collect()
    }

    async fn healthz(&self) -> (u16, String) {
        self.get("/healthz").await.unwrap_or((0, String::new()))
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        remove_cgroup_tree(&self.cgroup_root);
    }
}

/// The test's cgroup root in every hierarchy (empty directories only).
fn remove_cgroup_tree(root: &str) {
    fn remove(dir: &std::path::Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        remove(&h.path().join(root.trim_start_matches('/')));
    }
    remove(&std::path::Path::new("/sys/fs/cgroup").join(root.trim_start_matches('/')));
}

async fn eventually<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn all_running(agent: &Agent, names: &[&str]) -> BTreeMap<String, String> {
    eventually(20, &format!("{names:?} running"), async || {
        let now = agent.running().await;
        names.iter().all(|n| now.contains_key(*n)).then_some(now)
    })
    .await
}

/// One ready sandbox per pod name in the fake.
fn one_sandbox_each(fake: &FakeRuntime) {
    let mut per_uid: BTreeMap<String, usize> = BTreeMap::new();
    for sb in fake.sandboxes() {
        if sb.state == berth_cri::api::PodSandboxState::SandboxReady {
            *per_uid.entry(sb.metadata.uid.clone()).or_default() += 1;
        }
    }
    assert!(
        per_uid.values().all(|n| *n == 1),
        "duplicate sandboxes: {per_uid:?}"
    );
}

/// A `StopContainer` that hangs holds up only its own pod's removal: another
/// pod starts meanwhile, a third keeps running untouched, the relist goes on
/// and `/healthz` stays ok; once the runtime answers, the pod goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_stop_stalls_only_its_own_pod() {
    let fake = FakeRuntime::start().await;
    fake.add_image(IMAGE);
    let agent = Agent::start(&fake, "hung");
    agent.write("a");
    agent.write("b");
    let before = all_running(&agent, &["a", "b"]).await;

    fake.delay("StopContainer", Duration::from_secs(6));
    agent.remove("a");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lists = fake.call_count("ListContainers");
    agent.write("c");
    all_running(&agent, &["b", "c"]).await;
    assert!(
        fake.containers().iter().any(|c| c.metadata.name == "main"
            && c.labels.get("io.kubernetes.pod.name").map(String::as_str) == Some("a-node-a")),
        "a is still being stopped (the hung call)"
    );
    assert_eq!(
        agent.healthz().await.0,
        200,
        "a hung stop is not an unhealthy node"
    );
    assert!(
        fake.call_count("ListContainers") > lists,
        "the relist went on while a StopContainer hung"
    );
    assert_eq!(
        agent.running().await.get("b"),
        before.get("b"),
        "b was touched"
    );

    eventually(30, "a removed once the runtime answers", async || {
        let gone = !agent.running().await.contains_key("a")
            && !fake
                .sandboxes()
                .iter()
                .any(|s| s.metadata.name == "a-node-a");
        gone.then_some(())
    })
    .await;
    fake.clear_delays();
    one_sandbox_each(&fake);
    agent.stop().await;
}

/// A runtime that fails every list: `/healthz` says so (503, naming the
/// runtime), the pods keep their last known status; when it answers again,
/// `/healthz` is ok and nothing was restarted or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_lists_are_reported_and_recovered_without_restarts() {
    let fake = FakeRuntime::start().await;
    fake.add_image(IMAGE);
    let agent = Agent::start(&fake, "lists");
    agent.write("a");
    agent.write("b");
    let before = all_running(&agent, &["a", "b"]).await;

    fake.fail_always(
        "ListContainers",
        tonic::Code::Unavailable,
        "runtime is restarting",
    );
    let (_, reason) = eventually(20, "/healthz to report the failing runtime", async || {
        let (code, body) = agent.healthz().await;
        (code == 503).then_some((code, body))
    })
    .await;
    assert!(
        reason.contains("container runtime is unreachable"),
        "{reason}"
    );
    assert_eq!(agent.running().await, before, "the last known status stays");

    fake.clear_faults();
    eventually(20, "/healthz ok again", async || {
        (agent.healthz().await.0 == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agent.running().await, before, "nothing restarted");
    one_sandbox_each(&fake);
    assert_eq!(fake.containers().len(), 2, "no duplicate container");
    agent.stop().await;
}

/// `NotFound` for a container the list just gave (it went between the two
/// calls), and a `DeadlineExceeded` create: no crash, no duplicate, and the
/// pods converge once the runtime behaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_found_races_and_deadlines_converge() {
    let fake = FakeRuntime::start().await;
    fake.add_image(IMAGE);
    let agent = Agent::start(&fake, "races");
    agent.write("a");
    let before = all_running(&agent, &["a"]).await;

    // The container exits; every status call for it says NotFound for a while.
    fake.fail_always(
        "ContainerStatus",
        tonic::Code::NotFound,
        "container not found",
    );
    let id = before["a"].trim_start_matches("containerd://").to_string();
    let id = id.split("://").last().unwrap_or(&id).to_string();
    assert!(fake.exit_container(&id, 1), "the fake knows the container");
    fake.fail_next(
        "CreateContainer",
        tonic::Code::DeadlineExceeded,
        "context deadline exceeded",
    );
    agent.write("b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!agent.task.is_finished(), "the agent is running");
    fake.clear_faults();

    let after = all_running(&agent, &["a", "b"]).await;
    assert_ne!(after["a"], before["a"], "a's exited container was replaced");
    eventually(20, "/healthz ok", async || {
        (agent.healthz().await.0 == 200).then_some(())
    })
    .await;
    one_sandbox_each(&fake);
    let running = fake
        .containers()
        .iter()
        .filter(|c| c.state == berth_cri::api::ContainerState::ContainerRunning)
        .count();
    assert_eq!(running, 2, "one running container per pod");
    agent.stop().await;
}
