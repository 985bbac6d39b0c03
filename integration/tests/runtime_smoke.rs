//! Proves the test environment with raw CRI calls (no agent): a private
//! containerd runs pods from the locally built images, gives them IPs on its
//! own bridge, writes CRI logs, and leaves nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use berth_integration::{
    BUSYBOX_IMAGE, Containerd, PAUSE_IMAGE, api, mounts_under, processes_under, require_runtime,
    wait_for,
};

const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_UID: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";

fn sandbox_config(cd: &Containerd, name: &str, uid: &str) -> api::PodSandboxConfig {
    let labels: HashMap<String, String> =
        [(POD_NAME, name), (POD_NAMESPACE, "default"), (POD_UID, uid)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir(cd, uid).display().to_string(),
        labels,
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: cd.cgroup_parent(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn log_dir(cd: &Containerd, uid: &str) -> PathBuf {
    cd.temp_dir().join("logs").join(uid)
}

fn container_config(name: &str, image: &str, uid: &str, command: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: [(POD_UID, uid), (CONTAINER_NAME, name)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// RunPodSandbox, then check it is ready with an IP on the instance's subnet.
fn run_sandbox(
    cd: &Containerd,
    name: &str,
    uid: &str,
) -> anyhow::Result<(String, api::PodSandboxConfig)> {
    let config = sandbox_config(cd, name, uid);
    std::fs::create_dir_all(&config.log_directory)?;
    let req = api::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    };
    let endpoint = cd.endpoint();
    let id = berth_integration::block_on(async move {
        let client = berth_cri::RuntimeClient::connect(&endpoint, Default::default()).await?;
        anyhow::Ok(client.run_pod_sandbox(req).await?.pod_sandbox_id)
    })
    .with_context(|| format!("RunPodSandbox {name}; containerd log:\n{}", cd.log_tail(30)))?;
    let status = cd.sandbox_status(&id)?;
    ensure!(
        status.state == api::PodSandboxState::SandboxReady as i32,
        "sandbox {id} is not ready: {status:?}"
    );
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    ensure!(
        cd.contains_ip(&ip),
        "sandbox {id} has IP {ip:?}, not in {}",
        cd.subnet()
    );
    Ok((id, config))
}

fn mounts_naming(dir: &Path, id: &str) -> anyhow::Result<Vec<PathBuf>> {
    Ok(mounts_under(dir)?
        .into_iter()
        .filter(|m| m.mount_point.to_string_lossy().contains(id) || m.source.contains(id))
        .map(|m| m.mount_point)
        .collect())
}

#[tokio::test]
async fn sandbox_container_logs_and_cleanup() -> anyhow::Result<()> {
    let Some(_env) = require_runtime("sandbox_container_logs_and_cleanup") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let client = cd.client().await?;
    let uid = "0c1d2e3f-smoke-0001";

    let (sandbox_id, sandbox_config) = run_sandbox(&cd, "smoke", uid)?;
    ensure!(
        !mounts_naming(cd.temp_dir(), &sandbox_id)?.is_empty(),
        "expected the sandbox's netns/shm mounts under {}",
        cd.temp_dir().display()
    );

    // A container that prints and exits.
    let hello = client
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config(
                "c",
                BUSYBOX_IMAGE,
                uid,
                &["echo", "hello-berth"],
            )),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer; containerd log:\n{}", cd.log_tail(30)))?
        .container_id;
    client
        .start_container(api::StartContainerRequest {
            container_id: hello.clone(),
        })
        .await
        .with_context(|| format!("StartContainer; containerd log:\n{}", cd.log_tail(30)))?;
    let status = wait_for(
        Duration::from_secs(20),
        "the echo container to exit",
        || {
            cd.container_status(&hello)
                .ok()
                .filter(|s| s.state == api::ContainerState::ContainerExited as i32)
        },
    )?;
    ensure!(
        status.exit_code == 0,
        "echo exited {}: {status:?}",
        status.exit_code
    );
    let log_path = log_dir(&cd, uid).join("c/0.log");
    let log = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading the CRI log {}", log_path.display()))?;
    // CRI log format: "<RFC3339Nano> stdout F hello-berth".
    ensure!(
        log.lines().any(|l| l.ends_with(" stdout F hello-berth")),
        "{} does not hold hello-berth: {log:?}",
        log_path.display()
    );

    // A long-running container: exec into it, check the image's applets and network.
    let sleeper = client
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config(
                "s",
                BUSYBOX_IMAGE,
                uid,
                &["sleep", "3600"],
            )),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await?
        .container_id;
    client
        .start_container(api::StartContainerRequest {
            container_id: sleeper.clone(),
        })
        .await?;
    let exec = client
        .exec_sync(api::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: [
                "sh",
                "-c",
                "id -u; hostname; ip -4 addr show eth0 | grep -c inet",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 10,
        })
        .await?;
    let out = String::from_utf8_lossy(&exec.stdout);
    ensure!(
        exec.exit_code == 0 && out.lines().collect::<Vec<_>>() == ["0", "smoke", "1"],
        "exec: exit {} stdout {out:?} stderr {:?}",
        exec.exit_code,
        String::from_utf8_lossy(&exec.stderr)
    );

    // Tear down through CRI, as the agent will.
    client.stop_container(&sleeper, 2).await?;
    for id in [&hello, &sleeper] {
        client
            .remove_container(api::RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await?;
    }
    client
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.clone(),
        })
        .await?;
    client
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.clone(),
        })
        .await?;

    ensure!(
        cd.sandboxes()?.is_empty(),
        "sandboxes left: {:?}",
        cd.sandboxes()?
    );
    ensure!(
        cd.containers()?.is_empty(),
        "containers left: {:?}",
        cd.containers()?
    );
    let left = mounts_naming(cd.temp_dir(), &sandbox_id)?;
    ensure!(
        left.is_empty(),
        "mounts of sandbox {sandbox_id} left: {left:?}"
    );
    // The shim exits once its last task is gone; only containerd itself remains.
    let containerd_pid = cd.pid().map(|p| p as i32);
    wait_for(Duration::from_secs(10), "the shim to exit", || {
        let procs = processes_under(cd.temp_dir()).ok()?;
        procs
            .iter()
            .all(|p| Some(p.pid) == containerd_pid)
            .then_some(())
    })?;
    Ok(())
}

/// The sandbox image must end on SIGTERM with exit 0 (its trap), not linger
/// until SIGKILL. Run it as an ordinary container so StopContainer sends TERM.
#[tokio::test]
async fn pause_image_exits_0_on_sigterm() -> anyhow::Result<()> {
    let Some(_env) = require_runtime("pause_image_exits_0_on_sigterm") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let client = cd.client().await?;
    let uid = "0c1d2e3f-smoke-0002";
    let (sandbox_id, sandbox_config) = run_sandbox(&cd, "pause", uid)?;
    let mut config = container_config("p", PAUSE_IMAGE, uid, &[]);
    config.command.clear();
    let id = client
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id,
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await?
        .container_id;
    client
        .start_container(api::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    // Give the shell time to install its trap.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    client.stop_container(&id, 30).await?;
    let took = started.elapsed();
    let status = cd.container_status(&id)?;
    ensure!(
        status.exit_code == 0,
        "pause exited {} ({}), expected 0 from its TERM trap",
        status.exit_code,
        status.reason
    );
    ensure!(
        took < Duration::from_secs(10),
        "StopContainer took {took:?}"
    );
    Ok(())
}

/// Restarting containerd (an outage) keeps pods running, as on a real node.
#[tokio::test]
async fn restart_keeps_pods() -> anyhow::Result<()> {
    let Some(_env) = require_runtime("restart_keeps_pods") else {
        return Ok(());
    };
    let mut cd = Containerd::start()?;
    let uid = "0c1d2e3f-smoke-0003";
    let (sandbox_id, _) = run_sandbox(&cd, "outage", uid)?;
    let old_pid = cd.pid();
    cd.stop()?;
    ensure!(!cd.is_running(), "containerd still runs after stop()");
    ensure!(
        cd.sandboxes().is_err(),
        "CRI answered while containerd was stopped"
    );
    cd.start_again()?;
    ensure!(cd.pid() != old_pid, "same pid after restart");
    let status = cd.sandbox_status(&sandbox_id)?;
    ensure!(
        status.state == api::PodSandboxState::SandboxReady as i32,
        "sandbox not ready after the restart: {status:?}"
    );
    cd.restart()?;
    ensure!(cd.sandboxes()?.len() == 1, "sandbox lost on restart");
    Ok(())
}

/// Two instances at once: separate sockets, bridges, subnets; dropping one
/// (with a pod still running) removes all of its things and none of the other's.
#[test]
fn two_containerds_side_by_side() -> anyhow::Result<()> {
    let Some(_env) = require_runtime("two_containerds_side_by_side") else {
        return Ok(());
    };
    let a = std::thread::spawn(Containerd::start);
    let b = std::thread::spawn(Containerd::start);
    let a = a.join().map_err(|_| anyhow::anyhow!("start panicked"))??;
    let b = b.join().map_err(|_| anyhow::anyhow!("start panicked"))??;
    ensure!(a.endpoint() != b.endpoint() && a.bridge() != b.bridge() && a.subnet() != b.subnet());

    let (sa, _) = run_sandbox(&a, "left", "0c1d2e3f-side-000a")?;
    let (sb, _) = run_sandbox(&b, "right", "0c1d2e3f-side-000b")?;
    ensure!(
        a.sandboxes()?.iter().map(|s| &s.id).eq([&sa]),
        "a sees {:?}",
        a.sandboxes()?
    );
    ensure!(
        b.sandboxes()?.iter().map(|s| &s.id).eq([&sb]),
        "b sees {:?}",
        b.sandboxes()?
    );
    for cd in [&a, &b] {
        ensure!(
            berth_integration::link_exists(&cd.bridge()),
            "bridge {} missing",
            cd.bridge()
        );
    }

    // Drop `a` with its pod still running.
    let (a_dir, a_bridge, a_cgroup) = (a.temp_dir().to_path_buf(), a.bridge(), a.cgroup_parent());
    drop(a);
    ensure!(!a_dir.exists(), "{} still exists", a_dir.display());
    ensure!(
        !berth_integration::link_exists(&a_bridge),
        "bridge {a_bridge} left behind"
    );
    ensure!(
        mounts_under(&a_dir)?.is_empty(),
        "mounts left under {}",
        a_dir.display()
    );
    let procs = processes_under(&a_dir)?;
    ensure!(procs.is_empty(), "processes left: {procs:?}");
    for hierarchy in ["memory", "pids", "cpu"] {
        let cg = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(a_cgroup.trim_start_matches('/'));
        ensure!(!cg.exists(), "cgroup {} left behind", cg.display());
    }

    // `b` is untouched.
    let status = b.sandbox_status(&sb)?;
    ensure!(
        status.state == api::PodSandboxState::SandboxReady as i32,
        "b's sandbox: {status:?}"
    );
    ensure!(berth_integration::link_exists(&b.bridge()));
    Ok(())
}

/// The child process of `killed_test_process_is_swept`; does nothing as a test of its own.
#[test]
fn child_leaves_an_instance_behind() -> anyhow::Result<()> {
    if std::env::var_os("BERTH_IT_CHILD").is_none() {
        return Ok(());
    }
    let cd = Containerd::start()?;
    let uid = "0c1d2e3f-orphan-0001";
    let (sandbox_id, sandbox_config) = run_sandbox(&cd, "orphan", uid)?;
    let endpoint = cd.endpoint();
    let config = container_config("s", BUSYBOX_IMAGE, uid, &["sleep", "3600"]);
    berth_integration::block_on(async move {
        let client = berth_cri::RuntimeClient::connect(&endpoint, Default::default()).await?;
        let id = client
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: sandbox_id,
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await?
            .container_id;
        client
            .start_container(api::StartContainerRequest { container_id: id })
            .await?;
        anyhow::Ok(())
    })?;
    // Keep other test processes from sweeping it before the parent has looked.
    std::fs::write(cd.temp_dir().join(berth_integration::NO_SWEEP), "")?;
    use std::io::Write as _;
    println!("\nREADY {} {}", cd.temp_dir().display(), cd.bridge());
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(300));
    Ok(())
}

/// A test process killed with SIGKILL (no Drop) leaves containerd, a shim and
/// pods behind; `sweep_stale` (which `Containerd::start` runs for the number
/// it takes) removes all of it, and nothing of live instances.
#[test]
fn killed_test_process_is_swept() -> anyhow::Result<()> {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let Some(_env) = require_runtime("killed_test_process_is_swept") else {
        return Ok(());
    };
    let live = Containerd::start()?;
    let (live_sandbox, _) = run_sandbox(&live, "bystander", "0c1d2e3f-live-0001")?;

    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "child_leaves_an_instance_behind",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("BERTH_IT_CHILD", "1")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // libtest prints "test <name> ... " without a newline first.
            if let Some((_, rest)) = line.split_once("READY ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(90));
    // A hard crash: the test process and its containerd die without cleanup.
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    child.wait()?;
    let ready = ready.context("the child did not report READY")?;
    let (dir, bridge) = ready.split_once(' ').context("bad READY line")?;
    let dir = PathBuf::from(dir);
    let containerd_pid: i32 = std::fs::read_to_string(dir.join("containerd.pid"))?
        .trim()
        .parse()?;
    let _ = kill(Pid::from_raw(containerd_pid), Signal::SIGKILL);
    wait_for(
        Duration::from_secs(5),
        "the orphaned containerd to die",
        || {
            let procs = processes_under(&dir).ok()?;
            (!procs.iter().any(|p| p.pid == containerd_pid)).then_some(())
        },
    )?;

    let orphans = processes_under(&dir)?;
    let shim_sockets: Vec<PathBuf> = orphans.iter().filter_map(|p| p.shim_socket()).collect();
    ensure!(
        orphans.len() >= 3 && !shim_sockets.is_empty(),
        "expected a shim, a pause and a sleep process: {orphans:?}"
    );
    ensure!(
        shim_sockets.iter().all(|s| s.exists()),
        "shim socket paths computed wrong: {shim_sockets:?}"
    );
    ensure!(!mounts_under(&dir)?.is_empty());

    // Any test process may sweep it now (each sweeps once when it starts an
    // instance); ours keeps trying until the directory is gone.
    std::fs::remove_file(dir.join(berth_integration::NO_SWEEP))?;
    berth_integration::poll(Duration::from_secs(60), "the orphan to be swept", || {
        berth_integration::sweep_stale()?;
        Ok((!dir.exists()).then_some(()))
    })?;
    let left = processes_under(&dir)?;
    ensure!(left.is_empty(), "processes left: {left:?}");
    ensure!(
        mounts_under(&dir)?.is_empty(),
        "mounts left under {}",
        dir.display()
    );
    ensure!(
        !berth_integration::link_exists(bridge),
        "bridge {bridge} left"
    );
    let sockets_left: Vec<_> = shim_sockets.iter().filter(|s| s.exists()).collect();
    ensure!(
        sockets_left.is_empty(),
        "shim sockets left: {sockets_left:?}"
    );

    // The live instance is untouched.
    ensure!(live.temp_dir().exists());
    let status = live.sandbox_status(&live_sandbox)?;
    ensure!(status.state == api::PodSandboxState::SandboxReady as i32);
    Ok(())
}
