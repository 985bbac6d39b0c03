//! Lifecycle hooks end to end, against a real containerd: preStop (exec and
//! sleep) runs before the stop signal when the pod is removed (the hook and
//! the SIGTERM trap write into a hostPath the test reads, since the pod's own
//! emptyDir goes with it); a failing postStart kills the container and it
//! restarts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use berth_integration::{Agent, Containerd, require_runtime};
use serde_json::Value;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(60);

fn status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn wait_pod(
    agent: &Agent,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let full = agent.static_pod_name(name);
    agent.poll(T, &format!("pod {full}: {what}"), || {
        Ok(agent.pod("default", &full)?.filter(|p| check(p)))
    })
}

fn hooks_pod(shared: &std::path::Path) -> String {
    let shared = shared.display();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: hooks
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{{name: shared, hostPath: {{path: {shared}, type: Directory}}}}]
  containers:
    - name: main
      image: {IMAGE}
      volumeMounts: [{{name: shared, mountPath: /shared}}]
      command: ["sh", "-c", "trap 'echo main-term >> /shared/log; exit 0' TERM; echo main-start >> /shared/log; while true; do sleep 1 & wait $!; done"]
      lifecycle:
        preStop: {{exec: {{command: [sh, -c, "echo main-prestop >> /shared/log"]}}}}
    - name: sleeper
      image: {IMAGE}
      volumeMounts: [{{name: shared, mountPath: /shared}}]
      command: ["sh", "-c", "trap 'echo sleeper-term-$(date +%s) >> /shared/times; exit 0' TERM; while true; do sleep 1 & wait $!; done"]
      lifecycle:
        preStop: {{sleep: {{seconds: 3}}}}
"#
    )
}

#[test]
fn pre_stop_runs_before_the_stop_signal_and_post_start_failure_restarts() -> Result<()> {
    let Some(_env) =
        require_runtime("pre_stop_runs_before_the_stop_signal_and_post_start_failure_restarts")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    let shared = agent.temp_dir().join("shared");
    std::fs::create_dir_all(&shared)?;
    agent.write_manifest("hooks.yaml", &hooks_pod(&shared))?;
    wait_pod(&agent, "hooks", "running", |p| {
        status(p, "main")["ready"] == true && status(p, "sleeper")["ready"] == true
    })?;

    // The pod goes: each preStop runs before its container's SIGTERM.
    let removed_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    agent.remove_manifest("hooks.yaml")?;
    let full = agent.static_pod_name("hooks");
    agent.poll(T, "the pod to go", || {
        Ok(agent.pod("default", &full)?.is_none().then_some(()))
    })?;
    let log = agent.wait_for(T, "the SIGTERM trap's line", || {
        std::fs::read_to_string(shared.join("log"))
            .ok()
            .filter(|t| t.contains("main-term"))
    })?;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines, ["main-start", "main-prestop", "main-term"], "{log}");
    // The sleep hook held SIGTERM off for its 3 s (the trap wrote the time).
    let times = agent.wait_for(T, "the sleeper's SIGTERM time", || {
        std::fs::read_to_string(shared.join("times"))
            .ok()
            .filter(|t| t.contains("sleeper-term-"))
    })?;
    let term: u64 = times
        .trim()
        .strip_prefix("sleeper-term-")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(
        term >= removed_at + 2,
        "SIGTERM at {term}, removal at {removed_at}: {times:?}"
    );

    // A failing postStart: the container is killed and comes back.
    agent.write_manifest(
        "poststart.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: poststart
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: {IMAGE}
      command: ["sh", "-c", "while true; do sleep 1; done"]
      lifecycle:
        postStart: {{exec: {{command: [sh, -c, "exit 3"]}}}}
"#
        ),
    )?;
    wait_pod(
        &agent,
        "poststart",
        "restarted after its postStart failed",
        |p| status(p, "main")["restartCount"].as_i64().unwrap_or(0) >= 1,
    )?;
    assert!(
        agent
            .log()
            .contains("postStart hook failed; killing the container"),
        "{}",
        agent.log_tail(40)
    );
    Ok(())
}

fn init_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
fn sidecar_outlives_main_restarts_stops_last_and_lets_a_job_succeed() -> Result<()> {
    let Some(_env) =
        require_runtime("sidecar_outlives_main_restarts_stops_last_and_lets_a_job_succeed")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    let shared = agent.temp_dir().join("shared");
    std::fs::create_dir_all(&shared)?;
    let shared_path = shared.display();
    agent.write_manifest(
        "side.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: side
spec:
  terminationGracePeriodSeconds: 5
  volumes: [{{name: shared, hostPath: {{path: {shared_path}, type: Directory}}}}]
  initContainers:
    - name: proxy
      image: {IMAGE}
      restartPolicy: Always
      volumeMounts: [{{name: shared, mountPath: /shared}}]
      command: ["sh", "-c", "trap 'sleep 1; echo proxy-term >> /shared/log; exit 0' TERM; while true; do sleep 1 & wait $!; done"]
  containers:
    - name: main
      image: {IMAGE}
      volumeMounts: [{{name: shared, mountPath: /shared}}]
      command: ["sh", "-c", "trap 'echo main-term >> /shared/log; exit 0' TERM; while true; do sleep 1 & wait $!; done"]
"#
        ),
    )?;
    let pod = wait_pod(&agent, "side", "running", |p| {
        status(p, "main")["ready"] == true && init_status(p, "proxy")["ready"] == true
    })?;
    // main crashes and restarts; the sidecar keeps running.
    let main_id = status(&pod, "main")["containerID"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("containerd://")
        .to_string();
    cd.ctr(&["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", &main_id])?;
    let pod = wait_pod(&agent, "side", "main restarted", |p| {
        status(p, "main")["restartCount"] == 1 && status(p, "main")["ready"] == true
    })?;
    assert_eq!(init_status(&pod, "proxy")["restartCount"], 0, "{pod:#}");
    assert!(init_status(&pod, "proxy")["state"]["running"].is_object());

    // Removal stops main first, then the sidecar (whose trap takes 1 s).
    agent.remove_manifest("side.yaml")?;
    let log = agent.wait_for(T, "both SIGTERM traps", || {
        std::fs::read_to_string(shared.join("log"))
            .ok()
            .filter(|t| t.contains("proxy-term"))
    })?;
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["main-term", "proxy-term"],
        "{log}"
    );

    // A Job-like pod: main ends, the sidecar is stopped, the pod succeeds.
    agent.write_manifest(
        "job.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: job
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  initContainers:
    - name: proxy
      image: {IMAGE}
      restartPolicy: Always
      command: ["sh", "-c", "while true; do sleep 1; done"]
  containers:
    - name: main
      image: {IMAGE}
      command: ["sh", "-c", "sleep 2; exit 0"]
"#
        ),
    )?;
    let pod = wait_pod(&agent, "job", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    })?;
    assert_eq!(status(&pod, "main")["state"]["terminated"]["exitCode"], 0);
    assert!(
        init_status(&pod, "proxy")["state"]["terminated"].is_object(),
        "the sidecar was stopped: {pod:#}"
    );
    Ok(())
}
