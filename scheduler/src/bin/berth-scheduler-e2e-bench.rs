//! `berth-scheduler-e2e-bench`: end-to-end scheduling throughput through a
//! real `berth-apiserver` (SQLite), and what the scheduler process costs.
//!
//! ```text
//! berth-scheduler-e2e-bench [--nodes 1000,5000] [--pods 2000] [--quick] [--in-process]
//! ```
//!
//! For each node count, on a fresh API server (`$BERTH_APISERVER_BIN`, else
//! `berth-apiserver` next to this binary): creates the nodes and the pending
//! pods, then runs the scheduler until every pod is bound (watched through the
//! API). The scheduler is the `berth-scheduler` binary next to this one
//! (`$BERTH_SCHEDULER_BIN` overrides), run as `system:kube-scheduler`, so its
//! CPU (utime + stime from start to the last bind, and over an idle window
//! after it) and RSS (peak, VmHWM, and at the end) are its own; `--in-process`
//! runs it as a task of this process instead (no CPU or RSS figures).
//!
//! Prints one JSON object: `mode`, `machine`, and `cases` (one per node
//! count); the first case's `nodes`, `pods`, `pods_per_sec` and `seconds` are
//! repeated at the top for readers of the older single-case format.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_scheduler::harness::{Apiserver, apiserver_binary};
use berth_scheduler::{RunConfig, run};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "berth-scheduler-e2e-bench")]
struct Cli {
    /// Node counts, one case each (default 1000,5000; 100,500 with --quick).
    #[arg(long, value_delimiter = ',')]
    nodes: Option<Vec<usize>>,
    /// Pods to schedule per case (default 2000; 300 with --quick).
    #[arg(long)]
    pods: Option<usize>,
    /// Short cases (what CI runs).
    #[arg(long)]
    quick: bool,
    /// Run the scheduler as a task of this process, not as `berth-scheduler`.
    #[arg(long)]
    in_process: bool,
    /// Binding cycles in flight at once.
    #[arg(long, default_value_t = 16)]
    parallel_binds: usize,
    /// Don't post Scheduled events.
    #[arg(long)]
    no_events: bool,
    /// Give up on a case after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

fn node(i: usize) -> anyhow::Result<Node> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node-{i:05}"),
                     "labels": {"kubernetes.io/hostname": format!("node-{i:05}"),
                                "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))?)
}

fn pod(i: usize) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:06}"), "namespace": "default",
                     "labels": {"app": format!("app-{}", i % 10)}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
    }))?)
}

async fn create_all<K>(api: &Api<K>, objects: Vec<K>) -> anyhow::Result<()>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    futures::stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &o).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .context("creating objects")?;
    Ok(())
}

async fn wait_bound(client: Client, want: usize) -> anyhow::Result<()> {
    let mut stream = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default()).boxed();
    let mut bound = HashSet::new();
    while let Some(ev) = stream.try_next().await? {
        let pods: Vec<Pod> = match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
            _ => continue,
        };
        for p in pods {
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                bound.insert(p.metadata.name.unwrap_or_default());
            }
        }
        if bound.len() >= want {
            return Ok(());
        }
    }
    bail!("pod watch ended")
}

/// Where `berth-scheduler` is: `$BERTH_SCHEDULER_BIN`, else next to this
/// executable (`target/debug/`), or one level up (`target/debug/deps/`).
fn scheduler_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_SCHEDULER_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("berth-scheduler"))
        .find(|p| p.is_file())
}

/// utime + stime of `pid` in seconds, from /proc/PID/stat (in USER_HZ ticks,
/// 100 per second on every Linux this runs on).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces: count fields after its ')'.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: no command name"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime 15.
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    Ok((tick(11)? + tick(12)?) as f64 / 100.0)
}

/// A `/proc/PID/status`-style field in KiB (`VmRSS`, `VmHWM`, `MemTotal`).
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn proc_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status_kib(&status, field).with_context(|| format!("no {field} line in {path}"))
}

/// What the figures depend on besides the code: CPUs, model, memory, kernel.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": model,
        "memory_kib": status_kib(&read("/proc/meminfo"), "MemTotal"),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The scheduler under test: a `berth-scheduler` child or a task here.
enum Scheduler {
    Process(Child),
    Task(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
}

impl Scheduler {
    fn start(server: &Apiserver, binary: Option<&Path>, cli: &Cli) -> anyhow::Result<Scheduler> {
        let Some(binary) = binary else {
            bail!("no berth-scheduler binary");
        };
        // As deployed: the scheduler's own identity, authorized by RBAC.
        let kubeconfig = server.user_kubeconfig("system:kube-scheduler")?;
        let child = Command::new(binary)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--parallel-binds", &cli.parallel_binds.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Scheduler::Process(child))
    }

    async fn start_task(server: &Apiserver, cli: &Cli) -> anyhow::Result<Scheduler> {
        let cancel = CancellationToken::new();
        let config = RunConfig {
            max_in_flight_binds: cli.parallel_binds,
            post_events: !cli.no_events,
            ..RunConfig::default()
        };
        let client = server.scheduler_client().await?;
        let task = tokio::spawn(run(client, config, cancel.clone()));
        Ok(Scheduler::Task(cancel, task))
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Scheduler::Process(c) => Some(c.id()),
            Scheduler::Task(..) => None,
        }
    }

    /// SIGTERM to the child's PID (SIGKILL after 10 s), or cancel the task.
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Scheduler::Task(cancel, task) => {
                cancel.cancel();
                task.await?
            }
            Scheduler::Process(mut child) => {
                let pid = child.id().to_string();
                let _ = Command::new("kill").args(["-TERM", &pid]).status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if child.try_wait()?.is_some() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                child.kill()?;
                child.wait()?;
                Ok(())
            }
        }
    }
}

/// One case: a fresh API server, `nodes` nodes, `cli.pods` pods.
async fn case(
    apiserver: &Path,
    scheduler: Option<&Path>,
    cli: &Cli,
    nodes: usize,
    pods: usize,
    idle: Duration,
) -> anyhow::Result<Value> {
    let (server, client) = Apiserver::start(apiserver).await?;
    let setup = Instant::now();
    let objects: Vec<Node> = (0..nodes).map(node).collect::<anyhow::Result<_>>()?;
    create_all(&Api::<Node>::all(client.clone()), objects).await?;
    let objects: Vec<Pod> = (0..pods).map(pod).collect::<anyhow::Result<_>>()?;
    create_all(&Api::<Pod>::namespaced(client.clone(), "default"), objects).await?;
    let setup_seconds = setup.elapsed().as_secs_f64();

    let watch = tokio::spawn(wait_bound(client.clone(), pods));
    let start = Instant::now();
    let sched = if cli.in_process {
        Scheduler::start_task(&server, cli).await?
    } else {
        Scheduler::start(&server, scheduler, cli)?
    };
    let waited = tokio::time::timeout(Duration::from_secs(cli.timeout), watch).await;
    let seconds = start.elapsed().as_secs_f64();
    let mut out = json!({
        "nodes": nodes,
        "pods": pods,
        "seconds": round3(seconds),
        "pods_per_sec": (pods as f64 / seconds * 10.0).round() / 10.0,
        "setup_seconds": round3(setup_seconds),
    });
    if let Some(pid) = sched.pid()
        && waited.is_ok()
    {
        let cpu = cpu_seconds(pid)?;
        out["scheduler_cpu_seconds"] = json!(round3(cpu));
        out["scheduler_cpu_percent_of_one_core"] = json!((cpu / seconds * 1e4).round() / 100.0);
        out["scheduler_rss_peak_kib"] = json!(proc_kib(pid, "VmHWM")?);
        out["scheduler_rss_kib"] = json!(proc_kib(pid, "VmRSS")?);
        tokio::time::sleep(idle).await;
        let idle_cpu = cpu_seconds(pid)? - cpu;
        out["scheduler_idle_cpu_percent_of_one_core"] =
            json!((idle_cpu / idle.as_secs_f64() * 1e4).round() / 100.0);
        out["idle_seconds"] = json!(idle.as_secs_f64());
    }
    sched.stop().await?;
    match waited {
        Ok(r) => r??,
        Err(_) => bail!(
            "not all pods bound within {}s; apiserver log:\n{}",
            cli.timeout,
            server.log()
        ),
    }
    eprintln!(
        "scheduler-e2e-bench: {nodes} nodes: {pods} pods in {seconds:.2} s (setup {setup_seconds:.1} s)"
    );
    drop(server);
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mode = match (cli.quick, cli.nodes.is_some() || cli.pods.is_some()) {
        (_, true) => "custom",
        (true, false) => "quick",
        (false, false) => "full",
    };
    let nodes = cli.nodes.clone().unwrap_or_else(|| match cli.quick {
        true => vec![100, 500],
        false => vec![1000, 5000],
    });
    let pods = cli.pods.unwrap_or(if cli.quick { 300 } else { 2000 });
    let idle = Duration::from_secs(if cli.quick { 2 } else { 5 });
    let Some(apiserver) = apiserver_binary() else {
        bail!(
            "berth-apiserver not found: run `cargo build -p berth-apiserver` or set BERTH_APISERVER_BIN"
        );
    };
    if cli.no_events && !cli.in_process {
        bail!("--no-events needs --in-process (berth-scheduler always posts events)");
    }
    let scheduler = scheduler_binary();
    if scheduler.is_none() && !cli.in_process {
        bail!(
            "berth-scheduler not found: run `cargo build -p berth-scheduler`, set BERTH_SCHEDULER_BIN, or pass --in-process"
        );
    }
    let started = Instant::now();
    let mut cases = Vec::new();
    for &n in &nodes {
        cases.push(
            case(&apiserver, scheduler.as_deref(), &cli, n, pods, idle)
                .await
                .with_context(|| format!("{n} nodes"))?,
        );
    }
    let first = cases.first().cloned().unwrap_or(Value::Null);
    println!(
        "{}",
        json!({
            "bench": "scheduler-e2e",
            "mode": mode,
            "machine": machine(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "storage": "sqlite",
            "scheduler": if cli.in_process { "in-process task" } else { "berth-scheduler process" },
            "events": !cli.no_events,
            "parallel_binds": cli.parallel_binds,
            "pods": pods,
            "nodes": first["nodes"],
            "seconds": first["seconds"],
            "pods_per_sec": first["pods_per_sec"],
            "setup_seconds": first["setup_seconds"],
            "cases": cases,
            "total_seconds": started.elapsed().as_secs(),
        })
    );
    Ok(())
}
