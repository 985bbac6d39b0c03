//! RuntimeClass on a real containerd: a static pod whose `runtimeClassName`
//! maps (by `--runtime-class`) to the test containerd's second handler,
//! `berth-recorded` (runc behind a wrapper that logs its invocations), runs
//! under it — the wrapper saw its sandbox and containers — while a pod
//! without a class does not; an unknown class leaves the pod Pending with the
//! kubelet's FailedCreatePodSandBox reason.

use std::time::Duration;

use anyhow::Result;
use berth_integration::{Agent, Containerd, require_runtime};
use serde_json::Value;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(60);

fn pod(name: &str, class: Option<&str>) -> String {
    let class = class
        .map(|c| format!("  runtimeClassName: {c}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{class}  terminationGracePeriodSeconds: 1\n  containers:\n    - name: main\n      image: {IMAGE}\n      command: [sh, -c, 'while true; do sleep 1; done']\n"
    )
}

fn id(pod: &Value) -> String {
    pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("containerd://")
        .to_string()
}

#[test]
fn runtime_class_selects_the_cri_handler() -> Result<()> {
    let Some(_env) = require_runtime("runtime_class_selects_the_cri_handler") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &["--runtime-class", "recorded=berth-recorded"])?;
    agent.wait_healthy(T)?;
    agent.write_manifest("classy.yaml", &pod("classy", Some("recorded")))?;
    agent.write_manifest("plain.yaml", &pod("plain", None))?;
    let running = |name: &str| -> Result<Value> {
        let full = agent.static_pod_name(name);
        agent.poll(T, &format!("{full} running"), || {
            Ok(agent
                .pod("default", &full)?
                .filter(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object()))
        })
    };
    let classy = running("classy")?;
    let plain = running("plain")?;
    let log = std::fs::read_to_string(cd.state_dir().join("runc-recorded.log")).unwrap_or_default();
    let classy_id = id(&classy);
    assert!(!classy_id.is_empty());
    assert!(
        log.lines().any(|l| l.contains(&classy_id)),
        "the wrapper ran {classy_id}: {log}"
    );
    assert!(
        !log.contains(&id(&plain)),
        "a pod without a class uses the default handler: {log}"
    );

    // An unknown class: Pending, with the kubelet's reason and the API's message.
    agent.write_manifest("lost.yaml", &pod("lost", Some("nope")))?;
    let full = agent.static_pod_name("lost");
    let lost = agent.poll(T, "the unknown class reported", || {
        Ok(agent
            .pod("default", &full)?
            .filter(|p| p["status"]["reason"] == "FailedCreatePodSandBox"))
    })?;
    assert_eq!(lost["status"]["phase"], "Pending");
    assert_eq!(
        lost["status"]["message"], "runtimeclasses.node.k8s.io \"nope\" not found",
        "{lost:#}"
    );
    assert!(
        agent.log().contains(
            "Failed to create pod sandbox: runtimeclasses.node.k8s.io \\\"nope\\\" not found"
        ) || agent.log().contains(
            "Failed to create pod sandbox: runtimeclasses.node.k8s.io \"nope\" not found"
        ),
        "{}",
        agent.log_tail(30)
    );
    Ok(())
}
