//! The runtime manager and pod workers against the in-process fake CRI server:
//! level-triggered syncs, adoption after a restart, restart policy and
//! back-off, image policy, spec changes, removal, and fault handling.

use std::sync::Arc;
use std::time::Duration;

use berth_agent::metrics::Metrics;
use berth_agent::observed::keys;
use berth_agent::runtime::sync::SyncOutcome;
use berth_agent::runtime::{RuntimeManager, Settings};
use berth_agent::source::{PodConfig, Snapshot, SourcedPod, manifest::parse_manifest};
use berth_agent::status::{Transient, compute_pod_status};
use berth_cri::api;
use berth_cri::fake::FakeRuntime;

const IMAGE: &str = "localhost/berth/busybox:1.36";

struct Env {
    fake: FakeRuntime,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Self {
        let fake = FakeRuntime::start().await;
        fake.add_image(IMAGE);
        Self {
            fake,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh manager, as a newly started agent would have.
    async fn manager(&self) -> RuntimeManager {
        self.manager_with(self.fake.client().await)
    }

    fn manager_with(&self, client: berth_cri::RuntimeClient) -> RuntimeManager {
        RuntimeManager::new(
            client,
            Settings {
                node_name: "node-a".into(),
                node_ip: "192.0.2.10".into(),
                root_dir: self.dir.path().join("root"),
                pod_logs_dir: self.dir.path().join("logs"),
                cgroup_root: "/berth-test-kubepods".into(),
            },
            Arc::new(Metrics::new()),
        )
        // Pod cgroups in memory: these tests run the agent's logic, not the host's cgroups.
        .with_cgroups(
            berth_agent::cgroups::PodCgroups::new(
                std::sync::Arc::new(berth_agent::cgroups::RecordingManager::default()),
                "/berth-test-kubepods",
            )
            .expect("a valid cgroup root"),
        )
    }

    fn pod(&self, file: &str, yaml: &str) -> SourcedPod {
        let path = self.dir.path().join(file);
        parse_manifest(&path, yaml.as_bytes(), "node-a").expect("test manifest parses")
    }
}

fn uid(p: &SourcedPod) -> String {
    p.pod.metadata.uid.clone().unwrap()
}

fn web(args: &str, policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 7\n  containers:\n  - name: web\n    image: {IMAGE}\n    args: [{args}]\n"
    )
}

async fn sync(m: &RuntimeManager, p: &SourcedPod, t: &mut Transient) -> SyncOutcome {
    m.sync_pod(&uid(p), Some(p), t)
        .await
        .expect("sync succeeds")
}

#[tokio::test]
async fn first_sync_creates_sandbox_and_container_with_kubelet_labels() {
    let env = Env::new().await;
    let m = env.manager().await;
    let p = env.pod("web.yaml", &web("serve", "Always"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;

    let sandboxes = env.fake.sandboxes();
    assert_eq!(sandboxes.len(), 1);
    let sb = &sandboxes[0];
    assert_eq!(sb.labels[keys::POD_NAME], "web-node-a");
    assert_eq!(sb.labels[keys::POD_NAMESPACE], "default");
    assert_eq!(sb.labels[keys::POD_UID], uid(&p));
    assert!(
        sb.log_directory
            .ends_with(&format!("logs/default_web-node-a_{}", uid(&p))),
        "{}",
        sb.log_directory
    );
    let containers = env.fake.containers();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c.state, api::ContainerState::ContainerRunning);
    assert_eq!(c.labels[keys::CONTAINER_NAME], "web");
    assert_eq!(c.annotations[keys::CONTAINER_RESTART_COUNT], "0");
    assert_eq!(c.annotations[keys::POD_TERMINATION_GRACE_PERIOD], "7");
    assert_eq!(
        c.annotations[keys::CONTAINER_TERMINATION_MESSAGE_PATH],
        "/dev/termination-log"
    );
    assert!(!c.annotations[keys::CONTAINER_HASH].is_empty());
    assert!(c.log_path.ends_with("web/0.log"), "{}", c.log_path);
    assert_eq!(c.config.args, vec!["serve"]);

    // Level-triggered: a second sync of an unchanged pod does nothing.
    env.fake.clear_calls();
    sync(&m, &p, &mut t).await;
    for call in [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
    ] {
        assert_eq!(env.fake.call_count(call), 0, "{call} on a synced pod");
    }
}

#[tokio::test]
async fn restarted_agent_adopts_running_containers() {
    let env = Env::new().await;
    let p = env.pod("web.yaml", &web("serve", "Always"));
    let mut t = Transient::default();
    sync(&env.manager().await, &p, &mut t).await;
    let before = env.fake.containers();

    // A new manager has no memory: only the runtime's labels and annotations.
    env.fake.clear_calls();
    let fresh = env.manager().await;
    sync(&fresh, &p, &mut Transient::default()).await;
    for call in [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
    ] {
        assert_eq!(env.fake.call_count(call), 0, "{call} after restart");
    }
    let after = env.fake.containers();
    assert_eq!(before.len(), after.len());
    assert_eq!(before[0].id, after[0].id);
}

#[tokio::test]
async fn crashing_container_restarts_then_backs_off() {
    let env = Env::new().await;
    env.fake.on_start_exit("web", 1);
    let m = env.manager().await;
    let p = env.pod("web.yaml", &web("crash", "Always"));
    let mut t = Transient::default();

    sync(&m, &p, &mut t).await; // starts, exits at once
    sync(&m, &p, &mut t).await; // first restart is immediate (restartCount 1)
    assert_eq!(env.fake.call_count("StartContainer"), 2);
    let out = sync(&m, &p, &mut t).await; // now in back-off
    assert_eq!(env.fake.call_count("StartContainer"), 2);
    let waiting = &t.waiting["web"];
    assert_eq!(waiting.reason, "CrashLoopBackOff");
    assert!(
        waiting.message.contains("back-off 10s"),
        "{}",
        waiting.message
    );
    match out {
        SyncOutcome::Synced { requeue: Some(d) } => assert!(d <= Duration::from_secs(10), "{d:?}"),
        other => panic!("expected a requeue within the back-off, got {other:?}"),
    }
    let status = compute_pod_status(
        &p.pod,
        &m.inspect_pod(&uid(&p)).await.unwrap(),
        &t,
        "192.0.2.10",
        "containerd",
    );
    let cs = &status.container_statuses.unwrap()[0];
    assert_eq!(cs.restart_count, 1);
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("CrashLoopBackOff")
    );
    assert_eq!(
        cs.last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        1
    );
}

#[tokio::test]
async fn never_policy_ends_failed_with_exit_code_and_releases_sandbox() {
    let env = Env::new().await;
    env.fake.on_start_exit("web", 3);
    let m = env.manager().await;
    let p = env.pod("web.yaml", &web("exit3", "Never"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    sync(&m, &p, &mut t).await;
    assert_eq!(
        env.fake.call_count("StartContainer"),
        1,
        "Never does not restart"
    );
    assert!(
        env.fake
            .sandboxes()
            .iter()
            .all(|s| s.state == api::PodSandboxState::SandboxNotready),
        "a finished pod gives back its sandbox"
    );
    let status = compute_pod_status(
        &p.pod,
        &m.inspect_pod(&uid(&p)).await.unwrap(),
        &t,
        "192.0.2.10",
        "containerd",
    );
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let term = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(term.exit_code, 3);
}

#[tokio::test]
async fn changed_spec_replaces_only_that_container() {
    let env = Env::new().await;
    let m = env.manager().await;
    let yaml = |arg: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: two, uid: fixed-uid}}\nspec:\n  containers:\n  - {{name: a, image: {IMAGE}, args: [{arg}]}}\n  - {{name: b, image: {IMAGE}, args: [same]}}\n"
        )
    };
    let p1 = env.pod("two.yaml", &yaml("one"));
    let mut t = Transient::default();
    sync(&m, &p1, &mut t).await;
    let b_before = env
        .fake
        .containers()
        .into_iter()
        .find(|c| c.metadata.name == "b")
        .unwrap();

    let p2 = env.pod("two.yaml", &yaml("two"));
    assert_eq!(uid(&p1), uid(&p2), "an explicit uid survives an edit");
    sync(&m, &p2, &mut t).await;
    let running: Vec<_> = env
        .fake
        .containers()
        .into_iter()
        .filter(|c| c.state == api::ContainerState::ContainerRunning)
        .collect();
    let a = running.iter().find(|c| c.metadata.name == "a").unwrap();
    assert_eq!(a.config.args, vec!["two"]);
    assert_eq!(a.annotations[keys::CONTAINER_RESTART_COUNT], "1");
    let b_after = running.iter().find(|c| c.metadata.name == "b").unwrap();
    assert_eq!(
        b_before.id, b_after.id,
        "the unchanged container keeps running"
    );
    assert_eq!(
        env.fake.call_count("RunPodSandbox"),
        1,
        "the sandbox is kept"
    );
}

#[tokio::test]
async fn image_policies() {
    let env = Env::new().await;
    let m = env.manager().await;
    let yaml = |image: &str, policy: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: img}}\nspec:\n  containers:\n  - {{name: c, image: \"{image}\", imagePullPolicy: {policy}}}\n"
        )
    };
    // Never + absent.
    let p = env.pod("never.yaml", &yaml("example.com/absent:1", "Never"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    assert_eq!(t.waiting["c"].reason, "ErrImageNeverPull");
    assert_eq!(env.fake.call_count("PullImage"), 0);

    // IfNotPresent + absent + unpullable: ErrImagePull, then ImagePullBackOff.
    let p = env.pod("pull.yaml", &yaml("example.com/absent:2", "IfNotPresent"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    assert_eq!(t.waiting["c"].reason, "ErrImagePull");
    sync(&m, &p, &mut t).await;
    assert_eq!(t.waiting["c"].reason, "ImagePullBackOff");
    assert_eq!(
        env.fake.call_count("PullImage"),
        1,
        "no pull during back-off"
    );

    // IfNotPresent + pullable: pulled once, then runs.
    env.fake.set_pullable("example.com/there:3");
    let p = env.pod("ok.yaml", &yaml("example.com/there:3", "IfNotPresent"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    assert!(t.waiting.is_empty(), "{:?}", t.waiting);
    assert_eq!(env.fake.call_count("PullImage"), 2);
}

#[tokio::test]
async fn removal_stops_with_recorded_grace_and_removes_everything() {
    let env = Env::new().await;
    let p = env.pod("web.yaml", &web("serve", "Always"));
    sync(&env.manager().await, &p, &mut Transient::default()).await;

    // After a restart, with the manifest gone: the grace period comes from the runtime.
    let m = env.manager().await;
    let out = m
        .sync_pod(&uid(&p), None, &mut Transient::default())
        .await
        .unwrap();
    assert_eq!(out, SyncOutcome::Gone);
    assert!(env.fake.sandboxes().is_empty());
    assert!(env.fake.containers().is_empty());
    assert!(
        env.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("StopContainer"))
    );
    assert!(!env.dir.path().join("root/pods").join(uid(&p)).exists());
}

#[tokio::test]
async fn runtime_outage_fails_the_sync_and_creates_no_duplicate() {
    let env = Env::new().await;
    let m = env.manager().await;
    let p = env.pod("web.yaml", &web("serve", "Always"));
    env.fake.stop_serving().await;
    let err = m
        .sync_pod(&uid(&p), Some(&p), &mut Transient::default())
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    env.fake.resume_serving().await.unwrap();
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    sync(&m, &p, &mut t).await;
    assert_eq!(env.fake.call_count("RunPodSandbox"), 1);
    assert_eq!(env.fake.sandboxes().len(), 1);
}

#[tokio::test]
async fn failed_sandbox_is_reported_and_retried() {
    let env = Env::new().await;
    let m = env.manager().await;
    let p = env.pod("web.yaml", &web("serve", "Always"));
    env.fake.fail_next(
        "RunPodSandbox",
        tonic::Code::Unknown,
        "failed to setup network for sandbox",
    );
    let mut t = Transient::default();
    let err = m.sync_pod(&uid(&p), Some(&p), &mut t).await.unwrap_err();
    assert!(!err.is_unreachable());
    assert_eq!(
        t.pod_error.as_ref().unwrap().reason,
        "FailedCreatePodSandBox"
    );
    sync(&m, &p, &mut t).await;
    assert!(t.pod_error.is_none());
    assert_eq!(env.fake.containers().len(), 1);
}

#[tokio::test]
async fn duplicate_ready_sandbox_is_stopped() {
    let env = Env::new().await;
    let m = env.manager().await;
    let p = env.pod("web.yaml", &web("serve", "Always"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    // A second sandbox for the same pod, as a RunPodSandbox that timed out on
    // our side but succeeded in the runtime would leave.
    let config = m.sandbox_config(&p.pod, 1);
    m.client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap();
    sync(&m, &p, &mut t).await;
    let ready = env
        .fake
        .sandboxes()
        .into_iter()
        .filter(|s| s.state == api::PodSandboxState::SandboxReady)
        .count();
    assert_eq!(ready, 1);
}

#[tokio::test]
async fn slow_runtime_times_out_as_unreachable() {
    let env = Env::new().await;
    let client = env
        .fake
        .client_with(berth_cri::ConnectOptions {
            list_timeout: Duration::from_millis(200),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = env.manager_with(client);
    env.fake.delay("ListPodSandbox", Duration::from_secs(2));
    let p = env.pod("web.yaml", &web("serve", "Always"));
    let err = m
        .sync_pod(&uid(&p), Some(&p), &mut Transient::default())
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn workers_never_sync_one_pod_twice_at_once() {
    let env = Env::new().await;
    let manager = Arc::new(env.manager().await);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let config = PodConfig::new(tx);
    let p = env.pod("web.yaml", &web("serve", "Always"));
    config.apply(Snapshot {
        pods: vec![p.clone()],
        errors: vec![],
    });
    // Slow syncs make overlapping triggers likely.
    env.fake
        .delay("CreateContainer", Duration::from_millis(300));
    let cancel = tokio_util::sync::CancellationToken::new();
    let workers = berth_agent::workers::PodWorkers::new(
        manager,
        config,
        Arc::new(berth_agent::status::TransientStore::default()),
        Arc::new(Metrics::new()),
        Duration::from_secs(60),
        Arc::new(tokio::sync::Notify::new()),
        cancel.clone(),
    );
    for _ in 0..20 {
        workers.trigger(uid(&p));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    cancel.cancel();
    assert_eq!(env.fake.call_count("RunPodSandbox"), 1);
    assert_eq!(env.fake.call_count("CreateContainer"), 1);
    // 20 triggers collapse into at most a couple of syncs.
    assert!(
        env.fake.call_count("ListPodSandbox") <= 3,
        "{:?}",
        env.fake.calls()
    );
}

#[tokio::test]
async fn gc_keeps_the_newest_dead_container_for_last_state() {
    let env = Env::new().await;
    let m = env.manager().await;
    let p = env.pod("web.yaml", &web("serve", "Always"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    for round in 1..=3 {
        env.fake.exit_containers_named("web", 137);
        // Restart (first one is immediate; later ones are in back-off, so
        // forget the back-off by using a fresh manager, as after a restart).
        let m = env.manager().await;
        sync(&m, &p, &mut Transient::default()).await;
        // A sync with the new container running garbage-collects.
        sync(&m, &p, &mut Transient::default()).await;
        let all = env.fake.containers();
        let dead = all
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerExited)
            .count();
        let live = all.len() - dead;
        assert_eq!((live, dead), (1, 1), "round {round}: {all:?}");
    }
}

#[tokio::test]
async fn container_events_wake_pods_where_offered_and_fall_back_where_not() {
    use berth_agent::pleg::watch_container_events;
    use tokio_util::sync::CancellationToken;

    // containerd 1.6: Unimplemented → the watcher returns, relist alone drives.
    let env = Env::new().await;
    let cancel = CancellationToken::new();
    let done = tokio::time::timeout(
        Duration::from_secs(5),
        watch_container_events(env.fake.client().await, cancel.clone(), |_| {}),
    )
    .await;
    assert!(
        done.is_ok(),
        "watcher did not give up on an Unimplemented stream"
    );

    // containerd 1.7+ / CRI-O: every event wakes the pod it belongs to.
    env.fake.enable_container_events(true);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(watch_container_events(
        env.fake.client().await,
        cancel.clone(),
        move |uid| {
            let _ = tx.send(uid);
        },
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = env.pod("web.yaml", &web("serve", "Always"));
    sync(&env.manager().await, &p, &mut Transient::default()).await;
    let woke = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s");
    assert_eq!(woke, Some(uid(&p)));
    cancel.cancel();
    let _ = watcher.await;
}

#[tokio::test]
async fn run_as_non_root_is_enforced_like_the_kubelet() {
    let env = Env::new().await;
    let m = env.manager().await;
    let yaml = |name: &str, user: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  securityContext: {{runAsNonRoot: true{user}}}\n  containers:\n  - {{name: c, image: {IMAGE}}}\n"
        )
    };
    // The image names no user: it would run as root.
    let p = env.pod("img.yaml", &yaml("img", ""));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    assert_eq!(t.waiting["c"].reason, "CreateContainerConfigError");
    assert!(
        t.waiting["c"].message.contains("image will run as root"),
        "{}",
        t.waiting["c"].message
    );
    assert_eq!(env.fake.call_count("CreateContainer"), 0);

    let p = env.pod("zero.yaml", &yaml("zero", ", runAsUser: 0"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    assert!(
        t.waiting["c"]
            .message
            .contains("runAsUser breaks non-root policy")
    );

    let p = env.pod("user.yaml", &yaml("user", ", runAsUser: 1000"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    assert!(t.waiting.is_empty(), "{:?}", t.waiting);
    assert_eq!(env.fake.call_count("CreateContainer"), 1);
}

#[tokio::test]
async fn sandbox_is_replaced_when_host_network_changes() {
    let env = Env::new().await;
    let m = env.manager().await;
    let yaml = |host: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: net, uid: net-uid}}\nspec:\n  hostNetwork: {host}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {IMAGE}}}\n"
        )
    };
    let mut t = Transient::default();
    sync(&m, &env.pod("net.yaml", &yaml(false)), &mut t).await;
    let first = env.fake.sandboxes();
    assert_eq!(first.len(), 1);
    assert!(!first[0].host_network);

    sync(&m, &env.pod("net.yaml", &yaml(true)), &mut t).await;
    let ready: Vec<_> = env
        .fake
        .sandboxes()
        .into_iter()
        .filter(|s| s.state == api::PodSandboxState::SandboxReady)
        .collect();
    assert_eq!(ready.len(), 1);
    assert!(
        ready[0].host_network,
        "the new sandbox uses the node's network"
    );
    assert_ne!(ready[0].id, first[0].id);
    assert_eq!(ready[0].metadata.attempt, 1);
}

#[tokio::test]
async fn downward_api_resource_fields_and_host_ips_reach_the_env() {
    let env = Env::new().await;
    let m = env.manager().await;
    let p = env.pod(
        "res.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: res}}\nspec:\n  containers:\n  - name: app\n    image: {IMAGE}\n    resources:\n      requests: {{cpu: 250m, memory: 64Mi}}\n      limits: {{memory: 128Mi}}\n    env:\n    - name: CPU_M\n      valueFrom: {{resourceFieldRef: {{resource: requests.cpu, divisor: 1m}}}}\n    - name: MEM_MI\n      valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}\n    - name: CPU_LIMIT\n      valueFrom: {{resourceFieldRef: {{resource: limits.cpu}}}}\n    - name: HOSTS\n      valueFrom: {{fieldRef: {{fieldPath: status.hostIPs}}}}\n"
        ),
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    sync(&m, &p, &mut Transient::default()).await;
    let c = env
        .fake
        .containers()
        .into_iter()
        .find(|c| c.metadata.name == "app")
        .expect("created");
    let get = |k: &str| {
        c.config
            .envs
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("CPU_M"), "250");
    assert_eq!(get("MEM_MI"), "128");
    // No CPU limit: the node's CPUs, in whole cores.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(get("CPU_LIMIT"), cpus.to_string());
    assert_eq!(get("HOSTS"), "192.0.2.10");
}

#[tokio::test]
async fn pods_the_node_cannot_run_get_no_sandbox_and_say_why() {
    let env = Env::new().await;
    let m = env.manager().await.with_apparmor_enabled(false);
    let p = env.pod(
        "userns.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: userns}}\nspec:\n  hostUsers: false\n  containers:\n  - name: app\n    image: {IMAGE}\n"
        ),
    );
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    assert_eq!(env.fake.call_count("RunPodSandbox"), 0);
    let err = t.pod_error.clone().expect("a pod-level reason");
    assert_eq!(err.reason, "FailedCreatePodSandBox");
    assert!(err.message.contains("user namespaces"), "{err:?}");

    let p = env.pod(
        "armor.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: armor}}\nspec:\n  containers:\n  - name: app\n    image: {IMAGE}\n    securityContext:\n      appArmorProfile: {{type: Localhost, localhostProfile: strict}}\n"
        ),
    );
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    assert_eq!(env.fake.call_count("RunPodSandbox"), 0);
    let err = t.pod_error.clone().expect("a pod-level reason");
    assert!(
        err.message.starts_with("Cannot enforce AppArmor"),
        "{err:?}"
    );
}

/// A pod asking for `cpu`, created `age_rank`-th (earlier first).
fn cpu_pod(env: &Env, name: &str, cpu: &str, rank: i64) -> SourcedPod {
    let mut p = env.pod(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: app\n    image: {IMAGE}\n    resources: {{requests: {{cpu: {cpu}}}}}\n"
        ),
    );
    p.pod.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + rank).unwrap(),
    ));
    p
}

fn small_node(milli_cpu: i64, pods: i64) -> Arc<berth_agent::admission::NodeState> {
    berth_agent::admission::NodeState::new(berth_agent::admission::NodeInfo {
        name: "node-a".into(),
        resources: berth_agent::allocatable::NodeResources {
            capacity: Default::default(),
            allocatable: berth_api::resource::Resources {
                milli_cpu,
                memory: 1 << 30,
                ephemeral_storage: 1 << 30,
                pods,
                scalar: vec![],
            },
        },
        ..Default::default()
    })
}

#[tokio::test]
async fn admission_refuses_what_does_not_fit_in_creation_order_and_a_restart_keeps_running_pods() {
    let env = Env::new().await;
    let manager = Arc::new(env.manager().await);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let config = PodConfig::new(tx);
    // b is listed first by name but created after a: a is admitted, b is not.
    let a = cpu_pod(&env, "zeta", "600m", 1);
    let b = cpu_pod(&env, "beta", "600m", 2);
    let c = cpu_pod(&env, "gamma", "0", 3);
    config.apply(Snapshot {
        pods: vec![a.clone(), b.clone(), c.clone()],
        errors: vec![],
    });
    let cache = berth_agent::pleg::RuntimeCache::new();
    let mut pleg = berth_agent::pleg::Pleg::new(
        env.fake.client().await,
        cache.clone(),
        Arc::new(Metrics::new()),
    );
    pleg.relist().await.unwrap();
    let transient = Arc::new(berth_agent::status::TransientStore::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    let workers = berth_agent::workers::PodWorkers::new(
        manager.clone(),
        config.clone(),
        transient.clone(),
        Arc::new(Metrics::new()),
        Duration::from_secs(60),
        Arc::new(tokio::sync::Notify::new()),
        cancel.clone(),
    );
    let admitter = berth_agent::admission::Admitter::new(
        config.clone(),
        cache.clone(),
        small_node(1000, 3),
        Box::new(|_| false),
        None,
    );
    workers.set_admitter(admitter.clone());
    // The same trigger twice, and all at once: one decision each.
    for p in [&b, &c, &a, &b] {
        workers.trigger(uid(p));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.fake.call_count("RunPodSandbox"),
        2,
        "{:?}",
        env.fake.calls()
    );
    let rejected = transient.get(&uid(&b));
    let status = compute_pod_status(
        &b.pod,
        &Default::default(),
        &rejected,
        "192.0.2.10",
        "containerd",
    );
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("OutOfcpu"));
    assert_eq!(
        status.message.as_deref(),
        Some(
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 600, used: 600, capacity: 1000"
        )
    );
    assert!(transient.get(&uid(&a)).rejected.is_none());
    assert!(transient.get(&uid(&c)).rejected.is_none());

    // a goes: b stays refused (a decision holds), a newcomer fits again.
    let d = cpu_pod(&env, "delta", "600m", 4);
    config.apply(Snapshot {
        pods: vec![b.clone(), c.clone(), d.clone()],
        errors: vec![],
    });
    for p in [&a, &b, &d] {
        workers.trigger(uid(p));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(transient.get(&uid(&b)).rejected.is_some());
    assert!(transient.get(&uid(&d)).rejected.is_none());
    pleg.relist().await.unwrap();
    assert!(!cache.get(&uid(&d)).containers.is_empty(), "d runs");
    assert!(cache.get(&uid(&b)).sandboxes.is_empty(), "b never ran");
    cancel.cancel();

    // A restart with less CPU: what runs is admitted (never stopped), a
    // newcomer is judged against it.
    let e = cpu_pod(&env, "epsilon", "100m", 5);
    config.apply(Snapshot {
        pods: vec![b.clone(), c.clone(), d.clone(), e.clone()],
        errors: vec![],
    });
    let restarted = berth_agent::admission::Admitter::new(
        config.clone(),
        cache.clone(),
        small_node(500, 110),
        Box::new(|_| false),
        None,
    );
    use berth_agent::admission::Decision;
    assert_eq!(restarted.decide(&uid(&d)), (Decision::Admitted, true));
    assert_eq!(restarted.decision(&uid(&c)), Some(Decision::Admitted));
    match restarted.decision(&uid(&e)) {
        Some(Decision::Rejected(r)) => assert_eq!(r.reason, "OutOfcpu"),
        other => panic!("{other:?}"),
    }
    // b, refused before and not running, is judged again like a newcomer.
    assert!(matches!(
        restarted.decision(&uid(&b)),
        Some(Decision::Rejected(_))
    ));
}

#[tokio::test]
async fn static_refusals_survive_a_restart_and_go_with_their_pod() {
    use berth_agent::admission::{Admitter, Decision};
    let env = Env::new().await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let config = PodConfig::new(tx);
    let a = cpu_pod(&env, "first", "800m", 1);
    let b = cpu_pod(&env, "second", "800m", 2);
    config.apply(Snapshot {
        pods: vec![a.clone(), b.clone()],
        errors: vec![],
    });
    let cache = berth_agent::pleg::RuntimeCache::new();
    let state = env.dir.path().join("admission");
    let first = Admitter::new(
        config.clone(),
        cache.clone(),
        small_node(1000, 110),
        Box::new(|_| false),
        Some(state.clone()),
    );
    let (d, _) = first.decide(&uid(&b));
    let Decision::Rejected(r) = d else {
        panic!("{d:?}")
    };
    assert!(state.join(uid(&b)).is_file());
    // Restarted with more room and nothing running: the refusal holds, the
    // same reason and message, and a was judged again (and fits).
    let again = Admitter::new(
        config.clone(),
        cache.clone(),
        small_node(4000, 110),
        Box::new(|_| false),
        Some(state.clone()),
    );
    assert_eq!(again.decide(&uid(&b)).0, Decision::Rejected(r));
    assert_eq!(again.decision(&uid(&a)), Some(Decision::Admitted));
    // b's manifest goes: so does its record.
    config.apply(Snapshot {
        pods: vec![a.clone()],
        errors: vec![],
    });
    let c = cpu_pod(&env, "third", "100m", 3);
    config.apply(Snapshot {
        pods: vec![a.clone(), c.clone()],
        errors: vec![],
    });
    assert_eq!(again.decide(&uid(&c)).0, Decision::Admitted);
    assert!(!state.join(uid(&b)).exists());
    // A garbage record is skipped, not fatal.
    std::fs::write(state.join("junk"), b"{not json").unwrap();
    let third = Admitter::new(
        config,
        cache,
        small_node(4000, 110),
        Box::new(|_| false),
        Some(state),
    );
    assert_eq!(third.decide(&uid(&a)).0, Decision::Admitted);
}
