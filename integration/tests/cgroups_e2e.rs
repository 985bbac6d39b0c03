//! Pod cgroups on real cgroups and a real containerd: a Guaranteed, a
//! Burstable and a BestEffort pod get their cgroups where the kubelet puts
//! them (`<root>/pod<uid>`, `<root>/burstable/pod<uid>`,
//! `<root>/besteffort/pod<uid>`), with the kubelet's values read back from
//! the cgroup files, the containers inside them; the values survive a
//! `kill -9` of the agent; and when the pods go, so do their cgroups, with no
//! warning logged.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use berth_integration::{Agent, Containerd, require_runtime};
use serde_json::Value;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(60);

fn pod(name: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n    - name: main\n      image: {IMAGE}\n      command: [sh, -c, 'while true; do sleep 1; done']\n      resources: {resources}\n"
    )
}

/// Whether the host runs cgroup v2 only.
fn unified() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
}

/// The directory of cgroup `rel` in `controller`'s hierarchy.
fn dir(controller: &str, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if unified() {
        PathBuf::from("/sys/fs/cgroup").join(rel)
    } else {
        PathBuf::from("/sys/fs/cgroup").join(controller).join(rel)
    }
}

fn read(controller: &str, rel: &str, file: &str) -> Result<String> {
    let path = dir(controller, rel).join(file);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// Every process in `rel` and below it (the cpu hierarchy).
fn procs_below(rel: &str) -> Vec<String> {
    fn walk(d: &std::path::Path, out: &mut Vec<String>) {
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(t.lines().map(str::to_string));
        }
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir("cpu", rel), &mut out);
    out
}

fn running(agent: &Agent, name: &str) -> Result<Value> {
    agent.wait_static_running(name, T)
}

#[test]
fn pod_cgroups_hold_the_kubelets_values_and_go_with_their_pods() -> Result<()> {
    let Some(_env) = require_runtime("pod_cgroups_hold_the_kubelets_values_and_go_with_their_pods")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let root = cd.cgroup_parent();
    // The root holds allocatable (less the reservations), pods a pids limit.
    let mut agent = Agent::start(
        &cd,
        &[
            "--kube-reserved",
            "cpu=500m,memory=1Gi,pid=1000",
            "--pod-max-pids",
            "200",
        ],
    )?;
    agent.wait_healthy(T)?;
    agent.write_manifest(
        "g.yaml",
        &pod(
            "g",
            "{limits: {cpu: 500m, memory: 64Mi}, requests: {cpu: 500m, memory: 64Mi}}",
        ),
    )?;
    agent.write_manifest(
        "b.yaml",
        &pod("b", "{requests: {cpu: 250m}, limits: {memory: 32Mi}}"),
    )?;
    agent.write_manifest("e.yaml", &pod("e", "{}"))?;
    let uid = |p: &Value| {
        p["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (g, b, e) = (
        running(&agent, "g")?,
        running(&agent, "b")?,
        running(&agent, "e")?,
    );
    let g_cg = format!("{root}/pod{}", uid(&g));
    let b_cg = format!("{root}/burstable/pod{}", uid(&b));
    let e_cg = format!("{root}/besteffort/pod{}", uid(&e));
    assert_eq!(g["status"]["qosClass"], "Guaranteed");
    assert_eq!(b["status"]["qosClass"], "Burstable");
    assert_eq!(e["status"]["qosClass"], "BestEffort");

    let check = || -> Result<()> {
        if unified() {
            // v2: weight from shares (512 -> 20, 256 -> 10, 2 -> 1), cpu.max, memory.max.
            assert_eq!(read("cpu", &g_cg, "cpu.weight")?, "20");
            assert_eq!(read("cpu", &g_cg, "cpu.max")?, "50000 100000");
            assert_eq!(
                read("memory", &g_cg, "memory.max")?,
                (64u64 << 20).to_string()
            );
            assert_eq!(read("cpu", &b_cg, "cpu.weight")?, "10");
            assert_eq!(read("cpu", &b_cg, "cpu.max")?, "max 100000");
            assert_eq!(
                read("memory", &b_cg, "memory.max")?,
                (32u64 << 20).to_string()
            );
            assert_eq!(read("cpu", &e_cg, "cpu.weight")?, "1");
            assert_eq!(read("memory", &e_cg, "memory.max")?, "max");
        } else {
            // --enforce-node-allocatable=pods (the default): the root's values.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let shares = (cpus * 1000 - 500) * 1024 / 1000;
            assert_eq!(read("cpu", &root, "cpu.shares")?, shares.to_string());
            let mem_total_kib: u64 = std::fs::read_to_string("/proc/meminfo")?
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .context("MemTotal")?;
            let limit = (mem_total_kib * 1024 - (1 << 30)) / 4096 * 4096;
            assert_eq!(
                read("memory", &root, "memory.limit_in_bytes")?,
                limit.to_string()
            );
            let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
                .trim()
                .parse()?;
            assert_eq!(
                read("pids", &root, "pids.max")?,
                (pid_max - 1000).to_string()
            );
            assert_eq!(read("pids", &g_cg, "pids.max")?, "200");
            assert_eq!(read("cpu", &g_cg, "cpu.shares")?, "512");
            assert_eq!(read("cpu", &g_cg, "cpu.cfs_quota_us")?, "50000");
            assert_eq!(read("cpu", &g_cg, "cpu.cfs_period_us")?, "100000");
            assert_eq!(
                read("memory", &g_cg, "memory.limit_in_bytes")?,
                (64u64 << 20).to_string()
            );
            // Burstable: no CPU limit, so no quota; the memory limit is declared.
            assert_eq!(read("cpu", &b_cg, "cpu.shares")?, "256");
            assert_eq!(read("cpu", &b_cg, "cpu.cfs_quota_us")?, "-1");
            assert_eq!(
                read("memory", &b_cg, "memory.limit_in_bytes")?,
                (32u64 << 20).to_string()
            );
            assert_eq!(read("cpu", &e_cg, "cpu.shares")?, "2");
            assert_eq!(
                read("cpu", &format!("{root}/besteffort"), "cpu.shares")?,
                "2"
            );
            let unlimited: u64 = read("memory", &e_cg, "memory.limit_in_bytes")?.parse()?;
            assert!(
                unlimited > 1 << 60,
                "BestEffort has no memory limit: {unlimited}"
            );
        }
        // The containers run inside their pod's cgroup.
        for cg in [&g_cg, &b_cg, &e_cg] {
            assert!(!procs_below(cg).is_empty(), "no process below {cg}");
        }
        Ok(())
    };
    check()?;

    // kill -9 and back: the running containers and their cgroups stay as they were.
    agent.kill9()?;
    agent.restart()?;
    agent.wait_healthy(T)?;
    let g2 = running(&agent, "g")?;
    assert_eq!(
        g2["status"]["containerStatuses"][0]["containerID"],
        g["status"]["containerStatuses"][0]["containerID"],
        "the container was not restarted"
    );
    check()?;

    // The pods go, and their cgroups with them, in every hierarchy.
    for f in ["g.yaml", "b.yaml", "e.yaml"] {
        agent.remove_manifest(f)?;
    }
    agent.wait_for(T, "pod cgroups removed", || {
        let left: Vec<PathBuf> = [&g_cg, &b_cg, &e_cg]
            .iter()
            .flat_map(|cg| {
                ["cpu", "memory", "pids", "cpuacct", "unified"]
                    .map(|c| dir(c, cg))
                    .into_iter()
                    .filter(|d| d.exists())
            })
            .collect();
        left.is_empty().then_some(())
    })?;
    let log = agent.log();
    assert!(
        !log.contains("removing pod cgroup failed") && !log.contains("pod cgroup failed"),
        "no warning about pod cgroups:\n{}",
        agent.log_tail(40)
    );
    Ok(())
}

/// A container past its memory limit is OOM-killed (OOMKilled, 137) and,
/// per its restart policy, left (Never) or restarted (Always, the OOM kill
/// its lastState); its neighbour is untouched.
/// Orphans: a pod cgroup no pod owns (left by a `kill -9` of an agent
/// between removing a pod and its cgroup) is removed after a restart; one
/// with a process still in it is never forced, only reported (once); and a
/// pod deleted while the agent was down goes, cgroup and all, when it is back.
#[test]
fn orphaned_pod_cgroups_are_removed_and_busy_ones_only_reported() -> Result<()> {
    let Some(_env) =
        require_runtime("orphaned_pod_cgroups_are_removed_and_busy_ones_only_reported")
    else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let root = cd.cgroup_parent();
    let mut agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    agent.write_manifest("gone.yaml", &pod("gone", "{}"))?;
    let gone = running(&agent, "gone")?;
    let gone_cg = format!(
        "{root}/besteffort/pod{}",
        gone["metadata"]["uid"].as_str().unwrap_or_default()
    );

    // The agent dies; meanwhile its pod is deleted and two orphans appear.
    agent.kill9()?;
    agent.remove_manifest("gone.yaml")?;
    let controllers: &[&str] = if unified() {
        &["cpu"]
    } else {
        &["cpu", "cpuacct", "memory", "pids"]
    };
    let orphan = format!("{root}/besteffort/pod0rphan-1");
    let busy = format!("{root}/besteffort/podbusy-1");
    for c in controllers {
        std::fs::create_dir_all(dir(c, &orphan))?;
        std::fs::create_dir_all(dir(c, &busy))?;
    }
    let mut sleeper = std::process::Command::new("sleep").arg("300").spawn()?;
    std::fs::write(
        dir("cpu", &busy).join("cgroup.procs"),
        sleeper.id().to_string(),
    )?;

    agent.restart()?;
    agent.wait_healthy(T)?;
    agent.wait_for(T, "the orphan and the deleted pod's cgroup removed", || {
        let left = controllers
            .iter()
            .any(|c| dir(c, &orphan).exists() || dir(c, &gone_cg).exists());
        (!left).then_some(())
    })?;
    agent.wait_for(T, "the busy orphan reported", || {
        agent
            .log()
            .contains("orphaned pod cgroup left in place")
            .then_some(())
    })?;
    assert!(
        dir("cpu", &busy).exists(),
        "a cgroup with a process is never forced"
    );
    assert!(
        sleeper.try_wait()?.is_none(),
        "the process in an orphaned cgroup is not killed"
    );
    assert_eq!(
        agent
            .log()
            .matches("orphaned pod cgroup left in place")
            .count(),
        1,
        "reported once"
    );
    sleeper.kill()?;
    sleeper.wait()?;
    for c in controllers {
        let _ = std::fs::remove_dir(dir(c, &busy));
    }
    Ok(())
}

/// A container that outgrows its memory limit is killed by the kernel in
/// its pod's cgroup, and its status says so as the kubelet's does:
/// terminated, reason `OOMKilled`, exit code 137; the pod (restartPolicy
/// Never) is Failed and its neighbour is untouched.
#[test]
fn a_container_over_its_memory_limit_is_oom_killed() -> Result<()> {
    let Some(_env) = require_runtime("a_container_over_its_memory_limit_is_oom_killed") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    agent.write_manifest(
        "hog.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hog}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [sh, -c, 'sleep 1; x=$(head -c 100000000 /dev/zero | tr \"\\\\000\" a); echo survived; sleep 3600']\n    resources: {{limits: {{memory: 24Mi}}}}\n"
        ),
    )?;
    agent.write_manifest(
        "again.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: again}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [sh, -c, 'x=$(head -c 100000000 /dev/zero | tr \"\\\\000\" a); sleep 3600']\n    resources: {{limits: {{memory: 24Mi}}}}\n"
        ),
    )?;
    agent.write_manifest("calm.yaml", &pod("calm", "{limits: {memory: 24Mi}}"))?;
    let calm = running(&agent, "calm")?;
    let hog = agent.static_pod_name("hog");
    let p = agent.poll(T, "hog OOMKilled", || {
        Ok(agent
            .pod("default", &hog)?
            .filter(|p| p["status"]["containerStatuses"][0]["state"]["terminated"].is_object()))
    })?;
    let term = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["reason"], "OOMKilled", "{p}");
    assert_eq!(term["exitCode"], 137, "{p}");
    assert_eq!(p["status"]["phase"], "Failed", "{p}");
    let calm_now = running(&agent, "calm")?;
    assert_eq!(
        calm_now["status"]["containerStatuses"][0]["containerID"],
        calm["status"]["containerStatuses"][0]["containerID"],
        "the neighbour was not touched"
    );
    assert_eq!(
        calm_now["status"]["containerStatuses"][0]["restartCount"],
        0
    );
    // restartPolicy Always: restarted, the OOM kill in lastState.
    let again = agent.static_pod_name("again");
    let p = agent.poll(T, "again restarted after its OOM kill", || {
        Ok(agent.pod("default", &again)?.filter(|p| {
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        }))
    })?;
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["reason"], "OOMKilled", "{p}");
    assert_eq!(last["exitCode"], 137, "{p}");
    Ok(())
}
