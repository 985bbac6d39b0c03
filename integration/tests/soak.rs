//! Long-running variants, behind `BERTH_SOAK=1` (off in the default suite):
//! pod churn through the real agent and containerd, checking that nothing
//! leaks (sandboxes, containers, mounts, pod and log directories) and printing
//! the agent's RSS before and after.

use std::time::Duration;

use anyhow::Result;
use berth_integration::{Agent, Containerd, require_runtime, soak};

const IMAGE: &str = "localhost/berth/busybox:1.36";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn pod_churn_leaks_nothing() -> Result<()> {
    if !soak() {
        eprintln!("SKIP pod_churn_leaks_nothing: a soak test; set BERTH_SOAK=1 to run it");
        return Ok(());
    }
    let Some(_env) = require_runtime("pod_churn_leaks_nothing") else {
        return Ok(());
    };
    let rounds: usize = std::env::var("BERTH_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(Duration::from_secs(60))?;
    let pid = agent.pid().unwrap_or(0);
    let rss_start = rss_kib(pid);
    for round in 0..rounds {
        for i in 0..5 {
            agent.write_manifest(
                &format!("churn{i}.yaml"),
                &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: churn{i}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, 'echo round {round}; sleep 3600']\n    volumeMounts: [{{name: v, mountPath: /v}}]\n  volumes: [{{name: v, emptyDir: {{}}}}]\n"
                ),
            )?;
        }
        agent.wait_for(Duration::from_secs(120), "5 churn pods Running", || {
            let pods = agent.pods().ok()?;
            (pods.len() == 5 && pods.iter().all(|p| p["status"]["phase"] == "Running"))
                .then_some(())
        })?;
        for i in 0..5 {
            agent.remove_manifest(&format!("churn{i}.yaml"))?;
        }
        agent.poll(
            Duration::from_secs(120),
            "churn pods gone from the runtime",
            || Ok((cd.sandboxes()?.is_empty() && cd.containers()?.is_empty()).then_some(())),
        )?;
        eprintln!(
            "soak: round {}/{rounds} done, agent RSS {} KiB",
            round + 1,
            rss_kib(pid)
        );
    }
    let pods_dir = agent.root_dir().join("pods");
    agent.wait_for(Duration::from_secs(30), "pod directories removed", || {
        std::fs::read_dir(&pods_dir)
            .map(|d| d.count() == 0)
            .unwrap_or(true)
            .then_some(())
    })?;
    let logs = std::fs::read_dir(agent.pod_logs_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(logs, 0, "pod log directories left");
    let mounts: Vec<_> = berth_integration::mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(agent.root_dir()))
        .collect();
    assert!(mounts.is_empty(), "{mounts:?}");
    println!(
        "{{\"soak\":\"pod_churn\",\"rounds\":{rounds},\"pods\":{},\"agent_rss_kib_start\":{rss_start},\"agent_rss_kib_end\":{}}}",
        rounds * 5,
        rss_kib(pid)
    );
    Ok(())
}
