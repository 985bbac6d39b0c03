//! What probes cost the agent: figures, not assertions, printed as one JSON
//! object on stdout (progress goes to stderr).
//!
//! The scenario (a full node): N pods (110 by default, the kubelet's max-pods)
//! with three probes each, httpGet, tcpSocket and gRPC, every second; the
//! agent should spend well under 5% of one core on them. In one run, against
//! one private containerd and one agent, the same pods run three times:
//! - `no_probes`: no probes at all (the baseline: relisting, status, GC);
//! - `http_tcp_grpc`: 3 probes per pod per second;
//! - `exec`: 1 exec probe per pod per second (CRI ExecSync: the cost is
//!   mostly the runtime's, runc starting a process in the container).
//!
//! Each pod runs the gRPC health image (`localhost/berth/grpc-health:1`) in two
//! containers: `server` (busybox httpd on 8080 and berth-grpc-health on 9000)
//! and `side` (a shell that sleeps). A container has one liveness and one
//! readiness probe that keep running (a startup probe stops at its first
//! success), so the three probes need two containers: `server` has an httpGet
//! liveness and a gRPC readiness probe, `side` a tcpSocket readiness probe on
//! the server's port (same pod network). In `exec`, `server` has one exec
//! readiness probe (`true`) and `side` none.
//!
//! Per phase, once every pod is Ready and a settling pause has passed, the
//! CPU time of these is sampled over a window (utime+stime from
//! `/proc/<pid>/stat`; children reaped count too, via cutime+cstime, for the
//! runtime's processes, so the short-lived runc processes of exec probes are
//! in):
//! - `agent`: the berth-agent process (and, apart, how much of it was in the
//!   kernel: connecting, the loopback/veth path a probe's packets take);
//! - `prober_thread`: of that, the agent's `berth-prober` thread, which runs
//!   every probe and nothing else: the probes' cost without subtracting a
//!   baseline (user and kernel, as above);
//! - `runtime`: containerd and the pods' shims (with their runc children);
//! - `pods`: the pods' cgroups (cpuacct / cpu.stat of the instance's cgroup
//!   parent): the servers answering probes, the processes exec probes start;
//! - `host`: all CPUs of the machine (`/proc/stat`), for context;
//!
//! all as percent of one core, plus the agent's RSS and the probes the agent
//! ran in the window (`/metrics/probes`), by result.
//!
//! The floor (`no_probes` only, after its window): what the same connections
//! cost a minimal client, so the agent's figure can be read against what any
//! prober pays on this machine. A thread of this bench, blocking sockets and
//! nothing else, opens per pod and second one TCP connection to :9000 (closed
//! at once, as a tcpSocket probe) and one HTTP/1.1 GET of :8080 with the
//! probe's request head (read to the end, then closed, as an httpGet probe),
//! woken on the same 50 ms grid as the agent's prober; its thread's CPU
//! (user and kernel) is sampled over a window as long as the others. To a pod
//! on this node most of that is the kernel's: the handshake, the FIN exchange
//! and the pod's side of each packet run on the connecting thread (veth and
//! bridge hand packets over without a queue). gRPC is not in the floor (its
//! probes keep their connection; their kernel cost is two short writes).
//!
//! Usage: `berth-probe-bench [--pods N] [--sample-secs S] [--settle-secs S] [--quick]
//! [--phases no_probes,http_tcp_grpc,exec] [--no-floor]` (as root, after integration/setup.sh
//! and a workspace build; `--quick`: 20 pods, 10 s windows, what
//! integration/test.sh's short bench run uses). `--phases` may also name
//! `http`, `tcp` and `grpc`: one kind of probe per pod each, to tell their costs apart.
//! The agent is `$BERTH_AGENT_BIN` if set (a release build, as
//! systemd/install.sh installs), else the workspace's dev build.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use berth_cri::api;
use berth_integration::{
    Agent, Containerd, GRPC_HEALTH_IMAGE, processes_under, require_grpc_health, rss_kib,
};
use clap::Parser;
use serde_json::{Value, json};

/// USER_HZ: the unit of the times in `/proc/<pid>/stat` and `/proc/stat`; 100
/// on every Linux architecture this runs on (the kernel's own HZ may differ).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// The agent's thread that runs every probe (agent/src/prober).
const PROBER_THREAD: &str = "berth-prober";
/// How often readiness is checked while pods come up (GET /pods is large at 110 pods).
const POLL_EVERY: Duration = Duration::from_secs(2);
/// How long running pods get to become Ready before the window starts anyway.
const READY_GRACE: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(name = "berth-probe-bench", about = "What probes cost berth-agent")]
struct Args {
    /// Pods per phase.
    #[arg(long)]
    pods: Option<usize>,
    /// Length of each sampling window, in seconds.
    #[arg(long)]
    sample_secs: Option<u64>,
    /// Pause between all pods Ready and the window, in seconds.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    /// Short run: 20 pods and 10 s windows unless given.
    #[arg(long)]
    quick: bool,
    /// How long the pods of a phase get to become Ready (or to go away), in seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// The phases to run, in order (`http`, `tcp`, `grpc`: one kind of probe
    /// each). The figures over the baseline need `no_probes`.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "no_probes,http_tcp_grpc,exec"
    )]
    phases: Vec<Phase>,
    /// Skip the raw client floor (sampled after `no_probes`'s window).
    #[arg(long)]
    no_floor: bool,
}

/// One run of the pods, with one set of probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum Phase {
    /// No probes: the baseline.
    NoProbes,
    /// httpGet, tcpSocket and gRPC: 3 probes per pod per second.
    HttpTcpGrpc,
    /// One exec probe per pod per second.
    Exec,
    /// httpGet only (1 probe per pod per second).
    Http,
    /// tcpSocket only (1 probe per pod per second).
    Tcp,
    /// gRPC only (1 probe per pod per second).
    Grpc,
}

const HTTP_LIVENESS: &str = "\n      livenessProbe:\n        httpGet: {path: /index.html, port: 8080}\n        periodSeconds: 1";
const GRPC_READINESS: &str =
    "\n      readinessProbe:\n        grpc: {port: 9000}\n        periodSeconds: 1";
const TCP_READINESS: &str =
    "\n      readinessProbe:\n        tcpSocket: {port: 9000}\n        periodSeconds: 1";
const EXEC_READINESS: &str =
    "\n      readinessProbe:\n        exec: {command: [\"true\"]}\n        periodSeconds: 1";

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::NoProbes => "no_probes",
            Phase::HttpTcpGrpc => "http_tcp_grpc",
            Phase::Exec => "exec",
            Phase::Http => "http",
            Phase::Tcp => "tcp",
            Phase::Grpc => "grpc",
        }
    }

    /// Manifest and pod names carry the phase, so no phase reuses another's pods.
    fn prefix(self) -> &'static str {
        match self {
            Phase::NoProbes => "np",
            Phase::HttpTcpGrpc => "pr",
            Phase::Exec => "ex",
            Phase::Http => "ht",
            Phase::Tcp => "tc",
            Phase::Grpc => "gr",
        }
    }

    fn probes_per_pod(self) -> u32 {
        match self {
            Phase::NoProbes => 0,
            Phase::HttpTcpGrpc => 3,
            Phase::Exec | Phase::Http | Phase::Tcp | Phase::Grpc => 1,
        }
    }

    fn manifest(self, name: &str) -> String {
        let (server_probes, side_probes) = match self {
            Phase::NoProbes => (String::new(), ""),
            Phase::HttpTcpGrpc => (format!("{HTTP_LIVENESS}{GRPC_READINESS}"), TCP_READINESS),
            Phase::Exec => (EXEC_READINESS.to_string(), ""),
            Phase::Http => (HTTP_LIVENESS.to_string(), ""),
            Phase::Tcp => (String::new(), TCP_READINESS),
            Phase::Grpc => (GRPC_READINESS.to_string(), ""),
        };
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: server
      image: {GRPC_HEALTH_IMAGE}
      command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && httpd -p 8080 -h /www && exec berth-grpc-health --port 9000"]{server_probes}
    - name: side
      image: {GRPC_HEALTH_IMAGE}
      command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]{side_probes}
"#
        )
    }
}

/// CPU ticks (USER_HZ) of one process from `/proc/<pid>/stat`: (utime+stime,
/// cutime+cstime), and its start time, which tells a reused PID apart.
#[derive(Debug, Clone, Copy)]
struct ProcTimes {
    own: u64,
    /// Of `own`: in the kernel (stime).
    sys: u64,
    children: u64,
    start: u64,
}

fn proc_times(pid: i32) -> anyhow::Result<ProcTimes> {
    stat_times(&format!("/proc/{pid}/stat"))
}

/// The same for one thread of a process.
fn thread_times(pid: i32, tid: i32) -> anyhow::Result<ProcTimes> {
    stat_times(&format!("/proc/{pid}/task/{tid}/stat"))
}

/// The thread of process `pid` named `name` (its `comm`), if there is one.
fn thread_named(pid: i32, name: &str) -> anyhow::Result<Option<i32>> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing /proc/{pid}/task"))?
    {
        let entry = entry?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return Ok(entry.file_name().to_str().and_then(|t| t.parse().ok()));
        }
    }
    Ok(None)
}

fn stat_times(path: &str) -> anyhow::Result<ProcTimes> {
    let pid = path;
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may hold spaces: count fields after ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{pid} has no ')': {stat}"))?;
    // After ')': field 3 (state) is index 0, so field N is index N-3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        f.get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{pid}: no field {n}: {stat}"))
    };
    Ok(ProcTimes {
        own: field(14)? + field(15)?,
        sys: field(15)?,
        children: field(16)? + field(17)?,
        start: field(22)?,
    })
}

/// Busy ticks of all CPUs (`/proc/stat` line `cpu`: everything but idle and iowait).
fn host_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let busy = v.iter().take(8).enumerate().fold(
        0,
        |acc, (i, x)| {
            if i == 3 || i == 4 { acc } else { acc + x }
        },
    );
    Ok(busy)
}

/// The CPU time (ns) the pods' cgroups used: cgroup v2 `cpu.stat` usage_usec or
/// v1 `cpuacct.usage` of the instance's cgroup parent; `None` where neither is readable.
fn pods_cgroup_ns(parent: &str) -> Option<u64> {
    let rel = parent.trim_start_matches('/');
    let v2 = Path::new("/sys/fs/cgroup").join(rel).join("cpu.stat");
    if let Ok(text) = std::fs::read_to_string(&v2)
        && let Some(usec) = text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(usec * 1000);
    }
    ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
        .iter()
        .map(|c| {
            PathBuf::from("/sys/fs/cgroup")
                .join(c)
                .join(rel)
                .join("cpuacct.usage")
        })
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
}

/// The runtime's long-lived processes: containerd and the shims of its pods.
fn runtime_pids(cd: &Containerd) -> anyhow::Result<Vec<i32>> {
    let mut pids: Vec<i32> = processes_under(cd.temp_dir())?
        .into_iter()
        .filter(|p| {
            p.cmdline
                .first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
        })
        .map(|p| p.pid)
        .collect();
    let containerd = cd.pid().context("containerd is not running")?;
    pids.push(i32::try_from(containerd).context("containerd pid")?);
    Ok(pids)
}

/// Everything sampled at one instant.
struct Snapshot {
    at: Instant,
    agent: ProcTimes,
    /// The agent's prober thread, where every probe runs.
    prober: Option<ProcTimes>,
    runtime: HashMap<i32, ProcTimes>,
    pods_ns: Option<u64>,
    host_ticks: u64,
}

fn snapshot(
    agent_pid: i32,
    prober_tid: Option<i32>,
    runtime: &[i32],
    cgroup_parent: &str,
) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        at: Instant::now(),
        agent: proc_times(agent_pid)?,
        prober: prober_tid.and_then(|tid| thread_times(agent_pid, tid).ok()),
        runtime: runtime
            .iter()
            .filter_map(|&pid| proc_times(pid).ok().map(|t| (pid, t)))
            .collect(),
        pods_ns: pods_cgroup_ns(cgroup_parent),
        host_ticks: host_busy_ticks()?,
    })
}

/// `prober_probe_total` summed by `result`.
fn probe_totals(agent: &Agent) -> anyhow::Result<HashMap<String, f64>> {
    let (code, text) = agent.get_text("/metrics/probes")?;
    anyhow::ensure!(code == 200, "GET /metrics/probes answered {code}: {text}");
    let mut totals = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("prober_probe_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let result = labels
            .split_once("result=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(r, _)| r.to_string())
            .unwrap_or_default();
        *totals.entry(result).or_insert(0.0) += value;
    }
    Ok(totals)
}

fn percent(ticks: u64, secs: f64) -> f64 {
    round2(ticks as f64 / CLOCK_TICKS_PER_SECOND / secs * 100.0)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// How many of `names` are in `pods` and pass `check`.
fn count_pods(pods: &[Value], names: &[String], check: impl Fn(&Value) -> bool) -> usize {
    names
        .iter()
        .filter(|name| {
            pods.iter()
                .any(|p| p["metadata"]["name"] == name.as_str() && check(p))
        })
        .count()
}

/// How many of `names` have condition Ready True.
fn count_ready(pods: &[Value], names: &[String]) -> usize {
    count_pods(pods, names, |p| {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// How many of `names` have every container running.
fn count_running(pods: &[Value], names: &[String]) -> usize {
    count_pods(pods, names, |p| {
        let all = p["status"]["containerStatuses"].as_array();
        all.is_some_and(|all| {
            all.len() == 2 && all.iter().all(|c| c["state"]["running"].is_object())
        })
    })
}

fn ready_sandboxes(cd: &Containerd) -> anyhow::Result<usize> {
    Ok(cd
        .sandboxes()?
        .iter()
        .filter(|s| s.state == api::PodSandboxState::SandboxReady as i32)
        .count())
}

struct Bench<'a> {
    cd: &'a Containerd,
    agent: &'a Agent,
    pods: usize,
    sample: Duration,
    settle: Duration,
    timeout: Duration,
    /// Whether `no_probes` also samples the raw client floor.
    floor: bool,
}

/// The port of the pods' HTTP server (busybox httpd) and of their gRPC server
/// (the tcpSocket probe's target).
const HTTP_PORT: u16 = 8080;
const TCP_PORT: u16 = 9000;
/// The agent's prober wakes on a grid of this step (agent/src/prober/worker.rs).
const FLOOR_TICK: Duration = Duration::from_millis(50);

/// The floor: `ips` probed by a minimal blocking client (see the module
/// docs), one TCP connect+close and one HTTP GET per pod per second for
/// `window`, on a thread of its own whose CPU time is the figure.
fn raw_floor(ips: &[std::net::Ipv4Addr], window: Duration) -> anyhow::Result<Value> {
    let ips = ips.to_vec();
    let handle = std::thread::Builder::new()
        .name("raw-floor".into())
        .spawn(move || -> anyhow::Result<Value> {
            let tid = nix::unistd::gettid().as_raw();
            let pid = std::process::id();
            let stat = format!("/proc/{pid}/task/{tid}/stat");
            let ticks_per_second = (1.0 / FLOOR_TICK.as_secs_f64()).round() as usize;
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut first_error = None;
            let a = stat_times(&stat)?;
            let start = Instant::now();
            let mut tick = 0usize;
            while start.elapsed() < window {
                // This tick's share of the pods (every pod once a second).
                let slot = tick % ticks_per_second;
                for ip in ips.iter().skip(slot).step_by(ticks_per_second) {
                    for result in [raw_tcp(*ip), raw_http(*ip)] {
                        match result {
                            Ok(()) => ok += 1,
                            Err(e) => {
                                failed += 1;
                                first_error.get_or_insert_with(|| format!("{ip}: {e}"));
                            }
                        }
                    }
                }
                tick += 1;
                let next = start + FLOOR_TICK * u32::try_from(tick).unwrap_or(u32::MAX);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            let b = stat_times(&stat)?;
            let secs = start.elapsed().as_secs_f64();
            Ok(json!({
                "client": "one thread, blocking std::net sockets, no event loop",
                "connections_per_second_configured": ips.len() * 2,
                "connections_per_second_run": round2((ok + failed) as f64 / secs),
                "succeeded": ok,
                "failed": failed,
                "first_error": first_error,
                "window_seconds": round2(secs),
                "thread_cpu_percent_of_one_core": percent(b.own.saturating_sub(a.own), secs),
                "thread_cpu_system_percent_of_one_core": percent(b.sys.saturating_sub(a.sys), secs),
            }))
        })
        .context("starting the raw client thread")?;
    handle
        .join()
        .map_err(|_| anyhow!("the raw client thread panicked"))?
}

/// A tcpSocket probe's work: connect, close.
fn raw_tcp(ip: std::net::Ipv4Addr) -> std::io::Result<()> {
    let addr = std::net::SocketAddr::from((ip, TCP_PORT));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(drop)
}

/// An httpGet probe's work: connect, send the probe's request head, read the
/// response to the end (`Connection: close`), close.
fn raw_http(ip: std::net::Ipv4Addr) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    let addr = std::net::SocketAddr::from((ip, HTTP_PORT));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let head = format!(
        "GET /index.html HTTP/1.1\r\nHost: {ip}:{HTTP_PORT}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    let mut buf = [0u8; 2048];
    let mut http = None;
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => {
                http.get_or_insert_with(|| buf[..n].starts_with(b"HTTP/1."));
            }
        }
    }
    if http == Some(true) {
        Ok(())
    } else {
        Err(std::io::Error::other("not an HTTP response"))
    }
}

impl Bench<'_> {
    /// Poll GET /pods until `count` finds all of `names`, or fail at `deadline`.
    fn wait_pods(
        &self,
        phase: Phase,
        names: &[String],
        what: &str,
        deadline: Instant,
        count: fn(&[Value], &[String]) -> usize,
    ) -> anyhow::Result<()> {
        let mut n = 0;
        loop {
            match self.agent.pods() {
                Ok(pods) => n = count(&pods, names),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "GET /pods failed"),
            }
            if n == names.len() {
                return Ok(());
            }
            tracing::debug!(phase = phase.name(), what, n, "waiting for pods");
            anyhow::ensure!(
                Instant::now() < deadline,
                "phase {}: only {n} of {} pods {what}; agent log:\n{}",
                phase.name(),
                names.len(),
                self.agent.log_tail(40)
            );
            std::thread::sleep(POLL_EVERY);
        }
    }

    fn run(&self, phase: Phase) -> anyhow::Result<Value> {
        let files: Vec<String> = (0..self.pods)
            .map(|i| format!("{}{i:03}", phase.prefix()))
            .collect();
        let names: Vec<String> = files
            .iter()
            .map(|f| self.agent.static_pod_name(f))
            .collect();
        tracing::info!(phase = phase.name(), pods = self.pods, "starting pods");
        let started = Instant::now();
        for f in &files {
            self.agent
                .write_manifest(&format!("{f}.yaml"), &phase.manifest(f))?;
        }
        // All running first (a failure if not within the timeout), then all
        // Ready if they get there: with exec probes a small machine may not
        // keep up, and what that costs is the figure wanted, so it goes on.
        self.wait_pods(
            phase,
            &names,
            "Running",
            started + self.timeout,
            count_running,
        )?;
        let running_after = round2(started.elapsed().as_secs_f64());
        let ready_after = match self.wait_pods(
            phase,
            &names,
            "Ready",
            Instant::now() + READY_GRACE,
            count_ready,
        ) {
            Ok(_) => Some(round2(started.elapsed().as_secs_f64())),
            Err(e) => {
                tracing::warn!(phase = phase.name(), error = %format!("{e:#}"), "sampling with pods not Ready");
                None
            }
        };
        tracing::info!(
            phase = phase.name(),
            running_after,
            ready_after,
            "pods up; settling"
        );
        std::thread::sleep(self.settle);

        let agent_pid = i32::try_from(self.agent.pid().context("the agent is not running")?)
            .context("agent pid")?;
        let runtime = runtime_pids(self.cd)?;
        let parent = self.cd.cgroup_parent();
        let probes_before = probe_totals(self.agent)?;
        tracing::info!(
            phase = phase.name(),
            seconds = self.sample.as_secs(),
            "sampling"
        );
        // Absent until the first probe worker starts (no_probes).
        let prober_tid = thread_named(agent_pid, PROBER_THREAD)?;
        let a = snapshot(agent_pid, prober_tid, &runtime, &parent)?;
        std::thread::sleep(self.sample);
        let b = snapshot(agent_pid, prober_tid, &runtime, &parent)?;
        let probes_after = probe_totals(self.agent)?;
        let ready_at_end = count_ready(&self.agent.pods()?, &names);
        let secs = b.at.duration_since(a.at).as_secs_f64();

        let agent_ticks = b.agent.own.saturating_sub(a.agent.own);
        // Only processes alive (and the same process) at both ends.
        let runtime_ticks: u64 = a
            .runtime
            .iter()
            .filter_map(|(pid, ta)| {
                let tb = b.runtime.get(pid).filter(|tb| tb.start == ta.start)?;
                Some((tb.own + tb.children).saturating_sub(ta.own + ta.children))
            })
            .sum();
        let pods_percent = match (a.pods_ns, b.pods_ns) {
            (Some(x), Some(y)) => json!(round2(y.saturating_sub(x) as f64 / 1e9 / secs * 100.0)),
            _ => Value::Null,
        };
        let mut probes = serde_json::Map::new();
        let mut results: Vec<&String> = probes_after.keys().collect();
        results.sort();
        let mut ran = 0.0;
        for r in results {
            let n = probes_after.get(r).copied().unwrap_or(0.0)
                - probes_before.get(r).copied().unwrap_or(0.0);
            ran += n;
            probes.insert(r.clone(), json!(n));
        }
        let report = json!({
            "probes_per_pod": phase.probes_per_pod(),
            "probes_per_second_configured": phase.probes_per_pod() as usize * self.pods,
            "probes_per_second_run": round2(ran / secs),
            "probes_in_window_by_result": probes,
            "pods_running_after_seconds": running_after,
            "pods_ready_after_seconds": ready_after,
            "pods_ready_after_window": ready_at_end,
            "window_seconds": round2(secs),
            "agent_cpu_percent_of_one_core": percent(agent_ticks, secs),
            "agent_cpu_system_percent_of_one_core": percent(b.agent.sys.saturating_sub(a.agent.sys), secs),
            "prober_thread_cpu_percent_of_one_core": match (a.prober, b.prober) {
                (Some(x), Some(y)) if x.start == y.start => json!(percent(y.own.saturating_sub(x.own), secs)),
                _ => Value::Null,
            },
            "prober_thread_cpu_system_percent_of_one_core": match (a.prober, b.prober) {
                (Some(x), Some(y)) if x.start == y.start => json!(percent(y.sys.saturating_sub(x.sys), secs)),
                _ => Value::Null,
            },
            "agent_rss_kib": rss_kib(agent_pid.unsigned_abs())?,
            "runtime_cpu_percent_of_one_core": percent(runtime_ticks, secs),
            "runtime_processes": runtime.len(),
            "runtime_rss_kib": runtime.iter().filter_map(|&p| rss_kib(p.unsigned_abs()).ok()).sum::<u64>(),
            "pods_cgroup_cpu_percent_of_one_core": pods_percent,
            "host_cpu_percent_of_one_core": percent(b.host_ticks.saturating_sub(a.host_ticks), secs),
        });
        let mut report = report;
        if phase == Phase::NoProbes && self.floor {
            let pods = self.agent.pods()?;
            let ips: Vec<std::net::Ipv4Addr> = names
                .iter()
                .filter_map(|n| {
                    let pod = pods.iter().find(|p| p["metadata"]["name"] == n.as_str())?;
                    pod["status"]["podIP"].as_str()?.parse().ok()
                })
                .collect();
            anyhow::ensure!(
                ips.len() == names.len(),
                "phase {}: only {} of {} pods have an IPv4 podIP",
                phase.name(),
                ips.len(),
                names.len()
            );
            tracing::info!(
                pods = ips.len(),
                seconds = self.sample.as_secs(),
                "sampling the raw client floor"
            );
            report["raw_client_floor"] = raw_floor(&ips, self.sample)?;
        }
        tracing::info!(phase = phase.name(), report = %report, "sampled");

        tracing::info!(phase = phase.name(), "removing pods");
        for f in &files {
            self.agent.remove_manifest(&format!("{f}.yaml"))?;
        }
        let removing = Instant::now();
        loop {
            let left = self
                .agent
                .pods()?
                .iter()
                .filter(|p| {
                    p["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| names.iter().any(|m| m == n))
                })
                .count();
            let sandboxes = ready_sandboxes(self.cd)?;
            if left == 0 && sandboxes == 0 {
                break;
            }
            anyhow::ensure!(
                removing.elapsed() < self.timeout,
                "phase {}: {left} pods and {sandboxes} sandboxes still there after {:?}",
                phase.name(),
                self.timeout
            );
            std::thread::sleep(POLL_EVERY);
        }
        Ok(report)
    }
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
    let pods = args.pods.unwrap_or(if args.quick { 20 } else { 110 });
    let sample_secs = args.sample_secs.unwrap_or(if args.quick { 10 } else { 30 });
    anyhow::ensure!(
        pods > 0 && sample_secs > 0,
        "--pods and --sample-secs must be positive"
    );
    let Some((_env, image_tar)) = require_grpc_health("berth-probe-bench") else {
        return Ok(());
    };
    tracing::info!("starting a private containerd");
    let cd = Containerd::start()?;
    cd.import_image(&image_tar, GRPC_HEALTH_IMAGE)?;
    let agent = Agent::start(&cd, &[])?;
    agent.wait_healthy(Duration::from_secs(60))?;
    let bench = Bench {
        cd: &cd,
        agent: &agent,
        pods,
        sample: Duration::from_secs(sample_secs),
        settle: Duration::from_secs(args.settle_secs),
        timeout: Duration::from_secs(args.timeout_secs),
        floor: !args.no_floor,
    };
    let started = Instant::now();
    let mut phases = serde_json::Map::new();
    for &phase in &args.phases {
        phases.insert(phase.name().to_string(), bench.run(phase)?);
    }
    // Each probed phase over the baseline, for the agent and for the runtime.
    let over = |key: &str| {
        let base = phases
            .get(Phase::NoProbes.name())
            .and_then(|b| b[key].as_f64());
        let mut out = serde_json::Map::new();
        for (name, phase) in &phases {
            if name.as_str() != Phase::NoProbes.name()
                && let (Some(x), Some(base)) = (phase[key].as_f64(), base)
            {
                out.insert(name.clone(), json!(round2(x - base)));
            }
        }
        Value::Object(out)
    };
    let agent_over = over("agent_cpu_percent_of_one_core");
    let runtime_over = over("runtime_cpu_percent_of_one_core");
    let report = json!({
        "benchmark": "berth-agent probe cost",
        "mode": if args.pods.is_some() {
            "custom"
        } else if args.quick {
            "quick"
        } else {
            "full"
        },
        "build_profile": if cfg!(debug_assertions) { "dev" } else { "release" },
        "agent_binary": berth_integration::agent_binary()?.display().to_string(),
        "runtime": "containerd (private instance)",
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "pods": pods,
        "sample_seconds": sample_secs,
        "settle_seconds": args.settle_secs,
        "pod": "2 containers of localhost/berth/grpc-health:1: server (httpd :8080, grpc :9000), side (sleeps)",
        "probes": {
            "no_probes": "none",
            "http_tcp_grpc": "server: liveness httpGet :8080, readiness grpc :9000; side: readiness tcpSocket :9000; all periodSeconds 1",
            "exec": "server: readiness exec [true], periodSeconds 1",
            "http": "server: liveness httpGet :8080, periodSeconds 1",
            "tcp": "side: readiness tcpSocket :9000, periodSeconds 1",
            "grpc": "server: readiness grpc :9000, periodSeconds 1",
        },
        "phases": phases,
        "agent_cpu_over_no_probes_percent_of_one_core": agent_over,
        "runtime_cpu_over_no_probes_percent_of_one_core": runtime_over,
        "target": "http_tcp_grpc: agent well under 5% of one core at 110 pods",
        "floor": "no_probes.raw_client_floor: the tcpSocket and httpGet probes' 220 connections/s made by a minimal blocking client, its thread's CPU (most of it the kernel's)",
        "total_seconds": round2(started.elapsed().as_secs_f64()),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
