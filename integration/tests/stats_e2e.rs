//! The Summary API and the resource metrics on a real containerd and real
//! cgroups: `/stats/summary` reports the node (CPU, memory, fs, rlimit), the
//! pod (from its cgroup) and its container (from CRI `ListContainerStats`),
//! its emptyDir's usage and the container's logs, with `usageNanoCores` once
//! two samples exist; `/metrics/resource` serves the same numbers in the
//! kubelet's Prometheus names. A pod that goes leaves the summary; an agent
//! restarted by `kill -9` answers again.

use std::time::Duration;

use anyhow::{Context as _, Result};
use berth_integration::{Agent, BUSYBOX_IMAGE, Containerd, require_runtime};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn cgroup2() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn pod_stats<'a>(summary: &'a Value, name: &str) -> Option<&'a Value> {
    summary["pods"]
        .as_array()?
        .iter()
        .find(|p| p["podRef"]["name"] == name)
}

#[test]
fn the_summary_api_reports_node_pod_container_and_volume() -> Result<()> {
    let test = "the_summary_api_reports_node_pod_container_and_volume";
    let Some(_env) = require_runtime(test) else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let mut agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    // A busy container writing 1 MiB into its emptyDir and a line to its log.
    agent.write_manifest(
        "busy.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: busy}}\nspec:\n  terminationGracePeriodSeconds: 1\n  volumes: [{{name: scratch, emptyDir: {{}}}}]\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n    command: [sh, -c, 'dd if=/dev/zero of=/scratch/blob bs=1024 count=1024; echo written; while true; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; sleep 0.1; done']\n    resources: {{requests: {{cpu: 100m, memory: 32Mi}}, limits: {{memory: 64Mi}}}}\n"
        ),
    )?;
    let name = agent.static_pod_name("busy");
    agent.poll(T, "busy running", || {
        Ok(agent
            .pod("default", &name)?
            .filter(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object()))
    })?;

    // Two samples apart: the second carries usageNanoCores everywhere.
    let summary = agent.poll(T, "a summary with the pod's rates", || {
        let s = agent.get_json("/stats/summary")?;
        let ready = pod_stats(&s, &name).is_some_and(|p| {
            p["containers"][0]["cpu"]["usageNanoCores"].is_u64()
                && p["cpu"]["usageNanoCores"].is_u64()
                && num(&p["volume"][0]["usedBytes"]) >= 1 << 20
        });
        if !ready {
            std::thread::sleep(Duration::from_millis(1200));
        }
        Ok(ready.then_some(s))
    })?;
    let node = &summary["node"];
    assert_eq!(node["nodeName"], agent.node_name());
    assert!(num(&node["cpu"]["usageCoreNanoSeconds"]) > 0, "{node}");
    assert!(num(&node["memory"]["workingSetBytes"]) > 0, "{node}");
    assert!(num(&node["memory"]["availableBytes"]) > 0, "{node}");
    assert!(num(&node["fs"]["capacityBytes"]) > 0, "{node}");
    assert!(num(&node["rlimit"]["maxpid"]) > 0, "{node}");
    assert!(num(&node["rlimit"]["curproc"]) > 0, "{node}");

    let pod = pod_stats(&summary, &name).context("the pod")?;
    assert_eq!(pod["podRef"]["namespace"], "default");
    assert!(pod["podRef"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(num(&pod["cpu"]["usageCoreNanoSeconds"]) > 0, "{pod}");
    let ws = num(&pod["memory"]["workingSetBytes"]);
    assert!(ws > 0 && ws < 64 << 20, "within its limit: {pod}");
    assert!(num(&pod["process_stats"]["process_count"]) >= 1, "{pod}");
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "main");
    assert!(num(&c["cpu"]["usageCoreNanoSeconds"]) > 0, "{c}");
    assert!(num(&c["memory"]["workingSetBytes"]) > 0, "{c}");
    assert!(num(&c["logs"]["usedBytes"]) > 0, "the log line: {c}");
    let v = &pod["volume"][0];
    assert_eq!(v["name"], "scratch");
    assert!(num(&v["usedBytes"]) >= 1 << 20, "{v}");

    // The summary agrees with the pod cgroup's own counters (v1 here): CPU
    // time read from cpuacct.usage just before and just after a summary
    // brackets the summary's, and the working set (usage − inactive_file)
    // is within 10% of the cgroup's.
    if !cgroup2() {
        // The container's own cgroup (runc under cgroupfs: <pod cgroup>/<id>).
        let uid = pod["podRef"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let id = agent
            .pod("default", &name)?
            .and_then(|p| {
                p["status"]["containerStatuses"][0]["containerID"]
                    .as_str()
                    .map(str::to_string)
            })
            .context("the container's ID")?;
        let id = id.rsplit("://").next().unwrap_or_default().to_string();
        let rel = format!(
            "{}/burstable/pod{uid}/{id}",
            cd.cgroup_parent().trim_start_matches('/')
        );
        let cg = |controller: &str, file: &str| -> Result<String> {
            let path = std::path::Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&rel)
                .join(file);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        let cpu = || -> Result<u64> { Ok(cg("cpuacct", "cpuacct.usage")?.trim().parse()?) };
        let working_set = || -> Result<u64> {
            let usage: u64 = cg("memory", "memory.usage_in_bytes")?.trim().parse()?;
            let stat = cg("memory", "memory.stat")?;
            let inactive: u64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("total_inactive_file "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            Ok(usage.saturating_sub(inactive))
        };
        // The working set of a container this small moves by whole pages
        // between two reads (its loop forks `sleep`): each attempt brackets
        // the summary with a reading before and after it, and one of five
        // must agree within 10%. A summary off the cgroup's own counters
        // (another cgroup, usage without inactive_file) fails all five.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (cpu_before, ws_before) = (cpu()?, working_set()?);
            let s = agent.get_json("/stats/summary")?;
            let (cpu_after, ws_after) = (cpu()?, working_set()?);
            let p = pod_stats(&s, &name).context("the pod")?;
            let p = &p["containers"][0];
            let used = num(&p["cpu"]["usageCoreNanoSeconds"]);
            assert!(
                cpu_before <= used && used <= cpu_after,
                "cpu {used} ns within the cgroup's {cpu_before}..={cpu_after}"
            );
            let ws = num(&p["memory"]["workingSetBytes"]);
            let (low, high) = (ws_before.min(ws_after), ws_before.max(ws_after));
            if ws * 10 >= low * 9 && ws * 10 <= high * 11 {
                seen.clear();
                break;
            }
            seen.push((ws, low, high));
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            seen.is_empty(),
            "working set (summary, cgroup low, cgroup high) never within 10%: {seen:?}"
        );
    }

    // The same numbers in the kubelet's Prometheus names.
    let (code, text) = agent.get_text("/metrics/resource")?;
    assert_eq!(code, 200);
    for want in [
        "node_cpu_usage_seconds_total ",
        "node_memory_working_set_bytes ",
        &format!("pod_cpu_usage_seconds_total{{namespace=\"default\",pod=\"{name}\"}} "),
        &format!(
            "container_memory_working_set_bytes{{container=\"main\",namespace=\"default\",pod=\"{name}\"}} "
        ),
        "resource_scrape_error 0",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }

    // kill -9 and back: a summary again, the pod still in it.
    agent.kill9()?;
    agent.restart()?;
    agent.wait_healthy(T)?;
    agent.poll(T, "a summary after the restart", || {
        let s = agent.get_json("/stats/summary")?;
        Ok(pod_stats(&s, &name).map(|_| ()))
    })?;

    // The pod goes: so does its entry.
    agent.remove_manifest("busy.yaml")?;
    agent.poll(T, "the pod gone from the summary", || {
        let s = agent.get_json("/stats/summary")?;
        Ok(pod_stats(&s, &name).is_none().then_some(()))
    })?;
    Ok(())
}

/// Issue 10's figures, printed as JSON (nothing timed is asserted): with 30
/// pods (an emptyDir each), the latency of `/stats/summary` and
/// `/metrics/resource`, the agent's RSS, and its CPU while idle.
#[test]
fn the_summary_at_30_pods_is_measured() -> Result<()> {
    let test = "the_summary_at_30_pods_is_measured";
    let Some(_env) = require_runtime(test) else {
        return Ok(());
    };
    const PODS: usize = 30;
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    for i in 0..PODS {
        agent.write_manifest(
            &format!("p{i}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  volumes: [{{name: scratch, emptyDir: {{}}}}]\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n    command: [sh, -c, 'while true; do sleep 1; done']\n"
            ),
        )?;
    }
    agent.poll(Duration::from_secs(300), "30 pods running", || {
        let s = agent.get_json("/stats/summary")?;
        let n = s["pods"].as_array().map_or(0, |p| {
            p.iter()
                .filter(|p| p["containers"][0]["cpu"]["usageNanoCores"].is_u64())
                .count()
        });
        if n < PODS {
            std::thread::sleep(Duration::from_millis(1000));
        }
        Ok((n >= PODS).then_some(()))
    })?;
    let time = |path: &str| -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for _ in 0..20 {
            let start = std::time::Instant::now();
            let (code, _) = agent.get_text(path)?;
            out.push(start.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(code == 200, "{path}: {code}");
        }
        out.sort_by(f64::total_cmp);
        Ok(out)
    };
    let summary = time("/stats/summary")?;
    let resource = time("/metrics/resource")?;
    let pid = agent.pid().context("the agent's pid")?;
    let ticks = || -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after ')'.
        Ok(n(11) + n(12))
    };
    let idle = Duration::from_secs(20);
    let before = ticks()?;
    std::thread::sleep(idle);
    let used = ticks()?.saturating_sub(before);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let figures = serde_json::json!({
        "benchmark": "issue 10: the node's stats at 30 pods",
        "build_profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "pods": PODS,
        "stats_summary_ms": {"p50": summary[summary.len() / 2], "max": summary[summary.len() - 1]},
        "metrics_resource_ms": {"p50": resource[resource.len() / 2], "max": resource[resource.len() - 1]},
        "agent_rss_kib": berth_integration::rss_kib(pid)?,
        "agent_idle_cpu_percent_of_a_core": used as f64 / hz / idle.as_secs_f64() * 100.0,
    });
    println!("{}", serde_json::to_string_pretty(&figures)?);
    Ok(())
}
