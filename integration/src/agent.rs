//! The berth-agent binary, run against a test containerd.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::containerd::stop_child;
use crate::http::{HttpResponse, http_request};
use crate::instance::InstanceDir;
use crate::{Containerd, file_tail, host};

/// How many agent directories may exist at once.
const MAX_AGENTS: u32 = 500;
/// How long the agent gets to open its status port.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the agent gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Log lines shown in errors.
const TAIL: usize = 60;

/// The berth-agent binary: `$BERTH_AGENT_BIN`, else `berth-agent` in the
/// cargo profile directory of the running test (`target/<profile>/`).
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_AGENT_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            p.is_file(),
            "BERTH_AGENT_BIN={} does not exist",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe().context("finding the test executable")?;
    // target/<profile>/deps/<test>-<hash>  →  target/<profile>/berth-agent
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        candidates.push(dir.join("berth-agent"));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "berth-agent not found (looked at {candidates:?}); build it with \
                 `cargo build -p berth-agent` (integration/test.sh builds the whole workspace) \
                 or set BERTH_AGENT_BIN"
            )
        })
}

/// How to run the agent. [`AgentOptions::new`] takes the runtime endpoint;
/// the agent's directories and status port come from its own instance dir.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--container-runtime-endpoint`.
    pub endpoint: String,
    /// `--node-name`; static pods are named `<pod>-<node>`.
    pub node_name: String,
    /// Appended after the defaults. A default flag (`--file-check-frequency`,
    /// `--status-address`, …) that also appears here is left out of the defaults.
    pub extra_args: Vec<String>,
    /// Extra environment variables (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// `--cgroup-root`; [`AgentOptions::for_containerd`] sets it to the
    /// instance's [`Containerd::cgroup_parent`], so concurrent tests never
    /// share pod cgroups (static pod UIDs repeat across tests) and the
    /// containerd's Drop removes them.
    pub cgroup_root: Option<String>,
    /// The binary; [`agent_binary`] when `None`.
    pub binary: Option<PathBuf>,
    /// Run the agent in the named network namespace (`/run/netns/<name>`,
    /// entered with `nsenter --net=`), as on another host. Then give
    /// `--status-address` an address of that namespace the host can reach:
    /// the default (127.0.0.1 with a port free on the host) is not.
    pub netns: Option<String>,
}

impl AgentOptions {
    pub fn new(endpoint: impl Into<String>) -> Self {
        AgentOptions {
            endpoint: endpoint.into(),
            node_name: "berth-node".to_string(),
            extra_args: Vec::new(),
            env: Vec::new(),
            cgroup_root: None,
            binary: None,
            netns: None,
        }
    }

    /// Options for an agent on `cd`: its endpoint and its cgroup parent as `--cgroup-root`.
    pub fn for_containerd(cd: &Containerd) -> Self {
        let mut opts = Self::new(cd.endpoint());
        opts.cgroup_root = Some(cd.cgroup_parent());
        opts
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = name.into();
        self
    }

    /// Run in the named network namespace (see [`AgentOptions::netns`]).
    pub fn netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }
}

/// A running berth-agent with its own directory `/tmp/berth-it/a<N>`:
/// `manifests/` (`--pod-manifest-path`), `root/` (`--root-dir`), `pods/`
/// (`--pod-logs-dir`), `agent.log` (stdout+stderr, appended across restarts).
///
/// Default arguments: `--container-runtime-endpoint <endpoint>
/// --pod-manifest-path <dir>/manifests --root-dir <dir>/root --pod-logs-dir
/// <dir>/pods --node-name <node> --status-address 127.0.0.1:<free port>
/// --file-check-frequency 1s [--cgroup-root <cgroup>]`, then
/// [`AgentOptions::extra_args`].
///
/// Drop stops it (SIGTERM, then SIGKILL after 15 s) and removes its
/// directory. Pods it created stay in containerd; [`Containerd`]'s Drop removes
/// them, so declare the agent after the containerd (locals drop in reverse).
#[derive(Debug)]
pub struct Agent {
    dir: InstanceDir,
    opts: AgentOptions,
    binary: PathBuf,
    args: Vec<String>,
    status_addr: String,
    child: Option<Child>,
}

fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Agent {
    /// Start the agent against `cd` with `extra_args`, and wait until its
    /// status port accepts connections (not until it is healthy: see
    /// [`wait_healthy`](Self::wait_healthy)).
    pub fn start(cd: &Containerd, extra_args: &[&str]) -> anyhow::Result<Agent> {
        Self::start_with(AgentOptions::for_containerd(cd).args(extra_args.iter().copied()))
    }

    /// [`spawn`](Self::spawn), then wait until the status port accepts connections.
    pub fn start_with(opts: AgentOptions) -> anyhow::Result<Agent> {
        let mut agent = Self::spawn(opts)?;
        agent.wait_listening()?;
        Ok(agent)
    }

    /// Start the agent process and return at once (for tests that expect it
    /// to exit, e.g. on bad flags: see [`wait_exit`](Self::wait_exit)).
    pub fn spawn(opts: AgentOptions) -> anyhow::Result<Agent> {
        let binary = match &opts.binary {
            Some(b) => b.clone(),
            None => agent_binary()?,
        };
        crate::sweep_stale_once();
        let dir = InstanceDir::allocate("a", MAX_AGENTS, |path, _| {
            host::cleanup_dir(path, None, None)
        })?;
        for sub in ["manifests", "root", "pods", "staging"] {
            std::fs::create_dir_all(dir.path.join(sub))?;
        }
        let d = &dir.path;
        let mut args: Vec<String> = Vec::new();
        let extra = &opts.extra_args;
        let mut default = |flag: &str, value: String| {
            if !has_flag(extra, flag) {
                args.push(flag.to_string());
                args.push(value);
            }
        };
        default("--container-runtime-endpoint", opts.endpoint.clone());
        default(
            "--pod-manifest-path",
            d.join("manifests").display().to_string(),
        );
        default("--root-dir", d.join("root").display().to_string());
        default("--pod-logs-dir", d.join("pods").display().to_string());
        default("--node-name", opts.node_name.clone());
        default("--status-address", format!("127.0.0.1:{}", free_port()?));
        default("--file-check-frequency", "1s".to_string());
        // Only the memory threshold: how full this host's disk happens to be
        // must not make a test's agent reclaim (remove the test's images, which
        // no registry here can give back) or refuse pods. Eviction tests set
        // their own thresholds and signals.
        default("--eviction-hard", "memory.available<100Mi".to_string());
        if let Some(cg) = &opts.cgroup_root {
            default("--cgroup-root", cg.clone());
        }
        args.extend(extra.iter().cloned());
        let status_addr = flag_value(&args, "--status-address")
            .ok_or_else(|| anyhow!("no --status-address in {args:?}"))?;
        let mut agent = Agent {
            dir,
            opts,
            binary,
            args,
            status_addr,
            child: None,
        };
        agent.spawn_process()?;
        Ok(agent)
    }

    fn spawn_process(&mut self) -> anyhow::Result<()> {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(
            log,
            "=== berth-integration: starting {} {}",
            self.binary.display(),
            self.args.join(" ")
        )?;
        // nsenter execs the agent after setns: the child's PID is the agent's.
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        // As systemd/berth-agent.service runs it (fewer malloc arenas, less
        // RSS), so tests and benchmarks see the agent as installed; a
        // MALLOC_ARENA_MAX of the caller's is kept (to compare).
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            cmd.env("MALLOC_ARENA_MAX", "2");
        }
        let child = cmd
            .args(&self.args)
            // Plain log lines in agent.log (tracing-subscriber honours NO_COLOR).
            .env("NO_COLOR", "1")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        std::fs::write(self.dir.path.join("agent.pid"), format!("{}\n", child.id()))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                anyhow::bail!(
                    "berth-agent exited during startup ({status}); log {}:\n{}",
                    self.log_path().display(),
                    self.log_tail(TAIL)
                );
            }
            if std::net::TcpStream::connect(&self.status_addr).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "berth-agent did not listen on {} within {START_TIMEOUT:?}; log {}:\n{}",
                    self.status_addr,
                    self.log_path().display(),
                    self.log_tail(TAIL)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The full argument list the agent runs with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The agent's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the agent process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => false,
            None => false,
        }
    }

    /// SIGKILL the agent (a crash) and reap it.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            child.wait().context("reaping berth-agent")?;
        }
        Ok(())
    }

    /// SIGTERM the agent and wait for it (SIGKILL after 15 s).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, STOP_TIMEOUT)?;
        }
        Ok(())
    }

    /// Wait for the agent to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| anyhow!("berth-agent is not running"))?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "berth-agent did not exit within {timeout:?}; log:\n{}",
                    self.log_tail(TAIL)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the agent if it runs (SIGTERM), then start it again with the same
    /// arguments and directories, and wait for its status port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn_process()?;
        self.wait_listening()
    }

    /// The agent's directory.
    pub fn temp_dir(&self) -> &Path {
        &self.dir.path
    }

    /// `--pod-manifest-path` (unless overridden in the extra args).
    pub fn manifest_dir(&self) -> PathBuf {
        flag_value(&self.args, "--pod-manifest-path")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.path.join("manifests"))
    }

    /// `--root-dir` (unless overridden in the extra args).
    pub fn root_dir(&self) -> PathBuf {
        flag_value(&self.args, "--root-dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.path.join("root"))
    }

    /// `--pod-logs-dir` (unless overridden in the extra args).
    pub fn pod_logs_dir(&self) -> PathBuf {
        flag_value(&self.args, "--pod-logs-dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.path.join("pods"))
    }

    /// `--node-name`.
    pub fn node_name(&self) -> String {
        flag_value(&self.args, "--node-name").unwrap_or_else(|| self.opts.node_name.clone())
    }

    /// The name the agent gives a static pod from a manifest named `name`: `<name>-<node>`.
    pub fn static_pod_name(&self, name: &str) -> String {
        format!("{name}-{}", self.node_name())
    }

    /// Write a manifest atomically (written aside, then renamed into the
    /// manifest directory, so the agent never reads half a file).
    pub fn write_manifest(&self, file_name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let staged = self.dir.path.join("staging").join(file_name);
        std::fs::write(&staged, contents)
            .with_context(|| format!("writing {}", staged.display()))?;
        let dest = self.manifest_dir().join(file_name);
        std::fs::rename(&staged, &dest)
            .with_context(|| format!("renaming {} to {}", staged.display(), dest.display()))?;
        Ok(dest)
    }

    /// Remove a manifest from the manifest directory.
    pub fn remove_manifest(&self, file_name: &str) -> anyhow::Result<()> {
        let p = self.manifest_dir().join(file_name);
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))
    }

    /// The agent's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("agent.log")
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path(), lines)
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `127.0.0.1:<port>` of `--status-address`.
    pub fn status_addr(&self) -> &str {
        &self.status_addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn status_url(&self) -> String {
        format!("http://{}", self.status_addr)
    }

    /// `GET <path>` on the status API.
    pub fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http_request(
            &self.status_addr,
            "GET",
            path,
            None,
            Duration::from_secs(10),
        )
    }

    /// `GET <path>`: status code and body.
    pub fn get_text(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = self.get(path)?;
        Ok((r.status, r.body))
    }

    /// `GET <path>` as JSON; fails unless the status is 2xx.
    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let r = self.get(path)?;
        if !(200..300).contains(&r.status) {
            anyhow::bail!(
                "GET {path} answered {}: {}\nagent log:\n{}",
                r.status,
                r.body,
                self.log_tail(TAIL)
            );
        }
        r.json().with_context(|| format!("GET {path}"))
    }

    /// `GET /pods/{ns}/{name}`: `None` on 404.
    pub fn pod(&self, namespace: &str, name: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let path = format!("/pods/{namespace}/{name}");
        let r = self.get(&path)?;
        match r.status {
            404 => Ok(None),
            200..=299 => Ok(Some(r.json().with_context(|| format!("GET {path}"))?)),
            s => anyhow::bail!("GET {path} answered {s}: {}", r.body),
        }
    }

    /// `GET /pods`: the items of the PodList.
    pub fn pods(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let v = self.get_json("/pods")?;
        match v.get("items") {
            Some(serde_json::Value::Array(items)) => Ok(items.clone()),
            Some(serde_json::Value::Null) | None => Ok(Vec::new()),
            Some(other) => anyhow::bail!("GET /pods: items is not an array: {other}"),
        }
    }

    /// Wait until `GET /healthz` answers 200.
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        self.poll(timeout, "GET /healthz to answer 200", || {
            let (code, body) = self.get_text("/healthz")?;
            if code == 200 {
                Ok(Some(()))
            } else {
                Err(anyhow!("/healthz answered {code}: {body}"))
            }
        })
    }

    /// [`crate::wait_for`] that adds the agent's log tail to the timeout error.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl FnMut() -> Option<T>,
    ) -> anyhow::Result<T> {
        crate::wait_for(timeout, what, f).map_err(|e| self.with_log(e))
    }

    /// [`crate::poll`] that adds the agent's log tail to the timeout error.
    pub fn poll<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        crate::poll(timeout, what, f).map_err(|e| self.with_log(e))
    }

    /// Static pod `name` (from manifest `name`) from `/pods`, once its
    /// first container runs.
    pub fn wait_static_running(
        &self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let full = self.static_pod_name(name);
        self.poll(timeout, &format!("{full} running"), || {
            Ok(self
                .pod("default", &full)?
                .filter(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object()))
        })
    }

    fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "{e:#}\nagent log {} (last {TAIL} lines):\n{}",
            self.log_path().display(),
            self.log_tail(TAIL)
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "berth-integration: the test failed; agent log {} (last {TAIL} lines):\n{}",
                self.log_path().display(),
                self.log_tail(TAIL)
            );
        }
        if let Err(e) = self.stop() {
            eprintln!("berth-integration: stopping berth-agent: {e:#}");
        }
        if let Err(e) = host::cleanup_dir(&self.dir.path, None, None) {
            eprintln!(
                "berth-integration: cleaning up {}: {e:#}",
                self.dir.path.display()
            );
        }
    }
}
