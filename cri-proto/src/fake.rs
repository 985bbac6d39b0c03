//! An in-process fake CRI runtime for tests and fault injection.
//!
//! [`FakeRuntime::start`] serves `runtime.v1.RuntimeService` and
//! `runtime.v1.ImageService` on a unix socket in a temporary directory. It keeps
//! sandboxes, containers and images in memory and answers the way containerd's
//! CRI plugin (1.6/1.7) does where an agent can tell the difference:
//!
//! - names are reserved like containerd's name index: a second RunPodSandbox with
//!   the same `name_namespace_uid_attempt`, or a second CreateContainer with the
//!   same container name + pod (from the request's `sandbox_config`) + container
//!   attempt, fails with code Unknown `failed to reserve … name`, until the first
//!   is removed (the *sandbox* attempt is not part of a container's name);
//! - StopPodSandbox kills the sandbox's running containers (exit 137, "Error"),
//!   releases its IP and is idempotent, but an unknown sandbox is NotFound;
//!   RemovePodSandbox stops and removes everything and is OK for an unknown id;
//! - StopContainer is a no-op on a created or exited container; RemoveContainer
//!   kills a running container first and is OK for an unknown id;
//! - CreateContainer needs a READY sandbox (else NotFound, as containerd 1.6's
//!   missing sandbox task) and a local image (else NotFound `failed to resolve
//!   image`); the log path is `sandbox_config.log_directory` + `config.log_path`;
//! - image references are normalized (`nginx` → `docker.io/library/nginx:latest`);
//!   a pull of an image not made pullable fails NotFound `failed to pull and
//!   unpack image …: not found` (the sandbox image [`SANDBOX_IMAGE`] is
//!   pullable from the start); ContainerStatus reports the image's repo tag
//!   and repo digest;
//! - GetContainerEvents is Unimplemented unless enabled; ExecSync answers
//!   from a script per container name ([`FakeRuntime::script_exec`]: exit
//!   code, output, run time; past the request's timeout it fails
//!   DeadlineExceeded), on running containers only; ListContainerStats and
//!   ImageFsInfo answer once scripted ([`FakeRuntime::script_container_stats`],
//!   [`FakeRuntime::set_image_fs_info`]); RuntimeConfig is Unimplemented,
//!   as containerd 1.6 answers, until scripted ([`FakeRuntime::set_cgroup_driver`]);
//!   the other streaming/stats RPCs are Unimplemented;
//! - times are wall-clock nanoseconds; IDs and unique-ID prefixes resolve.
//!
//! Knobs script faults ([`FakeRuntime::fail_next`], [`FakeRuntime::delay`]),
//! container exits ([`FakeRuntime::exit_container`], [`FakeRuntime::on_start_exit`])
//! and outages ([`FakeRuntime::stop_serving`], [`FakeRuntime::resume_serving`]).
//!
//! ```no_run
//! # async fn demo() {
//! use berth_cri::fake::FakeRuntime;
//! let fake = FakeRuntime::start().await;
//! fake.add_image("busybox");
//! fake.on_start_exit("job", 0);
//! let client = fake.client().await;
//! // … drive the agent against `client`, then assert on the fake:
//! assert_eq!(fake.call_count("RunPodSandbox"), 1);
//! # }
//! ```

mod conn;
mod image;
mod service;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

pub use image::FakeImage;
pub use state::{ExecResult, FakeContainer, FakeExec, FakeSandbox, KILLED_EXIT_CODE};

use crate::api::image_service_server::ImageServiceServer;
use crate::api::runtime_service_server::RuntimeServiceServer;
use crate::{ConnectOptions, RuntimeClient};
use service::{METHODS, Service, Shared};

/// How long [`FakeRuntime::stop_serving`] waits for open connections to close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`FakeRuntime::crash`] waits for clients to see their connections close.
const CRASH_SETTLE: Duration = Duration::from_millis(20);

/// The same limit the client decodes with.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

struct Serving {
    /// Stops accepting and drains connections (GOAWAY, in-flight calls finish).
    shutdown: oneshot::Sender<()>,
    /// Cuts every open connection at once.
    kill: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A fake CRI runtime served on a unix socket; see the [module docs](self).
///
/// The sandbox image the fake names in a verbose `Status` (containerd's
/// `config.sandboxImage`).
pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.9";

/// Dropping it stops the server and deletes its directory.
pub struct FakeRuntime {
    dir: tempfile::TempDir,
    socket: PathBuf,
    shared: Arc<Shared>,
    serving: Mutex<Option<Serving>>,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime")
            .field("socket", &self.socket)
            .field("serving", &self.is_serving())
            .finish()
    }
}

/// Panic on a method name the fake does not know: a typo in a test would
/// otherwise script a fault that never fires.
fn known(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or_else(|| {
            panic!("FakeRuntime: unknown CRI method {method:?}; expected one of {METHODS:?}")
        })
}

impl FakeRuntime {
    /// Start serving in a new temporary directory (`<tempdir>/cri.sock`).
    ///
    /// Must run inside a tokio runtime. Panics if the directory or socket cannot
    /// be created; see [`FakeRuntime::try_start`].
    pub async fn start() -> FakeRuntime {
        match Self::try_start().await {
            Ok(fake) => fake,
            Err(e) => panic!("FakeRuntime: cannot start: {e}"),
        }
    }

    /// Start serving in a new temporary directory, or say why not.
    pub async fn try_start() -> std::io::Result<FakeRuntime> {
        let dir = tempfile::Builder::new()
            .prefix("berth-fake-cri")
            .tempdir()?;
        let socket = dir.path().join("cri.sock");
        let fake = FakeRuntime {
            dir,
            socket,
            shared: Arc::new(Shared::new()),
            serving: Mutex::new(None),
        };
        fake.resume_serving().await?;
        Ok(fake)
    }

    /// The endpoint to dial, `unix:///…/cri.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory holding the socket (handy for log directories).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client connected with default timeouts (this logs one `Version` call).
    /// Panics if it cannot connect; see [`FakeRuntime::client_with`].
    pub async fn client(&self) -> RuntimeClient {
        match self.client_with(ConnectOptions::default()).await {
            Ok(client) => client,
            Err(e) => panic!("FakeRuntime: cannot connect: {e}"),
        }
    }

    /// A client connected with `opts` (this logs one `Version` call).
    pub async fn client_with(&self, opts: ConnectOptions) -> crate::Result<RuntimeClient> {
        RuntimeClient::connect(&self.endpoint(), opts).await
    }

    /// True while the socket accepts connections.
    pub fn is_serving(&self) -> bool {
        self.serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Stop the server and delete the fake.
    pub async fn shutdown(self) {
        self.stop_serving().await;
    }

    /// Simulate the runtime going away (as containerd stopping cleanly): open
    /// connections are closed, calls in a scripted delay fail Unavailable, event
    /// streams end, and the socket file is removed, so calls fail Unavailable
    /// ("no such file") until [`FakeRuntime::resume_serving`]. State is kept, and
    /// running containers keep running. A no-op when not serving.
    pub async fn stop_serving(&self) {
        self.halt(false).await;
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Simulate the runtime dying: open connections are cut at once (no GOAWAY;
    /// in-flight calls fail), and the socket file is left behind, so calls fail
    /// Unavailable ("connection refused") until [`FakeRuntime::resume_serving`].
    /// State is kept. A no-op when not serving.
    ///
    /// A call sent in the same instant as the crash (before the client's
    /// connection task has read the EOF) fails with a client-side transport
    /// error: Cancelled "operation was canceled", or Unknown "transport error"
    /// for a call in flight. To keep tests deterministic, this returns only after
    /// a short pause that lets client connections in this process see the close.
    pub async fn crash(&self) {
        self.halt(true).await;
        tokio::time::sleep(CRASH_SETTLE).await;
    }

    async fn halt(&self, kill: bool) {
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.shared.up.send_replace(false);
        // End every GetContainerEvents stream, or graceful shutdown would wait on them.
        self.shared.lock().subscribers.clear();
        if let Some(Serving {
            shutdown,
            kill: killer,
            mut task,
        }) = serving
        {
            if kill {
                killer.send_replace(true);
            }
            let _ = shutdown.send(());
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                tracing::warn!(
                    "fake CRI server did not drain in {DRAIN_TIMEOUT:?}; cutting its connections"
                );
                killer.send_replace(true);
                if tokio::time::timeout(DRAIN_TIMEOUT, &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                }
            }
        }
    }

    /// Serve again on the same socket path (with the same state), after
    /// [`FakeRuntime::stop_serving`] or [`FakeRuntime::crash`]. A no-op when serving.
    pub async fn resume_serving(&self) -> std::io::Result<()> {
        let mut serving = self.serving.lock().unwrap_or_else(PoisonError::into_inner);
        if serving.is_some() {
            return Ok(());
        }
        // A stale socket file (after a crash) would make bind fail with EADDRINUSE.
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&self.socket)?;
        let (kill, killed) = watch::channel(false);
        let incoming = UnixListenerStream::new(listener)
            .map(move |conn| conn.map(|stream| conn::KillableStream::new(stream, killed.clone())));
        let (shutdown, signal) = oneshot::channel::<()>();
        let service = Service(self.shared.clone());
        let router = Server::builder()
            .add_service(
                RuntimeServiceServer::new(service.clone())
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE),
            )
            .add_service(
                ImageServiceServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE),
            );
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = signal.await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
                tracing::warn!("fake CRI server failed: {e}");
            }
        });
        self.shared.up.send_replace(true);
        *serving = Some(Serving {
            shutdown,
            kill,
            task,
        });
        Ok(())
    }

    /// [`FakeRuntime::stop_serving`] then [`FakeRuntime::resume_serving`], as a
    /// `systemctl restart containerd`.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop_serving().await;
        self.resume_serving().await
    }

    // ----- faults and delays -----

    /// The next call of `method` (e.g. `"RunPodSandbox"`) fails with `code` and
    /// `message`. Calling it n times fails the next n calls. Panics on an unknown method.
    pub fn fail_next(&self, method: &str, code: tonic::Code, message: impl Into<String>) {
        let method = known(method);
        self.shared
            .lock()
            .faults
            .entry(method.to_string())
            .or_default()
            .once
            .push_back((code, message.into()));
    }

    /// Every call of `method` fails with `code` and `message` until
    /// [`FakeRuntime::clear_faults`]. Panics on an unknown method.
    pub fn fail_always(&self, method: &str, code: tonic::Code, message: impl Into<String>) {
        let method = known(method);
        self.shared
            .lock()
            .faults
            .entry(method.to_string())
            .or_default()
            .always = Some((code, message.into()));
    }

    /// Forget every scripted fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Every call of `method` waits `delay` before answering (zero removes the
    /// delay). A delayed call fails Unavailable if the fake stops serving
    /// meanwhile. Panics on an unknown method.
    pub fn delay(&self, method: &str, delay: Duration) {
        let method = known(method);
        let mut st = self.shared.lock();
        if delay.is_zero() {
            st.delays.remove(method);
        } else {
            st.delays.insert(method.to_string(), delay);
        }
    }

    /// Forget every scripted delay.
    pub fn clear_delays(&self) {
        self.shared.lock().delays.clear();
    }

    // ----- scripted container exits -----

    /// The running container `id` (or unique ID prefix) exits now with
    /// `exit_code` (reason "Completed" for 0, else "Error"). Returns false when
    /// there is no such running container.
    pub fn exit_container(&self, id: &str, exit_code: i32) -> bool {
        self.exit_container_with(id, exit_code, None, "")
    }

    /// Like [`FakeRuntime::exit_container`] with a reason (e.g. `"OOMKilled"`;
    /// `None` for the default) and a termination message.
    pub fn exit_container_with(
        &self,
        id: &str,
        exit_code: i32,
        reason: Option<&str>,
        message: &str,
    ) -> bool {
        let mut st = self.shared.lock();
        match st.container_index(id) {
            Some(idx) => st.exit(
                idx,
                exit_code,
                reason.map(str::to_string),
                message.to_string(),
            ),
            None => false,
        }
    }

    /// Every running container whose CRI metadata name is `name` exits now with
    /// `exit_code`. Returns how many exited.
    pub fn exit_containers_named(&self, name: &str, exit_code: i32) -> usize {
        let mut st = self.shared.lock();
        let running: Vec<usize> = st
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.metadata.name == name && c.state == crate::api::ContainerState::ContainerRunning
            })
            .map(|(i, _)| i)
            .collect();
        running
            .into_iter()
            .filter(|&i| st.exit(i, exit_code, None, String::new()))
            .count()
    }

    /// From now on, containers named `name` exit with `exit_code` right after a
    /// successful StartContainer (a crash loop, or a job that completes).
    pub fn on_start_exit(&self, name: &str, exit_code: i32) {
        self.shared
            .lock()
            .on_start_exit
            .insert(name.to_string(), exit_code);
    }

    /// Undo [`FakeRuntime::on_start_exit`] for `name`.
    pub fn clear_on_start_exit(&self, name: &str) {
        self.shared.lock().on_start_exit.remove(name);
    }

    /// From now on, StopContainer makes containers named `name` exit with
    /// `exit_code` (e.g. 0 or 143 for a process that handles SIGTERM) instead
    /// of 137.
    pub fn on_stop_exit(&self, name: &str, exit_code: i32) {
        self.shared
            .lock()
            .on_stop_exit
            .insert(name.to_string(), exit_code);
    }

    /// From now on, ExecSync in containers named `name` answers `results`
    /// in order, the last one repeating (one result: always that). Probe
    /// tests script a readiness check that flips, or an exec that hangs.
    pub fn script_exec(&self, name: &str, results: impl IntoIterator<Item = ExecResult>) {
        let queue: std::collections::VecDeque<ExecResult> = results.into_iter().collect();
        let mut st = self.shared.lock();
        if queue.is_empty() {
            st.exec_scripts.remove(name);
        } else {
            st.exec_scripts.insert(name.to_string(), queue);
        }
    }

    /// As [`script_exec`](Self::script_exec), for the commands whose first
    /// word is `program` only (a container with a liveness and a readiness
    /// probe gets one script each); these scripts come first.
    pub fn script_exec_of(
        &self,
        name: &str,
        program: &str,
        results: impl IntoIterator<Item = ExecResult>,
    ) {
        self.script_exec(&format!("{name}\0{program}"), results);
    }

    /// Every ExecSync answered so far, in order.
    pub fn execs(&self) -> Vec<FakeExec> {
        self.shared.lock().execs.clone()
    }

    // ----- images, sandboxes, runtime conditions, events -----

    /// Put an image in the local store (as if pulled earlier) and return its ID.
    /// This does not make it pullable: see [`FakeRuntime::set_pullable`].
    /// Panics if `name` is not a valid image reference.
    pub fn add_image(&self, name: &str) -> String {
        let normalized = image::normalize(name)
            .unwrap_or_else(|| panic!("FakeRuntime: invalid image reference {name:?}"));
        self.shared.lock().add_image(&normalized)
    }

    /// Let PullImage of `name` succeed (and add the image to the store).
    /// Panics if `name` is not a valid image reference.
    pub fn set_pullable(&self, name: &str) {
        let normalized = image::normalize(name)
            .unwrap_or_else(|| panic!("FakeRuntime: invalid image reference {name:?}"));
        self.shared.lock().pullable.insert(normalized);
    }

    /// Mark a sandbox NOTREADY without touching its containers, as when its
    /// pause process dies. Returns false for an unknown sandbox.
    pub fn set_sandbox_not_ready(&self, id: &str) -> bool {
        let mut st = self.shared.lock();
        match st.sandbox_index(id) {
            Some(i) => {
                st.sandboxes[i].state = crate::api::PodSandboxState::SandboxNotready;
                true
            }
            None => false,
        }
    }

    /// Set the `RuntimeReady` condition reported by Status.
    pub fn set_runtime_ready(&self, ready: bool) {
        self.shared.lock().runtime_ready = Some(ready);
    }

    /// Set the `NetworkReady` condition reported by Status.
    pub fn set_network_ready(&self, ready: bool) {
        self.shared.lock().network_ready = Some(ready);
    }

    /// Serve GetContainerEvents (as containerd 1.7+) instead of answering
    /// Unimplemented (as containerd 1.6). Turning it off ends open streams.
    pub fn enable_container_events(&self, enabled: bool) {
        let mut st = self.shared.lock();
        st.events_enabled = enabled;
        if !enabled {
            st.subscribers.clear();
        }
    }

    /// Serve ListContainerStats (as containerd does) instead of answering
    /// Unimplemented; containers without scripted stats answer with their
    /// attributes only. Turning it off forgets the scripted stats.
    pub fn enable_container_stats(&self, enabled: bool) {
        let mut st = self.shared.lock();
        if !enabled {
            st.container_stats = None;
        } else if st.container_stats.is_none() {
            st.container_stats = Some(Default::default());
        }
    }

    /// ListContainerStats answers `stats` for container `id` (its full ID);
    /// the fake fills in the attributes. Enables ListContainerStats.
    pub fn script_container_stats(&self, id: &str, stats: crate::api::ContainerStats) {
        self.shared
            .lock()
            .container_stats
            .get_or_insert_with(Default::default)
            .insert(id.to_string(), stats);
    }

    /// ImageFsInfo answers `info` (`None`: Unimplemented, the default).
    pub fn set_image_fs_info(&self, info: Option<crate::api::ImageFsInfoResponse>) {
        self.shared.lock().image_fs_info = info;
    }

    /// RuntimeConfig answers `config` (`None`: Unimplemented, the default,
    /// as containerd 1.6 and 1.7 answer).
    pub fn set_runtime_config(&self, config: Option<crate::api::RuntimeConfigResponse>) {
        self.shared.lock().runtime_config = config;
    }

    /// RuntimeConfig answers with `driver` as the Linux cgroup driver
    /// (`None`: Unimplemented), as containerd 2.x and CRI-O do.
    pub fn set_cgroup_driver(&self, driver: Option<crate::api::CgroupDriver>) {
        self.set_runtime_config(driver.map(|d| crate::api::RuntimeConfigResponse {
            linux: Some(crate::api::LinuxRuntimeConfiguration {
                cgroup_driver: d as i32,
            }),
        }));
    }

    // ----- observations -----

    /// Every RPC received, in order, by method name (`"RunPodSandbox"`, …),
    /// including failed and delayed ones.
    pub fn calls(&self) -> Vec<String> {
        self.shared.lock().calls.clone()
    }

    /// How many times `method` was called.
    pub fn call_count(&self, method: &str) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|m| *m == method)
            .count()
    }

    /// Forget the call log.
    pub fn clear_calls(&self) {
        self.shared.lock().calls.clear();
    }

    /// All sandboxes, oldest first.
    pub fn sandboxes(&self) -> Vec<FakeSandbox> {
        self.shared.lock().sandboxes.clone()
    }

    /// All containers, oldest first.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.shared.lock().containers.clone()
    }

    /// All images.
    pub fn images(&self) -> Vec<FakeImage> {
        self.shared.lock().images.clone()
    }

    /// One sandbox by ID (or unique prefix).
    pub fn sandbox(&self, id: &str) -> Option<FakeSandbox> {
        let st = self.shared.lock();
        st.sandbox_index(id).map(|i| st.sandboxes[i].clone())
    }

    /// One container by ID (or unique prefix).
    pub fn container(&self, id: &str) -> Option<FakeContainer> {
        let st = self.shared.lock();
        st.container_index(id).map(|i| st.containers[i].clone())
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        let serving = self
            .serving
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.shared.up.send_replace(false);
        self.shared.lock().subscribers.clear();
        if let Some(serving) = serving {
            // Nothing here can await: cut the connections and let the server task end.
            serving.kill.send_replace(true);
            let _ = serving.shutdown.send(());
        }
    }
}
