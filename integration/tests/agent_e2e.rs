//! berth-agent end to end, against a real containerd (one per test), real runc,
//! real CNI: the scenarios of the node-agent issue.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_integration::{Agent, Containerd, require_runtime};
use serde_json::Value;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(60);

fn pod_yaml(name: &str, policy: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: {IMAGE}
      command: ["sh", "-c", {script:?}]
"#
    )
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

fn main_status(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

fn container_id(pod: &Value) -> String {
    main_status(pod)["containerID"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("containerd://")
        .to_string()
}

/// Wait until the pod `name` satisfies `check`, returning it.
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

fn running(p: &Value) -> bool {
    phase(p) == "Running" && main_status(p)["state"]["running"].is_object()
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or("").to_string()
}

/// Kill the container's main process with SIGKILL, as a crash would.
fn kill_container(cd: &Containerd, id: &str) -> Result<()> {
    cd.ctr(&["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id])
        .with_context(|| format!("killing container {id}"))?;
    Ok(())
}

#[test]
fn manifest_runs_with_pod_ip_and_logs() -> Result<()> {
    let Some(_env) = require_runtime("manifest_runs_with_pod_ip_and_logs") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    let started = Instant::now();
    agent.write_manifest(
        "hello.yaml",
        &pod_yaml(
            "hello",
            "Always",
            "echo hello-e2e; while true; do sleep 1; done",
        ),
    )?;
    let pod = wait_pod(&agent, "hello", "Running", running)?;
    eprintln!(
        "manifest written → Running on /pods: {:?}",
        started.elapsed()
    );
    let ip = pod["status"]["podIP"].as_str().unwrap_or("");
    assert!(cd.contains_ip(ip), "pod IP {ip:?} not in {}", cd.subnet());
    assert_eq!(pod["spec"]["nodeName"], agent.node_name());
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(ready, "Ready condition: {}", pod["status"]["conditions"]);

    let log = agent
        .pod_logs_dir()
        .join(format!(
            "default_{}_{}",
            agent.static_pod_name("hello"),
            uid(&pod)
        ))
        .join("main/0.log");
    let text = agent.wait_for(T, "the container's output in its log file", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("hello-e2e"))
    })?;
    // CRI log format: <RFC3339Nano> stdout F <line>
    assert!(
        text.lines().any(|l| l.contains(" stdout F hello-e2e")),
        "{text}"
    );
    Ok(())
}

#[test]
fn killed_container_restarts_with_growing_backoff() -> Result<()> {
    let Some(_env) = require_runtime("killed_container_restarts_with_growing_backoff") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.write_manifest(
        "crash.yaml",
        &pod_yaml("crash", "Always", "while true; do sleep 1; done"),
    )?;
    let pod = wait_pod(&agent, "crash", "Running", running)?;

    // First crash: restarted at once, restartCount 1, lastState terminated.
    kill_container(&cd, &container_id(&pod))?;
    let pod = wait_pod(&agent, "crash", "restartCount 1 and running", |p| {
        running(p) && main_status(p)["restartCount"] == 1
    })?;
    assert_eq!(
        main_status(&pod)["lastState"]["terminated"]["exitCode"],
        137
    );

    // Second crash: CrashLoopBackOff for 10 s, then running again.
    kill_container(&cd, &container_id(&pod))?;
    let waiting = wait_pod(&agent, "crash", "CrashLoopBackOff", |p| {
        main_status(p)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })?;
    let msg = main_status(&waiting)["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(msg.contains("back-off 10s"), "{msg}");
    let backoff_started = Instant::now();
    let pod = wait_pod(&agent, "crash", "restartCount 2 after the back-off", |p| {
        running(p) && main_status(p)["restartCount"] == 2
    })?;
    let waited = backoff_started.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "restarted after only {waited:?}"
    );

    // Third crash: the back-off doubled.
    kill_container(&cd, &container_id(&pod))?;
    let waiting = wait_pod(&agent, "crash", "a longer back-off", |p| {
        main_status(p)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })?;
    let msg = main_status(&waiting)["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(msg.contains("back-off 20s"), "{msg}");
    Ok(())
}

#[test]
fn restart_policy_never_ends_failed_or_succeeded() -> Result<()> {
    let Some(_env) = require_runtime("restart_policy_never_ends_failed_or_succeeded") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    // The failing one reports its last log lines (FallbackToLogsOnError); the
    // successful one writes its termination-message file.
    agent.write_manifest(
        "fail.yaml",
        &pod_yaml("fail", "Never", "echo fail-log-line; exit 3").replace(
            "      image:",
            "      terminationMessagePolicy: FallbackToLogsOnError\n      image:",
        ),
    )?;
    agent.write_manifest(
        "ok.yaml",
        &pod_yaml(
            "ok",
            "Never",
            "echo -n all-done > /dev/termination-log; exit 0",
        ),
    )?;
    let failed = wait_pod(&agent, "fail", "Failed", |p| phase(p) == "Failed")?;
    let term = &main_status(&failed)["state"]["terminated"];
    assert_eq!(term["exitCode"], 3);
    assert_eq!(term["reason"], "Error");
    assert_eq!(main_status(&failed)["restartCount"], 0);
    let ok = wait_pod(&agent, "ok", "Succeeded", |p| phase(p) == "Succeeded")?;
    assert_eq!(main_status(&ok)["state"]["terminated"]["exitCode"], 0);
    assert_eq!(
        main_status(&ok)["state"]["terminated"]["reason"],
        "Completed"
    );
    assert_eq!(
        main_status(&ok)["state"]["terminated"]["message"],
        "all-done"
    );
    assert_eq!(term["message"], "fail-log-line\n");
    // Stays terminal: not restarted on later syncs.
    std::thread::sleep(Duration::from_secs(3));
    let again = agent
        .pod("default", &agent.static_pod_name("fail"))?
        .context("pod vanished")?;
    assert_eq!(phase(&again), "Failed");
    assert_eq!(container_id(&again), container_id(&failed));
    Ok(())
}

#[test]
fn edit_replaces_container_and_delete_leaves_nothing() -> Result<()> {
    let Some(_env) = require_runtime("edit_replaces_container_and_delete_leaves_nothing") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.write_manifest(
        "edit.yaml",
        &pod_yaml("edit", "Always", "echo v1; while true; do sleep 1; done"),
    )?;
    let v1 = wait_pod(&agent, "edit", "Running", running)?;
    let first_id = container_id(&v1);

    agent.write_manifest(
        "edit.yaml",
        &pod_yaml("edit", "Always", "echo v2; while true; do sleep 1; done"),
    )?;
    let v2 = wait_pod(&agent, "edit", "a replaced container running", |p| {
        running(p) && container_id(p) != first_id && !container_id(p).is_empty()
    })?;
    let log_dir = agent.pod_logs_dir().join(format!(
        "default_{}_{}",
        agent.static_pod_name("edit"),
        uid(&v2)
    ));
    agent.wait_for(T, "v2 output", || {
        std::fs::read_to_string(log_dir.join("main/0.log"))
            .ok()
            .filter(|t| t.contains("v2"))
    })?;
    // The old container is gone from the runtime (a new UID means a new pod).
    let old_uid = uid(&v1);
    agent.poll(T, "the old pod's containers to go", || {
        Ok(cd
            .containers_labeled("io.kubernetes.pod.uid", &old_uid)?
            .is_empty()
            .then_some(()))
    })?;

    let sandbox_ids: Vec<String> = cd
        .sandboxes_labeled("io.kubernetes.pod.uid", &uid(&v2))?
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(sandbox_ids.len(), 1);
    agent.remove_manifest("edit.yaml")?;
    let gone_uid = uid(&v2);
    agent.poll(T, "the pod to leave /pods and the runtime", || {
        let listed = agent
            .pod("default", &agent.static_pod_name("edit"))?
            .is_some();
        let sandboxes = cd.sandboxes_labeled("io.kubernetes.pod.uid", &gone_uid)?;
        let containers = cd.containers_labeled("io.kubernetes.pod.uid", &gone_uid)?;
        Ok((!listed && sandboxes.is_empty() && containers.is_empty()).then_some(()))
    })?;
    let mounts = cd.mounts()?;
    for id in &sandbox_ids {
        let left: Vec<_> = mounts
            .iter()
            .filter(|m| format!("{m:?}").contains(id.as_str()))
            .collect();
        assert!(left.is_empty(), "mounts of sandbox {id} left: {left:?}");
    }
    assert!(
        !agent.root_dir().join("pods").join(&gone_uid).exists(),
        "pod dir left"
    );
    assert!(!log_dir.exists(), "pod log dir left");
    Ok(())
}

#[test]
fn broken_manifest_is_reported_and_good_pods_run() -> Result<()> {
    let Some(_env) = require_runtime("broken_manifest_is_reported_and_good_pods_run") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.write_manifest(
        "a-good.yaml",
        &pod_yaml("good-a", "Always", "while true; do sleep 1; done"),
    )?;
    agent.write_manifest(
        "b-broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: broken\n",
    )?;
    agent.write_manifest(
        "c-noimage.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: noimage}\nspec:\n  containers:\n  - name: x\n",
    )?;
    agent.write_manifest(
        "d-warn.yaml",
        &pod_yaml("good-d", "Always", "while true; do sleep 1; done")
            .replace("      image:", "      imagePullPolcy: Never\n      image:"),
    )?;
    wait_pod(&agent, "good-a", "Running", running)?;
    wait_pod(&agent, "good-d", "Running", running)?;

    let status = agent.get_json("/status")?;
    let errors = status["manifestErrors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let find = |file: &str| {
        errors
            .iter()
            .find(|e| e["file"].as_str().unwrap_or("").ends_with(file))
            .cloned()
    };
    let broken =
        find("b-broken.yaml").context(format!("no error for b-broken.yaml in {errors:?}"))?;
    assert!(!broken["reason"].as_str().unwrap_or("").is_empty());
    let noimage =
        find("c-noimage.yaml").context(format!("no error for c-noimage.yaml in {errors:?}"))?;
    assert_eq!(noimage["field"], "spec.containers[0].image", "{noimage}");
    let warnings = status["podWarnings"].to_string();
    assert!(
        warnings.contains("imagePullPolcy"),
        "unknown field not warned: {warnings}"
    );
    let metrics = agent.get_text("/metrics")?.1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("berth_manifest_errors") && l.ends_with(" 2")),
        "{metrics}"
    );
    if agent.pods()?.len() != 2 {
        bail!("expected exactly the two good pods on /pods");
    }
    Ok(())
}

/// A second manifest that repeats a running pod's name never replaces it:
/// the running pod wins (upstream keeps the first file by name, which can be
/// the newcomer), the newcomer is the error on `/status` with a
/// `FailedValidation` event; so after a `kill -9` too. Once the running
/// pod's manifest goes, the newcomer runs.
#[test]
fn a_duplicate_manifest_never_replaces_the_running_pod() -> Result<()> {
    let Some(_env) = require_runtime("a_duplicate_manifest_never_replaces_the_running_pod") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let mut agent = Agent::start(&cd, &[])?;
    agent.write_manifest(
        "web.yaml",
        &pod_yaml("web", "Always", "while true; do sleep 1; done"),
    )?;
    let first = wait_pod(&agent, "web", "Running", running)?;
    let (first_uid, first_id) = (uid(&first), container_id(&first));

    // The newcomer sorts before the running pod's file.
    let newcomer = pod_yaml(
        "web",
        "Always",
        "echo newcomer; while true; do sleep 1; done",
    );
    agent.write_manifest("a-web.yaml", &newcomer)?;
    let duplicate_error = |agent: &Agent| -> Result<Option<Value>> {
        let status = agent.get_json("/status")?;
        Ok(status["manifestErrors"]
            .as_array()
            .and_then(|errors| {
                errors
                    .iter()
                    .find(|e| e["file"].as_str().unwrap_or("").ends_with("/a-web.yaml"))
            })
            .cloned())
    };
    let error = agent.poll(T, "the newcomer reported on /status", || {
        duplicate_error(&agent)
    })?;
    assert_eq!(error["field"], "metadata.name", "{error}");
    let reason = error["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("Duplicate value")
            && reason.contains("/web.yaml, whose pod the agent already has"),
        "{reason}"
    );
    agent.poll(T, "a FailedValidation event for the newcomer", || {
        Ok(agent
            .log()
            .lines()
            .any(|l| l.contains("FailedValidation") && l.contains("duplicate pod name"))
            .then_some(()))
    })?;

    let same = |agent: &Agent, what: &str| -> Result<()> {
        let pods = agent.pods()?;
        assert_eq!(pods.len(), 1, "{what}: {pods:?}");
        let now = &pods[0];
        assert_eq!(
            uid(now),
            first_uid,
            "{what}: the newcomer replaced the running pod"
        );
        assert_eq!(
            container_id(now),
            first_id,
            "{what}: the container was restarted"
        );
        assert_eq!(main_status(now)["restartCount"], 0, "{what}");
        assert_eq!(
            cd.sandboxes_labeled("io.kubernetes.pod.uid", &first_uid)?
                .len(),
            1,
            "{what}"
        );
        Ok(())
    };
    // Across rescans (the same input again, every file-check period).
    std::thread::sleep(Duration::from_secs(3));
    same(&agent, "after rescans")?;
    // The newcomer edited: still the error.
    agent.write_manifest("a-web.yaml", &newcomer.replace("newcomer", "newcomer2"))?;
    std::thread::sleep(Duration::from_secs(2));
    same(&agent, "after the newcomer changed")?;

    // kill -9: the restarted agent knows the running pod from the runtime.
    agent.kill9()?;
    agent.restart()?;
    agent.wait_healthy(T)?;
    agent.poll(T, "the newcomer reported again after the restart", || {
        duplicate_error(&agent)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    same(&agent, "after kill -9")?;

    // The running pod's manifest goes: the newcomer takes the name.
    agent.remove_manifest("web.yaml")?;
    let next = wait_pod(&agent, "web", "the newcomer running", |p| {
        running(p) && uid(p) != first_uid
    })?;
    assert_ne!(container_id(&next), first_id);
    agent.poll(T, "the old pod removed", || {
        Ok(cd
            .sandboxes_labeled("io.kubernetes.pod.uid", &first_uid)?
            .is_empty()
            .then_some(()))
    })?;
    assert!(duplicate_error(&agent)?.is_none(), "no error left");
    Ok(())
}

#[test]
fn kill9_and_restart_adopts_containers_and_cleans_removed_pods() -> Result<()> {
    let Some(_env) = require_runtime("kill9_and_restart_adopts_containers_and_cleans_removed_pods")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let mut agent = Agent::start(&cd, &[])?;
    agent.write_manifest(
        "keep.yaml",
        &pod_yaml("keep", "Always", "while true; do sleep 1; done"),
    )?;
    agent.write_manifest(
        "drop.yaml",
        &pod_yaml("drop", "Always", "while true; do sleep 1; done"),
    )?;
    let keep = wait_pod(&agent, "keep", "Running", running)?;
    let drop = wait_pod(&agent, "drop", "Running", running)?;

    agent.kill9()?;
    agent.remove_manifest("drop.yaml")?;
    agent.restart()?;
    agent.wait_healthy(T)?;

    let drop_uid = uid(&drop);
    agent.poll(
        T,
        "the pod removed while the agent was down to be cleaned up",
        || {
            let s = cd.sandboxes_labeled("io.kubernetes.pod.uid", &drop_uid)?;
            let c = cd.containers_labeled("io.kubernetes.pod.uid", &drop_uid)?;
            Ok((s.is_empty() && c.is_empty()).then_some(()))
        },
    )?;
    let after = wait_pod(&agent, "keep", "Running", running)?;
    assert_eq!(
        container_id(&after),
        container_id(&keep),
        "container was restarted"
    );
    assert_eq!(main_status(&after)["restartCount"], 0);
    assert_eq!(
        cd.sandboxes_labeled("io.kubernetes.pod.uid", &uid(&keep))?
            .len(),
        1,
        "duplicate sandbox"
    );
    assert_eq!(
        cd.containers_labeled("io.kubernetes.pod.uid", &uid(&keep))?
            .len(),
        1
    );
    Ok(())
}

#[test]
fn containerd_outage_is_reported_and_survived() -> Result<()> {
    let Some(_env) = require_runtime("containerd_outage_is_reported_and_survived") else {
        return Ok(());
    };
    let mut cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.write_manifest(
        "steady.yaml",
        &pod_yaml("steady", "Always", "while true; do sleep 1; done"),
    )?;
    let before = wait_pod(&agent, "steady", "Running", running)?;

    cd.stop()?;
    let reason = agent.poll(T, "/healthz to report the runtime down", || {
        let (code, body) = agent.get_text("/healthz")?;
        Ok((code == 503).then_some(body))
    })?;
    assert!(reason.contains("unreachable"), "{reason}");
    // The pod is not lost while the runtime is away.
    assert!(
        agent
            .pod("default", &agent.static_pod_name("steady"))?
            .is_some()
    );

    cd.start_again()?;
    agent.wait_healthy(T)?;
    std::thread::sleep(Duration::from_secs(3));
    let after = wait_pod(&agent, "steady", "Running", running)?;
    assert_eq!(
        container_id(&after),
        container_id(&before),
        "container replaced"
    );
    assert_eq!(main_status(&after)["restartCount"], 0);
    assert_eq!(
        cd.sandboxes_labeled("io.kubernetes.pod.uid", &uid(&before))?
            .len(),
        1,
        "duplicate sandbox"
    );
    Ok(())
}

#[test]
fn init_containers_volumes_and_env_work_in_a_real_runtime() -> Result<()> {
    let Some(_env) = require_runtime("init_containers_volumes_and_env_work_in_a_real_runtime")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    let host_dir = agent.temp_dir().join("host-data");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("from-host.txt"), "host-file-content")?;
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: vols
  labels: {{app: vols}}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
    - name: prepare
      image: {IMAGE}
      command: ["sh", "-c", "echo from-init > /work/init.txt"]
      volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
    - name: main
      image: {IMAGE}
      command: ["sh", "-c"]
      args:
        - 'cat /work/init.txt; cat /host/from-host.txt; echo; echo "$(GREETING) $POD_NAME $APP"; grep -c tmpfs /proc/mounts; cat /etc/hosts | grep -c vols; while true; do sleep 1; done'
      env:
        - {{name: WHO, value: world}}
        - {{name: GREETING, value: "hello-$(WHO)"}}
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: APP
          valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['app']"}}}}
      volumeMounts:
        - {{name: work, mountPath: /work, readOnly: true}}
        - {{name: host, mountPath: /host}}
        - {{name: mem, mountPath: /mem}}
  volumes:
    - {{name: work, emptyDir: {{}}}}
    - {{name: mem, emptyDir: {{medium: Memory}}}}
    - name: host
      hostPath: {{path: {host}, type: Directory}}
"#,
        host = host_dir.display()
    );
    agent.write_manifest("vols.yaml", &manifest)?;
    let pod = wait_pod(&agent, "vols", "Running", running)?;
    let init = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{init}");
    let initialized = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    assert!(initialized, "{}", pod["status"]["conditions"]);

    let log = agent
        .pod_logs_dir()
        .join(format!(
            "default_{}_{}",
            agent.static_pod_name("vols"),
            uid(&pod)
        ))
        .join("main/0.log");
    let name = agent.static_pod_name("vols");
    let text = agent.wait_for(T, "the main container's output", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.lines().count() >= 5)
    })?;
    let out: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    assert_eq!(out.first().copied(), Some("from-init"), "{text}");
    assert!(out.contains(&"host-file-content"), "{text}");
    assert!(
        out.contains(&format!("hello-world {name} vols").as_str()),
        "env expansion and fieldRefs: {text}"
    );
    // The memory-backed emptyDir is a tmpfs in the container (besides /dev etc.).
    let tmpfs: u32 = out.get(3).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(tmpfs >= 1, "{text}");
    // The kubelet-managed /etc/hosts names the pod.
    assert_eq!(out.get(4).copied(), Some("1"), "{text}");

    // Removal tears the volumes down: no mount of the pod's dir is left.
    agent.remove_manifest("vols.yaml")?;
    let pod_dir = agent.root_dir().join("pods").join(uid(&pod));
    agent.wait_for(T, "the pod's directory to go", || {
        (!pod_dir.exists()).then_some(())
    })?;
    let left: Vec<_> = berth_integration::mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&pod_dir))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}
