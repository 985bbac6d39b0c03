//! A private containerd per test.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use berth_cri::{ConnectOptions, RuntimeClient, api};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::instance::InstanceDir;
use crate::{BUSYBOX_IMAGE, Env, PAUSE_IMAGE, block_on, file_tail, host};

/// How many containerd instances may exist at once on one host (one /24 each).
const MAX_INSTANCES: u32 = 250;
/// How long containerd gets to come up (socket, CRI Version, network ready).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long containerd gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

fn cri_options() -> ConnectOptions {
    ConnectOptions {
        request_timeout: Duration::from_secs(60),
        list_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    }
}

/// Paths and names of the instance with number `index` in `dir`.
#[derive(Debug, Clone)]
struct Layout {
    dir: PathBuf,
    index: u32,
}

impl Layout {
    fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }
    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }
    fn bridge(&self) -> String {
        format!("brth{}", self.index)
    }
    fn subnet(&self) -> String {
        format!("10.240.{}.0/24", self.index)
    }
    fn cgroup_parent(&self) -> String {
        format!("/berth-it-c{}", self.index)
    }
}

/// A containerd of its own, with CRI, for one test.
///
/// Everything lives in `/tmp/berth-it/c<N>` ([`temp_dir`](Self::temp_dir)):
/// `config.toml`, the socket `c.sock`, containerd's `root/` and `state/`
/// (network namespaces and runc state included), the CNI config `net.d/`,
/// host-local IPAM data `cni/`, and `containerd.log`. Pods get IPs from
/// [`subnet`](Self::subnet) `10.240.<N>.0/24` on bridge `brth<N>`. Both test
/// images are imported at start.
///
/// Dropping it removes every pod sandbox through CRI, stops containerd, kills
/// whatever still references the directory (shims, container processes),
/// unmounts what is left below it, deletes the bridge and the cgroup
/// [`cgroup_parent`](Self::cgroup_parent), and removes the directory.
#[derive(Debug)]
pub struct Containerd {
    dir: InstanceDir,
    layout: Layout,
    child: Option<Child>,
    env: Env,
    snapshotter: String,
    restrict_oom_score_adj: bool,
    /// The named network namespace (`/run/netns/<name>`) containerd runs in; `None`: the host's.
    netns: Option<String>,
}

impl Containerd {
    /// Start a new containerd and import the test images. Fails (with the tail
    /// of containerd's log) when it does not serve CRI with a ready network
    /// within 20 s.
    pub fn start() -> anyhow::Result<Containerd> {
        Self::start_with_netns(None)
    }

    /// Like [`start`](Self::start), with containerd in the named network
    /// namespace `netns` (`/run/netns/<netns>`, made by `ip netns add`), as
    /// if on another host: its pod bridge, pod network namespaces' veths,
    /// iptables rules and the CRI streaming server (127.0.0.1) live there.
    /// Only the network namespace is entered (`nsenter --net=`), so mounts
    /// stay visible to the host as for [`start`](Self::start).
    pub fn start_in_netns(netns: &str) -> anyhow::Result<Containerd> {
        Self::start_with_netns(Some(netns.to_string()))
    }

    fn start_with_netns(netns: Option<String>) -> anyhow::Result<Containerd> {
        let env = Env::detect().map_err(|e| anyhow!(e))?;
        crate::sweep_stale_once();
        let dir = InstanceDir::allocate("c", MAX_INSTANCES, sweep)?;
        let layout = Layout {
            dir: dir.path.clone(),
            index: dir.index,
        };
        let mut cd = Containerd {
            dir,
            layout,
            child: None,
            env,
            snapshotter: String::new(),
            restrict_oom_score_adj: false,
            netns,
        };
        // From here on a failure drops `cd`, which cleans up.
        cd.write_config()?;
        cd.spawn()?;
        cd.import_images()?;
        Ok(cd)
    }

    fn write_config(&mut self) -> anyhow::Result<()> {
        let l = &self.layout;
        let script = crate::workspace_dir().join("integration/containerd-config.sh");
        let out = crate::run(
            Command::new("bash")
                .arg(&script)
                .arg("--config")
                .arg(l.config())
                .arg("--root")
                .arg(l.root())
                .arg("--state")
                .arg(l.state())
                .arg("--socket")
                .arg(l.socket())
                .arg("--cni-conf-dir")
                .arg(l.dir.join("net.d"))
                .arg("--cni-data-dir")
                .arg(l.dir.join("cni"))
                .arg("--bridge")
                .arg(l.bridge())
                .arg("--subnet")
                .arg(l.subnet())
                .args(["--log-level", "info"]),
        )
        .context("writing the containerd config")?;
        for line in out.lines() {
            match line.split_once('=') {
                Some(("snapshotter", v)) => self.snapshotter = v.to_string(),
                Some(("restrict_oom_score_adj", v)) => self.restrict_oom_score_adj = v == "true",
                _ => {}
            }
        }
        anyhow::ensure!(
            !self.snapshotter.is_empty(),
            "{} did not say which snapshotter it chose: {out}",
            script.display()
        );
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let l = self.layout.clone();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(l.log())
            .with_context(|| format!("opening {}", l.log().display()))?;
        // nsenter execs containerd after setns: the child's PID is containerd's.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(&self.env.containerd_bin);
                c
            }
            None => Command::new(&self.env.containerd_bin),
        };
        let child = cmd
            .arg("--config")
            .arg(l.config())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.env.containerd_bin.display()))?;
        std::fs::write(l.pid_file(), format!("{}\n", child.id()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = anyhow!(
            "the socket {} does not exist yet",
            self.layout.socket().display()
        );
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                anyhow::bail!(
                    "containerd exited during startup ({status}); log {}:\n{}",
                    self.layout.log().display(),
                    self.log_tail(40)
                );
            }
            if self.layout.socket().exists() {
                let endpoint = self.endpoint();
                match block_on(async move { cri_ready(&endpoint).await }) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "containerd at {} did not become ready within {START_TIMEOUT:?}: {last:#}; log {}:\n{}",
                    self.endpoint(),
                    self.layout.log().display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn import_images(&self) -> anyhow::Result<()> {
        self.import_image(&self.env.pause_tar, PAUSE_IMAGE)?;
        self.import_image(&self.env.busybox_tar, BUSYBOX_IMAGE)
    }

    /// Import an image archive (`ctr images import`) and check that CRI then
    /// knows it as `name`. [`start`](Self::start) imports the busybox and
    /// pause images; tests import others, such as [`crate::GRPC_HEALTH_IMAGE`]
    /// (archive from [`crate::grpc_health_image`]), when they need them.
    pub fn import_image(&self, tar: &Path, name: &str) -> anyhow::Result<()> {
        self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            &self.snapshotter,
            &tar.to_string_lossy(),
        ])
        .with_context(|| format!("importing {} (expected to become {name})", tar.display()))?;
        let endpoint = self.endpoint();
        let name = name.to_string();
        block_on(async move {
            let client = RuntimeClient::connect(&endpoint, cri_options()).await?;
            let status = client
                .image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec {
                        image: name.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await?;
            if status.image.is_none() {
                let all = client
                    .list_images(api::ListImagesRequest { filter: None })
                    .await?;
                let tags: Vec<_> = all
                    .images
                    .iter()
                    .flat_map(|i| i.repo_tags.clone())
                    .collect();
                anyhow::bail!("after import, CRI does not know image {name}; it has {tags:?}");
            }
            Ok(())
        })
    }

    /// Run `ctr --address <socket> -n k8s.io <args>` and return its stdout.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::run(
            Command::new(&self.env.ctr_bin)
                .arg("--address")
                .arg(self.layout.socket())
                .args(["-n", "k8s.io"])
                .args(args),
        )
    }

    /// `unix:///tmp/berth-it/c<N>/c.sock`, for `--container-runtime-endpoint`.
    pub fn endpoint(&self) -> String {
        self.layout.endpoint()
    }

    /// The CRI (and containerd API) socket.
    pub fn socket_path(&self) -> PathBuf {
        self.layout.socket()
    }

    /// containerd's `root` (images, snapshots, CRI's per-sandbox files).
    pub fn root_dir(&self) -> PathBuf {
        self.layout.root()
    }

    /// containerd's `state` (runtime state, network namespaces, shm mounts).
    pub fn state_dir(&self) -> PathBuf {
        self.layout.state()
    }

    /// The instance directory that holds everything of this containerd.
    pub fn temp_dir(&self) -> &Path {
        &self.dir.path
    }

    /// The instance number `N` (bridge `brth<N>`, subnet `10.240.<N>.0/24`).
    pub fn index(&self) -> u32 {
        self.layout.index
    }

    /// The config file containerd runs with.
    pub fn config_path(&self) -> PathBuf {
        self.layout.config()
    }

    /// containerd's log file.
    pub fn log_path(&self) -> PathBuf {
        self.layout.log()
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.layout.log(), lines)
    }

    /// The PID of the running containerd, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The network namespace containerd runs in (`None`: the host's).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The pod bridge of this instance.
    pub fn bridge(&self) -> String {
        self.layout.bridge()
    }

    /// The pod subnet of this instance, `10.240.<N>.0/24`.
    pub fn subnet(&self) -> String {
        self.layout.subnet()
    }

    /// True when `ip` is an IPv4 address in [`subnet`](Self::subnet).
    pub fn contains_ip(&self, ip: &str) -> bool {
        match ip.parse::<Ipv4Addr>() {
            Ok(ip) => {
                let o = ip.octets();
                o[0] == 10 && o[1] == 240 && u32::from(o[2]) == self.layout.index
            }
            Err(_) => false,
        }
    }

    /// A cgroup parent (`/berth-it-c<N>`) for sandboxes of this instance;
    /// Drop removes it from every hierarchy. Optional: sandboxes with another
    /// (or no) cgroup parent are cleaned up through CRI all the same.
    pub fn cgroup_parent(&self) -> String {
        self.layout.cgroup_parent()
    }

    /// The snapshotter in use: `overlayfs`, or `native` where overlay mounts fail.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// Whether the config clamps oom_score_adj (no CAP_SYS_RESOURCE here).
    pub fn restrict_oom_score_adj(&self) -> bool {
        self.restrict_oom_score_adj
    }

    /// True while the containerd process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Stop containerd: SIGTERM to its PID, SIGKILL after 10 s. Shims and pods
    /// keep running, as when containerd crashes or is restarted on a node.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        stop_child(&mut child, STOP_TIMEOUT)
            .with_context(|| format!("stopping containerd (pid {})", child.id()))
    }

    /// Start containerd again after [`stop`](Self::stop), with the same config
    /// and directories (images stay imported).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_running(), "containerd is already running");
        self.spawn()
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again): a runtime outage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// A CRI client on the caller's tokio runtime.
    pub async fn client(&self) -> anyhow::Result<RuntimeClient> {
        RuntimeClient::connect(&self.endpoint(), cri_options())
            .await
            .with_context(|| format!("connecting to containerd at {}", self.endpoint()))
    }

    fn with_client<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(RuntimeClient) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<T>> + Send,
    {
        let endpoint = self.endpoint();
        block_on(async move {
            let client = RuntimeClient::connect(&endpoint, cri_options())
                .await
                .with_context(|| format!("connecting to containerd at {endpoint}"))?;
            f(client).await
        })
    }

    /// All pod sandboxes (ListPodSandbox, no filter).
    pub fn sandboxes(&self) -> anyhow::Result<Vec<api::PodSandbox>> {
        self.with_client(|c| async move {
            Ok(
                c.list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
                    .await?
                    .items,
            )
        })
    }

    /// Pod sandboxes whose label `key` is `value` (e.g. `io.kubernetes.pod.uid`).
    pub fn sandboxes_labeled(
        &self,
        key: &str,
        value: &str,
    ) -> anyhow::Result<Vec<api::PodSandbox>> {
        Ok(self
            .sandboxes()?
            .into_iter()
            .filter(|s| s.labels.get(key).map(String::as_str) == Some(value))
            .collect())
    }

    /// All containers (ListContainers, no filter).
    pub fn containers(&self) -> anyhow::Result<Vec<api::Container>> {
        self.with_client(|c| async move {
            Ok(
                c.list_containers(api::ListContainersRequest { filter: None })
                    .await?
                    .containers,
            )
        })
    }

    /// Containers whose label `key` is `value` (e.g. `io.kubernetes.container.name`).
    pub fn containers_labeled(
        &self,
        key: &str,
        value: &str,
    ) -> anyhow::Result<Vec<api::Container>> {
        Ok(self
            .containers()?
            .into_iter()
            .filter(|c| c.labels.get(key).map(String::as_str) == Some(value))
            .collect())
    }

    /// PodSandboxStatus of one sandbox.
    pub fn sandbox_status(&self, id: &str) -> anyhow::Result<api::PodSandboxStatus> {
        let id = id.to_string();
        self.with_client(move |c| async move {
            c.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await?
            .status
            .ok_or_else(|| anyhow!("PodSandboxStatus of {id} has no status"))
        })
    }

    /// ContainerStatus of one container.
    pub fn container_status(&self, id: &str) -> anyhow::Result<api::ContainerStatus> {
        let id = id.to_string();
        self.with_client(move |c| async move {
            c.container_status(api::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await?
            .status
            .ok_or_else(|| anyhow!("ContainerStatus of {id} has no status"))
        })
    }

    /// Repo tags of all images CRI knows.
    pub fn image_tags(&self) -> anyhow::Result<Vec<String>> {
        self.with_client(|c| async move {
            Ok(c.list_images(api::ListImagesRequest { filter: None })
                .await?
                .images
                .into_iter()
                .flat_map(|i| i.repo_tags)
                .collect())
        })
    }

    /// Stop and remove every pod sandbox (and any container left without
    /// one); returns how many sandboxes were removed.
    pub fn remove_all_pods(&self) -> anyhow::Result<usize> {
        let endpoint = self.endpoint();
        block_on(async move { remove_all_pods(&endpoint).await })
    }

    /// Stop and remove one pod sandbox (what an agent does last before its
    /// own clean-up of the pod's directories and cgroup).
    pub fn remove_sandbox(&self, id: &str) -> anyhow::Result<()> {
        let id = id.to_string();
        self.with_client(|c| async move {
            c.stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            c.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await?;
            Ok(())
        })
    }

    /// Mounts at or below this instance's directory.
    pub fn mounts(&self) -> anyhow::Result<Vec<host::Mount>> {
        host::mounts_under(&self.dir.path)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A test that stopped containerd may have left pods behind: bring it
        // back so CRI can tear them down properly (network, netns, mounts).
        if std::thread::panicking() {
            eprintln!(
                "berth-integration: the test failed; containerd log {} (last 20 lines):\n{}",
                self.log_path().display(),
                self.log_tail(20)
            );
        }
        if !self.is_running() && self.config_path().exists() {
            let leftovers = host::processes_under(&self.dir.path)
                .map(|p| !p.is_empty())
                .unwrap_or(false);
            if leftovers && let Err(e) = self.spawn() {
                eprintln!("berth-integration: restarting containerd for cleanup: {e:#}");
            }
        }
        if let Err(e) = teardown(&self.layout, self.child.take()) {
            eprintln!(
                "berth-integration: cleaning up containerd instance {}: {e:#}\ncontainerd log:\n{}",
                self.dir.path.display(),
                self.log_tail(20)
            );
        }
    }
}

/// Clean up the instance directory `path` (number `index`) of a dead test process.
pub(crate) fn sweep(path: &Path, index: u32) -> anyhow::Result<()> {
    teardown(
        &Layout {
            dir: path.to_path_buf(),
            index,
        },
        None,
    )
}

/// Remove all pods through CRI (when containerd answers), stop containerd,
/// and clean up everything else of the instance. Also sweeps the directory
/// of a test process that died (then `child` is `None` and containerd, if it
/// still runs, is found by its pid file).
fn teardown(l: &Layout, child: Option<Child>) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    let live = match &child {
        Some(_) => true,
        None => stale_containerd_pid(l).is_some(),
    };
    if live && l.socket().exists() {
        let endpoint = l.endpoint();
        if let Err(e) = block_on(async move {
            tokio::time::timeout(Duration::from_secs(90), remove_all_pods(&endpoint))
                .await
                .map_err(|_| anyhow!("timed out removing pods"))?
        }) {
            errors.push(format!("removing pods: {e:#}"));
        }
    }
    match child {
        Some(mut child) => {
            if let Err(e) = stop_child(&mut child, STOP_TIMEOUT) {
                errors.push(format!("{e:#}"));
            }
        }
        None => {
            if let Some(pid) = stale_containerd_pid(l) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                let deadline = Instant::now() + STOP_TIMEOUT;
                while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    if let Err(e) = host::cleanup_dir(&l.dir, Some(&l.bridge()), Some(&l.cgroup_parent())) {
        errors.push(format!("{e:#}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", errors.join("; "))
    }
}

/// The PID in the pid file, if that process is a containerd running with this config.
fn stale_containerd_pid(l: &Layout) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(l.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let config = l.config().to_string_lossy().into_owned();
    cmdline
        .split(|b| *b == 0)
        .any(|a| a == config.as_bytes())
        .then_some(pid)
}

/// SIGTERM, wait up to `timeout`, then SIGKILL; always reaps.
pub(crate) fn stop_child(child: &mut Child, timeout: Duration) -> anyhow::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
    child.wait()?;
    Ok(())
}

async fn cri_ready(endpoint: &str) -> anyhow::Result<()> {
    let client = RuntimeClient::connect(endpoint, cri_options()).await?;
    let status = client.status(api::StatusRequest { verbose: false }).await?;
    let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
    for want in ["RuntimeReady", "NetworkReady"] {
        if !conditions.iter().any(|c| c.r#type == want && c.status) {
            anyhow::bail!("CRI condition {want} is not true yet: {conditions:?}");
        }
    }
    Ok(())
}

async fn remove_all_pods(endpoint: &str) -> anyhow::Result<usize> {
    let client = RuntimeClient::connect(endpoint, cri_options()).await?;
    let mut errors = Vec::new();
    let sandboxes = client
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await?
        .items;
    for sb in &sandboxes {
        if let Err(e) = client
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: sb.id.clone(),
            })
            .await
        {
            errors.push(format!("StopPodSandbox {}: {e}", sb.id));
        }
        if let Err(e) = client
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: sb.id.clone(),
            })
            .await
            && !e.is_not_found()
        {
            errors.push(format!("RemovePodSandbox {}: {e}", sb.id));
        }
    }
    let containers = client
        .list_containers(api::ListContainersRequest { filter: None })
        .await?
        .containers;
    for c in &containers {
        let _ = client.stop_container(&c.id, 0).await;
        if let Err(e) = client
            .remove_container(api::RemoveContainerRequest {
                container_id: c.id.clone(),
            })
            .await
            && !e.is_not_found()
        {
            errors.push(format!("RemoveContainer {}: {e}", c.id));
        }
    }
    if errors.is_empty() {
        Ok(sandboxes.len())
    } else {
        anyhow::bail!("{}", errors.join("; "))
    }
}
