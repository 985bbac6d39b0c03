//! berth's agent benchmark: figures, not assertions, printed as one JSON object.
//!
//! Everything runs against one private containerd, with busybox already
//! imported. For each batch size N the agent and a minimal CRI client take
//! turns (raw first on even iterations, agent first on odd ones), so drift of
//! the machine hits both sides alike:
//!
//! - raw: N tasks at once, each RunPodSandbox + CreateContainer +
//!   StartContainer from a bare client (the floor any agent stands on);
//!   teardown: StopPodSandbox + RemovePodSandbox of all N at once;
//! - agent: N manifests written into its directory at once; a pod counts once
//!   `/pods` shows it `Running` with its container running (polled every
//!   few ms; the CRI's own ListContainers is polled alongside); teardown: the
//!   manifests deleted until the CRI lists none of their sandboxes.
//!
//! Per-pod times run from the batch's start (the first manifest written, the
//! first call sent), so both sides' per-pod figures mean the same.
//!
//! # JSON keys (stable: `target/bench-agent.json` is turned into BENCHMARKS.md)
//!
//! A *stats* object is `{samples, min_ms, p50_ms, p99_ms, mean_ms, max_ms}`
//! (`p99_ms` is the nearest-rank percentile, the maximum for fewer than 100
//! samples).
//!
//! - `benchmark`, `schema_version` (2), `mode` (`"quick"` or `"full"`),
//!   `build_profile` (`"dev"`/`"release"`), `runtime`, `host_cpus`,
//!   `relist_period_s` (the agent's `--relist-period`).
//! - `pod_start`: one entry per N (1, 10, 30; full mode adds 100):
//!   - `pods`: N; `iterations`;
//!   - `raw.batch_ms`, `agent.batch_ms`: stats of the batch wall time (to the
//!     last pod) over the iterations;
//!   - `raw.per_pod_ms`: stats over every pod of every iteration (batch start
//!     to its StartContainer answer); `agent.per_pod_ms`: the same to
//!     `Running` on `/pods`; `agent.cri_running_per_pod_ms`: to its container
//!     listed running by the CRI;
//!   - `raw.containerd_cpu_ms_per_batch`, `agent.containerd_cpu_ms_per_batch`:
//!     containerd's CPU time (its own process, not the shims) per batch;
//!     `agent.agent_cpu_ms_per_batch`: the agent's;
//!   - `agent.cri_calls`: per CRI operation, `calls_per_pod` and `mean_ms`
//!     (from the agent's `berth_cri_operations_duration_seconds`) over its
//!     batches, relists included;
//!   - `ratio_batch_p50`: `agent.batch_ms.p50_ms / raw.batch_ms.p50_ms`;
//!     `ratio_per_pod_p50`, `ratio_per_pod_p99`: the same of `per_pod_ms`.
//! - `teardown`: one entry per N with a measured teardown (30; full: 30 and
//!   100): `pods`, `iterations`, `raw.batch_ms`, `agent.batch_ms` (stats),
//!   `agent.cri_calls` (as above), `ratio_batch_p50`.
//! - `footprint`:
//!   - `idle`: one entry per pod count (0, 30; full: 0, 30, 110): `pods`,
//!     `rss_kib`, `cpu_percent_of_one_core` (utime+stime from
//!     `/proc/<pid>/stat` over `window_s` seconds, nothing else happening);
//!   - `during_start`: for the largest N of `pod_start` (100; quick: 30): `pods`,
//!     `cpu_percent_of_one_core` over the agent batches, `rss_kib_after`;
//!   - `endpoints` (full mode only, at 110 pods; `null` in quick mode):
//!     `pods`, `requests`, `pods_list_ms` and `stats_summary_ms` (stats of
//!     sequential `GET /pods` and `GET /stats/summary`).
//! - `agent_metrics`: the agent's `berth_pleg_relist_duration_seconds_{sum,count}`
//!   and `berth_pod_sync_duration_seconds_{sum,count}` lines at the end.
//!
//! Usage: `berth-bench [--quick] [--iterations N]` (as root, after
//! integration/setup.sh). For profiling, `BERTH_BENCH_RUST_LOG` is passed to
//! the agent as `RUST_LOG` and `BERTH_BENCH_AGENT_LOG=<file>` keeps its log. `--iterations` scales every N's iteration count
//! (default: full 10/6/4/2 for N = 1/10/30/100, quick 5/3/1).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use berth_cri::{RuntimeClient, api};
use berth_integration::{Agent, AgentOptions, Containerd, require_runtime, rss_kib};
use serde_json::{Value, json};

const IMAGE: &str = "localhost/berth/busybox:1.36";
/// Exits at once on SIGTERM, so a graceful stop costs the agent no grace period.
const COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done",
];
/// USER_HZ, the unit of /proc/<pid>/stat's times (100 on every Linux port we run on).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// How long idle CPU is sampled.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// How long a batch may take before the benchmark gives up.
const BATCH_TIMEOUT: Duration = Duration::from_secs(300);
const NODE: &str = "berth-node";
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";

fn pod_yaml(name: &str) -> String {
    let command = COMMAND
        .iter()
        .map(|a| serde_json::to_string(a).expect("a string serializes"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n    - name: main\n      image: {IMAGE}\n      command: [{command}]\n"
    )
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn stats(samples: &[f64]) -> Value {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len().max(1) as f64;
    json!({
        "samples": s.len(),
        "min_ms": round2(s.first().copied().unwrap_or(0.0)),
        "p50_ms": round2(percentile(&s, 50.0)),
        "p99_ms": round2(percentile(&s, 99.0)),
        "mean_ms": round2(s.iter().sum::<f64>() / n),
        "max_ms": round2(s.last().copied().unwrap_or(0.0)),
    })
}

fn ratio(agent: &Value, raw: &Value, key: &str) -> f64 {
    let (a, r) = (
        agent[key].as_f64().unwrap_or(0.0),
        raw[key].as_f64().unwrap_or(0.0),
    );
    if r > 0.0 { round3(a / r) } else { 0.0 }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// utime+stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may hold spaces: count after ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path} has no ')'"))?;
    // After ')', field 3 (state) is index 0: utime (14) and stime (15).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        f.get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: no field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

fn cpu_percent(ticks: u64, over: Duration) -> f64 {
    round2(ticks as f64 / CLOCK_TICKS_PER_SECOND / over.as_secs_f64().max(1e-9) * 100.0)
}

/// `berth_cri_operations_duration_seconds` of the agent: operation → (count, seconds).
fn cri_ops(agent: &Agent) -> Result<HashMap<String, (f64, f64)>> {
    let text = agent.get_text("/metrics")?.1;
    let mut ops: HashMap<String, (f64, f64)> = HashMap::new();
    for line in text.lines() {
        let (is_count, rest) = if let Some(r) =
            line.strip_prefix("berth_cri_operations_duration_seconds_count{")
        {
            (true, r)
        } else if let Some(r) = line.strip_prefix("berth_cri_operations_duration_seconds_sum{") {
            (false, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(op) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("operation=\""))
            .map(|o| o.trim_end_matches('"'))
        else {
            continue;
        };
        let v: f64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let e = ops.entry(op.to_string()).or_default();
        if is_count { e.0 = v } else { e.1 = v }
    }
    Ok(ops)
}

/// CRI calls per pod between two snapshots: operation → {calls_per_pod, mean_ms}.
fn cri_delta(
    before: &HashMap<String, (f64, f64)>,
    after: &HashMap<String, (f64, f64)>,
    pods: usize,
) -> Value {
    let mut out = serde_json::Map::new();
    let mut ops: Vec<&String> = after.keys().collect();
    ops.sort();
    for op in ops {
        let (c1, s1) = after[op];
        let (c0, s0) = before.get(op).copied().unwrap_or((0.0, 0.0));
        let (calls, secs) = (c1 - c0, s1 - s0);
        if calls <= 0.0 {
            continue;
        }
        out.insert(
            op.clone(),
            json!({
                "calls_per_pod": round2(calls / pods.max(1) as f64),
                "mean_ms": round2(secs / calls * 1000.0),
            }),
        );
    }
    Value::Object(out)
}

/// One raw batch: the per-pod times, the batch time and the sandboxes to tear down.
struct RawRun {
    per_pod_ms: Vec<f64>,
    batch_ms: f64,
    sandboxes: Vec<String>,
}

/// `n` pods by bare CRI calls, all at once.
async fn raw_batch(
    client: &RuntimeClient,
    log_root: &std::path::Path,
    tag: &str,
    n: usize,
) -> Result<RawRun> {
    let mut configs = Vec::new();
    for i in 0..n {
        let name = format!("{tag}-{i}");
        let uid = format!("bench-{tag}-{i}-{}", std::process::id());
        let log_dir = log_root.join(&uid);
        std::fs::create_dir_all(log_dir.join("main"))?;
        // Not the kubelet's labels: the agent runs beside these pods and would
        // take any with an `io.kubernetes.pod.uid` for one of its own to remove.
        let labels: HashMap<String, String> =
            [("io.berth.bench/pod".to_string(), name.clone())].into();
        configs.push(api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.clone(),
                uid,
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name,
            log_directory: log_dir.display().to_string(),
            labels,
            ..Default::default()
        });
    }
    let started = Instant::now();
    let tasks: Vec<_> = configs
        .into_iter()
        .map(|config| {
            let client = client.clone();
            tokio::spawn(async move {
                let sandbox = client
                    .run_pod_sandbox(api::RunPodSandboxRequest {
                        config: Some(config.clone()),
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
                            command: COMMAND.iter().map(|s| s.to_string()).collect(),
                            log_path: "main/0.log".into(),
                            labels: config.labels.clone(),
                            ..Default::default()
                        }),
                        sandbox_config: Some(config),
                    })
                    .await?
                    .container_id;
                client
                    .start_container(api::StartContainerRequest {
                        container_id: container,
                    })
                    .await?;
                anyhow::Ok((ms(started.elapsed()), sandbox))
            })
        })
        .collect();
    let mut run = RawRun {
        per_pod_ms: Vec::new(),
        batch_ms: 0.0,
        sandboxes: Vec::new(),
    };
    for t in tasks {
        let (took, sandbox) = t.await??;
        run.per_pod_ms.push(took);
        run.sandboxes.push(sandbox);
    }
    run.batch_ms = run.per_pod_ms.iter().copied().fold(0.0, f64::max);
    Ok(run)
}

/// StopPodSandbox + RemovePodSandbox of every sandbox at once; the wall time.
async fn raw_teardown(client: &RuntimeClient, sandboxes: Vec<String>) -> Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = sandboxes
        .into_iter()
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .stop_pod_sandbox(api::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await?;
                client
                    .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await?;
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(ms(started.elapsed()))
}

/// Pod names (`io.kubernetes.pod.name`) with a running container, per the CRI.
async fn cri_running(client: &RuntimeClient) -> Result<HashSet<String>> {
    let containers = client
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                state: Some(api::ContainerStateValue {
                    state: api::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .containers;
    Ok(containers
        .into_iter()
        .filter_map(|c| c.labels.get(POD_NAME_LABEL).cloned())
        .collect())
}

/// Pod names with a sandbox of any state, per the CRI.
async fn cri_sandbox_names(client: &RuntimeClient) -> Result<HashSet<String>> {
    let items = client
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await?
        .items;
    Ok(items
        .into_iter()
        .filter_map(|s| s.labels.get(POD_NAME_LABEL).cloned())
        .collect())
}

fn is_running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

/// One agent batch.
struct AgentRun {
    per_pod_ms: Vec<f64>,
    cri_per_pod_ms: Vec<f64>,
    batch_ms: f64,
    cpu_ticks: u64,
    wall: Duration,
    /// containerd's CPU ticks over the batch.
    runtime_ticks: u64,
}

struct Bench {
    cd: Containerd,
    rt: tokio::runtime::Runtime,
    client: RuntimeClient,
    agent: Agent,
    pid: u32,
}

impl Bench {
    fn manifests(n: usize, tag: &str) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                let name = format!("{tag}-{i}");
                (format!("{name}.yaml"), format!("{name}-{NODE}"))
            })
            .collect()
    }

    /// Write `n` manifests at once; wait until every pod is Running on `/pods`
    /// and its container running in the CRI, noting when each got there.
    fn agent_batch(&self, tag: &str, n: usize) -> Result<AgentRun> {
        let files = Self::manifests(n, tag);
        let poll = Duration::from_millis(match n {
            0..=1 => 3,
            2..=10 => 5,
            _ => 10,
        });
        let mut on_pods: HashMap<String, f64> = HashMap::new();
        let mut on_cri: HashMap<String, f64> = HashMap::new();
        let cpu_before = cpu_ticks(self.pid)?;
        let runtime_before = self.runtime_ticks()?;
        let started = Instant::now();
        for (i, (file, _)) in files.iter().enumerate() {
            self.agent
                .write_manifest(file, &pod_yaml(&format!("{tag}-{i}")))?;
        }
        loop {
            let now = ms(started.elapsed());
            if on_pods.len() < n {
                let pods = if n == 1 {
                    self.agent
                        .pod("default", &files[0].1)?
                        .into_iter()
                        .collect()
                } else {
                    self.agent.pods()?
                };
                for p in pods.iter().filter(|p| is_running(p)) {
                    if let Some(name) = p["metadata"]["name"].as_str() {
                        on_pods.entry(name.to_string()).or_insert(now);
                    }
                }
            }
            if on_cri.len() < n {
                for name in self.rt.block_on(cri_running(&self.client))? {
                    on_cri.entry(name).or_insert(now);
                }
            }
            let done = |m: &HashMap<String, f64>| files.iter().all(|(_, p)| m.contains_key(p));
            if done(&on_pods) && done(&on_cri) {
                break;
            }
            if started.elapsed() > BATCH_TIMEOUT {
                bail!(
                    "{tag}: {} of {n} pods Running after {BATCH_TIMEOUT:?}\nagent log:\n{}",
                    on_pods.len(),
                    self.agent.log_tail(40)
                );
            }
            std::thread::sleep(poll);
        }
        let wall = started.elapsed();
        let cpu = cpu_ticks(self.pid)?.saturating_sub(cpu_before);
        let runtime_ticks = self.runtime_ticks()?.saturating_sub(runtime_before);
        let pick = |m: &HashMap<String, f64>| -> Vec<f64> {
            files
                .iter()
                .filter_map(|(_, p)| m.get(p).copied())
                .collect()
        };
        let per_pod_ms = pick(&on_pods);
        Ok(AgentRun {
            batch_ms: per_pod_ms.iter().copied().fold(0.0, f64::max),
            per_pod_ms,
            cri_per_pod_ms: pick(&on_cri),
            cpu_ticks: cpu,
            wall,
            runtime_ticks,
        })
    }

    /// Delete the manifests; the time until the CRI lists none of their
    /// sandboxes (then waits, untimed, until `/pods` forgot them).
    fn agent_teardown(&self, tag: &str, n: usize) -> Result<f64> {
        let files = Self::manifests(n, tag);
        let started = Instant::now();
        for (file, _) in &files {
            self.agent.remove_manifest(file)?;
        }
        loop {
            let left = self.rt.block_on(cri_sandbox_names(&self.client))?;
            if !files.iter().any(|(_, p)| left.contains(p)) {
                break;
            }
            if started.elapsed() > BATCH_TIMEOUT {
                bail!("{tag}: sandboxes left after {BATCH_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = ms(started.elapsed());
        self.agent
            .wait_for(Duration::from_secs(120), "pods gone from /pods", || {
                let pods = self.agent.pods().ok()?;
                let names: HashSet<&str> = pods
                    .iter()
                    .filter_map(|p| p["metadata"]["name"].as_str())
                    .collect();
                (!files.iter().any(|(_, p)| names.contains(p.as_str()))).then_some(())
            })?;
        Ok(took)
    }

    fn raw(&self, tag: &str, n: usize) -> Result<(RawRun, u64)> {
        let log_root = self.cd.temp_dir().join("raw-logs");
        let before = self.runtime_ticks()?;
        let run = self
            .rt
            .block_on(raw_batch(&self.client, &log_root, tag, n))?;
        Ok((run, self.runtime_ticks()?.saturating_sub(before)))
    }

    /// containerd's CPU ticks so far.
    fn runtime_ticks(&self) -> Result<u64> {
        cpu_ticks(self.cd.pid().context("containerd has no pid")?)
    }

    fn raw_down(&self, sandboxes: Vec<String>) -> Result<f64> {
        self.rt.block_on(raw_teardown(&self.client, sandboxes))
    }

    /// RSS and CPU of the agent over [`IDLE_WINDOW`] with `pods` pods running.
    fn idle(&self, pods: usize) -> Result<Value> {
        // Let the last syncs and relists settle first.
        std::thread::sleep(Duration::from_secs(3));
        let before = cpu_ticks(self.pid)?;
        let started = Instant::now();
        std::thread::sleep(IDLE_WINDOW);
        let ticks = cpu_ticks(self.pid)?.saturating_sub(before);
        let window = started.elapsed();
        Ok(json!({
            "pods": pods,
            "rss_kib": rss_kib(self.pid)?,
            "cpu_percent_of_one_core": cpu_percent(ticks, window),
            "window_s": round2(window.as_secs_f64()),
        }))
    }

    /// `requests` sequential GETs of each endpoint.
    fn endpoints(&self, pods: usize, requests: usize) -> Result<Value> {
        let timed = |path: &str| -> Result<Value> {
            let mut samples = Vec::new();
            for _ in 0..requests {
                let started = Instant::now();
                let (code, _) = self.agent.get_text(path)?;
                samples.push(ms(started.elapsed()));
                if code != 200 {
                    bail!("GET {path} answered {code}");
                }
            }
            Ok(stats(&samples))
        };
        Ok(json!({
            "pods": pods,
            "requests": requests,
            "pods_list_ms": timed("/pods")?,
            "stats_summary_ms": timed("/stats/summary")?,
        }))
    }
}

/// One N: every sample of its iterations (raw and agent alternating).
#[derive(Default)]
struct SizeRun {
    n: usize,
    iterations: usize,
    raw_batch: Vec<f64>,
    raw_pod: Vec<f64>,
    raw_down: Vec<f64>,
    raw_runtime_ticks: u64,
    agent_batch: Vec<f64>,
    agent_pod: Vec<f64>,
    agent_cri: Vec<f64>,
    agent_down: Vec<f64>,
    agent_runtime_ticks: u64,
    agent_cpu_ticks: u64,
    agent_wall: Duration,
    /// CRI calls per pod of the agent's batches (start) and teardowns.
    agent_cri_start: Value,
    agent_cri_down: Value,
}

impl SizeRun {
    fn start_json(&self) -> Value {
        let (rb, ab) = (stats(&self.raw_batch), stats(&self.agent_batch));
        let (rp, ap) = (stats(&self.raw_pod), stats(&self.agent_pod));
        let per_batch = |ticks: u64| {
            round2(ticks as f64 / CLOCK_TICKS_PER_SECOND * 1000.0 / self.iterations.max(1) as f64)
        };
        json!({
            "pods": self.n,
            "iterations": self.iterations,
            "raw": { "batch_ms": rb, "per_pod_ms": rp, "containerd_cpu_ms_per_batch": per_batch(self.raw_runtime_ticks) },
            "agent": {
                "batch_ms": ab,
                "per_pod_ms": ap,
                "cri_running_per_pod_ms": stats(&self.agent_cri),
                "containerd_cpu_ms_per_batch": per_batch(self.agent_runtime_ticks),
                "agent_cpu_ms_per_batch": per_batch(self.agent_cpu_ticks),
                "cri_calls": self.agent_cri_start,
            },
            "ratio_batch_p50": ratio(&ab, &rb, "p50_ms"),
            "ratio_per_pod_p50": ratio(&ap, &rp, "p50_ms"),
            "ratio_per_pod_p99": ratio(&ap, &rp, "p99_ms"),
        })
    }

    fn teardown_json(&self) -> Value {
        let (rd, ad) = (stats(&self.raw_down), stats(&self.agent_down));
        json!({
            "pods": self.n,
            "iterations": self.agent_down.len(),
            "raw": { "batch_ms": rd },
            "agent": { "batch_ms": ad, "cri_calls": self.agent_cri_down },
            "ratio_batch_p50": ratio(&ad, &rd, "p50_ms"),
        })
    }
}

/// `iterations` of N pods, raw and agent taking turns. With `keep_last`, the
/// agent's last batch stays up (its teardown is the caller's, see [`SizeRun::agent_down`]).
fn run_size(b: &Bench, n: usize, iterations: usize, keep_last: bool) -> Result<SizeRun> {
    let mut r = SizeRun {
        n,
        iterations,
        ..Default::default()
    };
    let (mut start_before, mut start_after) = (HashMap::new(), HashMap::new());
    let (mut down_before, mut down_after) = (HashMap::new(), HashMap::new());
    let mut down_pods = 0;
    for it in 0..iterations {
        let last = it + 1 == iterations;
        let tag = format!("n{n}i{it}");
        let raw_side = |r: &mut SizeRun| -> Result<()> {
            let (run, ticks) = b.raw(&format!("r{tag}"), n)?;
            r.raw_batch.push(run.batch_ms);
            r.raw_pod.extend(run.per_pod_ms);
            r.raw_runtime_ticks += ticks;
            r.raw_down.push(b.raw_down(run.sandboxes)?);
            Ok(())
        };
        let mut agent_side = |r: &mut SizeRun| -> Result<()> {
            let before = cri_ops(&b.agent)?;
            let a = b.agent_batch(&format!("a{tag}"), n)?;
            let after = cri_ops(&b.agent)?;
            accumulate(&mut start_before, &before, &mut start_after, &after);
            r.agent_batch.push(a.batch_ms);
            r.agent_pod.extend(a.per_pod_ms);
            r.agent_cri.extend(a.cri_per_pod_ms);
            r.agent_cpu_ticks += a.cpu_ticks;
            r.agent_runtime_ticks += a.runtime_ticks;
            r.agent_wall += a.wall;
            if !(keep_last && last) {
                let before = cri_ops(&b.agent)?;
                r.agent_down.push(b.agent_teardown(&format!("a{tag}"), n)?);
                let after = cri_ops(&b.agent)?;
                accumulate(&mut down_before, &before, &mut down_after, &after);
                down_pods += n;
            }
            Ok(())
        };
        eprintln!("berth-bench: N={n} iteration {}/{iterations}", it + 1);
        if it % 2 == 0 {
            raw_side(&mut r)?;
            agent_side(&mut r)?;
        } else {
            agent_side(&mut r)?;
            raw_side(&mut r)?;
        }
    }
    r.agent_cri_start = cri_delta(&start_before, &start_after, n * iterations);
    r.agent_cri_down = cri_delta(&down_before, &down_after, down_pods);
    Ok(r)
}

/// Sum snapshot pairs so several intervals make one delta.
fn accumulate(
    sum_before: &mut HashMap<String, (f64, f64)>,
    before: &HashMap<String, (f64, f64)>,
    sum_after: &mut HashMap<String, (f64, f64)>,
    after: &HashMap<String, (f64, f64)>,
) {
    for (op, (c, s)) in before {
        let e = sum_before.entry(op.clone()).or_default();
        e.0 += c;
        e.1 += s;
    }
    for (op, (c, s)) in after {
        let e = sum_after.entry(op.clone()).or_default();
        e.0 += c;
        e.1 += s;
    }
}

impl SizeRun {
    /// Tear down the batch [`run_size`] kept up, as one more teardown sample.
    fn agent_down(&mut self, b: &Bench) -> Result<()> {
        let tag = format!("an{}i{}", self.n, self.iterations - 1);
        self.agent_down.push(b.agent_teardown(&tag, self.n)?);
        Ok(())
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let scale: Option<usize> = args
        .iter()
        .skip_while(|a| *a != "--iterations")
        .nth(1)
        .and_then(|v| v.parse().ok());
    let Some(_env) = require_runtime("berth-bench") else {
        return Ok(());
    };
    // (N, default iterations): the full mode adds N = 100.
    let sizes: Vec<(usize, usize)> = if quick {
        vec![(1, 5), (10, 3), (30, 1)]
    } else {
        vec![(1, 10), (10, 6), (30, 4), (100, 2)]
    };
    let iterations_for = |default: usize| match scale {
        // --iterations I: N = 1 gets I, larger batches proportionally fewer.
        Some(i) => (i * default).div_ceil(if quick { 5 } else { 10 }).max(1),
        None => default,
    };

    eprintln!("berth-bench: starting a private containerd");
    let cd = Containerd::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = rt.block_on(cd.client())?;
    // Profiling aids: BERTH_BENCH_RUST_LOG becomes the agent's RUST_LOG, and
    // BERTH_BENCH_AGENT_LOG names a file the agent's log is copied to at the end.
    let mut opts = AgentOptions::for_containerd(&cd);
    if let Ok(filter) = std::env::var("BERTH_BENCH_RUST_LOG") {
        opts = opts.env("RUST_LOG", filter);
    }
    let agent = Agent::start_with(opts)?;
    agent.wait_healthy(Duration::from_secs(60))?;
    let pid = agent.pid().context("agent has no pid")?;
    let relist_period_s = 1.0;
    let b = Bench {
        cd,
        rt,
        client,
        agent,
        pid,
    };

    // Warm-up, unmeasured: the image unpacked, CNI loaded, both paths run once.
    eprintln!("berth-bench: warming up");
    let (w, _) = b.raw("warm", 2)?;
    b.raw_down(w.sandboxes)?;
    b.agent_batch("warm", 2)?;
    b.agent_teardown("warm", 2)?;

    eprintln!("berth-bench: idle footprint, no pods");
    let mut idle = vec![b.idle(0)?];
    let mut pod_start = Vec::new();
    let mut teardown = Vec::new();
    let mut during_start = Value::Null;
    let largest = sizes.last().map(|s| s.0).unwrap_or(0);
    for &(n, default) in &sizes {
        let iterations = iterations_for(default);
        // N = 30 keeps its last batch running for the 30-pod footprint.
        let keep = n == 30;
        let mut r = run_size(&b, n, iterations, keep)?;
        pod_start.push(r.start_json());
        if n == largest {
            during_start = json!({
                "pods": n,
                "cpu_percent_of_one_core": cpu_percent(r.agent_cpu_ticks, r.agent_wall),
                "rss_kib_after": rss_kib(b.pid)?,
            });
        }
        if keep {
            eprintln!("berth-bench: idle footprint, 30 pods");
            idle.push(b.idle(30)?);
            r.agent_down(&b)?;
        }
        if n >= 30 {
            teardown.push(r.teardown_json());
        }
    }

    let mut endpoints = Value::Null;
    if !quick {
        eprintln!("berth-bench: 110 pods: idle footprint and endpoint latency");
        b.agent_batch("big", 110)?;
        idle.push(b.idle(110)?);
        endpoints = b.endpoints(110, 50)?;
        b.agent_teardown("big", 110)?;
    }

    let metrics = b.agent.get_text("/metrics")?.1;
    let agent_metrics: Vec<String> = metrics
        .lines()
        .filter(|l| {
            [
                "berth_pleg_relist_duration_seconds_sum",
                "berth_pleg_relist_duration_seconds_count",
                "berth_pod_sync_duration_seconds_sum",
                "berth_pod_sync_duration_seconds_count",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .map(String::from)
        .collect();

    let report = json!({
        "benchmark": "berth-agent pod start, teardown and footprint vs raw CRI",
        "schema_version": 2,
        "mode": if quick { "quick" } else { "full" },
        "build_profile": if cfg!(debug_assertions) { "dev" } else { "release" },
        "runtime": "containerd (private instance)",
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "relist_period_s": relist_period_s,
        "pod_start": pod_start,
        "teardown": teardown,
        "footprint": {
            "idle": idle,
            "during_start": during_start,
            "endpoints": endpoints,
        },
        "agent_metrics": agent_metrics,
    });
    if let Ok(path) = std::env::var("BERTH_BENCH_AGENT_LOG") {
        std::fs::copy(b.agent.log_path(), &path)
            .with_context(|| format!("copying the agent's log to {path}"))?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
