//! The prober against the in-process fake CRI, wired as the agent wires it
//! (pod workers, PLEG, probe workers): readiness follows an exec probe, a
//! liveness failure kills and restarts the container with the kubelet's
//! events, the startup probe holds the others off, thresholds count, a timeout
//! fails, and `restartPolicy: Never` does not bring a killed container back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::events::{EventRecorder, Recorded};
use berth_agent::metrics::Metrics;
use berth_agent::pleg::{Pleg, RuntimeCache};
use berth_agent::prober::ProbeManager;
use berth_agent::runtime::{RuntimeManager, Settings};
use berth_agent::source::{PodConfig, Snapshot, SourcedPod, manifest::parse_manifest};
use berth_agent::status::{TransientStore, compute_pod_status};
use berth_agent::workers::PodWorkers;
use berth_cri::fake::{ExecResult, FakeRuntime};
use k8s_openapi::api::core::v1::PodStatus;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "localhost/berth/busybox:1.36";

/// An agent without sources: pods go straight into its [`PodConfig`].
struct Node {
    fake: FakeRuntime,
    _dir: tempfile::TempDir,
    config: Arc<PodConfig>,
    cache: Arc<RuntimeCache>,
    transient: Arc<TransientStore>,
    metrics: Arc<Metrics>,
    events: Arc<Mutex<Vec<Recorded>>>,
    cancel: CancellationToken,
}

impl Node {
    async fn start() -> Self {
        let fake = FakeRuntime::start().await;
        fake.add_image(IMAGE);
        let dir = tempfile::tempdir().unwrap();
        let client = fake.client().await;
        let cancel = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let (recorder, mut rx) = EventRecorder::channel(1000, None);
        let events = Arc::new(Mutex::new(Vec::new()));
        {
            let events = events.clone();
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    events.lock().unwrap().push(e);
                }
            });
        }
        let manager = RuntimeManager::new(
            client.clone(),
            Settings {
                node_name: "node-a".into(),
                node_ip: "192.0.2.10".into(),
                root_dir: dir.path().join("root"),
                pod_logs_dir: dir.path().join("logs"),
                cgroup_root: "/berth-test-kubepods".into(),
            },
            metrics.clone(),
        )
        .with_events(recorder.clone())
        .with_cgroups(
            berth_agent::cgroups::PodCgroups::new(
                std::sync::Arc::new(berth_agent::cgroups::RecordingManager::default()),
                "/berth-test-kubepods",
            )
            .expect("a valid cgroup root"),
        );
        let (trigger_tx, mut trigger_rx) = tokio::sync::mpsc::unbounded_channel();
        let config = PodConfig::new(trigger_tx.clone());
        let cache = RuntimeCache::new();
        let transient = Arc::new(TransientStore::default());
        let manager = manager.with_transient_store(transient.clone());
        let poke = Arc::new(tokio::sync::Notify::new());
        let workers = PodWorkers::new(
            Arc::new(manager),
            config.clone(),
            transient.clone(),
            metrics.clone(),
            Duration::from_secs(60),
            poke.clone(),
            cancel.clone(),
        );
        workers.set_prober(ProbeManager::new(
            client.clone(),
            cache.clone(),
            transient.clone(),
            recorder,
            metrics.probes.clone(),
            trigger_tx,
            "192.0.2.10".into(),
            cancel.clone(),
        ));
        let pleg = Pleg::new(client, cache.clone(), metrics.clone());
        {
            let workers = workers.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                pleg.run(Duration::from_millis(100), poke, cancel, |uid| {
                    workers.trigger(uid)
                })
                .await
            });
        }
        {
            let workers = workers.clone();
            tokio::spawn(async move {
                while let Some(uid) = trigger_rx.recv().await {
                    workers.trigger(uid);
                }
            });
        }
        Node {
            fake,
            _dir: dir,
            config,
            cache,
            transient,
            metrics,
            events,
            cancel,
        }
    }

    fn run(&self, yaml: &str) -> SourcedPod {
        let path = self._dir.path().join("pod.yaml");
        let p = parse_manifest(&path, yaml.as_bytes(), "node-a").expect("test manifest parses");
        self.config.apply(Snapshot {
            pods: vec![p.clone()],
            errors: vec![],
        });
        p
    }

    fn status(&self, p: &SourcedPod) -> PodStatus {
        let uid = p.pod.metadata.uid.clone().unwrap();
        compute_pod_status(
            &p.pod,
            &self.cache.get(&uid),
            &self.transient.get(&uid),
            "192.0.2.10",
            "containerd",
        )
    }

    /// Wait (up to `within`) until `check` holds of the pod's status.
    async fn until(
        &self,
        p: &SourcedPod,
        within: Duration,
        what: &str,
        check: impl Fn(&PodStatus) -> bool,
    ) -> PodStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let s = self.status(p);
            if check(&s) {
                return s;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{what}: not within {within:?}; status {s:#?}; events {:#?}",
                    self.events()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn events(&self) -> Vec<(String, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.reason.clone(), e.message.clone()))
            .collect()
    }

    fn has_event(&self, reason: &str, message: &str) -> bool {
        self.events()
            .iter()
            .any(|(r, m)| r == reason && m == message)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn ready(s: &PodStatus) -> bool {
    s.container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .is_some_and(|c| c.ready)
}

fn started(s: &PodStatus) -> Option<bool> {
    s.container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.started)
}

fn restarts(s: &PodStatus) -> i32 {
    s.container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

fn condition(s: &PodStatus, type_: &str) -> String {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn pod(policy: &str, probes: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 7\n  containers:\n  - name: web\n    image: {IMAGE}\n    args: [serve]\n{probes}"
    )
}

#[tokio::test]
async fn readiness_follows_an_exec_probe_both_ways() {
    let node = Node::start().await;
    node.fake.script_exec(
        "web",
        [
            ExecResult::exit(1, "not yet"),
            ExecResult::exit(1, "not yet"),
            ExecResult::exit(0, "ok"),
        ],
    );
    let p = node.run(&pod(
        "Always",
        "    readinessProbe:\n      exec: {command: [check]}\n      periodSeconds: 1\n      failureThreshold: 1\n",
    ));
    // Running and started at once (no startup probe), but not ready.
    let s = node
        .until(&p, Duration::from_secs(5), "running", |s| {
            started(s) == Some(true)
        })
        .await;
    assert!(!ready(&s));
    assert_eq!(condition(&s, "Ready"), "False");
    let s = node.until(&p, Duration::from_secs(6), "ready", ready).await;
    assert_eq!(condition(&s, "ContainersReady"), "True");
    assert_eq!(condition(&s, "Ready"), "True");
    assert!(
        node.has_event("Unhealthy", "Readiness probe failed: not yet"),
        "{:?}",
        node.events()
    );
    // It flips back: not ready after one failure (failureThreshold 1), and
    // the container is not killed for it.
    node.fake.script_exec("web", [ExecResult::exit(1, "gone")]);
    let s = node
        .until(&p, Duration::from_secs(4), "not ready again", |s| !ready(s))
        .await;
    assert_eq!(restarts(&s), 0);
    assert!(!node.events().iter().any(|(r, _)| r == "Killing"));
    // The exec went to the container with the probe's timeout (1 s default).
    let execs = node.fake.execs();
    assert!(execs.iter().all(|e| e.cmd == ["check"] && e.timeout == 1));
    // The metrics count every run, by result.
    let text = node.metrics.probes.encode();
    assert!(
        text.contains("prober_probe_total{probe_type=\"Readiness\",result=\"failed\",container=\"web\",pod=\"web-node-a\",namespace=\"default\""),
        "{text}"
    );
    assert!(text.contains("result=\"successful\""), "{text}");
    assert!(
        text.contains("prober_probe_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn liveness_failure_kills_and_restarts_with_the_kubelets_events() {
    let node = Node::start().await;
    node.fake.script_exec("web", [ExecResult::exit(1, "boom")]);
    let p = node.run(&pod(
        "Always",
        "    livenessProbe:\n      exec: {command: [alive]}\n      periodSeconds: 1\n      failureThreshold: 2\n      terminationGracePeriodSeconds: 3\n",
    ));
    let s = node
        .until(&p, Duration::from_secs(8), "restarted once", |s| {
            restarts(s) == 1 && started(s) == Some(true)
        })
        .await;
    // No readiness probe: ready while running.
    assert!(ready(&s));
    let last = s.container_statuses.as_ref().unwrap()[0]
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .expect("the killed container is lastState");
    assert_eq!(last.exit_code, 137);
    assert!(node.has_event("Unhealthy", "Liveness probe failed: boom"));
    assert!(
        node.has_event(
            "Killing",
            "Container web failed liveness probe, will be restarted"
        ),
        "{:?}",
        node.events()
    );
    // Killed with the probe's grace period, not the pod's 7 s.
    let stops: Vec<i64> = node
        .fake
        .containers()
        .iter()
        .flat_map(|c| c.stop_timeouts.clone())
        .collect();
    assert_eq!(stops.first(), Some(&3), "{stops:?}");
    // failureThreshold 2: two failures before the kill, not one.
    let unhealthy = node
        .events()
        .iter()
        .filter(|(r, _)| r == "Unhealthy")
        .count();
    assert!(unhealthy >= 2, "{:?}", node.events());
}

#[tokio::test]
async fn startup_probe_holds_liveness_and_readiness_until_it_passes() {
    let node = Node::start().await;
    node.fake.script_exec_of(
        "web",
        "started",
        [
            ExecResult::exit(1, "starting"),
            ExecResult::exit(1, "starting"),
            ExecResult::exit(0, ""),
        ],
    );
    node.fake
        .script_exec_of("web", "alive", [ExecResult::exit(0, "")]);
    node.fake
        .script_exec_of("web", "ready", [ExecResult::exit(0, "")]);
    let p = node.run(&pod(
        "Always",
        "    startupProbe:\n      exec: {command: [started]}\n      periodSeconds: 1\n      failureThreshold: 10\n    livenessProbe:\n      exec: {command: [alive]}\n      periodSeconds: 1\n    readinessProbe:\n      exec: {command: [ready]}\n      periodSeconds: 1\n",
    ));
    let s = node
        .until(&p, Duration::from_secs(3), "running", |s| {
            s.container_statuses
                .as_ref()
                .is_some_and(|c| c[0].state.as_ref().is_some_and(|st| st.running.is_some()))
        })
        .await;
    assert_eq!(
        started(&s),
        Some(false),
        "not started before the startup probe passes"
    );
    assert!(!ready(&s));
    node.until(&p, Duration::from_secs(8), "started and ready", |s| {
        started(s) == Some(true) && ready(s)
    })
    .await;
    // No liveness or readiness exec ran before the startup probe's success.
    let execs = node.fake.execs();
    let first_success = execs
        .iter()
        .position(|e| e.cmd == ["started"])
        .map(|first| first + 2)
        .unwrap();
    assert!(
        execs[..=first_success].iter().all(|e| e.cmd == ["started"]),
        "{execs:?}"
    );
    assert!(execs.iter().any(|e| e.cmd == ["alive"]));
    // The startup probe does not run again once passed.
    let startups = execs.iter().filter(|e| e.cmd == ["started"]).count();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = node
        .fake
        .execs()
        .iter()
        .filter(|e| e.cmd == ["started"])
        .count();
    assert_eq!(startups, after);
}

#[tokio::test]
async fn failed_startup_probe_kills_with_its_own_message() {
    let node = Node::start().await;
    node.fake.script_exec("web", [ExecResult::exit(1, "no")]);
    let p = node.run(&pod(
        "Always",
        "    startupProbe:\n      exec: {command: [started]}\n      periodSeconds: 1\n      failureThreshold: 1\n",
    ));
    node.until(&p, Duration::from_secs(6), "restarted", |s| {
        restarts(s) >= 1
    })
    .await;
    assert!(node.has_event(
        "Killing",
        "Container web failed startup probe, will be restarted"
    ));
    assert!(node.has_event("Unhealthy", "Startup probe failed: no"));
}

#[tokio::test]
async fn never_policy_does_not_restart_a_container_killed_by_liveness() {
    let node = Node::start().await;
    node.fake.script_exec("web", [ExecResult::exit(3, "dead")]);
    let p = node.run(&pod(
        "Never",
        "    livenessProbe:\n      exec: {command: [alive]}\n      periodSeconds: 1\n      failureThreshold: 1\n",
    ));
    let s = node
        .until(&p, Duration::from_secs(6), "failed", |s| {
            s.phase.as_deref() == Some("Failed")
        })
        .await;
    assert_eq!(restarts(&s), 0);
    assert!(
        node.has_event("Killing", "Container web failed liveness probe"),
        "{:?}",
        node.events()
    );
    // Nothing probes a container that will not run again.
    let n = node.fake.execs().len();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(node.fake.execs().len(), n);
}

#[tokio::test]
async fn exec_timeout_fails_and_success_threshold_counts() {
    let node = Node::start().await;
    node.fake.script_exec(
        "web",
        [
            ExecResult::hang(Duration::from_secs(5)),
            ExecResult::exit(0, ""),
        ],
    );
    let p = node.run(&pod(
        "Always",
        "    readinessProbe:\n      exec: {command: [sh, -c, slow]}\n      periodSeconds: 1\n      timeoutSeconds: 1\n      successThreshold: 2\n",
    ));
    node.until(&p, Duration::from_secs(8), "ready", ready).await;
    assert!(
        node.has_event(
            "Unhealthy",
            "Readiness probe failed: command \"sh -c slow\" timed out"
        ),
        "{:?}",
        node.events()
    );
    // Two successes in a row were needed: at least three execs in all.
    assert!(node.fake.execs().len() >= 3);
}

#[tokio::test]
async fn results_go_with_the_pod() {
    let node = Node::start().await;
    let p = node.run(&pod(
        "Always",
        "    readinessProbe:\n      exec: {command: [check]}\n      periodSeconds: 1\n",
    ));
    node.until(&p, Duration::from_secs(5), "ready", ready).await;
    assert!(node.metrics.probes.encode().contains("pod=\"web-node-a\""));
    node.config.apply(Snapshot {
        pods: vec![],
        errors: vec![],
    });
    let uid = p.pod.metadata.uid.clone().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !node.fake.containers().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.transient.probes(&uid).is_empty());
    assert!(
        !node.metrics.probes.encode().contains("pod=\"web-node-a\""),
        "a removed pod's series go"
    );
}

fn hooked(hooks: &str) -> String {
    pod("Always", &format!("    lifecycle:\n{hooks}"))
}

#[tokio::test]
async fn post_start_holds_started_and_ready_until_it_returns() {
    let node = Node::start().await;
    node.fake.script_exec_of(
        "web",
        "hook",
        [
            ExecResult::hang(Duration::from_millis(1500)),
            ExecResult::exit(0, ""),
        ],
    );
    let p = node.run(&hooked(
        "      postStart: {exec: {command: [hook, start]}}\n",
    ));
    let s = node
        .until(&p, Duration::from_secs(3), "running", |s| {
            s.container_statuses
                .as_ref()
                .is_some_and(|c| c[0].state.as_ref().is_some_and(|st| st.running.is_some()))
        })
        .await;
    assert_eq!(started(&s), Some(false), "not started while postStart runs");
    assert!(!ready(&s));
    node.until(&p, Duration::from_secs(5), "started after the hook", |s| {
        started(s) == Some(true) && ready(s)
    })
    .await;
    assert_eq!(node.fake.execs()[0].cmd, ["hook", "start"]);
    // No probe-style timeout on postStart (upstream passes none).
    assert_eq!(node.fake.execs()[0].timeout, 0);
}

#[tokio::test]
async fn failed_post_start_kills_and_restarts_the_container() {
    let node = Node::start().await;
    node.fake
        .script_exec_of("web", "hook", [ExecResult::exit(2, "bad")]);
    let p = node.run(&hooked("      postStart: {exec: {command: [hook]}}\n"));
    node.until(&p, Duration::from_secs(8), "restarted", |s| {
        restarts(s) >= 1
    })
    .await;
    assert!(node.has_event("FailedPostStartHook", "PostStartHook failed"));
    assert!(
        node.has_event("Killing", "FailedPostStartHook"),
        "{:?}",
        node.events()
    );
    // A tcpSocket handler is not a lifecycle handler: it fails the same way.
    let node = Node::start().await;
    let p = node.run(&hooked("      postStart: {tcpSocket: {port: 80}}\n"));
    node.until(&p, Duration::from_secs(8), "killed", |s| {
        s.container_statuses.as_ref().is_some_and(|c| {
            c[0].last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some())
        })
    })
    .await;
    assert!(node.has_event("FailedPostStartHook", "PostStartHook failed"));
}

#[tokio::test]
async fn pre_stop_runs_before_the_stop_signal_and_shares_the_grace_period() {
    let node = Node::start().await;
    node.fake.script_exec_of(
        "web",
        "drain",
        [ExecResult::hang(Duration::from_millis(2100))],
    );
    let p = node.run(&hooked("      preStop: {exec: {command: [drain]}}\n"));
    node.until(&p, Duration::from_secs(3), "ready", ready).await;
    // The manifest goes: the spec is gone, the hook comes from the runtime's
    // record of the container.
    node.config.apply(Snapshot {
        pods: vec![],
        errors: vec![],
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while !node.fake.containers().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = node.fake.calls();
    let exec = calls
        .iter()
        .position(|c| c == "ExecSync")
        .expect("preStop ran");
    let stop = calls
        .iter()
        .position(|c| c == "StopContainer")
        .expect("the container was stopped");
    assert!(exec < stop, "{calls:?}");
    // 7 s of grace, 2 spent in the hook: 5 left for the stop signal.
    let execs = node.fake.execs();
    assert_eq!(execs[0].cmd, ["drain"]);
    assert_eq!(execs[0].timeout, 7);
    assert!(node.fake.containers().is_empty());
}

#[tokio::test]
async fn failed_pre_stop_is_reported_and_the_stop_goes_on() {
    let node = Node::start().await;
    node.fake
        .script_exec_of("web", "drain", [ExecResult::exit(1, "no")]);
    let p = node.run(&hooked("      preStop: {exec: {command: [drain]}}\n"));
    node.until(&p, Duration::from_secs(3), "ready", ready).await;
    node.config.apply(Snapshot {
        pods: vec![],
        errors: vec![],
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !node.fake.containers().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.fake.containers().is_empty());
    let uid = p.pod.metadata.uid.clone().unwrap();
    let want = format!(
        "Exec lifecycle hook ([drain]) for Container \"web\" in Pod \"web-node-a_default({uid})\" failed - error: command 'drain' exited with 1: no, message: \"no\""
    );
    assert!(
        node.has_event("FailedPreStopHook", &want),
        "{:?}",
        node.events()
    );
}

fn sidecar_pod(policy: &str, side_a_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 7\n  initContainers:\n  - name: side-a\n    image: {IMAGE}\n    restartPolicy: Always\n{side_a_extra}  - name: setup\n    image: {IMAGE}\n  - name: side-b\n    image: {IMAGE}\n    restartPolicy: Always\n  containers:\n  - name: main\n    image: {IMAGE}\n"
    )
}

fn init_status<'a>(
    s: &'a PodStatus,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    s.init_container_statuses
        .as_ref()
        .and_then(|all| all.iter().find(|c| c.name == name))
}

fn created(node: &Node, name: &str) -> bool {
    node.fake
        .containers()
        .iter()
        .any(|c| c.metadata.name == name)
}

#[tokio::test]
async fn sidecars_start_in_order_gate_on_their_startup_probe_and_keep_running() {
    let node = Node::start().await;
    node.fake.script_exec_of(
        "side-a",
        "started",
        [
            ExecResult::exit(1, ""),
            ExecResult::exit(1, ""),
            ExecResult::exit(0, ""),
        ],
    );
    // The regular init container `setup` exits 0 at once in the fake.
    node.fake.on_start_exit("setup", 0);
    let p = node.run(&sidecar_pod(
        "Always",
        "    startupProbe:\n      exec: {command: [started]}\n      periodSeconds: 1\n",
    ));
    // side-a runs, but setup waits for its startup probe.
    node.until(&p, Duration::from_secs(3), "side-a running", |s| {
        init_status(s, "side-a")
            .is_some_and(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!created(&node, "setup"), "setup waited for side-a to start");
    let s = node
        .until(&p, Duration::from_secs(8), "main running", |s| {
            s.container_statuses
                .as_ref()
                .is_some_and(|c| c[0].state.as_ref().is_some_and(|st| st.running.is_some()))
        })
        .await;
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&s, "Initialized"), "True");
    // Sidecars count in readiness: both are ready, and so is the pod.
    let s = node
        .until(&p, Duration::from_secs(3), "ready", |s| {
            condition(s, "Ready") == "True"
        })
        .await;
    assert!(init_status(&s, "side-b").is_some_and(|c| c.ready));
    // A sidecar that dies comes back while main keeps running.
    node.fake.exit_containers_named("side-b", 1);
    let s = node
        .until(&p, Duration::from_secs(8), "side-b restarted", |s| {
            init_status(s, "side-b").is_some_and(|c| {
                c.restart_count == 1 && c.state.as_ref().is_some_and(|st| st.running.is_some())
            })
        })
        .await;
    assert_eq!(restarts(&s), 0, "main was not touched");
    assert_eq!(
        init_status(&s, "setup").map(|c| c.restart_count),
        Some(0),
        "a completed init container does not run again"
    );
}

#[tokio::test]
async fn job_like_pod_with_sidecars_succeeds_and_stops_sidecars_after_main_in_reverse() {
    let node = Node::start().await;
    node.fake.on_start_exit("setup", 0);
    let p = node.run(&sidecar_pod("Never", ""));
    node.until(&p, Duration::from_secs(5), "main running", |s| {
        s.container_statuses
            .as_ref()
            .is_some_and(|c| c[0].state.as_ref().is_some_and(|st| st.running.is_some()))
    })
    .await;
    node.fake.exit_containers_named("main", 0);
    let s = node
        .until(&p, Duration::from_secs(5), "succeeded", |s| {
            s.phase.as_deref() == Some("Succeeded")
        })
        .await;
    assert_eq!(restarts(&s), 0);
    // The sidecars were stopped after main ended, side-b (started last) first.
    let finished = |name: &str| {
        node.fake
            .containers()
            .iter()
            .find(|c| c.metadata.name == name)
            .map(|c| c.finished_at)
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while finished("side-a") == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(finished("main") > 0);
    assert!(
        finished("main") < finished("side-b"),
        "main before sidecars"
    );
    assert!(finished("side-b") < finished("side-a"), "reverse order");
}

#[tokio::test]
async fn a_restarted_worker_keeps_its_metric_series() {
    let node = Node::start().await;
    let mut p = node.run(&pod(
        "Always",
        "    readinessProbe:\n      exec: {command: [check]}\n      periodSeconds: 1\n",
    ));
    node.until(&p, Duration::from_secs(5), "ready", ready).await;
    // The same pod with another image (an API pod's image update): the
    // container's spec changed, so its probe worker is replaced.
    if let Some(spec) = p.pod.spec.as_mut() {
        spec.containers[0].image = Some("localhost/berth/busybox:other".into());
    }
    node.fake.add_image("localhost/berth/busybox:other");
    node.config.apply(Snapshot {
        pods: vec![p.clone()],
        errors: vec![],
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let text = node.metrics.probes.encode();
    assert!(
        text.contains(
            "prober_probe_duration_seconds_count{probe_type=\"Readiness\",container=\"web\""
        ),
        "the successor's series stay registered: {text}"
    );
}
