//! berth's benchmark: figures, not assertions, printed as one JSON object.
//!
//! In one run, against one private containerd (so machine noise hits both
//! sides alike):
//! - `raw_cri`: a pod started by bare CRI calls (RunPodSandbox, CreateContainer,
//!   StartContainer): the floor any agent stands on;
//! - `agent`: a manifest written into the agent's directory until `/pods` shows
//!   it Running (source → worker → CRI → relist → status);
//! - the agent's RSS idle and with 10 pods running, and the time for 10 pods.
//!
//! Usage: `berth-bench [--iterations N]` (as root, after integration/setup.sh).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_cri::api;
use berth_integration::{Agent, Containerd, require_runtime, rss_kib};
use serde_json::json;

const IMAGE: &str = "localhost/berth/busybox:1.36";

fn pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n    - name: main\n      image: {IMAGE}\n      command: [\"sleep\", \"3600\"]\n"
    )
}

fn stats(samples: &[f64]) -> serde_json::Value {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len().max(1) as f64;
    json!({
        "samples": s.len(),
        "min_ms": s.first().copied().unwrap_or(0.0),
        "median_ms": s.get(s.len() / 2).copied().unwrap_or(0.0),
        "mean_ms": s.iter().sum::<f64>() / n,
        "max_ms": s.last().copied().unwrap_or(0.0),
    })
}

/// One pod by bare CRI calls; returns the time until StartContainer returned.
async fn raw_cri_pod(client: &berth_cri::RuntimeClient, cd: &Containerd, i: usize) -> Result<f64> {
    let uid = format!("bench-raw-{i}-{}", std::process::id());
    let labels: std::collections::HashMap<String, String> =
        [("io.kubernetes.pod.uid".to_string(), uid.clone())].into();
    let log_dir = cd.temp_dir().join("raw-logs").join(&uid);
    std::fs::create_dir_all(&log_dir)?;
    let sandbox_config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: format!("raw-{i}"),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("raw-{i}"),
        log_directory: log_dir.display().to_string(),
        labels: labels.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    let sandbox = client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .pod_sandbox_id;
    let container = client
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(api::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                log_path: "main/0.log".into(),
                labels,
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        })
        .await?
        .container_id;
    client
        .start_container(api::StartContainerRequest {
            container_id: container.clone(),
        })
        .await?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    client.stop_container(&container, 0).await?;
    client
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await?;
    client
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await?;
    Ok(elapsed)
}

fn running(agent: &Agent, name: &str) -> bool {
    agent
        .pod("default", &agent.static_pod_name(name))
        .ok()
        .flatten()
        .is_some_and(|p| {
            p["status"]["phase"] == "Running"
                && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
        })
}

fn main() -> Result<()> {
    let iterations: usize = std::env::args()
        .skip_while(|a| a != "--iterations")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let Some(_env) = require_runtime("berth-bench") else {
        return Ok(());
    };
    eprintln!("berth-bench: starting a private containerd");
    let cd = Containerd::start()?;
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(cd.client())?;

    eprintln!("berth-bench: raw CRI, {iterations} pods");
    // One warm-up pod so both sides start with the image unpacked and CNI loaded.
    rt.block_on(raw_cri_pod(&client, &cd, 0))?;
    let mut raw = Vec::new();
    for i in 1..=iterations {
        raw.push(rt.block_on(raw_cri_pod(&client, &cd, i))?);
    }

    eprintln!("berth-bench: agent, {iterations} pods");
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(Duration::from_secs(60))?;
    let pid = agent.pid().context("agent has no pid")?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = rss_kib(pid)?;
    let mut to_running = Vec::new();
    for i in 0..iterations {
        let name = format!("lat{i}");
        let started = Instant::now();
        agent.write_manifest(&format!("{name}.yaml"), &pod_yaml(&name))?;
        agent.wait_for(Duration::from_secs(60), &format!("{name} Running"), || {
            running(&agent, &name).then_some(())
        })?;
        to_running.push(started.elapsed().as_secs_f64() * 1000.0);
        agent.remove_manifest(&format!("{name}.yaml"))?;
    }
    agent.wait_for(Duration::from_secs(60), "latency pods removed", || {
        agent.pods().ok().filter(|p| p.is_empty()).map(|_| ())
    })?;

    eprintln!("berth-bench: agent, 10 pods at once");
    let started = Instant::now();
    for i in 0..10 {
        agent.write_manifest(&format!("ten{i}.yaml"), &pod_yaml(&format!("ten{i}")))?;
    }
    agent.wait_for(Duration::from_secs(120), "10 pods Running", || {
        (0..10)
            .all(|i| running(&agent, &format!("ten{i}")))
            .then_some(())
    })?;
    let ten_ms = started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(5));
    let rss_ten = rss_kib(pid)?;
    let relists = agent.get_text("/metrics")?.1;
    let relist_line = relists
        .lines()
        .filter(|l| {
            l.starts_with("berth_pleg_relist_duration_seconds_sum")
                || l.starts_with("berth_pleg_relist_duration_seconds_count")
        })
        .map(String::from)
        .collect::<Vec<_>>();

    let report = json!({
        "benchmark": "berth-agent pod start",
        "build_profile": if cfg!(debug_assertions) { "dev" } else { "release" },
        "runtime": "containerd (private instance)",
        "raw_cri_run_create_start": stats(&raw),
        "agent_manifest_to_running_on_pods": stats(&to_running),
        "agent_ten_pods_to_all_running_ms": ten_ms,
        "agent_rss_kib": { "idle": rss_idle, "ten_pods": rss_ten },
        "agent_relist_metrics": relist_line,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
