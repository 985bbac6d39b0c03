//! Security settings end to end, against a real containerd (one per test):
//! seccomp profiles (pod and container level, `Localhost` files under
//! `<root-dir>/seccomp`), `fsGroup` on an emptyDir, and the API rule that
//! refuses `procMount: Unmasked` without a user namespace.

use std::time::Duration;

use anyhow::{Context, Result};
use berth_integration::{Agent, Containerd, require_runtime};
use serde_json::Value;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(60);

/// Wait until the static pod `name` satisfies `check`, returning it.
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

/// The status of container `name` of `pod`.
fn container<'p>(pod: &'p Value, name: &str) -> Option<&'p Value> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn is_running(pod: &Value, name: &str) -> bool {
    container(pod, name).is_some_and(|c| c["state"]["running"].is_object())
}

/// The lines container `name` of static pod `pod` printed (CRI log format
/// stripped), once there are at least `lines` of them.
fn output(agent: &Agent, pod: &Value, name: &str, lines: usize) -> Result<Vec<String>> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let log = agent
        .pod_logs_dir()
        .join(format!("default_{pod_name}_{uid}"))
        .join(name)
        .join("0.log");
    let text = agent.wait_for(T, &format!("{lines} lines of {name}'s output"), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.lines().count() >= lines)
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(str::to_string)
        .collect())
}

#[test]
fn seccomp_profiles_reach_the_container() -> Result<()> {
    let Some(_env) = require_runtime("seccomp_profiles_reach_the_container") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    // A Localhost profile that allows everything: still a filter (mode 2).
    let profiles = agent.root_dir().join("seccomp/profiles");
    std::fs::create_dir_all(&profiles)?;
    std::fs::write(
        profiles.join("allow.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#,
    )?;
    let show = r#"["sh", "-c", "grep Seccomp: /proc/1/status; while true; do sleep 1; done"]"#;
    agent.write_manifest(
        "seccomp.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: seccomp
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    seccompProfile: {{type: RuntimeDefault}}
  containers:
    - name: inherits
      image: {IMAGE}
      command: {show}
    - name: unconfined
      image: {IMAGE}
      command: {show}
      securityContext:
        seccompProfile: {{type: Unconfined}}
    - name: localhost
      image: {IMAGE}
      command: {show}
      securityContext:
        seccompProfile: {{type: Localhost, localhostProfile: profiles/allow.json}}
    - name: missing
      image: {IMAGE}
      command: {show}
      securityContext:
        seccompProfile: {{type: Localhost, localhostProfile: profiles/absent.json}}
"#
        ),
    )?;
    let pod = wait_pod(&agent, "seccomp", "three containers running", |p| {
        ["inherits", "unconfined", "localhost"]
            .iter()
            .all(|c| is_running(p, c))
    })?;
    assert_eq!(output(&agent, &pod, "inherits", 1)?, vec!["Seccomp:\t2"]);
    assert_eq!(output(&agent, &pod, "unconfined", 1)?, vec!["Seccomp:\t0"]);
    assert_eq!(output(&agent, &pod, "localhost", 1)?, vec!["Seccomp:\t2"]);

    // As upstream: the kubelet passes the path on, the runtime cannot load it.
    let pod = wait_pod(
        &agent,
        "seccomp",
        "the container without its profile waits",
        |p| container(p, "missing").is_some_and(|c| !c["state"]["waiting"]["message"].is_null()),
    )?;
    let waiting = &container(&pod, "missing").context("missing's status")?["state"]["waiting"];
    assert_eq!(waiting["reason"], "CreateContainerError", "{waiting}");
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("seccomp/profiles/absent.json") && message.contains("no such file"),
        "{waiting}"
    );
    Ok(())
}

#[test]
fn fs_group_owns_an_empty_dir_and_joins_the_groups() -> Result<()> {
    let Some(_env) = require_runtime("fs_group_owns_an_empty_dir_and_joins_the_groups") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.write_manifest(
        "fsgroup.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: fsgroup
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    fsGroup: 2000
  containers:
    - name: main
      image: {IMAGE}
      securityContext:
        runAsUser: 1000
      command: ["sh", "-c"]
      args:
        - 'stat -c "%g %A" /data; id -G; echo hi > /data/f && stat -c "%g" /data/f; while true; do sleep 1; done'
      volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
    - {{name: data, emptyDir: {{}}}}
"#
        ),
    )?;
    let pod = wait_pod(&agent, "fsgroup", "running", |p| is_running(p, "main"))?;
    let out = output(&agent, &pod, "main", 3)?;
    // Group 2000 and the setgid bit on the volume's root.
    assert_eq!(
        out.first().map(String::as_str),
        Some("2000 drwxrwsrwx"),
        "{out:?}"
    );
    let groups: Vec<&str> = out
        .get(1)
        .map(|l| l.split(' ').collect())
        .unwrap_or_default();
    assert!(groups.contains(&"2000"), "id -G: {out:?}");
    // The user could write there, and the file took the volume's group.
    assert_eq!(out.get(2).map(String::as_str), Some("2000"), "{out:?}");
    Ok(())
}

#[test]
fn unmasked_proc_without_user_namespace_is_a_manifest_error() -> Result<()> {
    let Some(_env) = require_runtime("unmasked_proc_without_user_namespace_is_a_manifest_error")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.write_manifest(
        "unmasked.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: unmasked
spec:
  containers:
    - name: main
      image: {IMAGE}
      command: ["sleep", "3600"]
      securityContext:
        procMount: Unmasked
"#
        ),
    )?;
    let error = agent.poll(T, "a manifest error for unmasked.yaml", || {
        let status = agent.get_json("/status")?;
        Ok(status["manifestErrors"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| {
                e["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("unmasked.yaml"))
            })
            .cloned())
    })?;
    assert_eq!(
        error["field"], "spec.containers[0].securityContext.procMount",
        "{error}"
    );
    let reason = error["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("`hostUsers` must be false to use `Unmasked`"),
        "{error}"
    );
    assert!(
        agent
            .pod("default", &agent.static_pod_name("unmasked"))?
            .is_none(),
        "a refused manifest runs nothing"
    );
    Ok(())
}
