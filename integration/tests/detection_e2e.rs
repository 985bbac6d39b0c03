//! Failure detection through containerd's event service (issue 11): with a
//! relist period of 30 s, a SIGKILLed container can show on `/pods` within
//! seconds only because its `/tasks/exit` woke the relist. Functional, not
//! timed: the latency figures are `berth-detect-bench`'s.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_integration::{Agent, Containerd, require_runtime};
use serde_json::Value;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(60);
/// Far below the 30 s relist period: only an event explains a detection this fast.
const DETECT: Duration = Duration::from_secs(10);
const RELIST: &[&str] = &["--relist-period", "30s"];

/// A pod whose one container sleeps forever; with `exec_probe`, an exec
/// readiness probe every second (each exec is a `/tasks/exit` too).
fn pod_yaml(name: &str, exec_probe: bool) -> String {
    let probe = if exec_probe {
        r#"
      readinessProbe:
        exec: {command: ["true"]}
        periodSeconds: 1"#
    } else {
        ""
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: {IMAGE}
      command: ["sh", "-c", "while true; do sleep 1; done"]{probe}
"#
    )
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

fn running(pod: &Value) -> bool {
    main_status(pod)["state"]["running"].is_object() && !container_id(pod).is_empty()
}

/// `berth_runtime_events_total{kind="<kind>"}` from `/metrics`.
fn events_metric(agent: &Agent, kind: &str) -> Result<u64> {
    let (code, text) = agent.get_text("/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    let prefix = format!("berth_runtime_events_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .with_context(|| format!("no {prefix:?} in /metrics"))?
        .trim()
        .parse()
        .context("metric value")
}

fn wait_running(agent: &Agent, name: &str) -> Result<Value> {
    let full = agent.static_pod_name(name);
    agent.poll(T, &format!("pod {full} running"), || {
        Ok(agent.pod("default", &full)?.filter(running))
    })
}

/// SIGKILL the pod's container and wait (at most [`DETECT`]) until `/pods`
/// shows it terminated or restarted. Returns how long that took.
fn kill_and_detect(cd: &Containerd, agent: &Agent, name: &str, before: &Value) -> Result<Duration> {
    let id = container_id(before);
    let restarts = main_status(before)["restartCount"].as_i64().unwrap_or(0);
    let full = agent.static_pod_name(name);
    let killed = Instant::now();
    cd.ctr(&["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", &id])
        .with_context(|| format!("killing container {id}"))?;
    agent.poll(
        DETECT,
        &format!("pod {full}: container {id} seen dead (relist period is 30 s)"),
        || {
            let Some(pod) = agent.pod("default", &full)? else {
                return Ok(None);
            };
            // Terminated, waiting out a back-off, or replaced: anything but
            // the killed container still shown running.
            let s = main_status(&pod);
            let seen = !(s["state"]["running"].is_object() && container_id(&pod) == id)
                || s["restartCount"].as_i64().unwrap_or(0) > restarts;
            Ok(seen.then(|| killed.elapsed()))
        },
    )
}

#[test]
fn a_killed_container_is_noticed_by_its_exit_event_and_execs_are_not_exits() -> Result<()> {
    let Some(_env) =
        require_runtime("a_killed_container_is_noticed_by_its_exit_event_and_execs_are_not_exits")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, RELIST)?;
    agent.write_manifest("probed.yaml", &pod_yaml("probed", true))?;
    let before = wait_running(&agent, "probed")?;

    // The exec probe's processes exit every second: counted as ignored, not as exits.
    agent.poll(T, "exec probe exits seen and ignored", || {
        Ok((events_metric(&agent, "exec_exit_ignored")? >= 3).then_some(()))
    })?;
    let exits_before = events_metric(&agent, "task_exit")?;

    let took = kill_and_detect(&cd, &agent, "probed", &before)?;
    eprintln!("detected in {took:?}");
    let after = wait_running(&agent, "probed")?;
    assert_ne!(container_id(&after), container_id(&before));

    // A few more probe execs later, exactly one exit was counted: the kill.
    let ignored = events_metric(&agent, "exec_exit_ignored")?;
    agent.poll(T, "more exec probe exits", || {
        Ok((events_metric(&agent, "exec_exit_ignored")? >= ignored + 2).then_some(()))
    })?;
    assert_eq!(events_metric(&agent, "task_exit")?, exits_before + 1);
    assert_eq!(events_metric(&agent, "stream_error")?, 0);
    Ok(())
}

#[test]
fn events_resume_after_containerd_restarts() -> Result<()> {
    let Some(_env) = require_runtime("events_resume_after_containerd_restarts") else {
        return Ok(());
    };
    let mut cd = Containerd::start()?;
    let agent = Agent::start(&cd, RELIST)?;
    agent.write_manifest("steady.yaml", &pod_yaml("steady", false))?;
    let first = wait_running(&agent, "steady")?;
    // Events work before the outage.
    kill_and_detect(&cd, &agent, "steady", &first)?;
    let second = agent.poll(T, "the container restarted", || {
        let full = agent.static_pod_name("steady");
        Ok(agent
            .pod("default", &full)?
            .filter(|p| running(p) && container_id(p) != container_id(&first)))
    })?;

    cd.restart()?;
    agent.poll(T, "the event stream's end noticed", || {
        Ok((events_metric(&agent, "stream_error")? >= 1).then_some(()))
    })?;
    // The agent subscribes again within its longest back-off (5 s) of
    // containerd answering; containerd (grpc-go) only answers the subscription
    // with its first event, so there is nothing to wait on but that bound.
    std::thread::sleep(Duration::from_secs(7));

    let exits_before = events_metric(&agent, "task_exit")?;
    let took = kill_and_detect(&cd, &agent, "steady", &second)?;
    eprintln!("detected after the restart in {took:?}");
    assert!(events_metric(&agent, "task_exit")? > exits_before);
    assert!(events_metric(&agent, "subscribed")? >= 2);
    Ok(())
}
