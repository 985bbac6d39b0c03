//! How fast the agent notices a killed container (issue 11, "Failure
//! detection"): figures, not assertions, printed as one JSON object on stdout
//! (progress goes to stderr).
//!
//! Two modes, side by side in one run, each against its own private
//! containerd and agent (default `--relist-period`, 1 s):
//! - `events`: the agent follows containerd's event service (`/tasks/exit`
//!   wakes the relist);
//! - `relist_only`: the same agent with `--runtime-events=false`.
//!
//! For each pod count N (10 and 100; `--quick`: 10), N busybox pods run a
//! sleep loop (restartPolicy Always). After a settling pause the agent's CPU
//! (utime+stime from `/proc/<pid>/stat`, percent of one core) is sampled over
//! an idle window, with its RSS. Then K kills (default 50; `--quick`: 20), one
//! at a time, a random pause of up to 200 ms before each (so kills do not lock
//! to the relist's phase): the container's task gets SIGKILL (its init
//! process, the PID containerd reports) and `GET /pods/{ns}/{name}` is polled
//! every 2 ms until that container is no longer shown running (terminated,
//! waiting out a back-off, or replaced). A pod is killed once per
//! generation, so restart back-off never keeps a kill waiting: when every pod
//! of a generation was killed, the pods are replaced by a new generation.
//!
//! Usage: `berth-detect-bench [--pods 10,100] [--kills K] [--idle-secs S]
//! [--modes events,relist_only] [--quick]`
//! (as root, after integration/setup.sh and a workspace build). The agent is
//! `$BERTH_AGENT_BIN` if set, else the workspace's dev build.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use berth_integration::{Agent, BUSYBOX_IMAGE, Containerd, require_agent, rss_kib};
use clap::Parser;
use serde_json::{Value, json};

/// USER_HZ, the unit of the times in `/proc/<pid>/stat`.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// How often `/pods/{ns}/{name}` is read while waiting for a detection.
const POLL_EVERY: Duration = Duration::from_millis(2);
/// A kill not seen within this is counted as missed (a relist comes every second).
const DETECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "berth-detect-bench",
    about = "How fast berth-agent notices a killed container"
)]
struct Args {
    /// Pod counts to measure at, in order.
    #[arg(long, value_delimiter = ',')]
    pods: Option<Vec<usize>>,
    /// Kills per pod count.
    #[arg(long)]
    kills: Option<usize>,
    /// Idle CPU window, in seconds.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Pause between all pods running and the idle window, in seconds.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Short run: 10 pods, 20 kills.
    #[arg(long)]
    quick: bool,
    /// Modes to measure, in order (`events`, `relist_only`); default both.
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<String>>,
    /// How long pods get to start (or go away), in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Events,
    RelistOnly,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Events => "events",
            Mode::RelistOnly => "relist_only",
        }
    }

    fn agent_args(self) -> &'static [&'static str] {
        match self {
            Mode::Events => &[],
            Mode::RelistOnly => &["--runtime-events=false"],
        }
    }
}

fn manifest(name: &str) -> String {
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
      image: {BUSYBOX_IMAGE}
      command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
"#
    )
}

fn main_status(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

fn container_id(pod: &Value) -> &str {
    main_status(pod)["containerID"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("containerd://")
}

fn running(pod: &Value) -> bool {
    main_status(pod)["state"]["running"].is_object() && !container_id(pod).is_empty()
}

/// utime+stime of `pid`, in USER_HZ ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat has no ')'"))?;
    // After ')': field 3 (state) is index 0, so field N is index N-3.
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Ok(f.get(14 - 4).copied().unwrap_or(0) + f.get(15 - 4).copied().unwrap_or(0))
}

/// Task PIDs by container id, from `ctr tasks ls` (`TASK PID STATUS`).
fn task_pids(cd: &Containerd) -> anyhow::Result<std::collections::HashMap<String, i32>> {
    let out = cd.ctr(&["-n", "k8s.io", "tasks", "ls"])?;
    Ok(out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id = f.next()?.to_string();
            let pid = f.next()?.parse().ok()?;
            (f.next()? == "RUNNING").then_some((id, pid))
        })
        .collect())
}

/// A small xorshift, seeded from the clock: pauses between kills.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        Jitter(seed | 1)
    }

    fn below(&mut self, max_ms: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(self.0 % max_ms.max(1))
    }
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

struct Run<'a> {
    cd: &'a Containerd,
    agent: &'a Agent,
    timeout: Duration,
    generation: usize,
    files: Vec<String>,
}

impl Run<'_> {
    /// Replace whatever runs with `n` fresh pods and wait until all run.
    fn fresh_pods(&mut self, n: usize) -> anyhow::Result<Vec<String>> {
        for f in self.files.drain(..) {
            self.agent.remove_manifest(&format!("{f}.yaml"))?;
        }
        self.agent.poll(self.timeout, "old pods gone", || {
            Ok(self.agent.pods()?.is_empty().then_some(()))
        })?;
        self.generation += 1;
        self.files = (0..n)
            .map(|i| format!("g{}p{i:03}", self.generation))
            .collect();
        for f in &self.files {
            self.agent
                .write_manifest(&format!("{f}.yaml"), &manifest(f))?;
        }
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| self.agent.static_pod_name(f))
            .collect();
        self.agent
            .poll(self.timeout, &format!("{n} pods running"), || {
                let pods = self.agent.pods()?;
                let up = pods
                    .iter()
                    .filter(|p| {
                        running(p)
                            && p["metadata"]["name"]
                                .as_str()
                                .is_some_and(|name| names.iter().any(|x| x == name))
                    })
                    .count();
                Ok((up == n).then_some(()))
            })?;
        Ok(names)
    }

    /// SIGKILL pod `name`'s container; how long until `/pods` stops showing it running.
    fn kill_one(&self, name: &str) -> anyhow::Result<Option<Duration>> {
        let pod = self
            .agent
            .pod("default", name)?
            .with_context(|| format!("pod {name} gone"))?;
        anyhow::ensure!(running(&pod), "pod {name} is not running");
        let id = container_id(&pod).to_string();
        let pid = *task_pids(self.cd)?
            .get(&id)
            .with_context(|| format!("no running task for container {id}"))?;
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .with_context(|| format!("kill -9 {pid} (container {id})"))?;
        while killed.elapsed() < DETECT_TIMEOUT {
            if let Ok(Some(p)) = self.agent.pod("default", name)
                && !(running(&p) && container_id(&p) == id)
            {
                return Ok(Some(killed.elapsed()));
            }
            std::thread::sleep(POLL_EVERY);
        }
        Ok(None)
    }

    /// Idle CPU (percent of one core) over `window`, after `settle`.
    fn idle_cpu(&self, settle: Duration, window: Duration) -> anyhow::Result<f64> {
        let pid = self.agent.pid().context("agent not running")?;
        std::thread::sleep(settle);
        let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
        std::thread::sleep(window);
        let (t1, c1) = (Instant::now(), cpu_ticks(pid)?);
        let secs = (t1 - t0).as_secs_f64();
        Ok(round2(
            (c1 - c0) as f64 / CLOCK_TICKS_PER_SECOND / secs * 100.0,
        ))
    }
}

/// `berth_runtime_events_total{kind}` from `/metrics`, by kind.
fn event_counts(agent: &Agent) -> Value {
    let text = agent
        .get_text("/metrics")
        .map(|(_, t)| t)
        .unwrap_or_default();
    let mut out = serde_json::Map::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("berth_runtime_events_total{kind=\"")
            && let Some((kind, v)) = rest.split_once("\"} ")
        {
            out.insert(
                kind.to_string(),
                json!(v.trim().parse::<u64>().unwrap_or(0)),
            );
        }
    }
    Value::Object(out)
}

fn measure(mode: Mode, counts: &[usize], kills: usize, args: &Args) -> anyhow::Result<Value> {
    tracing::info!(
        mode = mode.name(),
        "starting a private containerd and the agent"
    );
    let cd = Containerd::start()?;
    let agent = Agent::start(&cd, mode.agent_args())?;
    agent.wait_healthy(Duration::from_secs(60))?;
    let mut run = Run {
        cd: &cd,
        agent: &agent,
        timeout: Duration::from_secs(args.timeout_secs),
        generation: 0,
        files: Vec::new(),
    };
    let mut jitter = Jitter::new();
    let mut per_count = serde_json::Map::new();
    for &n in counts {
        tracing::info!(mode = mode.name(), pods = n, "starting pods");
        let mut names = run.fresh_pods(n)?;
        let idle = run.idle_cpu(
            Duration::from_secs(args.settle_secs),
            Duration::from_secs(args.idle_secs),
        )?;
        let rss = agent.pid().map(rss_kib).transpose()?;
        tracing::info!(mode = mode.name(), pods = n, idle_cpu = idle, "killing");
        let mut took = Vec::with_capacity(kills);
        let mut missed = 0;
        let mut next = 0;
        for _ in 0..kills {
            if next == names.len() {
                names = run.fresh_pods(n)?;
                next = 0;
            }
            std::thread::sleep(jitter.below(200));
            match run.kill_one(&names[next])? {
                Some(d) => took.push(d.as_secs_f64() * 1000.0),
                None => missed += 1,
            }
            next += 1;
        }
        took.sort_by(f64::total_cmp);
        let ms = |q| quantile(&took, q).map(round2);
        per_count.insert(
            n.to_string(),
            json!({
                "pods": n,
                "kills": kills,
                "detected": took.len(),
                "missed": missed,
                "detect_ms": {
                    "p50": ms(0.5),
                    "p99": ms(0.99),
                    "max": took.last().copied().map(round2),
                    "mean": (!took.is_empty()).then(|| round2(took.iter().sum::<f64>() / took.len() as f64)),
                    // Every detection, sorted: BENCHMARKS.md's CDF.
                    "samples_ms": took.iter().copied().map(round2).collect::<Vec<_>>(),
                },
                "agent_idle_cpu_percent_of_one_core": idle,
                "agent_rss_kib": rss,
            }),
        );
    }
    Ok(json!({
        "agent_args": mode.agent_args(),
        "by_pods": per_count,
        "runtime_events_total": event_counts(&agent),
    }))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let counts = args
        .pods
        .clone()
        .unwrap_or_else(|| if args.quick { vec![10] } else { vec![10, 100] });
    let kills = args.kills.unwrap_or(if args.quick { 20 } else { 50 });
    anyhow::ensure!(
        kills > 0 && counts.iter().all(|&n| n > 0),
        "--kills and --pods must be positive"
    );
    let Some(_env) = require_agent("berth-detect-bench") else {
        return Ok(());
    };
    let started = Instant::now();
    let mut modes = serde_json::Map::new();
    let wanted = |m: Mode| {
        args.modes
            .as_ref()
            .is_none_or(|w| w.iter().any(|x| x == m.name()))
    };
    for mode in [Mode::Events, Mode::RelistOnly]
        .into_iter()
        .filter(|&m| wanted(m))
    {
        modes.insert(
            mode.name().to_string(),
            measure(mode, &counts, kills, &args)?,
        );
    }
    let report = json!({
        "benchmark": "berth-agent failure detection",
        "build_profile": if cfg!(debug_assertions) { "dev" } else { "release" },
        "agent_binary": berth_integration::agent_binary()?.display().to_string(),
        "runtime": "containerd (private instance)",
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mode": if args.pods.is_some() || args.kills.is_some() {
            "custom"
        } else if args.quick {
            "quick"
        } else {
            "full"
        },
        "relist_period": "1s (default; events mode: 5s while containerd's events are followed)",
        "kill": "SIGKILL to the container's task (init process); detected = GET /pods/{ns}/{name} (every 2 ms) no longer shows that container running",
        "idle_seconds": args.idle_secs,
        "modes": modes,
        "target": "events: p99 <= 50 ms at <= 1% of one core",
        "total_seconds": round2(started.elapsed().as_secs_f64()),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
