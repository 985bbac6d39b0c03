//! Allocatable and admission on a real containerd: with `--kube-reserved`
//! leaving 500m of CPU and `--max-pods 3`, static pods are admitted in order
//! until they no longer fit; the ones that do not are Failed with the
//! kubelet's reason and message (`OutOfcpu`, `OutOfpods`, `NodeAffinity`) and
//! never reach the runtime, while the rest run. The same manifest again, a
//! `kill -9` of the agent (running pods are not restarted, refusals hold), and
//! a pod that leaves (its room goes to the next newcomer, not to a pod
//! already refused) are the neighbours tried.

use std::time::Duration;

use anyhow::{Result, ensure};
use berth_integration::{Agent, BUSYBOX_IMAGE, Containerd, require_runtime};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn pod(name: &str, cpu: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n{extra}  containers:\n    - name: main\n      image: {BUSYBOX_IMAGE}\n      command: [sh, -c, 'while true; do sleep 1; done']\n      resources: {{requests: {{cpu: {cpu}}}}}\n"
    )
}

fn running(agent: &Agent, name: &str) -> Result<Value> {
    agent.wait_static_running(name, T)
}

fn refused(agent: &Agent, name: &str, reason: &str) -> Result<Value> {
    let full = agent.static_pod_name(name);
    agent.poll(T, &format!("{full} refused with {reason}"), || {
        Ok(agent
            .pod("default", &full)?
            .filter(|p| p["status"]["reason"] == reason))
    })
}

fn container_id(p: &Value) -> String {
    p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The sandboxes containerd holds for static pod `name`.
fn sandboxes(cd: &Containerd, agent: &Agent, name: &str) -> Result<usize> {
    let full = agent.static_pod_name(name);
    Ok(cd
        .sandboxes()?
        .iter()
        .filter(|s| s.metadata.as_ref().is_some_and(|m| m.name == full))
        .count())
}

#[test]
fn pods_that_do_not_fit_are_refused_with_the_kubelets_reasons_and_the_rest_run() -> Result<()> {
    let test = "pods_that_do_not_fit_are_refused_with_the_kubelets_reasons_and_the_rest_run";
    let Some(_env) = require_runtime(test) else {
        return Ok(());
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reserved = format!("cpu={}m", cpus * 1000 - 500);
    let cd = Containerd::start()?;
    let mut agent = Agent::start(
        &cd,
        &[
            "--kube-reserved",
            &reserved,
            "--max-pods",
            "3",
            "--eviction-hard",
            // Always met (fewer PIDs free than there are): PIDPressure,
            // which static (critical) pods are admitted under.
            "memory.available<100Mi,pid.available<100%",
        ],
    )?;
    agent.wait_healthy(T)?;
    let status = agent.get_json("/status")?;
    let resources = &status["resources"];
    assert_eq!(resources["allocatable"]["cpu"], "500m", "{status}");
    assert_eq!(resources["capacity"]["cpu"], cpus.to_string(), "{status}");
    assert_eq!(resources["allocatable"]["pods"], "3", "{status}");
    ensure!(
        resources["allocatable"]["memory"] != resources["capacity"]["memory"],
        "the eviction threshold comes off allocatable memory: {status}"
    );

    // Eviction's signals: a threshold met sets its pressure condition.
    let status = agent.poll(T, "PIDPressure on /status", || {
        let s = agent.get_json("/status")?;
        Ok((s["eviction"]["pressure"] == serde_json::json!(["PIDPressure"])).then_some(s))
    })?;
    assert_eq!(
        status["eviction"]["thresholdsMet"][0]["signal"], "pid.available",
        "{status}"
    );

    agent.write_manifest("big.yaml", &pod("big", "400m", ""))?;
    let big = running(&agent, "big")?;
    agent.write_manifest("greedy.yaml", &pod("greedy", "200m", ""))?;
    let greedy = refused(&agent, "greedy", "OutOfcpu")?;
    assert_eq!(greedy["status"]["phase"], "Failed");
    assert_eq!(
        greedy["status"]["message"],
        "Pod was rejected: Node didn't have enough resource: cpu, requested: 200, used: 400, capacity: 500"
    );
    // A node selector the node does not satisfy.
    agent.write_manifest(
        "picky.yaml",
        &pod("picky", "10m", "  nodeSelector: {disk: ssd}\n"),
    )?;
    let picky = refused(&agent, "picky", "NodeAffinity")?;
    assert_eq!(
        picky["status"]["message"],
        "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
    );
    agent.write_manifest("small.yaml", &pod("small", "50m", ""))?;
    let small = running(&agent, "small")?;
    agent.write_manifest("tiny.yaml", &pod("tiny", "0", ""))?;
    let tiny = running(&agent, "tiny")?;
    agent.write_manifest("many.yaml", &pod("many", "0", ""))?;
    let many = refused(&agent, "many", "OutOfpods")?;
    assert_eq!(
        many["status"]["message"],
        "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3"
    );
    // The refused never reached the runtime; the event says why.
    for name in ["greedy", "picky", "many"] {
        assert_eq!(sandboxes(&cd, &agent, name)?, 0, "{name} has no sandbox");
    }
    let log = agent.log();
    assert!(
        log.contains("OutOfcpu") && log.contains("pod rejected at admission"),
        "{log}"
    );

    // The same manifest again (rewritten unchanged): still refused, no sandbox.
    agent.write_manifest("greedy.yaml", &pod("greedy", "200m", ""))?;
    std::thread::sleep(Duration::from_secs(2));
    refused(&agent, "greedy", "OutOfcpu")?;
    assert_eq!(sandboxes(&cd, &agent, "greedy")?, 0);

    // kill -9: what runs keeps running (not restarted), the refusals hold.
    agent.kill9()?;
    agent.restart()?;
    agent.wait_healthy(T)?;
    for (name, before) in [("big", &big), ("small", &small), ("tiny", &tiny)] {
        let now = running(&agent, name)?;
        assert_eq!(
            container_id(&now),
            container_id(before),
            "{name} was not restarted"
        );
    }
    refused(&agent, "greedy", "OutOfcpu")?;
    refused(&agent, "many", "OutOfpods")?;
    refused(&agent, "picky", "NodeAffinity")?;

    // big leaves: greedy stays refused (a decision holds for the pod's life);
    // its room goes to the next newcomer.
    agent.remove_manifest("big.yaml")?;
    agent.wait_for(T, "big gone", || {
        sandboxes(&cd, &agent, "big").ok().filter(|n| *n == 0)
    })?;
    agent.write_manifest("late.yaml", &pod("late", "300m", ""))?;
    running(&agent, "late")?;
    let greedy = refused(&agent, "greedy", "OutOfcpu")?;
    assert_eq!(greedy["status"]["phase"], "Failed");
    assert_eq!(sandboxes(&cd, &agent, "greedy")?, 0);
    Ok(())
}
