//! The kubelet's events as the runtime manager records them, against the
//! in-process fake CRI: Pulling/Pulled/Created/Started on a first start,
//! BackOff in a crash loop, Killing on removal, Failed on pull errors.

use std::sync::Arc;

use berth_agent::events::{EventRecorder, EventType, Recorded};
use berth_agent::metrics::Metrics;
use berth_agent::runtime::{RuntimeManager, Settings};
use berth_agent::source::{SourcedPod, manifest::parse_manifest};
use berth_agent::status::Transient;
use berth_cri::fake::FakeRuntime;
use tokio::sync::mpsc::Receiver;

const IMAGE: &str = "localhost/berth/busybox:1.36";

struct Env {
    fake: FakeRuntime,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Self {
        Self {
            fake: FakeRuntime::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn manager(&self) -> (RuntimeManager, Receiver<Recorded>) {
        let (events, rx) = EventRecorder::channel(1000, None);
        let m = RuntimeManager::new(
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
        .with_events(events)
        .with_cgroups(
            berth_agent::cgroups::PodCgroups::new(
                std::sync::Arc::new(berth_agent::cgroups::RecordingManager::default()),
                "/berth-test-kubepods",
            )
            .expect("a valid cgroup root"),
        );
        (m, rx)
    }

    fn pod(&self, yaml: &str) -> SourcedPod {
        parse_manifest(&self.dir.path().join("p.yaml"), yaml.as_bytes(), "node-a")
            .expect("test manifest parses")
    }
}

fn web(policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  restartPolicy: Always\n  containers:\n  - name: web\n    image: {IMAGE}\n    imagePullPolicy: {policy}\n"
    )
}

fn drain(rx: &mut Receiver<Recorded>) -> Vec<Recorded> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn reasons(events: &[Recorded]) -> Vec<&str> {
    events.iter().map(|e| e.reason.as_str()).collect()
}

async fn sync(m: &RuntimeManager, p: &SourcedPod, t: &mut Transient) {
    let uid = p.pod.metadata.uid.clone().unwrap();
    m.sync_pod(&uid, Some(p), t).await.expect("sync succeeds");
}

#[tokio::test]
async fn first_start_pulls_creates_and_starts() {
    let env = Env::new().await;
    env.fake.set_pullable(IMAGE);
    let (m, mut rx) = env.manager().await;
    let p = env.pod(&web("IfNotPresent"));
    sync(&m, &p, &mut Transient::default()).await;
    let events = drain(&mut rx);
    assert_eq!(
        reasons(&events),
        ["Pulling", "Pulled", "Created", "Started"],
        "{events:#?}"
    );
    let uid = p.pod.metadata.uid.clone().unwrap();
    for e in &events {
        assert_eq!(e.type_, EventType::Normal);
        assert_eq!(e.object.name, "web-node-a");
        assert_eq!(e.object.namespace, "default");
        assert_eq!(
            e.object.uid, uid,
            "a static pod's events name the static pod"
        );
        assert_eq!(e.object.field_path.as_deref(), Some("spec.containers{web}"));
    }
    assert_eq!(events[0].message, format!("Pulling image \"{IMAGE}\""));
    let pulled = &events[1].message;
    assert!(
        pulled.starts_with(&format!("Successfully pulled image \"{IMAGE}\" in "))
            && pulled.contains(" including waiting). Image size: ")
            && pulled.ends_with(" bytes."),
        "{pulled}"
    );
    assert_eq!(events[2].message, "Created container: web");
    assert_eq!(events[3].message, "Started container web");

    // An image already there: Pulled "already present".
    let env = Env::new().await;
    env.fake.add_image(IMAGE);
    let (m, mut rx) = env.manager().await;
    sync(
        &m,
        &env.pod(&web("IfNotPresent")),
        &mut Transient::default(),
    )
    .await;
    let events = drain(&mut rx);
    assert_eq!(reasons(&events), ["Pulled", "Created", "Started"]);
    assert_eq!(
        events[0].message,
        format!("Container image \"{IMAGE}\" already present on machine")
    );
}

#[tokio::test]
async fn crash_loop_records_back_off_and_removal_records_killing() {
    let env = Env::new().await;
    env.fake.add_image(IMAGE);
    env.fake.on_start_exit("web", 1);
    let (m, mut rx) = env.manager().await;
    let p = env.pod(&web("IfNotPresent"));
    let uid = p.pod.metadata.uid.clone().unwrap();
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await; // starts, exits
    sync(&m, &p, &mut t).await; // restarts at once
    drain(&mut rx);
    sync(&m, &p, &mut t).await; // back-off
    sync(&m, &p, &mut t).await; // still in back-off: same event again
    let events = drain(&mut rx);
    assert_eq!(reasons(&events), ["BackOff", "BackOff"], "{events:#?}");
    assert_eq!(events[0].type_, EventType::Warning);
    assert_eq!(
        events[0].message,
        format!("Back-off restarting failed container web in pod web-node-a_default({uid})")
    );
    assert_eq!(events[0].message, events[1].message, "aggregatable");

    // A running pod removed: Killing per running container.
    env.fake.clear_on_start_exit("web");
    let env2 = Env::new().await;
    env2.fake.add_image(IMAGE);
    let (m2, mut rx2) = env2.manager().await;
    let p2 = env2.pod(&web("IfNotPresent"));
    let uid2 = p2.pod.metadata.uid.clone().unwrap();
    sync(&m2, &p2, &mut Transient::default()).await;
    drain(&mut rx2);
    m2.sync_pod(&uid2, None, &mut Transient::default())
        .await
        .unwrap();
    let events = drain(&mut rx2);
    assert_eq!(reasons(&events), ["Killing"], "{events:#?}");
    assert_eq!(events[0].message, "Stopping container web");
    assert_eq!(events[0].object.name, "web-node-a");
    assert_eq!(events[0].object.uid, uid2);
    assert_eq!(
        events[0].object.field_path.as_deref(),
        Some("spec.containers{web}")
    );
}

#[tokio::test]
async fn pull_failure_then_back_off() {
    let env = Env::new().await;
    // Not pullable: the pull fails.
    let (m, mut rx) = env.manager().await;
    let p = env.pod(&web("IfNotPresent"));
    let mut t = Transient::default();
    sync(&m, &p, &mut t).await;
    let events = drain(&mut rx);
    assert_eq!(
        reasons(&events),
        ["Pulling", "Failed", "Failed"],
        "{events:#?}"
    );
    assert!(
        events[1]
            .message
            .starts_with(&format!("Failed to pull image \"{IMAGE}\": ")),
        "{}",
        events[1].message
    );
    assert_eq!(events[2].message, "Error: ErrImagePull");
    sync(&m, &p, &mut t).await;
    let events = drain(&mut rx);
    assert_eq!(reasons(&events), ["BackOff", "Failed"], "{events:#?}");
    assert_eq!(events[0].type_, EventType::Normal);
    assert_eq!(
        events[0].message,
        format!("Back-off pulling image \"{IMAGE}\"")
    );
    assert_eq!(events[1].message, "Error: ImagePullBackOff");
}

#[tokio::test]
async fn env_from_config_maps_and_secrets_resolves_like_the_kubelet() {
    use berth_plugins::volume::{ObjectData, ObjectKind};
    let env = Env::new().await;
    let (m, _rx) = env.manager().await;
    let data = |pairs: &[(&str, &str)]| ObjectData {
        data: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        binary_data: Default::default(),
    };
    m.objects().insert(
        ObjectKind::ConfigMap,
        "default",
        "cfg",
        Some(data(&[("A", "1"), ("bad key", "x")])),
    );
    m.objects().insert(
        ObjectKind::Secret,
        "default",
        "s",
        Some(data(&[("pw", "hunter2")])),
    );
    m.objects()
        .insert(ObjectKind::ConfigMap, "default", "gone", None);
    let pod_with = |env_yaml: &str| {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: e, namespace: default}}\nspec:\n  containers:\n  - name: c\n    image: {IMAGE}\n{env_yaml}"
        );
        let pod: k8s_openapi::api::core::v1::Pod = serde_saphyr::from_str(&yaml).unwrap();
        pod
    };
    let resolve = |pod: &k8s_openapi::api::core::v1::Pod| {
        m.container_env(pod, &pod.spec.as_ref().unwrap().containers[0], &[])
    };
    let ok = pod_with(
        "    envFrom:\n    - configMapRef: {name: cfg}\n    - {prefix: S_, secretRef: {name: s}}\n    - configMapRef: {name: gone, optional: true}\n    env:\n    - {name: B, value: '$(A)-$(S_pw)'}\n    - name: P\n      valueFrom: {secretKeyRef: {name: s, key: pw}}\n    - name: O\n      valueFrom: {configMapKeyRef: {name: cfg, key: nope, optional: true}}\n",
    );
    let got = resolve(&ok).unwrap();
    assert_eq!(
        got,
        vec![
            ("A".to_string(), "1".to_string()),
            ("S_pw".into(), "hunter2".into()),
            ("B".into(), "1-hunter2".into()),
            ("P".into(), "hunter2".into()),
        ]
    );
    let missing = pod_with("    envFrom:\n    - configMapRef: {name: gone}\n");
    assert_eq!(
        resolve(&missing).unwrap_err(),
        "configmap \"gone\" not found"
    );
    let missing = pod_with(
        "    env:\n    - name: X\n      valueFrom: {secretKeyRef: {name: nosuch, key: k}}\n",
    );
    // Never fetched (no API server in this test): the error names the object, no values.
    let err = resolve(&missing).unwrap_err();
    assert!(err.contains("secret default/nosuch"), "{err}");
    let no_key = pod_with(
        "    env:\n    - name: X\n      valueFrom: {secretKeyRef: {name: s, key: other}}\n",
    );
    let err = resolve(&no_key).unwrap_err();
    assert_eq!(err, "couldn't find key other in Secret default/s");
    assert!(!err.contains("hunter2"));
}
