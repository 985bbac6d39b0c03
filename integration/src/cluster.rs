//! A whole berth cluster per test, from real processes: the API server (SQLite
//! or a private etcd), the scheduler, and two "hosts" — network namespaces
//! with their own address — each running its own containerd and agent.
//!
//! ```text
//!  host namespace                         netns berth-k<N>-a (node-a)   netns berth-k<N>-b (node-b)
//!  bridge brk<N> 10.251.<N>.1/24 ──veth── eth0 10.251.<N>.2               eth0 10.251.<N>.3
//!    berth-apiserver :6443                  containerd (pods 10.240.x)     containerd (pods 10.240.y)
//!    etcd :2379 (etcd backend)              berth-agent :10255 (+:10250)   berth-agent
//!    berth-scheduler
//! ```
//!
//! The cluster owns the numbered instance directory `/tmp/berth-it/k<N>`
//! (API server data dir `api/`, `etcd/`, logs, kubeconfigs, `home/` for
//! kubectl's cache), the bridge `brk<N>`, the veths `vk<N>a`/`vk<N>b` and the
//! network namespaces `berth-k<N>-a`/`berth-k<N>-b`; `N` picks the /24, so
//! parallel tests never collide. The containerds and agents are the usual
//! [`Containerd`] and [`Agent`] instances (`c<M>`, `a<M>`), started inside the
//! namespaces. Drop stops everything by PID (scheduler, agents, containerds
//! with their pods, API server, etcd) and removes the namespaces, veths and
//! bridge; a cluster whose test process died is swept like any instance.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};

use crate::containerd::stop_child;
use crate::instance::InstanceDir;
use crate::{Agent, AgentOptions, Containerd, Env, file_tail, find_in_path, host};

/// How many clusters may exist at once on one host (one /24 of 10.251/16 each).
const MAX_CLUSTERS: u32 = 250;
/// The API server's port (on the bridge address, so it never collides).
pub const APISERVER_PORT: u16 = 6443;
/// The agents' status port (on their host address).
pub const AGENT_STATUS_PORT: u16 = 10255;
/// The agents' authenticated (streaming) port, when the agent has `--port`.
pub const AGENT_PORT: u16 = 10250;
/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines shown in errors.
const TAIL: usize = 40;

/// The API server's storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `--storage sqlite` (the default): one file in the data dir.
    Sqlite,
    /// `--storage etcd` against an etcd the cluster starts.
    Etcd,
}

impl Backend {
    /// The `--storage` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Etcd => "etcd",
        }
    }
}

/// A binary of the workspace: `$<env>` if set, else `target/<profile>/<name>`
/// next to the running test executable.
pub fn workspace_binary(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        anyhow::ensure!(p.is_file(), "{env}={} does not exist", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe().context("finding the test executable")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "{name} not found (looked at {candidates:?}); build the workspace \
             (`cargo build --workspace`, as integration/test.sh does) or set {env}"
            )
        })
}

/// The etcd binary: `$BERTH_ETCD`, else `etcd` on PATH.
pub fn etcd_binary() -> Option<PathBuf> {
    match std::env::var_os("BERTH_ETCD").filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => find_in_path("etcd"),
    }
}

/// The Python interpreter of the venv with the official `kubernetes` client
/// (`$BERTH_PYVENV`, default `/opt/berth/pyvenv`, made by integration/setup.sh).
pub fn python_client() -> Result<PathBuf, String> {
    let venv = std::env::var_os("BERTH_PYVENV")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/berth/pyvenv"));
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import kubernetes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "no python `kubernetes` client in {} (run `sudo integration/setup.sh`)",
            venv.display()
        ))
    }
}

/// Everything [`Cluster::start`] needs, or why not (for [`crate::require`]).
pub fn cluster_prerequisites(backend: Backend) -> Result<(), String> {
    Env::detect()?;
    let mut missing = Vec::new();
    for (name, env) in [
        ("berth-apiserver", "BERTH_APISERVER_BIN"),
        ("berth-scheduler", "BERTH_SCHEDULER_BIN"),
    ] {
        if let Err(e) = workspace_binary(name, env) {
            missing.push(format!("{e:#}"));
        }
    }
    if let Err(e) = crate::agent_binary() {
        missing.push(format!("{e:#}"));
    }
    for tool in ["kubectl", "curl", "nsenter"] {
        if find_in_path(tool).is_none() {
            missing.push(format!("`{tool}` not found in PATH"));
        }
    }
    if backend == Backend::Etcd && etcd_binary().is_none() {
        missing.push("no etcd binary (apt-get install etcd-server, or $BERTH_ETCD)".to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// The names of cluster `index`'s network objects.
#[derive(Debug, Clone, Copy)]
struct Net {
    index: u32,
}

/// The host letters: `a` is node-a at .2, `b` node-b at .3.
const HOSTS: [(char, u8); 2] = [('a', 2), ('b', 3)];

impl Net {
    fn bridge(self) -> String {
        format!("brk{}", self.index)
    }
    fn veth(self, host: char) -> String {
        format!("vk{}{host}", self.index)
    }
    fn netns(self, host: char) -> String {
        format!("berth-k{}-{host}", self.index)
    }
    fn ip(self, last: u8) -> String {
        format!("10.251.{}.{last}", self.index)
    }

    /// Bridge with .1 in the host namespace; per host a namespace with loopback
    /// up and `eth0` (.2, .3) on a veth into the bridge, default route via .1.
    fn create(self) -> anyhow::Result<()> {
        // A leftover of a dead run with our number (not swept yet): start clean.
        self.remove();
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.ip(1)), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for (h, last) in HOSTS {
            let ns = self.netns(h);
            let veth = self.veth(h);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.ip(last)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "default", "via", &self.ip(1)])?;
        }
        Ok(())
    }

    /// Delete the namespaces, veths and bridge (whatever exists); errors are
    /// collected, every step runs.
    fn remove(self) -> Vec<String> {
        let mut errors = Vec::new();
        for (h, _) in HOSTS {
            // The host end first: deleting it removes the pair even while
            // processes still hold the namespace (and the pair vanishes
            // asynchronously once the namespace goes).
            if let Err(e) = host::delete_link(&self.veth(h))
                && host::link_exists(&self.veth(h))
            {
                errors.push(format!("{e:#}"));
            }
            let ns = self.netns(h);
            if Path::new("/run/netns").join(&ns).exists()
                && let Err(e) = ip(&["netns", "del", &ns])
            {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = host::delete_link(&self.bridge()) {
            errors.push(format!("{e:#}"));
        }
        errors
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    crate::run(Command::new("ip").args(args))
}

/// Clean up the cluster directory `path` (number `index`) of a dead test
/// process: kill its API server, scheduler and etcd (their arguments name the
/// directory), then remove its network.
pub(crate) fn sweep(path: &Path, index: u32) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    if let Err(e) = host::cleanup_dir(path, None, None) {
        errors.push(format!("{e:#}"));
    }
    errors.extend(Net { index }.remove());
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", errors.join("; "))
    }
}

/// A daemon process of the cluster with its log file.
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> anyhow::Result<Daemon> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        writeln!(file, "=== berth-integration: starting {cmd:?}")?;
        let child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Daemon {
            name,
            child: Some(child),
            log,
        })
    }

    fn tail(&self) -> String {
        file_tail(&self.log, TAIL)
    }

    /// An error when it exited (with its log).
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            anyhow::bail!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.tail()
            );
        }
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(mut child) => stop_child(&mut child, STOP_TIMEOUT)
                .with_context(|| format!("stopping {} (pid {})", self.name, child.id())),
            None => Ok(()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("berth-integration: {e:#}");
        }
    }
}

/// One "host" of the cluster: a network namespace with its address, its own
/// containerd and its own agent (node `name`).
#[derive(Debug)]
pub struct ClusterHost {
    name: String,
    ip: String,
    netns: String,
    kubeconfig: PathBuf,
    // Declared before the containerd: dropped (stopped) first.
    agent: Agent,
    containerd: Containerd,
}

impl ClusterHost {
    /// The node name (`node-a`, `node-b`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The host's address (`--node-ip`), `10.251.<N>.2` or `.3`.
    pub fn ip(&self) -> &str {
        &self.ip
    }
    /// Its network namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }
    /// The node kubeconfig (user `system:node:<name>`) the agent runs with.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
    /// The node's bearer token (from its kubeconfig).
    pub fn token(&self) -> anyhow::Result<String> {
        kubeconfig_token(&self.kubeconfig)
    }
    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }
    /// The agent, to kill or restart it.
    pub fn agent_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }
    /// The host's containerd.
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }
}

/// Which credentials a raw API request carries.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// The admin token (group `system:masters`).
    Admin,
    /// The token of node `name`.
    Node(&'a str),
    /// No `Authorization` header.
    Anonymous,
}

/// A raw HTTPS answer of the API server.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

impl ApiResponse {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("not JSON (status {}): {}", self.status, self.body))
    }
}

/// The bearer token in a kubeconfig written by `berth-apiserver`.
fn kubeconfig_token(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("token:")
                .map(|t| t.trim().to_string())
        })
        .ok_or_else(|| anyhow!("no token in {}", path.display()))
}

/// Extra command-line arguments for the cluster's processes.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Added to both agents' command lines.
    pub agent_args: Vec<String>,
    /// Added to the API server's command line (e.g. `--node-monitor-grace-period=20s`).
    pub apiserver_args: Vec<String>,
}

/// See the [module documentation](self).
#[derive(Debug)]
pub struct Cluster {
    // Fields drop in this order: scheduler, hosts (agents, then containerds
    // with their pods), API server, etcd; then Drop removes the network; the
    // directory lock goes last.
    scheduler: Option<Daemon>,
    hosts: Vec<ClusterHost>,
    apiserver: Daemon,
    etcd: Option<Daemon>,
    backend: Backend,
    net: Net,
    kubectl: PathBuf,
    apiserver_bin: PathBuf,
    dir: InstanceDir,
}

impl Cluster {
    /// Start a cluster on `backend` and wait until both nodes are Ready.
    /// `agent_args` are added to both agents' command lines.
    pub fn start(backend: Backend, agent_args: &[&str]) -> anyhow::Result<Cluster> {
        Self::start_with(
            backend,
            ClusterOptions {
                agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
                ..ClusterOptions::default()
            },
        )
    }

    /// [`start`](Self::start) with extra arguments for the API server too.
    pub fn start_with(backend: Backend, opts: ClusterOptions) -> anyhow::Result<Cluster> {
        let agent_args: &[String] = &opts.agent_args;
        cluster_prerequisites(backend).map_err(|e| anyhow!(e))?;
        let apiserver_bin = workspace_binary("berth-apiserver", "BERTH_APISERVER_BIN")?;
        let scheduler_bin = workspace_binary("berth-scheduler", "BERTH_SCHEDULER_BIN")?;
        let kubectl = find_in_path("kubectl").ok_or_else(|| anyhow!("kubectl not in PATH"))?;
        crate::sweep_stale_once();
        let dir = InstanceDir::allocate("k", MAX_CLUSTERS, sweep)?;
        let net = Net { index: dir.index };
        // From here on a failure must undo the network and the directory:
        // the guard does until the Cluster (whose Drop does it) exists.
        let mut guard = StartGuard(Some((net, dir.path.clone())));
        net.create().context("creating the cluster network")?;
        for sub in ["api", "home", "files"] {
            std::fs::create_dir_all(dir.path.join(sub))?;
        }
        let api_ip = net.ip(1);
        let data_dir = dir.path.join("api");
        // The API server's serving certificate must name the bridge address
        // the agents, kubectl and the Python client connect to; the server
        // itself adds only loopback and the hostname. Generate the PKI with
        // the server's own code and the extra SAN before its first start
        // (it keeps an existing PKI).
        let pki = berth_apiserver::api::tls::PkiPaths::new(&data_dir);
        berth_apiserver::api::tls::ensure_pki(&pki, std::slice::from_ref(&api_ip))
            .context("generating the API server PKI")?;

        let etcd = match backend {
            Backend::Sqlite => None,
            Backend::Etcd => Some(start_etcd(&dir.path, &api_ip)?),
        };
        let mut cmd = Command::new(&apiserver_bin);
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(format!("{api_ip}:{APISERVER_PORT}"))
            .args(["--storage", backend.as_str()]);
        if backend == Backend::Etcd {
            cmd.arg("--etcd-servers")
                .arg(format!("http://{api_ip}:2379"));
        }
        cmd.args(&opts.apiserver_args);
        let apiserver = Daemon::spawn("berth-apiserver", &mut cmd, dir.path.join("apiserver.log"))?;
        let mut cluster = Cluster {
            scheduler: None,
            hosts: Vec::new(),
            apiserver,
            etcd,
            backend,
            net,
            kubectl,
            apiserver_bin,
            dir,
        };
        guard.0 = None;
        cluster.wait_apiserver()?;
        // The scheduler as deployed: its own identity, system:kube-scheduler,
        // authorized by the bootstrap RBAC role of that name (not admin).
        let scheduler_kubeconfig =
            cluster.user_kubeconfig("system:kube-scheduler", "kube-scheduler")?;
        cluster.scheduler = Some(Daemon::spawn(
            "berth-scheduler",
            Command::new(&scheduler_bin)
                .arg("--kubeconfig")
                .arg(scheduler_kubeconfig),
            cluster.dir.path.join("scheduler.log"),
        )?);
        // Both hosts at once: containerd start-up and image import dominate.
        let specs: Vec<(String, String, String, PathBuf)> = HOSTS
            .iter()
            .map(|&(h, last)| {
                let name = format!("node-{h}");
                let kubeconfig = cluster.node_kubeconfig(&name)?;
                Ok((name, net.ip(last), net.netns(h), kubeconfig))
            })
            .collect::<anyhow::Result<_>>()?;
        let results: Vec<anyhow::Result<ClusterHost>> = std::thread::scope(|s| {
            let handles: Vec<_> = specs
                .into_iter()
                .map(|(name, ip, netns, kubeconfig)| {
                    s.spawn(move || start_host(name, ip, netns, kubeconfig, agent_args))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("starting a host panicked")))
                })
                .collect()
        });
        for r in results {
            cluster.hosts.push(r?);
        }
        for i in 0..cluster.hosts.len() {
            let name = cluster.hosts[i].name.clone();
            cluster.wait_node_ready(&name, Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    fn wait_apiserver(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            self.apiserver.check_running()?;
            if self.admin_kubeconfig().exists() {
                let out = self.kubectl(&["get", "--raw", "/readyz"])?;
                if out.status.success() {
                    return Ok(());
                }
                last = String::from_utf8_lossy(&out.stderr).into_owned();
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "berth-apiserver not ready within 30 s ({last}); log:\n{}",
                    self.apiserver.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Write a kubeconfig for node `name` (`berth-apiserver kubeconfig`).
    fn node_kubeconfig(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.kubeconfig_with(&["--node", name], name)
    }

    /// A token kubeconfig for `user` (`berth-apiserver kubeconfig --user`),
    /// written as `<file>.kubeconfig` in the cluster directory.
    pub fn user_kubeconfig(&self, user: &str, file: &str) -> anyhow::Result<PathBuf> {
        self.kubeconfig_with(&["--user", user], file)
    }

    fn kubeconfig_with(&self, who: &[&str], file: &str) -> anyhow::Result<PathBuf> {
        let out = crate::run(
            Command::new(&self.apiserver_bin)
                .args(["kubeconfig", "--data-dir"])
                .arg(self.data_dir())
                .args(who)
                .args(["--server", &self.api_url()]),
        )?;
        let path = self.dir.path.join(format!("{file}.kubeconfig"));
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The storage backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// The instance number `N` (network 10.251.`N`.0/24).
    pub fn index(&self) -> u32 {
        self.net.index
    }
    /// The cluster's directory.
    pub fn temp_dir(&self) -> &Path {
        &self.dir.path
    }
    /// The API server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path.join("api")
    }
    /// `https://10.251.<N>.1:6443`.
    pub fn api_url(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.net.ip(1))
    }
    /// The admin kubeconfig the API server wrote.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }
    /// The cluster CA certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.data_dir().join("pki/ca.crt")
    }
    /// The admin bearer token.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        kubeconfig_token(&self.admin_kubeconfig())
    }
    /// `http://10.251.<N>.1:2379` for the etcd backend.
    pub fn etcd_endpoint(&self) -> Option<String> {
        self.etcd
            .as_ref()
            .map(|_| format!("http://{}:2379", self.net.ip(1)))
    }
    /// The hosts, node-a first.
    pub fn hosts(&self) -> &[ClusterHost] {
        &self.hosts
    }
    /// The host of node `name`.
    pub fn host(&self, name: &str) -> anyhow::Result<&ClusterHost> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| anyhow!("no host {name}"))
    }
    /// The host of node `name`, mutably (to kill or restart its agent).
    pub fn host_mut(&mut self, name: &str) -> anyhow::Result<&mut ClusterHost> {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .ok_or_else(|| anyhow!("no host {name}"))
    }

    /// Write `contents` to `files/<name>` in the cluster directory.
    pub fn write_file(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let p = self.dir.path.join("files").join(name);
        std::fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    /// A `kubectl` command with the admin kubeconfig (and a private `$HOME`
    /// for its cache).
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        self.kubectl_command_as(&self.admin_kubeconfig(), args)
    }

    /// A `kubectl` command with `kubeconfig`.
    pub fn kubectl_command_as(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", kubeconfig)
            .env("HOME", self.dir.path.join("home"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Run kubectl (admin), whatever it exits with.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_command(args)
            .output()
            .with_context(|| format!("running kubectl {args:?}"))
    }

    /// Run kubectl (admin); its stdout, or an error with its output when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        output_ok(args, self.kubectl(args)?)
    }

    /// Run kubectl with `kubeconfig`, whatever it exits with.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_command_as(kubeconfig, args)
            .output()
            .with_context(|| format!("running kubectl {args:?}"))
    }

    /// `kubectl <args> -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl_ok(&all)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {args:?}: not JSON: {out}"))
    }

    /// A raw request to the API server with curl: `method path` (path with
    /// query), an optional body (`content_type`), credentials `auth`; waits at
    /// most `timeout`.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        auth: Auth<'_>,
        timeout: Duration,
    ) -> anyhow::Result<ApiResponse> {
        const MARK: &str = "\n--berth-http-code:";
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "--cacert"])
            .arg(self.ca_cert())
            .arg("-m")
            .arg(timeout.as_secs().max(1).to_string())
            .arg("-w")
            .arg(format!("{MARK}%{{http_code}}"))
            .arg(format!("{}{path}", self.api_url()));
        let token = match auth {
            Auth::Admin => Some(self.admin_token()?),
            Auth::Node(name) => Some(self.host(name)?.token()?),
            Auth::Anonymous => None,
        };
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        if let Some((content_type, bytes)) = body {
            // Through a file: bodies may be megabytes.
            let file = tempfile::NamedTempFile::new_in(self.dir.path.join("files"))?;
            std::fs::write(file.path(), bytes)?;
            // A server refusing a body larger than its limit answers before
            // reading it all and resets the HTTP/2 stream; curl then reports
            // a framing error instead of the answer (Go clients such as
            // kubectl do get it). HTTP/1.1 shows the answer.
            if bytes.len() > 1024 * 1024 {
                cmd.arg("--http1.1");
            }
            cmd.arg("-H")
                .arg(format!("Content-Type: {content_type}"))
                .arg("--data-binary")
                .arg(format!("@{}", file.path().display()));
            let out = cmd.output().context("running curl")?;
            drop(file);
            return parse_curl(method, path, out, MARK);
        }
        let out = cmd.output().context("running curl")?;
        parse_curl(method, path, out, MARK)
    }

    /// The Ready condition of node `name`: (status, reason), `None` when it
    /// has none (or the node does not exist).
    pub fn node_ready(&self, name: &str) -> anyhow::Result<Option<(String, String)>> {
        let out = self.kubectl(&["get", "node", name, "-o", "json"])?;
        if !out.status.success() {
            return Ok(None);
        }
        let node: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                )
            }))
    }

    /// Wait until node `name` is Ready=True.
    pub fn wait_node_ready(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        self.poll(timeout, &format!("node {name} to be Ready"), || {
            Ok(self
                .node_ready(name)?
                .filter(|(status, _)| status == "True")
                .map(|_| ()))
        })
    }

    /// [`crate::poll`] adding the control plane's log tails to a timeout.
    pub fn poll<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        crate::poll(timeout, what, f).map_err(|e| anyhow!("{e:#}\n{}", self.diagnostics()))
    }

    /// The last lines of the API server's, scheduler's and agents' logs.
    pub fn diagnostics(&self) -> String {
        let mut s = format!(
            "--- berth-apiserver log {}:\n{}\n",
            self.apiserver.log.display(),
            self.apiserver.tail()
        );
        if let Some(sch) = &self.scheduler {
            s.push_str(&format!(
                "--- berth-scheduler log {}:\n{}\n",
                sch.log.display(),
                sch.tail()
            ));
        }
        for h in &self.hosts {
            s.push_str(&format!(
                "--- agent {} log {}:\n{}\n",
                h.name,
                h.agent.log_path().display(),
                h.agent.log_tail(TAIL)
            ));
        }
        s
    }
}

fn output_ok(args: &[&str], out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        anyhow::bail!(
            "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_curl(method: &str, path: &str, out: Output, mark: &str) -> anyhow::Result<ApiResponse> {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some((body, code)) = text.rsplit_once(mark) else {
        anyhow::bail!(
            "curl {method} {path} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    let status: u16 = code
        .trim()
        .parse()
        .with_context(|| format!("curl {method} {path}: bad status {code:?}"))?;
    // curl exits 28 on -m timeouts: for watches that is how they end.
    if status == 0 {
        anyhow::bail!(
            "curl {method} {path}: no response ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ApiResponse {
        status,
        body: body.to_string(),
    })
}

fn start_etcd(dir: &Path, ip: &str) -> anyhow::Result<Daemon> {
    let bin = etcd_binary().ok_or_else(|| anyhow!("no etcd binary"))?;
    let client = format!("http://{ip}:2379");
    let peer = format!("http://{ip}:2380");
    let mut etcd = Daemon::spawn(
        "etcd",
        Command::new(&bin)
            .arg("--name=berth-cluster")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=berth-cluster={peer}"))
            .arg("--log-level=warn"),
        dir.join("etcd.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: std::net::SocketAddr = format!("{ip}:2379").parse()?;
    loop {
        etcd.check_running()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // Serving requests, not just listening: etcdctl where available.
            let healthy = match find_in_path("etcdctl") {
                Some(ctl) => Command::new(ctl)
                    .args(["--endpoints", &client, "endpoint", "health"])
                    .env("ETCDCTL_API", "3")
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false),
                None => true,
            };
            if healthy {
                return Ok(etcd);
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "etcd at {client} not healthy within 20 s; log:\n{}",
                etcd.tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_host(
    name: String,
    ip: String,
    netns: String,
    kubeconfig: PathBuf,
    agent_args: &[String],
) -> anyhow::Result<ClusterHost> {
    let containerd = Containerd::start_in_netns(&netns)
        .with_context(|| format!("starting containerd of {name} in netns {netns}"))?;
    let opts = AgentOptions::for_containerd(&containerd)
        .netns(netns.clone())
        .node_name(name.clone())
        .arg("--kubeconfig")
        .arg(kubeconfig.display().to_string())
        .args(["--node-ip", &ip])
        .arg("--status-address")
        .arg(format!("{ip}:{AGENT_STATUS_PORT}"))
        .args(["--address", "0.0.0.0", "--port"])
        .arg(AGENT_PORT.to_string());
    let agent = Agent::start_with(opts.args(agent_args.iter().cloned()))
        .with_context(|| format!("starting the agent of {name}"))?;
    Ok(ClusterHost {
        name,
        ip,
        netns,
        kubeconfig,
        agent,
        containerd,
    })
}

/// Removes the network and the directory's contents if start-up fails before
/// the [`Cluster`] exists.
struct StartGuard(Option<(Net, PathBuf)>);

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some((net, dir)) = self.0.take() {
            for e in net.remove() {
                eprintln!("berth-integration: {e}");
            }
            if let Err(e) = host::cleanup_dir(&dir, None, None) {
                eprintln!("berth-integration: cleaning up {}: {e:#}", dir.display());
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "berth-integration: the test failed; cluster k{} logs:\n{}",
                self.net.index,
                self.diagnostics()
            );
        }
        // Stop in dependency order (the fields would drop in this order too,
        // but only after this function, and the network must go last).
        if let Some(mut s) = self.scheduler.take() {
            let _ = s.stop();
        }
        self.hosts.clear();
        if let Err(e) = self.apiserver.stop() {
            eprintln!("berth-integration: {e:#}");
        }
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.stop();
        }
        for e in self.net.remove() {
            eprintln!("berth-integration: cluster k{}: {e}", self.net.index);
        }
        if let Err(e) = host::cleanup_dir(&self.dir.path, None, None) {
            eprintln!(
                "berth-integration: cleaning up {}: {e:#}",
                self.dir.path.display()
            );
        }
    }
}
