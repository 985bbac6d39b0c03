//! The reliability suite's short variants (issue 11), against a real
//! containerd, runc and CNI: what a `kill -9` of the agent at any moment
//! leaves, and pod churn. Each test starts its own containerd and agent.
//! Long variants run with `BERTH_SOAK=1` (`BERTH_SOAK_ROUNDS`, `BERTH_SEED`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use berth_integration::{Agent, Containerd, require_runtime, soak};
use berth_test_support::TestRng;
use serde_json::Value;

const IMAGE: &str = "localhost/berth/busybox:1.36";
const T: Duration = Duration::from_secs(90);

/// A pod of one of four shapes: a plain sleeper; disk and memory-backed
/// emptyDirs; an init container and an exec readiness probe; a hostPath
/// volume and env. `generation` changes its content (a new static pod UID).
fn manifest(name: &str, shape: usize, generation: usize) -> String {
    let (extra_spec, mounts) = match shape % 4 {
        0 => (String::new(), String::new()),
        1 => (
            "  volumes:\n  - {name: disk, emptyDir: {}}\n  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 4Mi}}\n".to_string(),
            "    volumeMounts: [{name: disk, mountPath: /disk}, {name: mem, mountPath: /mem}]\n".to_string(),
        ),
        2 => (
            format!("  initContainers:\n  - name: init\n    image: {IMAGE}\n    command: [sh, -c, 'echo init > /work/ready']\n    volumeMounts: [{{name: work, mountPath: /work}}]\n  volumes:\n  - {{name: work, emptyDir: {{}}}}\n"),
            "    volumeMounts: [{name: work, mountPath: /work}]\n    readinessProbe:\n      exec: {command: [cat, /work/ready]}\n      periodSeconds: 1\n".to_string(),
        ),
        _ => (
            "  volumes:\n  - {name: host, hostPath: {path: /tmp, type: Directory}}\n".to_string(),
            "    env: [{name: SHAPE, value: host}]\n    volumeMounts: [{name: host, mountPath: /host, readOnly: true}]\n".to_string(),
        ),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [sh, -c, 'echo gen {generation}; exec sleep 3600']\n{mounts}{extra_spec}"
    )
}

fn uid(p: &Value) -> String {
    p["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn container_id(p: &Value) -> String {
    p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

fn unified() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
}

/// The pod cgroup directories of `uid` under `root` in the memory hierarchy
/// (every tier).
fn pod_cgroups(root: &str, uid: &str) -> Vec<PathBuf> {
    let base = if unified() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    let root = base.join(root.trim_start_matches('/'));
    [
        root.join(format!("pod{uid}")),
        root.join("burstable").join(format!("pod{uid}")),
        root.join("besteffort").join(format!("pod{uid}")),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

/// Everything of pod `uid` still on the node, described (empty: nothing).
fn leftovers(cd: &Containerd, agent: &Agent, uid: &str) -> Result<Vec<String>> {
    let mut left = Vec::new();
    let sandboxes = cd.sandboxes_labeled("io.kubernetes.pod.uid", uid)?;
    if !sandboxes.is_empty() {
        left.push(format!("{} sandbox(es)", sandboxes.len()));
    }
    let containers = cd.containers_labeled("io.kubernetes.pod.uid", uid)?;
    if !containers.is_empty() {
        left.push(format!("{} container(s)", containers.len()));
    }
    let pod_dir = agent.root_dir().join("pods").join(uid);
    if pod_dir.exists() {
        left.push(format!("pod dir {}", pod_dir.display()));
    }
    let mounts = berth_integration::mounts_under(&pod_dir)?;
    if !mounts.is_empty() {
        left.push(format!("mounts {mounts:?}"));
    }
    if let Ok(entries) = std::fs::read_dir(agent.pod_logs_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(&format!("_{uid}")) {
                left.push(format!("log dir {name}"));
            }
        }
    }
    for cg in pod_cgroups(&cd.cgroup_parent(), uid) {
        left.push(format!("cgroup {}", cg.display()));
    }
    Ok(left)
}

fn wait_clean(cd: &Containerd, agent: &Agent, uid: &str, what: &str) -> Result<()> {
    let mut last = Vec::new();
    let r = agent.poll(T, &format!("{what}: nothing of pod {uid} left"), || {
        last = leftovers(cd, agent, uid)?;
        Ok(last.is_empty().then_some(()))
    });
    r.with_context(|| format!("left: {last:?}"))
}

/// A kill -9 of the agent after `RemovePodSandbox` but before its own
/// clean-up leaves a pod no source and no runtime knows: its directory with
/// a live tmpfs (memory emptyDir), its log directory, its cgroup. The
/// restarted agent's orphan sweep removes all of it (unmounting first), and
/// also a planted orphan; a running pod is untouched, a symlink in the pods
/// directory is not followed.
#[test]
fn what_a_kill9_mid_removal_leaves_is_swept() -> Result<()> {
    let Some(_env) = require_runtime("what_a_kill9_mid_removal_leaves_is_swept") else {
        return Ok(());
    };
    let cd = Containerd::start()?;
    let mut agent = Agent::start(&cd, &[])?;
    agent.write_manifest("mem.yaml", &manifest("mem", 1, 0))?;
    agent.write_manifest("keep.yaml", &manifest("keep", 0, 0))?;
    let mem = agent.wait_static_running("mem", T)?;
    let keep = agent.wait_static_running("keep", T)?;
    let mem_uid = uid(&mem);
    let pod_dir = agent.root_dir().join("pods").join(&mem_uid);
    assert!(
        berth_integration::mounts_under(&pod_dir)?
            .iter()
            .any(|m| m.fs_type == "tmpfs"),
        "the memory emptyDir is a tmpfs"
    );

    agent.kill9()?;
    agent.remove_manifest("mem.yaml")?;
    for sb in cd.sandboxes_labeled("io.kubernetes.pod.uid", &mem_uid)? {
        cd.remove_sandbox(&sb.id)?;
    }
    let before = leftovers(&cd, &agent, &mem_uid)?;
    assert!(
        before.iter().any(|l| l.starts_with("mounts"))
            && before.iter().any(|l| l.starts_with("log dir"))
            && before.iter().any(|l| l.starts_with("cgroup")),
        "the kill left the pod's dir, mount, logs and cgroup: {before:?}"
    );

    // A planted orphan: a pod directory with a live tmpfs, a log directory.
    let ghost = "ghost-0rphan-1";
    let ghost_vol = agent
        .root_dir()
        .join("pods")
        .join(ghost)
        .join("volumes/kubernetes.io~empty-dir/cache");
    std::fs::create_dir_all(&ghost_vol)?;
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&ghost_vol)
        .status()?;
    assert!(status.success(), "mount tmpfs");
    std::fs::write(ghost_vol.join("f"), "x")?;
    let ghost_logs = agent
        .pod_logs_dir()
        .join(format!("default_ghost_{ghost}/c"));
    std::fs::create_dir_all(&ghost_logs)?;
    std::fs::write(ghost_logs.join("0.log"), "x\n")?;
    // A symlink in the pods directory pointing outside: never followed.
    let outside = tempfile::tempdir()?;
    std::fs::write(outside.path().join("precious"), "keep me")?;
    std::os::unix::fs::symlink(outside.path(), agent.root_dir().join("pods").join("evil"))?;

    agent.restart()?;
    agent.wait_healthy(T)?;
    wait_clean(
        &cd,
        &agent,
        &mem_uid,
        "the pod removed while the agent was down",
    )?;
    wait_clean(&cd, &agent, ghost, "the planted orphan")?;
    assert!(
        outside.path().join("precious").exists(),
        "a symlink was followed"
    );
    let after = agent.wait_static_running("keep", T)?;
    assert_eq!(
        container_id(&after),
        container_id(&keep),
        "keep was restarted"
    );
    assert!(
        agent
            .log()
            .contains("housekeeping: removing what an orphaned pod left"),
        "the sweep says what it removes"
    );
    Ok(())
}

/// Churn's pod names: `churn0` … `churn{POOL-1}`.
const POOL: usize = 6;

/// What a churn wants: name → (shape, generation) of the manifest on disk.
#[derive(Default)]
struct Churn {
    desired: BTreeMap<String, (usize, usize)>,
    every_uid: BTreeSet<String>,
    generation: usize,
}

impl Churn {
    /// One to three changes: a pod removed, or written anew (new content, new UID).
    fn step(&mut self, agent: &Agent, rng: &mut TestRng) -> Result<()> {
        for _ in 0..1 + rng.below(3) {
            let name = format!("churn{}", rng.below(POOL as u64));
            if self.desired.contains_key(&name) && rng.below(2) == 0 {
                agent.remove_manifest(&format!("{name}.yaml"))?;
                self.desired.remove(&name);
            } else {
                self.generation += 1;
                let shape = rng.below(4) as usize;
                agent.write_manifest(
                    &format!("{name}.yaml"),
                    &manifest(&name, shape, self.generation),
                )?;
                self.desired.insert(name, (shape, self.generation));
            }
        }
        Ok(())
    }

    /// The running pods by UID (taken before a disruption).
    fn running(agent: &Agent) -> Result<BTreeMap<String, Value>> {
        Ok(agent
            .pods()?
            .into_iter()
            .filter(running)
            .map(|p| (uid(&p), p))
            .collect())
    }

    /// Converged: exactly the desired pods, each Running once with one ready
    /// sandbox; a pod in `before` still wanted kept its container; every
    /// pod no longer wanted is gone entirely.
    fn assert_converged(
        &mut self,
        cd: &Containerd,
        agent: &Agent,
        before: &BTreeMap<String, Value>,
        step: &str,
    ) -> Result<()> {
        let names: BTreeSet<String> = self
            .desired
            .keys()
            .map(|n| agent.static_pod_name(n))
            .collect();
        let pods = agent.poll(T, &format!("{step}: the desired pods running"), || {
            let pods = agent.pods()?;
            let now: BTreeSet<String> = pods
                .iter()
                .filter(|p| running(p))
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            Ok((now == names && pods.len() == names.len()).then_some(pods))
        })?;
        let live: BTreeSet<String> = pods.iter().map(uid).collect();
        for p in &pods {
            let u = uid(p);
            self.every_uid.insert(u.clone());
            let ready = cd
                .sandboxes_labeled("io.kubernetes.pod.uid", &u)?
                .into_iter()
                .filter(|s| s.state == 0)
                .count();
            assert_eq!(ready, 1, "{step}: pod {u}: one ready sandbox");
            if let Some(b) = before.get(&u) {
                assert_eq!(
                    container_id(p),
                    container_id(b),
                    "{step}: pod {u} was restarted"
                );
            }
        }
        for u in self.every_uid.iter().filter(|u| !live.contains(*u)) {
            wait_clean(cd, agent, u, &format!("{step}: a removed pod"))?;
        }
        Ok(())
    }

    /// Remove every manifest; nothing of any pod may be left.
    fn finish(&self, cd: &Containerd, agent: &Agent) -> Result<()> {
        for name in self.desired.keys() {
            agent.remove_manifest(&format!("{name}.yaml"))?;
        }
        for u in &self.every_uid {
            wait_clean(cd, agent, u, "the end")?;
        }
        assert_only_agent_dirs_left(agent)
    }
}

/// Pod churn through manifests with the agent `kill -9`ed at seeded random
/// moments (CI: 20 kills; `BERTH_SOAK=1`: 100). After each restart the agent
/// converges: every desired pod runs exactly once (one sandbox per UID), a
/// pod that ran before the kill and is still wanted was not restarted, and
/// every pod no longer wanted is gone entirely (sandbox, containers, pod and
/// log directories, mounts, cgroup). At the end nothing is left.
#[test]
fn churn_with_kill9_at_seeded_moments_converges() -> Result<()> {
    let Some(_env) = require_runtime("churn_with_kill9_at_seeded_moments_converges") else {
        return Ok(());
    };
    let kills: usize = if soak() { 100 } else { 20 };
    let mut rng = TestRng::for_test("churn_with_kill9");
    eprintln!("churn_with_kill9: {kills} kills");
    let cd = Containerd::start()?;
    let mut agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    let mut churn = Churn::default();
    for kill in 0..kills {
        // A few changes, then the kill at a random moment while they apply.
        churn.step(&agent, &mut rng)?;
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        // What runs now and is still wanted must survive the kill as it is.
        let before = Churn::running(&agent)?;
        agent.kill9()?;
        if rng.below(3) == 0 {
            // Changes while the agent is down, too.
            let name = format!("churn{}", rng.below(POOL as u64));
            if churn.desired.remove(&name).is_some() {
                agent.remove_manifest(&format!("{name}.yaml"))?;
            }
        }
        agent.restart()?;
        agent.wait_healthy(T)?;
        churn.assert_converged(&cd, &agent, &before, &format!("kill {kill}"))?;
        eprintln!(
            "churn_with_kill9: kill {}/{kills}: {} pods desired, converged",
            kill + 1,
            churn.desired.len()
        );
    }
    churn.finish(&cd, &agent)
}

/// Pod churn with containerd itself restarted at seeded random moments (CI:
/// 4 restarts; `BERTH_SOAK=1`: 20), changes also made while it is down. The
/// agent says so on /healthz meanwhile, never crashes, and converges once
/// containerd is back: exactly the desired pods, once each, running
/// containers not restarted (containerd's restart leaves the shims), removed
/// pods gone entirely.
#[test]
fn churn_with_containerd_restarts_converges() -> Result<()> {
    let Some(_env) = require_runtime("churn_with_containerd_restarts_converges") else {
        return Ok(());
    };
    let restarts: usize = if soak() { 20 } else { 4 };
    let mut rng = TestRng::for_test("churn_with_containerd_restarts");
    eprintln!("churn_with_containerd_restarts: {restarts} restarts");
    let mut cd = Containerd::start()?;
    let mut agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    let mut churn = Churn::default();
    for round in 0..restarts {
        churn.step(&agent, &mut rng)?;
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        let before = Churn::running(&agent)?;
        cd.stop()?;
        // The outage is on /healthz, and changes keep coming.
        agent.poll(T, "/healthz to say the runtime is unreachable", || {
            let (code, body) = agent.get_text("/healthz")?;
            Ok((code == 503 && body.contains("container runtime is unreachable")).then_some(()))
        })?;
        churn.step(&agent, &mut rng)?;
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        cd.start_again()?;
        agent.wait_healthy(T)?;
        assert!(agent.is_running(), "round {round}: the agent exited");
        // A pod written anew while containerd was down has a new UID: only
        // those still the same pod must have kept their container.
        churn.assert_converged(&cd, &agent, &before, &format!("containerd restart {round}"))?;
        eprintln!(
            "churn_with_containerd_restarts: restart {}/{restarts}: {} pods desired, converged",
            round + 1,
            churn.desired.len()
        );
    }
    churn.finish(&cd, &agent)
}

/// Nothing under the pods and pod-logs directories.
fn assert_only_agent_dirs_left(agent: &Agent) -> Result<()> {
    let list = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let pods = list(&agent.root_dir().join("pods"));
    assert!(pods.is_empty(), "pod directories left: {pods:?}");
    let logs = list(&agent.pod_logs_dir());
    assert!(logs.is_empty(), "pod log directories left: {logs:?}");
    Ok(())
}

/// The agent's threads by name, counted.
fn thread_names(pid: u32) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        *names.entry(name.trim().to_string()).or_insert(0) += 1;
    }
    names
}

/// Rounds of churn before the agent's footprint is taken as the baseline.
const WARM_ROUNDS: usize = 4;

/// The agent's open file descriptors, tasks (threads) and RSS (KiB) when
/// idle: the least of six readings over 15 s (idle blocking threads retire
/// after 10 s; periodic work wakes one now and then).
fn footprint(pid: u32) -> Result<(usize, usize, u64)> {
    let count = |d: String| std::fs::read_dir(&d).map(|e| e.count()).with_context(|| d);
    let mut least = (usize::MAX, usize::MAX, u64::MAX);
    for i in 0..6 {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(3));
        }
        least.0 = least.0.min(count(format!("/proc/{pid}/fd"))?);
        least.1 = least.1.min(count(format!("/proc/{pid}/task"))?);
        least.2 = least.2.min(berth_integration::rss_kib(pid)?);
    }
    Ok(least)
}

/// Pod churn through manifests: 200 create/delete cycles of the four shapes
/// (`BERTH_SOAK=1`: 1,000, or `BERTH_SOAK_ROUNDS` rounds of 5). After it
/// nothing of any pod is left (sandboxes, containers, pod and log
/// directories, mounts, cgroups) and the agent's open descriptors, tasks and
/// RSS are back within 10% of where they were once warm (after
/// [`WARM_ROUNDS`] rounds).
#[test]
fn pod_churn_leaks_nothing() -> Result<()> {
    let Some(_env) = require_runtime("pod_churn_leaks_nothing") else {
        return Ok(());
    };
    let rounds: usize = std::env::var("BERTH_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if soak() { 200 } else { 40 });
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(T)?;
    let pid = agent.pid().context("agent pid")?;
    let mut start = None;
    let mut every_uid = BTreeSet::new();
    for round in 0..rounds {
        for i in 0..5 {
            agent.write_manifest(
                &format!("churn{i}.yaml"),
                &manifest(&format!("churn{i}"), round + i, round),
            )?;
        }
        let pods = agent.poll(T, &format!("round {round}: 5 churn pods Running"), || {
            let pods = agent.pods()?;
            Ok((pods.len() == 5 && pods.iter().all(running)).then_some(pods))
        })?;
        every_uid.extend(pods.iter().map(uid));
        for i in 0..5 {
            agent.remove_manifest(&format!("churn{i}.yaml"))?;
        }
        agent.poll(
            T,
            &format!("round {round}: churn pods gone from the runtime"),
            || Ok((cd.sandboxes()?.is_empty() && cd.containers()?.is_empty()).then_some(())),
        )?;
        if round == WARM_ROUNDS.min(rounds - 1) {
            // Warm: the first pods grow pools, caches and malloc arenas once.
            start = Some(footprint(pid)?);
        }
    }
    for u in &every_uid {
        wait_clean(&cd, &agent, u, "after the churn")?;
    }
    assert_only_agent_dirs_left(&agent)?;
    let mounts = berth_integration::mounts_under(&agent.root_dir())?;
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let (fds0, tasks0, rss0) = start.context("first round measured")?;
    let (fds, tasks, rss) = footprint(pid)?;
    eprintln!("pod_churn_leaks_nothing: threads {:?}", thread_names(pid));
    println!(
        "{{\"reliability\":\"pod_churn\",\"rounds\":{rounds},\"pods\":{},\"fds\":[{fds0},{fds}],\"tasks\":[{tasks0},{tasks}],\"rss_kib\":[{rss0},{rss}]}}",
        rounds * 5
    );
    let within = |a: u64, b: u64| b <= a + a / 10 + 2;
    assert!(
        within(fds0 as u64, fds as u64),
        "open fds grew: {fds0} → {fds}"
    );
    assert!(
        within(tasks0 as u64, tasks as u64),
        "tasks grew: {tasks0} → {tasks}: {:?}",
        thread_names(pid)
    );
    assert!(within(rss0, rss), "RSS grew: {rss0} KiB → {rss} KiB");
    Ok(())
}
