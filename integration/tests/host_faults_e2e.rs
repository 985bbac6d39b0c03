//! Host faults (issue 11, reliability suite item 4), against a real
//! containerd, runc and CNI: a full disk under `--root-dir` and
//! `--pod-logs-dir`, a read-only root dir, a missing CNI plugin, a missing
//! pause image, and the wall clock jumping. Each fault is a clear reason on
//! `/healthz` and in the status of a pod that cannot start, pods already
//! running are left alone, and once the fault is fixed the agent recovers by
//! itself (also across a `kill -9` in the middle of the fault).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_integration::{Agent, AgentOptions, Containerd, PAUSE_IMAGE, require_agent};
use serde_json::Value;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(60);

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [sh, -c, 'echo {name}; exec sleep 3600']\n"
    )
}

fn container_id(p: &Value) -> String {
    p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn restarts(p: &Value) -> i64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(-1)
}

/// A mount made by the test, lazily unmounted when dropped (also on panic).
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: &Path, size: &str) -> Result<Mounted> {
        std::fs::create_dir_all(at)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at))?;
        Ok(Mounted(at.to_path_buf()))
    }

    fn bind(at: &Path) -> Result<Mounted> {
        std::fs::create_dir_all(at)?;
        run(Command::new("mount").arg("--bind").arg(at).arg(at))?;
        Ok(Mounted(at.to_path_buf()))
    }

    fn remount(&self, how: &str) -> Result<()> {
        run(Command::new("mount")
            .args(["-o", &format!("remount,bind,{how}")])
            .arg(&self.0))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Fill the filesystem of `dir` with one file until it is full.
fn fill(dir: &Path) -> Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            if e.raw_os_error() == Some(nix::libc::ENOSPC) {
                return Ok(path);
            }
            return Err(e.into());
        }
    }
}

/// `/healthz` answers 503 with a reason containing every one of `parts`.
fn wait_unhealthy(agent: &Agent, parts: &[&str]) -> Result<String> {
    agent.poll(
        Duration::from_secs(30),
        &format!("/healthz to say {parts:?}"),
        || {
            let (code, body) = agent.get_text("/healthz")?;
            Ok((code == 503 && parts.iter().all(|p| body.contains(p))).then_some(body))
        },
    )
}

/// The waiting reason and message of pod `name`'s first container (or its
/// pod-level reason), once its reason is `reason` and the message contains
/// `part`.
fn wait_waiting(agent: &Agent, name: &str, reason: &str, part: &str) -> Result<String> {
    let full = agent.static_pod_name(name);
    let mut last = Value::Null;
    let r = agent.poll(T, &format!("{full} waiting with {reason}"), || {
        let Some(p) = agent.pod("default", &full)? else {
            return Ok(None);
        };
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        last = p["status"].clone();
        Ok(
            (w["reason"] == reason && w["message"].as_str().is_some_and(|m| m.contains(part)))
                .then(|| w["message"].as_str().unwrap_or_default().to_string()),
        )
    });
    r.with_context(|| format!("last status: {last}"))
}

/// A Warning event with `reason` whose message contains `part` (standalone,
/// events go to the agent's log).
fn wait_event(agent: &Agent, reason: &str, part: &str) -> Result<()> {
    let needle = format!("reason=\"{reason}\"");
    agent.wait_for(T, &format!("a {reason} event saying {part:?}"), || {
        agent
            .log()
            .lines()
            .any(|l| {
                l.contains("event_type=\"Warning\"") && l.contains(&needle) && l.contains(part)
            })
            .then_some(())
    })
}

/// Pod `name`'s status once it is `FailedCreatePodSandBox` with a message
/// containing `part`.
fn wait_sandbox_failure(agent: &Agent, name: &str, part: &str) -> Result<Value> {
    let full = agent.static_pod_name(name);
    let mut last = Value::Null;
    let r = agent.poll(
        T,
        &format!("{full}: FailedCreatePodSandBox, {part:?}"),
        || {
            last = agent.pod("default", &full)?.unwrap_or_default()["status"].clone();
            Ok((last["reason"] == "FailedCreatePodSandBox"
                && last["message"].as_str().is_some_and(|m| m.contains(part)))
            .then(|| last.clone()))
        },
    );
    r.with_context(|| format!("last status: {last}"))
}

/// A full disk, then a read-only root dir: each named on /healthz and in the
/// status of a pod that cannot start; the running pod is left alone; fixed,
/// the waiting pod starts by itself. A `kill -9` while the root dir is
/// read-only: the agent starts anyway, says why, and recovers.
#[test]
fn a_full_disk_and_a_read_only_root_dir_are_named_and_outlived() -> Result<()> {
    let Some(_env) = require_agent("a_full_disk_and_a_read_only_root_dir_are_named_and_outlived")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let host = cd.temp_dir().join("hostfs");
    let fs = Mounted::tmpfs(&host, "24m")?;
    let root = host.join("root");
    let logs = host.join("pods");
    let mut agent = Agent::start_with(AgentOptions::for_containerd(&cd).args([
        "--root-dir".to_string(),
        root.display().to_string(),
        "--pod-logs-dir".to_string(),
        logs.display().to_string(),
    ]))?;
    agent.wait_healthy(T)?;
    agent.write_manifest("keep.yaml", &manifest("keep"))?;
    let keep = agent.wait_static_running("keep", T)?;

    // Disk full.
    let filler = fill(&host)?;
    wait_unhealthy(&agent, &["root dir", "out of space", "pod logs dir"])?;
    agent.write_manifest("late.yaml", &manifest("late"))?;
    let why = wait_waiting(
        &agent,
        "late",
        "CreateContainerConfigError",
        "No space left on device",
    )?;
    assert!(
        why.contains(&root.display().to_string()),
        "names the file: {why}"
    );
    wait_event(&agent, "Failed", "No space left on device")?;
    std::fs::remove_file(&filler)?;
    agent.wait_healthy(Duration::from_secs(15))?;
    agent.wait_static_running("late", T)?;

    // Read-only root dir (its own bind mount, so the log dir stays writable).
    let ro = Mounted::bind(&root)?;
    ro.remount("ro")?;
    let reason = wait_unhealthy(&agent, &["root dir", "read-only file system"])?;
    assert!(
        !reason.contains("pod logs dir"),
        "only the root dir is read-only: {reason}"
    );
    agent.write_manifest("ro.yaml", &manifest("ro"))?;
    wait_waiting(
        &agent,
        "ro",
        "CreateContainerConfigError",
        "Read-only file system",
    )?;
    wait_event(&agent, "Failed", "Read-only file system")?;

    // kill -9 in the middle of the fault: it starts anyway and says why.
    agent.kill9()?;
    agent.restart()?;
    wait_unhealthy(&agent, &["root dir", "read-only file system"])?;
    ro.remount("rw")?;
    agent.wait_healthy(Duration::from_secs(15))?;
    agent.wait_static_running("ro", T)?;

    let after = agent.wait_static_running("keep", T)?;
    assert_eq!(
        container_id(&after),
        container_id(&keep),
        "keep was restarted"
    );
    assert_eq!(restarts(&after), 0);
    drop(ro);
    drop(agent);
    drop(fs);
    Ok(())
}

/// A CNI plugin the network config names is not installed: /healthz names it
/// (containerd itself says NetworkReady=true), a new pod shows
/// FailedCreatePodSandBox; installed again, the pod starts. Then the pause
/// image is removed and cannot be pulled: named, and re-imported, recovered.
#[test]
fn a_missing_cni_plugin_and_pause_image_are_named_and_outlived() -> Result<()> {
    let Some(env) = require_agent("a_missing_cni_plugin_and_pause_image_are_named_and_outlived")
    else {
        return Ok(());
    };
    let mut cd = Containerd::start()?;
    // containerd's CNI bin dir becomes a private copy without "bridge".
    let bin = cd.temp_dir().join("cni-bin");
    std::fs::create_dir_all(&bin)?;
    let system = PathBuf::from("/usr/lib/cni");
    for e in std::fs::read_dir(&system)?.flatten() {
        if e.file_name() != "bridge" {
            std::os::unix::fs::symlink(e.path(), bin.join(e.file_name()))?;
        }
    }
    let config = std::fs::read_to_string(cd.config_path())?;
    anyhow::ensure!(
        config.contains("bin_dir = \"/usr/lib/cni\""),
        "containerd config has no bin_dir"
    );
    std::fs::write(
        cd.config_path(),
        config.replace(
            "bin_dir = \"/usr/lib/cni\"",
            &format!("bin_dir = \"{}\"", bin.display()),
        ),
    )?;
    cd.restart()?;
    let agent = Agent::start(&cd, &[])?;
    wait_unhealthy(
        &agent,
        &["CNI plugin \"bridge\"", &bin.display().to_string()],
    )?;
    agent.write_manifest("net.yaml", &manifest("net"))?;
    wait_sandbox_failure(&agent, "net", "failed to find plugin \"bridge\"")?;
    wait_event(&agent, "FailedCreatePodSandBox", "failed to find plugin")?;
    std::os::unix::fs::symlink(system.join("bridge"), bin.join("bridge"))?;
    agent.wait_healthy(Duration::from_secs(15))?;
    let net = agent.wait_static_running("net", T)?;

    // The pause image gone (and localhost serves no registry).
    cd.ctr(&["-n", "k8s.io", "images", "rm", PAUSE_IMAGE])?;
    wait_unhealthy(
        &agent,
        &["pod sandbox image", PAUSE_IMAGE, "could not be pulled"],
    )?;
    agent.write_manifest("pause.yaml", &manifest("pause"))?;
    wait_sandbox_failure(&agent, "pause", "failed to get sandbox image")?;
    wait_event(
        &agent,
        "FailedCreatePodSandBox",
        "failed to get sandbox image",
    )?;
    cd.import_image(&env.pause_tar, PAUSE_IMAGE)?;
    agent.wait_healthy(Duration::from_secs(15))?;
    agent.wait_static_running("pause", Duration::from_secs(90))?;
    let after = agent.wait_static_running("net", T)?;
    assert_eq!(
        container_id(&after),
        container_id(&net),
        "net was restarted"
    );
    Ok(())
}

/// The wall clock jumps a day forward, then two days back (libfaketime in the
/// agent only, monotonic clock untouched, as a real `date -s` does): nothing
/// restarts, probes go on, /healthz stays 200, a new pod still starts.
#[test]
fn a_clock_jump_restarts_nothing() -> Result<()> {
    let Some(_env) = require_agent("a_clock_jump_restarts_nothing") else {
        return Ok(());
    };
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    let Some(lib) = berth_integration::require(
        "a_clock_jump_restarts_nothing",
        lib.ok_or_else(|| {
            "libfaketime is not installed (integration/setup.sh installs faketime)".to_string()
        }),
    ) else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let clock = cd.temp_dir().join("faketime");
    std::fs::write(&clock, "+0\n")?;
    let agent = Agent::start_with(
        AgentOptions::for_containerd(&cd)
            .env("LD_PRELOAD", lib.display().to_string())
            .env("FAKETIME_TIMESTAMP_FILE", clock.display().to_string())
            .env("FAKETIME_NO_CACHE", "1")
            .env("DONT_FAKE_MONOTONIC", "1"),
    )?;
    agent.write_manifest(
        "probed.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: probed\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [sh, -c, 'touch /tmp/ok; exec sleep 3600']\n    livenessProbe:\n      exec: {{command: [cat, /tmp/ok]}}\n      periodSeconds: 1\n    readinessProbe:\n      exec: {{command: [cat, /tmp/ok]}}\n      periodSeconds: 1\n"
        ),
    )?;
    let full = agent.static_pod_name("probed");
    let ready = |p: &Value| p["status"]["containerStatuses"][0]["ready"] == true;
    let before = agent.poll(T, "probed ready", || {
        Ok(agent.pod("default", &full)?.filter(|p| ready(p)))
    })?;
    for (step, jump, date_arg) in [("forward", "+1d", "+1 day"), ("back", "-1d", "-1 day")] {
        std::fs::write(&clock, format!("{jump}\n"))?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(6) {
            let (code, body) = agent.get_text("/healthz")?;
            assert_eq!(code, 200, "clock {step}: /healthz: {body}");
            let p = agent.pod("default", &full)?.context("probed is gone")?;
            assert_eq!(
                container_id(&p),
                container_id(&before),
                "clock {step}: restarted"
            );
            assert_eq!(restarts(&p), 0, "clock {step}: restarted");
            std::thread::sleep(Duration::from_millis(500));
        }
        let p = agent.pod("default", &full)?.context("probed is gone")?;
        assert!(ready(&p), "clock {step}: readiness lost: {}", p["status"]);
        // A new pod still starts, and the agent's log shows the jumped clock
        // (so the jump did reach it).
        let name = format!("clock-{step}");
        agent.write_manifest(&format!("{name}.yaml"), &manifest(&name))?;
        agent.wait_static_running(&name, T)?;
        let out = Command::new("date")
            .args(["-u", "-d", date_arg, "+%F"])
            .output()?;
        let day = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            agent.log().lines().any(|l| l.starts_with(&day)),
            "clock {step}: no log line of {day}: the jump did not reach the agent"
        );
    }
    Ok(())
}
