//! The cgroup driver chosen at start-up, against the in-process fake CRI
//! server: the runtime's `RuntimeConfig` wins over `--cgroup-driver`,
//! Unimplemented (containerd 1.6, the runtime the tests run) falls back to the
//! flag, other failures are retried and then stop the start, and the systemd
//! driver on a host without systemd as PID 1 stops it too, naming the flag and
//! the reason, in the library and in the binary.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_agent::cgroups::driver::Retry;
use berth_agent::cgroups::systemd::{BusError, SYSTEMD_RUN_DIR};
use berth_agent::cgroups::{
    Driver, DriverChoice, DriverError, DriverSource, Host, Mode, PodCgroups, RecordingBus,
    driver_from_cri, new_manager,
};
use berth_cri::api;
use berth_cri::fake::FakeRuntime;

/// Upstream's three attempts, without its seconds of waiting.
fn quick() -> Retry {
    Retry {
        attempts: 3,
        first_delay: Duration::from_millis(10),
    }
}

fn choice(driver: Driver, source: DriverSource, flag: Driver) -> DriverChoice {
    DriverChoice {
        driver,
        source,
        flag,
    }
}

#[tokio::test]
async fn the_runtimes_driver_wins_over_the_flag() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    fake.set_cgroup_driver(Some(api::CgroupDriver::Systemd));
    assert_eq!(
        driver_from_cri(&client, Driver::Cgroupfs, quick())
            .await
            .unwrap(),
        choice(Driver::Systemd, DriverSource::Runtime, Driver::Cgroupfs)
    );
    fake.set_cgroup_driver(Some(api::CgroupDriver::Cgroupfs));
    assert_eq!(
        driver_from_cri(&client, Driver::Systemd, quick())
            .await
            .unwrap(),
        choice(Driver::Cgroupfs, DriverSource::Runtime, Driver::Systemd)
    );
    // Agreeing with the flag is the runtime's choice all the same.
    assert_eq!(
        driver_from_cri(&client, Driver::Cgroupfs, quick())
            .await
            .unwrap()
            .source,
        DriverSource::Runtime
    );
    assert_eq!(fake.call_count("RuntimeConfig"), 3, "one call each");
}

#[tokio::test]
async fn unimplemented_falls_back_to_the_flag_at_once() {
    // The fake answers Unimplemented by default, as containerd 1.6 does.
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    for flag in [Driver::Cgroupfs, Driver::Systemd] {
        assert_eq!(
            driver_from_cri(&client, flag, quick()).await.unwrap(),
            choice(flag, DriverSource::Flag, flag)
        );
    }
    assert_eq!(fake.call_count("RuntimeConfig"), 2, "no retry");

    // An answer without its Linux part says nothing (its zero would read as
    // systemd): the flag stands, as upstream.
    fake.set_runtime_config(Some(api::RuntimeConfigResponse { linux: None }));
    assert_eq!(
        driver_from_cri(&client, Driver::Cgroupfs, quick())
            .await
            .unwrap(),
        choice(Driver::Cgroupfs, DriverSource::Flag, Driver::Cgroupfs)
    );
}

#[tokio::test]
async fn other_failures_are_retried_then_stop_the_start() {
    let fake = FakeRuntime::start().await;
    let client = fake.client().await;
    // A runtime still starting: two failures, then the answer.
    fake.set_cgroup_driver(Some(api::CgroupDriver::Systemd));
    fake.fail_next("RuntimeConfig", tonic::Code::Unavailable, "starting");
    fake.fail_next("RuntimeConfig", tonic::Code::Internal, "not ready");
    assert_eq!(
        driver_from_cri(&client, Driver::Cgroupfs, quick())
            .await
            .unwrap()
            .driver,
        Driver::Systemd
    );
    assert_eq!(fake.call_count("RuntimeConfig"), 3);

    // Failing every time: three attempts, then an error that says what failed.
    fake.clear_calls();
    fake.fail_always(
        "RuntimeConfig",
        tonic::Code::Internal,
        "config store broken",
    );
    let e = driver_from_cri(&client, Driver::Cgroupfs, quick())
        .await
        .unwrap_err();
    assert!(
        matches!(e, DriverError::RuntimeConfig { attempts: 3, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(
            "cannot learn the cgroup driver from the container runtime: CRI RuntimeConfig failed 3 times"
        ),
        "{e}"
    );
    assert!(e.to_string().contains("config store broken"), "{e}");
    assert_eq!(fake.call_count("RuntimeConfig"), 3);

    // A driver this agent does not know.
    fake.clear_faults();
    fake.set_runtime_config(Some(api::RuntimeConfigResponse {
        linux: Some(api::LinuxRuntimeConfiguration { cgroup_driver: 7 }),
    }));
    let e = driver_from_cri(&client, Driver::Cgroupfs, quick())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the container runtime's RuntimeConfig names an unknown cgroup driver (7)"
    );
}

fn host(run_dir: &Path, bus: Arc<RecordingBus>) -> Host {
    Host {
        mode: Mode::Hybrid,
        systemd_run_dir: run_dir.to_path_buf(),
        bus,
    }
}

#[test]
fn systemd_without_systemd_as_pid_1_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("run-systemd-system");
    let bus = Arc::new(RecordingBus::default());
    let e = new_manager(
        choice(Driver::Systemd, DriverSource::Flag, Driver::Systemd),
        &host(&absent, bus.clone()),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!(
            "--cgroup-driver=systemd: systemd is not running as PID 1 on this host ({} is not a \
             directory), and the systemd cgroup driver makes every cgroup a systemd slice; use \
             --cgroup-driver=cgroupfs",
            absent.display()
        )
    );
    // Chosen by the runtime: the message says so, and what to change there.
    let e = new_manager(
        choice(Driver::Systemd, DriverSource::Runtime, Driver::Cgroupfs),
        &host(&absent, bus.clone()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(
            "--cgroup-driver: the container runtime's RuntimeConfig chose the systemd cgroup \
             driver (over --cgroup-driver=cgroupfs): systemd is not running as PID 1"
        ),
        "{e}"
    );
    assert!(e.ends_with("(containerd: SystemdCgroup = false)"), "{e}");
    assert!(bus.calls().is_empty(), "nothing asked of systemd");

    // systemd there, but its D-Bus API not usable.
    let bus = Arc::new(RecordingBus::default());
    bus.fail_check(BusError::Call("no system bus".into()));
    let e = new_manager(
        choice(Driver::Systemd, DriverSource::Flag, Driver::Systemd),
        &host(dir.path(), bus),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "--cgroup-driver=systemd: systemd's D-Bus API: no system bus; use --cgroup-driver=cgroupfs"
    );

    // cgroupfs asks nothing of systemd.
    let m = new_manager(
        choice(Driver::Cgroupfs, DriverSource::Flag, Driver::Cgroupfs),
        &host(&absent, Arc::new(RecordingBus::default())),
    )
    .unwrap();
    assert_eq!(m.driver(), Driver::Cgroupfs);
}

#[test]
fn systemd_with_systemd_running_makes_pod_cgroups_slices() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(RecordingBus::default());
    let m = new_manager(
        choice(Driver::Systemd, DriverSource::Runtime, Driver::Cgroupfs),
        &host(dir.path(), bus),
    )
    .unwrap();
    assert_eq!(m.driver(), Driver::Systemd);
    let pods = PodCgroups::new(m, "/kubepods").unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_str(
        r#"{"metadata": {"uid": "6b1f-22aa"}, "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "250m"}}}]}}"#,
    )
    .unwrap();
    assert_eq!(
        pods.cgroup_parent(&pod).unwrap(),
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b1f_22aa.slice"
    );
}

fn systemd_here() -> bool {
    Path::new(SYSTEMD_RUN_DIR).is_dir()
}

/// The whole agent, started as the binary starts it: it reaches the fake
/// runtime, asks it for its driver, and stops with the reason.
async fn run_agent(fake: &FakeRuntime, flag: Option<Driver>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    for d in ["manifests", "root", "logs"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let config = berth_agent::config::Config::load(berth_agent::config::Flags {
        container_runtime_endpoint: Some(fake.endpoint()),
        pod_manifest_path: Some(dir.path().join("manifests")),
        root_dir: Some(dir.path().join("root")),
        pod_logs_dir: Some(dir.path().join("logs")),
        node_name: Some("node-a".into()),
        status_address: Some("127.0.0.1:0".parse().unwrap()),
        port: Some(0),
        cgroup_driver: flag,
        ..Default::default()
    })
    .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        berth_agent::agent::run(config, cancel.clone()),
    )
    .await
    .expect("the agent stops by itself");
    cancel.cancel();
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_does_not_start_with_systemd_on_a_host_without_it() {
    let fake = FakeRuntime::start().await;
    let e = format!(
        "{:#}",
        run_agent(&fake, Some(Driver::Systemd)).await.unwrap_err()
    );
    assert!(e.starts_with("--cgroup-driver=systemd: "), "{e}");
    if systemd_here() {
        // Under systemd the D-Bus check stops it instead (see the README).
        assert!(e.contains("systemd's D-Bus API"), "{e}");
    } else {
        assert!(
            e.contains("systemd is not running as PID 1 on this host"),
            "{e}"
        );
    }
    assert_eq!(fake.call_count("RuntimeConfig"), 1);
    assert_eq!(fake.call_count("RunPodSandbox"), 0, "nothing was started");

    // The runtime asking for systemd stops it just as well, saying so.
    fake.set_cgroup_driver(Some(api::CgroupDriver::Systemd));
    let e = format!("{:#}", run_agent(&fake, None).await.unwrap_err());
    assert!(
        e.starts_with(
            "--cgroup-driver: the container runtime's RuntimeConfig chose the systemd cgroup \
             driver (over --cgroup-driver=cgroupfs)"
        ),
        "{e}"
    );
}

#[test]
fn the_binary_exits_naming_the_flag_and_the_reason() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(FakeRuntime::start());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth-agent"))
        .args(["--container-runtime-endpoint", &fake.endpoint()])
        .arg("--pod-manifest-path")
        .arg(dir.path().join("manifests"))
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .arg("--pod-logs-dir")
        .arg(dir.path().join("logs"))
        .args(["--node-name", "node-a", "--port", "0"])
        .args([
            "--status-address",
            "127.0.0.1:0",
            "--cgroup-driver",
            "systemd",
        ])
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("berth-agent starts");
    // The fake serves on `rt`'s threads while this one waits.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth-agent --cgroup-driver systemd did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("Error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"));
    assert!(
        error.starts_with("Error: --cgroup-driver=systemd: "),
        "{error}"
    );
    if !systemd_here() {
        assert!(
            error.contains("systemd is not running as PID 1 on this host"),
            "{error}"
        );
    }
    assert!(error.ends_with("use --cgroup-driver=cgroupfs"), "{error}");
    drop(fake);
}
