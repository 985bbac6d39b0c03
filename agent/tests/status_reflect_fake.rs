//! The status reflects the agent's own successful calls at once, and the relist
//! stays the truth (issue 11): against the in-process fake CRI server.

use std::sync::Arc;

use berth_agent::metrics::Metrics;
use berth_agent::observed::ContainerState;
use berth_agent::pleg::{Pleg, RuntimeCache};
use berth_agent::runtime::{RuntimeManager, Settings};
use berth_agent::source::{SourcedPod, manifest::parse_manifest};
use berth_agent::status::{Transient, compute_pod_status};
use berth_cri::fake::FakeRuntime;

const IMAGE: &str = "localhost/berth/busybox:1.36";

struct Env {
    fake: FakeRuntime,
    dir: tempfile::TempDir,
    cache: Arc<RuntimeCache>,
}

impl Env {
    async fn new() -> Self {
        let fake = FakeRuntime::start().await;
        fake.add_image(IMAGE);
        Self {
            fake,
            dir: tempfile::tempdir().unwrap(),
            cache: RuntimeCache::new(),
        }
    }

    /// A manager as a newly started agent has, before it is given the cache.
    async fn bare_manager(&self) -> RuntimeManager {
        RuntimeManager::new(
            self.fake.client().await,
            Settings {
                node_name: "node-a".into(),
                node_ip: "192.0.2.10".into(),
                root_dir: self.dir.path().join("root"),
                pod_logs_dir: self.dir.path().join("logs"),
                cgroup_root: "/berth-test-kubepods".into(),
            },
            Arc::new(Metrics::new()),
        )
        .with_cgroups(
            berth_agent::cgroups::PodCgroups::new(
                Arc::new(berth_agent::cgroups::RecordingManager::default()),
                "/berth-test-kubepods",
            )
            .expect("a valid cgroup root"),
        )
    }

    async fn manager(&self) -> RuntimeManager {
        self.bare_manager()
            .await
            .with_runtime_cache(self.cache.clone())
    }

    async fn pleg(&self) -> Pleg {
        Pleg::new(
            self.fake.client().await,
            self.cache.clone(),
            Arc::new(Metrics::new()),
        )
    }

    fn pod(&self) -> SourcedPod {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - name: web\n    image: {IMAGE}\n"
        );
        parse_manifest(&self.dir.path().join("web.yaml"), yaml.as_bytes(), "node-a")
            .expect("test manifest parses")
    }
}

fn uid(p: &SourcedPod) -> String {
    p.pod.metadata.uid.clone().unwrap()
}

fn phase(env: &Env, p: &SourcedPod) -> String {
    let status = compute_pod_status(
        &p.pod,
        &env.cache.get(&uid(p)),
        &Transient::default(),
        "192.0.2.10",
        "containerd",
    );
    status.phase.unwrap_or_default()
}

#[tokio::test]
async fn own_start_shows_running_at_once_and_the_next_relist_supersedes_it() {
    let env = Env::new().await;
    let m = env.manager().await;
    let mut pleg = env.pleg().await;
    pleg.relist().await.expect("relist");
    let p = env.pod();
    let mut t = Transient::default();
    m.sync_pod(&uid(&p), Some(&p), &mut t).await.expect("sync");

    // No relist since the start: the status shows what the worker did.
    let observed = env.cache.get(&uid(&p));
    let sandbox = observed.ready_sandbox().expect("a ready sandbox shown");
    assert!(!sandbox.ips.is_empty(), "the sandbox's IP is shown");
    let c = observed
        .latest_container("web", false)
        .expect("container shown");
    assert_eq!(c.state, ContainerState::Running);
    assert_eq!(c.id, env.fake.containers()[0].id);
    assert_eq!(phase(&env, &p), "Running");
    assert!(env.cache.uids().contains(&uid(&p)));

    // The runtime changes behind the agent's back; the next relist is the truth.
    assert!(env.fake.exit_container(&c.id, 3));
    let changed = pleg.relist().await.expect("relist");
    assert!(changed.contains(&uid(&p)), "the relist announces the pod");
    let c = env.cache.get(&uid(&p));
    let c = c.latest_container("web", false).unwrap();
    assert_eq!(c.state, ContainerState::Exited);
    assert_eq!(c.exit_code, 3);
}

#[tokio::test]
async fn without_a_runtime_cache_the_status_waits_for_the_relist() {
    let env = Env::new().await;
    let m = env.bare_manager().await;
    let p = env.pod();
    m.sync_pod(&uid(&p), Some(&p), &mut Transient::default())
        .await
        .expect("sync");
    assert!(env.cache.get(&uid(&p)).is_empty());
    env.pleg().await.relist().await.expect("relist");
    assert_eq!(phase(&env, &p), "Running");
}

#[tokio::test]
async fn a_resync_asks_for_statuses_only_of_what_changed() {
    let env = Env::new().await;
    let m = env.manager().await;
    let mut pleg = env.pleg().await;
    let p = env.pod();
    let mut t = Transient::default();
    m.sync_pod(&uid(&p), Some(&p), &mut t).await.expect("sync");
    pleg.relist().await.expect("relist");

    // Unchanged since the relist: the lists alone settle it.
    env.fake.clear_calls();
    m.sync_pod(&uid(&p), Some(&p), &mut t)
        .await
        .expect("resync");
    assert_eq!(env.fake.call_count("PodSandboxStatus"), 0);
    assert_eq!(env.fake.call_count("ContainerStatus"), 0);
    assert_eq!(env.fake.call_count("CreateContainer"), 0);

    // The container exited and no relist saw it yet: its status is read
    // afresh (the list's state differs from the cache's) and it restarts.
    let id = env.fake.containers()[0].id.clone();
    assert!(env.fake.exit_container(&id, 1));
    env.fake.clear_calls();
    m.sync_pod(&uid(&p), Some(&p), &mut t)
        .await
        .expect("resync");
    assert_eq!(env.fake.call_count("ContainerStatus"), 1);
    assert_eq!(env.fake.call_count("StartContainer"), 1);
    let shown = env.cache.get(&uid(&p));
    let newest = shown.latest_container("web", false).unwrap();
    assert_ne!(newest.id, id, "the restarted container is shown at once");
    assert_eq!(newest.state, ContainerState::Running);
    assert_eq!(newest.restart_count, 1);
}
