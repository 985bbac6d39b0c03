use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use berth_cri::api;
use berth_cri::fake::FakeRuntime;

use super::super::cgroup::tests::write_v1;
use super::super::cgroup::{CgroupFs, CgroupVersion};
use super::*;
use crate::cgroups::{Driver, PodCgroups, RecordingManager};
use crate::observed::keys;

const S: i64 = 1_000_000_000;
/// A wall-clock time for readings: 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600 * S;

const MEMINFO: &str = "MemTotal:        8040516 kB\nMemFree:          512000 kB\n\
Active(anon):      20000 kB\nInactive(anon):    30000 kB\nInactive(file):  2000000 kB\n";
const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3293      31    0    0    0     0          0         0     3293      31    0    0    0     0       0          0
  eth0: 1000    10    0    0    0     0          0         0   2000    20    0    0    0     0       0          0
";

/// A host tree: v1 cgroups, /proc, a root dir and a logs dir.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let host = Host {
            dir: tempfile::tempdir().unwrap(),
        };
        let proc = host.proc();
        std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        std::fs::create_dir_all(proc.join("net")).unwrap();
        std::fs::create_dir_all(proc.join("4242/net")).unwrap();
        std::fs::write(proc.join("meminfo"), MEMINFO).unwrap();
        std::fs::write(
            proc.join("stat"),
            "cpu  227207 0 14827 58036 832 0 68 298 0 0\nbtime 1767225000\n",
        )
        .unwrap();
        std::fs::write(proc.join("sys/kernel/pid_max"), "4194304\n").unwrap();
        std::fs::write(proc.join("net/dev"), NET_DEV).unwrap();
        std::fs::write(proc.join("4242/net/dev"), NET_DEV.replace("1000", "77")).unwrap();
        std::fs::create_dir_all(host.root_dir()).unwrap();
        std::fs::create_dir_all(host.logs_dir()).unwrap();
        host
    }

    fn cgroup_root(&self) -> PathBuf {
        self.dir.path().join("cgroup")
    }

    fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn paths(&self) -> HostPaths {
        HostPaths {
            cgroups: CgroupFs {
                version: CgroupVersion::V1,
                root: self.cgroup_root(),
            },
            proc: self.proc(),
        }
    }

    fn settings(&self) -> StatsSettings {
        StatsSettings {
            node_name: "node-a".into(),
            root_dir: self.root_dir(),
            pod_logs_dir: self.logs_dir(),
            cgroup_root: "/kubepods".into(),
        }
    }

    fn collector(&self) -> Collector {
        Collector {
            host: self.paths(),
            settings: self.settings(),
            pods_cgroup: Some("/kubepods".into()),
            cpu: Mutex::new(CpuSampler::default()),
            du: Mutex::new(DuCache::new(Duration::ZERO)),
        }
    }

    /// The node, the cgroup root, pod `uid` (burstable) and `containers` in it.
    fn cgroups(&self, cpu_ns: u64, uid: &str, containers: &[&str]) {
        let root = self.cgroup_root();
        write_v1(
            &root,
            "/",
            cpu_ns * 4,
            3_657_367_552,
            9_223_372_036_854_771_712,
        );
        write_v1(&root, "/kubepods", cpu_ns * 2, 3_000_000_000, 7_000_000_000);
        let pod = format!("/kubepods/burstable/pod{uid}");
        write_v1(
            &root,
            &pod,
            cpu_ns,
            2_500_000_000,
            9_223_372_036_854_771_712,
        );
        std::fs::write(
            root.join("pids")
                .join(pod.trim_start_matches('/'))
                .join("cgroup.procs"),
            "4242\n",
        )
        .unwrap();
        for c in containers {
            write_v1(
                &root,
                &format!("{pod}/{c}"),
                cpu_ns / 2,
                2_450_000_000,
                3_000_000_000,
            );
        }
    }

    /// An emptyDir, a memory emptyDir, a container log and the hosts file of pod `uid`.
    fn pod_files(&self, uid: &str, container: &str) {
        let pod_dir = self.root_dir().join("pods").join(uid);
        let cache = pod_dir.join("volumes/kubernetes.io~empty-dir/cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("data"), vec![7u8; 64 * 1024]).unwrap();
        let mem = pod_dir.join("volumes/kubernetes.io~empty-dir/mem");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(mem.join("scratch"), vec![7u8; 8 * 1024]).unwrap();
        std::fs::write(pod_dir.join("etc-hosts"), "127.0.0.1 localhost\n").unwrap();
        let log = self
            .logs_dir()
            .join(format!("default_web_{uid}"))
            .join(container);
        std::fs::create_dir_all(&log).unwrap();
        std::fs::write(log.join("0.log"), vec![b'x'; 10_000]).unwrap();
    }
}

fn u64v(value: u64) -> Option<api::UInt64Value> {
    Some(api::UInt64Value { value })
}

/// What containerd 1.6 answers for a running container.
fn cri_stats(at: i64, cpu_ns: u64, mountpoint: &Path) -> api::ContainerStats {
    api::ContainerStats {
        cpu: Some(api::CpuUsage {
            timestamp: at,
            usage_core_nano_seconds: u64v(cpu_ns),
            usage_nano_cores: None,
        }),
        memory: Some(api::MemoryUsage {
            timestamp: at,
            working_set_bytes: u64v(40_000_000),
            ..Default::default()
        }),
        writable_layer: Some(api::FilesystemUsage {
            timestamp: at,
            fs_id: Some(api::FilesystemIdentifier {
                mountpoint: mountpoint.display().to_string(),
            }),
            used_bytes: u64v(12_288),
            inodes_used: u64v(3),
        }),
        ..Default::default()
    }
}

fn pod_plan(host: &Host, uid: &str, cri_cpu: Option<(i64, u64)>) -> PodPlan {
    let pod_dir = host.root_dir().join("pods").join(uid);
    PodPlan {
        pod_ref: PodReference {
            name: "web".into(),
            namespace: "default".into(),
            uid: uid.into(),
        },
        started_at: NOW - 60 * S,
        cgroup: Some(format!("/kubepods/burstable/pod{uid}")),
        host_network: false,
        containers: vec![
            ContainerPlan {
                id: "c1id".into(),
                name: "app".into(),
                created_at: NOW - 50 * S,
                cri: cri_cpu.map(|(at, ns)| cri_stats(at, ns, &host.root_dir())),
            },
            ContainerPlan {
                id: "c2id".into(),
                name: "sidecar".into(),
                created_at: NOW - 40 * S,
                cri: None,
            },
        ],
        volumes: vec![
            VolumePlan {
                name: "cache".into(),
                path: pod_dir.join("volumes/kubernetes.io~empty-dir/cache"),
                ephemeral: true,
            },
            VolumePlan {
                name: "mem".into(),
                path: pod_dir.join("volumes/kubernetes.io~empty-dir/mem"),
                ephemeral: false,
            },
            VolumePlan {
                name: "not-mounted-yet".into(),
                path: pod_dir.join("volumes/kubernetes.io~empty-dir/not-mounted-yet"),
                ephemeral: true,
            },
        ],
        log_dir: Some(host.logs_dir().join(format!("default_web_{uid}"))),
        etc_hosts: pod_dir.join("etc-hosts"),
    }
}

#[test]
fn collect_reads_the_node_the_pod_and_its_containers() {
    let host = Host::new();
    host.cgroups(10 * S as u64, "u1", &["c1id", "c2id"]);
    host.pod_files("u1", "app");
    let collector = host.collector();
    let plan = Plan {
        pods: vec![pod_plan(&host, "u1", Some((NOW, 5 * S as u64)))],
        image_fs: Some(api::ImageFsInfoResponse {
            image_filesystems: vec![api::FilesystemUsage {
                timestamp: NOW,
                fs_id: Some(api::FilesystemIdentifier {
                    mountpoint: host.root_dir().display().to_string(),
                }),
                used_bytes: u64v(1 << 30),
                inodes_used: u64v(5000),
            }],
            container_filesystems: vec![],
        }),
    };
    let s = collector.collect(plan, NOW);

    // The node.
    let node = &s.node;
    assert_eq!(node.node_name, "node-a");
    assert_eq!(node.start_time, Time::from_nanos(1_767_225_000 * S));
    let cpu = node.cpu.as_ref().unwrap();
    assert_eq!(cpu.usage_core_nano_seconds, Some(40 * S as u64));
    assert_eq!(cpu.usage_nano_cores, None, "one reading: no rate yet");
    let mem = node.memory.as_ref().unwrap();
    let ws = 3_657_367_552 - 2_398_932_992;
    assert_eq!(mem.working_set_bytes, Some(ws));
    assert_eq!(mem.available_bytes, Some(8_040_516 * 1024 - ws));
    assert_eq!(mem.usage_bytes, Some(3_657_367_552));
    let net = node.network.as_ref().unwrap();
    assert_eq!(net.default_interface.rx_bytes, Some(1000));
    assert_eq!(net.interfaces.len(), 1, "lo left out");
    let fs = node.fs.as_ref().unwrap();
    assert!(fs.capacity_bytes.unwrap() > 0 && fs.used_bytes.is_some() && fs.inodes.is_some());
    let rt = node.runtime.as_ref().unwrap();
    let image_fs = rt.image_fs.as_ref().unwrap();
    assert_eq!(image_fs.used_bytes, Some(1 << 30));
    assert_eq!(image_fs.inodes_used, Some(5000));
    assert_eq!(
        image_fs.capacity_bytes, fs.capacity_bytes,
        "statvfs of its mountpoint"
    );
    assert_eq!(rt.container_fs, rt.image_fs, "one filesystem for both");
    let rlimit = node.rlimit.as_ref().unwrap();
    assert_eq!(rlimit.max_pid, Some(4_194_304));
    assert!(rlimit.num_of_running_processes.is_some_and(|n| n > 0));
    assert_eq!(node.system_containers.len(), 1);
    let pods_sc = &node.system_containers[0];
    assert_eq!(pods_sc.name, "pods");
    assert_eq!(
        pods_sc.cpu.as_ref().unwrap().usage_core_nano_seconds,
        Some(20 * S as u64)
    );
    assert_eq!(
        pods_sc.memory.as_ref().unwrap().available_bytes,
        Some(7_000_000_000 - (3_000_000_000 - 2_398_932_992))
    );

    // The pod: its cgroup, its namespace's network, volumes, ephemeral storage.
    assert_eq!(s.pods.len(), 1);
    let pod = &s.pods[0];
    assert_eq!(pod.pod_ref.uid, "u1");
    assert_eq!(pod.start_time, Time::from_nanos(NOW - 60 * S));
    assert_eq!(
        pod.cpu.as_ref().unwrap().usage_core_nano_seconds,
        Some(10 * S as u64)
    );
    let pm = pod.memory.as_ref().unwrap();
    assert_eq!(pm.working_set_bytes, Some(2_500_000_000 - 2_398_932_992));
    assert_eq!(pm.available_bytes, None, "no pod memory limit");
    assert_eq!(pm.rss_bytes, Some(7_610_368));
    assert_eq!(pod.process_stats.as_ref().unwrap().process_count, Some(7));
    assert_eq!(
        pod.network.as_ref().unwrap().default_interface.rx_bytes,
        Some(77),
        "the pod's own namespace, through pid 4242"
    );
    let names: Vec<&str> = pod.volume_stats.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        ["cache", "mem"],
        "a volume not there yet is left out"
    );
    let cache = &pod.volume_stats[0].fs;
    assert!(cache.used_bytes.unwrap() >= 64 * 1024);
    assert_eq!(cache.inodes_used, Some(2));
    assert!(cache.capacity_bytes.is_some() && cache.inodes_free.is_some());

    // Container 1 from the runtime, with details from its cgroup.
    assert_eq!(pod.containers.len(), 2);
    let app = &pod.containers[0];
    assert_eq!(app.name, "app");
    assert_eq!(app.start_time, Time::from_nanos(NOW - 50 * S));
    assert_eq!(
        app.cpu.as_ref().unwrap().usage_core_nano_seconds,
        Some(5 * S as u64)
    );
    let am = app.memory.as_ref().unwrap();
    assert_eq!(
        am.working_set_bytes,
        Some(40_000_000),
        "the runtime's figure"
    );
    assert_eq!(
        am.usage_bytes,
        Some(2_450_000_000),
        "filled from the cgroup"
    );
    assert_eq!(am.available_bytes, Some(3_000_000_000 - 40_000_000));
    let rootfs = app.rootfs.as_ref().unwrap();
    assert_eq!(rootfs.used_bytes, Some(12_288));
    assert_eq!(rootfs.inodes_used, Some(3));
    assert!(rootfs.capacity_bytes.is_some());
    let logs = app.logs.as_ref().unwrap();
    assert!(logs.used_bytes.unwrap() >= 10_000);
    assert_eq!(logs.inodes_used, Some(2), "the directory and 0.log");

    // Container 2 from its cgroup alone: no writable layer, no logs yet.
    let side = &pod.containers[1];
    assert_eq!(
        side.cpu.as_ref().unwrap().usage_core_nano_seconds,
        Some(5 * S as u64)
    );
    assert_eq!(
        side.memory.as_ref().unwrap().working_set_bytes,
        Some(2_450_000_000 - 2_398_932_992)
    );
    assert!(side.rootfs.is_none() && side.logs.is_none());

    // Ephemeral storage: writable layer + logs + the disk emptyDir + hosts file.
    let eph = pod.ephemeral_storage.as_ref().unwrap();
    let etc_hosts = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(host.root_dir().join("pods/u1/etc-hosts"))
            .unwrap()
            .blocks()
            * 512
    };
    assert_eq!(
        eph.used_bytes,
        Some(12_288 + logs.used_bytes.unwrap() + cache.used_bytes.unwrap() + etc_hosts)
    );
    assert_eq!(eph.inodes_used, Some(3 + 2 + 2 + 1));
    assert_eq!(eph.capacity_bytes, fs.capacity_bytes);

    // Two seconds later: rates from the second readings.
    host.cgroups(12 * S as u64, "u1", &["c1id", "c2id"]);
    let plan = Plan {
        pods: vec![pod_plan(&host, "u1", Some((NOW + 2 * S, 6 * S as u64)))],
        image_fs: None,
    };
    let s = collector.collect(plan, NOW + 2 * S);
    // 8 CPU-seconds over 2 s.
    assert_eq!(s.node.cpu.unwrap().usage_nano_cores, Some(4 * S as u64));
    assert!(s.node.runtime.is_none());
    let pod = &s.pods[0];
    assert_eq!(pod.cpu.as_ref().unwrap().usage_nano_cores, Some(S as u64));
    assert_eq!(
        pod.containers[0].cpu.as_ref().unwrap().usage_nano_cores,
        Some(500_000_000),
        "from the runtime's timestamps"
    );
    assert_eq!(
        pod.containers[1].cpu.as_ref().unwrap().usage_nano_cores,
        Some(500_000_000)
    );

    // The pod is gone: its counters are forgotten.
    collector.collect(Plan::default(), NOW + 4 * S);
    assert_eq!(
        lock(&collector.cpu).len(),
        2,
        "the node and the pods cgroup"
    );
}

#[test]
fn host_network_pods_have_no_network_and_the_runtimes_rate_wins() {
    let host = Host::new();
    host.cgroups(10 * S as u64, "u2", &[]);
    let collector = host.collector();
    let mut plan = pod_plan(&host, "u2", Some((NOW, 5 * S as u64)));
    plan.host_network = true;
    if let Some(cpu) = plan.containers[0].cri.as_mut().and_then(|s| s.cpu.as_mut()) {
        cpu.usage_nano_cores = u64v(123);
    }
    let s = collector.collect(
        Plan {
            pods: vec![plan],
            image_fs: None,
        },
        NOW,
    );
    let pod = &s.pods[0];
    assert!(pod.network.is_none());
    assert_eq!(
        pod.containers[0].cpu.as_ref().unwrap().usage_nano_cores,
        Some(123)
    );
    assert!(pod.containers[1].cpu.is_none(), "no cgroup for it: nothing");
}

// ----- through the runtime -----

/// The server's handlers need a `Send` future.
#[allow(dead_code)]
fn summary_future_is_send(provider: &StatsProvider) {
    fn send<T: Send>(_: T) {}
    send(provider.summary(&[]));
}

fn desired_pod(uid: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": uid},
        "spec": {
            "containers": [{"name": "app", "image": "busybox",
                            "resources": {"requests": {"cpu": "100m"}}}],
            "volumes": [{"name": "cache", "emptyDir": {}}],
        },
    }))
    .unwrap()
}

/// Run pod `uid`'s sandbox and its `app` container in the fake; return the
/// container's ID.
async fn run_pod(client: &RuntimeClient, uid: &str) -> String {
    let labels: HashMap<String, String> = [
        (keys::POD_UID.to_string(), uid.to_string()),
        (keys::POD_NAME.to_string(), "web".to_string()),
        (keys::POD_NAMESPACE.to_string(), "default".to_string()),
    ]
    .into();
    let sandbox_config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "web".into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        labels: labels.clone(),
        ..Default::default()
    };
    let sandbox = client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .pod_sandbox_id;
    let mut container_labels = labels;
    container_labels.insert(keys::CONTAINER_NAME.into(), "app".into());
    let id = client
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox,
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(api::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                labels: container_labels,
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .unwrap()
        .container_id;
    client
        .start_container(api::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn summary_asks_the_runtime_and_falls_back_to_cgroups() {
    let fake = FakeRuntime::start().await;
    fake.add_image("busybox");
    let client = fake.client().await;
    let id = run_pod(&client, "u9").await;
    let cache = RuntimeCache::new();
    let mut pleg = crate::pleg::Pleg::new(
        client.clone(),
        cache.clone(),
        Arc::new(crate::metrics::Metrics::new()),
    );
    pleg.relist().await.unwrap();

    let host = Host::new();
    host.cgroups(10 * S as u64, "u9", &[&id]);
    host.pod_files("u9", "app");
    let cgroups = PodCgroups::new(
        Arc::new(RecordingManager::new(Driver::Cgroupfs)),
        "/kubepods",
    )
    .unwrap();
    let provider = StatsProvider::with_host(client, cache, cgroups, host.settings(), host.paths())
        .with_du_ttl(Duration::ZERO);
    let pods = [desired_pod("u9")];

    // containerd 1.6's answer: the runtime's CPU, working set and writable layer.
    fake.script_container_stats(&id, cri_stats(NOW, 5 * S as u64, &host.root_dir()));
    let s = provider.summary(&pods).await.unwrap();
    assert_eq!(s.pods.len(), 1);
    let pod = &s.pods[0];
    assert_eq!(
        pod.pod_ref,
        PodReference {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u9".into()
        }
    );
    assert_eq!(
        pod.cpu.as_ref().unwrap().usage_core_nano_seconds,
        Some(10 * S as u64),
        "the burstable pod cgroup"
    );
    assert_eq!(pod.volume_stats.len(), 1);
    assert_eq!(pod.volume_stats[0].name, "cache");
    let app = &pod.containers[0];
    assert_eq!(app.name, "app");
    assert_eq!(
        app.memory.as_ref().unwrap().working_set_bytes,
        Some(40_000_000)
    );
    assert_eq!(app.rootfs.as_ref().unwrap().used_bytes, Some(12_288));
    assert!(app.logs.is_some());
    assert_eq!(fake.call_count("ImageFsInfo"), 1);
    assert!(s.node.runtime.is_none(), "ImageFsInfo unimplemented");

    // A runtime without ListContainerStats: the container's cgroup.
    fake.enable_container_stats(false);
    fake.set_image_fs_info(Some(api::ImageFsInfoResponse {
        image_filesystems: vec![api::FilesystemUsage {
            used_bytes: u64v(99),
            ..Default::default()
        }],
        container_filesystems: vec![],
    }));
    let s = provider.summary(&pods).await.unwrap();
    let app = &s.pods[0].containers[0];
    assert_eq!(
        app.cpu.as_ref().unwrap().usage_core_nano_seconds,
        Some(5 * S as u64)
    );
    assert_eq!(
        app.memory.as_ref().unwrap().working_set_bytes,
        Some(2_450_000_000 - 2_398_932_992)
    );
    assert!(app.rootfs.is_none());
    let image_fs = s.node.runtime.as_ref().unwrap().image_fs.as_ref().unwrap();
    assert_eq!(image_fs.used_bytes, Some(99));
    assert!(image_fs.capacity_bytes.is_none(), "no mountpoint given");

    // The JSON the endpoint serves, and the metrics text from it.
    let json = serde_json::to_value(&s).unwrap();
    assert!(json["pods"][0]["containers"][0]["cpu"]["usageCoreNanoSeconds"].is_u64());
    assert!(json["pods"][0]["ephemeral-storage"]["usedBytes"].is_u64());
    let text = crate::stats::resource_metrics(&s);
    assert!(
        text.contains(
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 5 "
        ),
        "{text}"
    );

    // Any other failure of the runtime fails the summary.
    fake.enable_container_stats(true);
    fake.fail_next("ListContainerStats", tonic::Code::Internal, "boom");
    assert!(matches!(
        provider.summary(&pods).await,
        Err(StatsError::Runtime(_))
    ));

    // A pod the runtime holds that is no longer desired is still reported.
    let s = provider.summary(&[]).await.unwrap();
    assert_eq!(s.pods.len(), 1);
    assert_eq!(s.pods[0].pod_ref.uid, "u9");
    assert!(
        s.pods[0].cpu.is_none(),
        "its QoS, so its cgroup, is unknown"
    );
    assert_eq!(s.pods[0].containers.len(), 1);
}

#[test]
fn this_hosts_node_stats_read() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector {
        host: HostPaths::host(),
        settings: StatsSettings {
            node_name: "here".into(),
            root_dir: dir.path().to_path_buf(),
            pod_logs_dir: dir.path().to_path_buf(),
            cgroup_root: "/kubepods".into(),
        },
        pods_cgroup: None,
        cpu: Mutex::new(CpuSampler::default()),
        du: Mutex::new(DuCache::new(Duration::ZERO)),
    };
    let s = collector.collect(Plan::default(), now_ns());
    let cpu = s.node.cpu.expect("node cpu");
    assert!(cpu.usage_core_nano_seconds.is_some_and(|n| n > 0));
    let memory = s.node.memory.expect("node memory");
    assert!(memory.working_set_bytes.is_some_and(|n| n > 0));
    assert!(memory.available_bytes.is_some());
    assert!(s.node.fs.is_some());
    assert!(s.node.rlimit.and_then(|r| r.max_pid).is_some());
    assert!(!s.node.start_time.is_unset());
}
