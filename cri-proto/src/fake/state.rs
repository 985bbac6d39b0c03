//! The fake runtime's in-memory state and the CRI semantics on it.
//!
//! Every operation here is synchronous and runs under the state lock; the
//! gRPC layer ([`super::service`]) only decodes, logs, delays and injects faults.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::image::{self, FakeImage};
use crate::api;

/// The exit code of a container killed with SIGKILL, as containerd reports it.
pub const KILLED_EXIT_CODE: i32 = 137;

/// A pod sandbox held by the fake runtime (a snapshot; changing it changes nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSandbox {
    /// 64 hex digits.
    pub id: String,
    /// containerd's unique name for it, `name_namespace_uid_attempt`; reserved
    /// from RunPodSandbox until RemovePodSandbox.
    pub name: String,
    /// The metadata from the RunPodSandbox config.
    pub metadata: api::PodSandboxMetadata,
    /// Labels from the config.
    pub labels: HashMap<String, String>,
    /// Annotations from the config.
    pub annotations: HashMap<String, String>,
    /// READY until stopped (or [`super::FakeRuntime::set_sandbox_not_ready`]).
    pub state: api::PodSandboxState,
    /// Wall-clock nanoseconds since the epoch.
    pub created_at: i64,
    /// The pod IP (`10.99.x.y`), empty for hostNetwork sandboxes and once the
    /// sandbox is stopped (its network is torn down, as with CNI DEL).
    pub ip: String,
    /// True when the config asked for the node's network namespace.
    pub host_network: bool,
    /// `config.log_directory`.
    pub log_directory: String,
    /// The runtime handler (RuntimeClass) asked for.
    pub runtime_handler: String,
    /// The whole RunPodSandbox config, for assertions.
    pub config: api::PodSandboxConfig,
}

/// A container held by the fake runtime (a snapshot; changing it changes nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    /// 64 hex digits.
    pub id: String,
    /// The sandbox it was created in.
    pub sandbox_id: String,
    /// containerd's unique name for it, `container_pod_namespace_uid_attempt`
    /// (note: the sandbox attempt is not part of it); reserved from
    /// CreateContainer until RemoveContainer.
    pub name: String,
    /// The metadata from the CreateContainer config (name and attempt).
    pub metadata: api::ContainerMetadata,
    /// The image spec as given to CreateContainer.
    pub image: api::ImageSpec,
    /// The resolved image ID (`sha256:…`).
    pub image_ref: String,
    /// Labels from the config.
    pub labels: HashMap<String, String>,
    /// Annotations from the config.
    pub annotations: HashMap<String, String>,
    /// `sandbox_config.log_directory` joined with `config.log_path`; empty when
    /// either is empty (containerd then disables logging).
    pub log_path: String,
    /// CREATED, RUNNING or EXITED.
    pub state: api::ContainerState,
    /// Wall-clock nanoseconds since the epoch (0 when not yet).
    pub created_at: i64,
    /// Wall-clock nanoseconds since the epoch (0 when not yet).
    pub started_at: i64,
    /// Wall-clock nanoseconds since the epoch (0 when not yet).
    pub finished_at: i64,
    /// The exit code once exited.
    pub exit_code: i32,
    /// "Completed" (exit 0) or "Error" once exited, unless scripted otherwise.
    pub reason: String,
    /// The termination message, if scripted.
    pub message: String,
    /// The `timeout` of every StopContainer call received for it, in order.
    pub stop_timeouts: Vec<i64>,
    /// The whole CreateContainer config, for assertions.
    pub config: api::ContainerConfig,
}

/// A scripted `ExecSync` answer (see [`super::FakeRuntime::script_exec`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    /// The command's exit code.
    pub exit_code: i32,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
    /// How long it runs; beyond the request's `timeout` the call fails
    /// DeadlineExceeded after that timeout, as containerd's does.
    pub delay: Duration,
}

impl ExecResult {
    /// Exit `exit_code` at once with `stdout` as output.
    pub fn exit(exit_code: i32, stdout: &str) -> ExecResult {
        ExecResult {
            exit_code,
            stdout: stdout.as_bytes().to_vec(),
            ..ExecResult::default()
        }
    }

    /// Run for `delay`, then exit 0.
    pub fn hang(delay: Duration) -> ExecResult {
        ExecResult {
            delay,
            ..ExecResult::default()
        }
    }
}

/// One `ExecSync` the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeExec {
    /// The container's full ID.
    pub container_id: String,
    /// The container's name (its metadata name).
    pub container_name: String,
    /// The command.
    pub cmd: Vec<String>,
    /// The request's timeout in seconds (0: none).
    pub timeout: i64,
}

/// A scripted error for one RPC.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub once: VecDeque<(Code, String)>,
    pub always: Option<(Code, String)>,
}

pub(crate) type EventSender = mpsc::UnboundedSender<Result<api::ContainerEventResponse, Status>>;

/// Everything the fake runtime knows, behind one lock.
#[derive(Default)]
pub(crate) struct State {
    pub sandboxes: Vec<FakeSandbox>,
    pub containers: Vec<FakeContainer>,
    pub images: Vec<FakeImage>,
    /// Normalized references PullImage succeeds for.
    pub pullable: HashSet<String>,
    pub faults: HashMap<String, Faults>,
    pub delays: HashMap<String, Duration>,
    /// Container name → exit code right after StartContainer.
    pub on_start_exit: HashMap<String, i32>,
    /// Container name → exit code on StopContainer.
    pub on_stop_exit: HashMap<String, i32>,
    pub calls: Vec<String>,
    /// Container name → the ExecSync answers to give, in order; the last one
    /// repeats.
    pub exec_scripts: HashMap<String, VecDeque<ExecResult>>,
    /// Every ExecSync answered, in order.
    pub execs: Vec<FakeExec>,
    pub events_enabled: bool,
    pub subscribers: Vec<EventSender>,
    pub runtime_ready: Option<bool>,
    pub network_ready: Option<bool>,
    /// `None`: ListContainerStats answers Unimplemented. `Some`: it answers,
    /// with these stats (by full container ID) where scripted.
    pub container_stats: Option<HashMap<String, api::ContainerStats>>,
    /// `None`: ImageFsInfo answers Unimplemented.
    pub image_fs_info: Option<api::ImageFsInfoResponse>,
    /// `None`: RuntimeConfig answers Unimplemented (containerd 1.6, 1.7).
    pub runtime_config: Option<api::RuntimeConfigResponse>,
    next_ip: u32,
    next_id: u64,
}

/// Wall-clock nanoseconds since the epoch.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn not_found(what: &str, id: &str) -> Status {
    Status::not_found(format!(
        "an error occurred when try to find {what} {id:?}: not found"
    ))
}

fn state_name(state: api::ContainerState) -> &'static str {
    state.as_str_name()
}

/// The unique position matching `id` exactly, or else as the only one with it as prefix
/// (containerd's stores accept unique ID prefixes).
fn resolve<T>(items: &[T], id: &str, key: impl Fn(&T) -> &str) -> Option<usize> {
    if id.is_empty() {
        return None;
    }
    if let Some(i) = items.iter().position(|it| key(it) == id) {
        return Some(i);
    }
    let mut matches = items
        .iter()
        .enumerate()
        .filter(|(_, it)| key(it).starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

fn labels_match(have: &HashMap<String, String>, want: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

impl State {
    fn random_id(&mut self) -> String {
        use std::hash::{BuildHasher, Hasher};
        self.next_id += 1;
        let seed = self.next_id;
        let now = now_ns();
        let state = std::collections::hash_map::RandomState::new();
        (0u64..4)
            .map(|i| {
                let mut h = state.build_hasher();
                h.write_u64(seed);
                h.write_i64(now);
                h.write_u64(i);
                format!("{:016x}", h.finish())
            })
            .collect()
    }

    fn next_pod_ip(&mut self) -> String {
        let n = self.next_ip;
        self.next_ip += 1;
        // 10.99.0.2, 10.99.0.3, … 10.99.0.254, 10.99.1.2, …
        format!("10.99.{}.{}", (n / 253) % 256, n % 253 + 2)
    }

    // ----- lookups -----

    pub fn sandbox_index(&self, id: &str) -> Option<usize> {
        resolve(&self.sandboxes, id, |s| &s.id)
    }

    pub fn container_index(&self, id: &str) -> Option<usize> {
        resolve(&self.containers, id, |c| &c.id)
    }

    /// containerd's `LocalResolve`: an image ID, a reference (normalized), or a
    /// unique ID prefix.
    pub fn image_index(&self, reference: &str) -> Option<usize> {
        if image::is_image_id(reference) {
            return self.images.iter().position(|i| i.id == reference);
        }
        if let Some(i) = image::normalize(reference)
            .and_then(|n| self.images.iter().position(|i| i.has_reference(&n)))
        {
            return Some(i);
        }
        resolve(&self.images, reference, |i| &i.id)
    }

    // ----- events -----

    /// Send a container event to every GetContainerEvents stream, dropping closed ones.
    fn emit(&mut self, container_id: &str, sandbox_id: &str, kind: api::ContainerEventType) {
        if !self.events_enabled || self.subscribers.is_empty() {
            return;
        }
        let event = api::ContainerEventResponse {
            container_id: container_id.to_string(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: self
                .sandbox_index(sandbox_id)
                .map(|i| self.sandbox_status(i)),
            containers_statuses: self
                .containers
                .iter()
                .filter(|c| c.sandbox_id == sandbox_id)
                .map(|c| self.container_status_of(c))
                .collect(),
        };
        self.subscribers
            .retain(|tx| tx.send(Ok(event.clone())).is_ok());
    }

    // ----- container transitions -----

    /// Mark a running container exited now. Returns false when it was not running.
    pub fn exit(
        &mut self,
        idx: usize,
        exit_code: i32,
        reason: Option<String>,
        message: String,
    ) -> bool {
        let Some(c) = self.containers.get_mut(idx) else {
            return false;
        };
        if c.state != api::ContainerState::ContainerRunning {
            return false;
        }
        c.state = api::ContainerState::ContainerExited;
        c.finished_at = now_ns().max(c.started_at);
        c.exit_code = exit_code;
        c.reason = reason
            .unwrap_or_else(|| if exit_code == 0 { "Completed" } else { "Error" }.to_string());
        c.message = message;
        let (id, sandbox_id) = (c.id.clone(), c.sandbox_id.clone());
        self.emit(
            &id,
            &sandbox_id,
            api::ContainerEventType::ContainerStoppedEvent,
        );
        true
    }

    /// Kill a running container with SIGKILL (exit 137), as containerd does
    /// when it stops a sandbox or force-removes a container.
    fn kill(&mut self, idx: usize) {
        self.exit(idx, KILLED_EXIT_CODE, None, String::new());
    }

    // ----- RuntimeService -----

    pub fn run_pod_sandbox(&mut self, req: api::RunPodSandboxRequest) -> Result<String, Status> {
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("sandbox config is required"))?;
        let metadata = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("sandbox config must include metadata"))?;
        let name = format!(
            "{}_{}_{}_{}",
            metadata.name, metadata.namespace, metadata.uid, metadata.attempt
        );
        if let Some(other) = self.sandboxes.iter().find(|s| s.name == name) {
            // containerd's name registrar: a plain error, so gRPC code Unknown
            // (FailedPrecondition since containerd 2.0).
            return Err(Status::unknown(format!(
                "failed to reserve sandbox name {name:?}: name {name:?} is reserved for {:?}",
                other.id
            )));
        }
        let host_network = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == api::NamespaceMode::Node as i32);
        let id = self.random_id();
        let ip = if host_network {
            String::new()
        } else {
            self.next_pod_ip()
        };
        self.sandboxes.push(FakeSandbox {
            id: id.clone(),
            name,
            metadata,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            state: api::PodSandboxState::SandboxReady,
            created_at: now_ns(),
            ip,
            host_network,
            log_directory: config.log_directory.clone(),
            runtime_handler: req.runtime_handler,
            config,
        });
        self.emit(&id, &id, api::ContainerEventType::ContainerCreatedEvent);
        self.emit(&id, &id, api::ContainerEventType::ContainerStartedEvent);
        Ok(id)
    }

    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), Status> {
        let idx = self
            .sandbox_index(id)
            .ok_or_else(|| not_found("sandbox", id))?;
        let sandbox_id = self.sandboxes[idx].id.clone();
        let running: Vec<usize> = (0..self.containers.len())
            .filter(|&i| {
                self.containers[i].sandbox_id == sandbox_id
                    && self.containers[i].state == api::ContainerState::ContainerRunning
            })
            .collect();
        for i in running {
            self.kill(i);
        }
        let sb = &mut self.sandboxes[idx];
        let was_ready = sb.state == api::PodSandboxState::SandboxReady;
        sb.state = api::PodSandboxState::SandboxNotready;
        sb.ip.clear();
        if was_ready {
            self.emit(
                &sandbox_id,
                &sandbox_id,
                api::ContainerEventType::ContainerStoppedEvent,
            );
        }
        Ok(())
    }

    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), Status> {
        let Some(idx) = self.sandbox_index(id) else {
            return Ok(());
        };
        let sandbox_id = self.sandboxes[idx].id.clone();
        self.stop_pod_sandbox(&sandbox_id)?;
        let ids: Vec<String> = self
            .containers
            .iter()
            .filter(|c| c.sandbox_id == sandbox_id)
            .map(|c| c.id.clone())
            .collect();
        for cid in ids {
            self.remove_container(&cid)?;
        }
        self.emit(
            &sandbox_id,
            &sandbox_id,
            api::ContainerEventType::ContainerDeletedEvent,
        );
        self.sandboxes.retain(|s| s.id != sandbox_id);
        Ok(())
    }

    pub fn sandbox_status(&self, idx: usize) -> api::PodSandboxStatus {
        let sb = &self.sandboxes[idx];
        let namespace_options = sb
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        api::PodSandboxStatus {
            id: sb.id.clone(),
            metadata: Some(sb.metadata.clone()),
            state: sb.state as i32,
            created_at: sb.created_at,
            network: Some(api::PodSandboxNetworkStatus {
                ip: sb.ip.clone(),
                additional_ips: Vec::new(),
            }),
            linux: Some(api::LinuxPodSandboxStatus {
                namespaces: Some(api::Namespace {
                    options: namespace_options,
                }),
            }),
            labels: sb.labels.clone(),
            annotations: sb.annotations.clone(),
            runtime_handler: sb.runtime_handler.clone(),
        }
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatus, Status> {
        let idx = self
            .sandbox_index(id)
            .ok_or_else(|| not_found("sandbox", id))?;
        Ok(self.sandbox_status(idx))
    }

    pub fn list_pod_sandbox(&self, filter: Option<api::PodSandboxFilter>) -> Vec<api::PodSandbox> {
        let filter = filter.unwrap_or_default();
        // Like containerd: a filter ID that is a unique prefix means that sandbox.
        let want_id = self
            .sandbox_index(&filter.id)
            .map(|i| self.sandboxes[i].id.clone())
            .unwrap_or(filter.id);
        self.sandboxes
            .iter()
            .filter(|s| want_id.is_empty() || s.id == want_id)
            .filter(|s| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|st| st.state == s.state as i32)
            })
            .filter(|s| labels_match(&s.labels, &filter.label_selector))
            .map(|s| api::PodSandbox {
                id: s.id.clone(),
                metadata: Some(s.metadata.clone()),
                state: s.state as i32,
                created_at: s.created_at,
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect()
    }

    pub fn create_container(&mut self, req: api::CreateContainerRequest) -> Result<String, Status> {
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("container config is required"))?;
        let metadata = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("container config must include metadata"))?;
        let image_spec = config
            .image
            .clone()
            .filter(|i| !i.image.is_empty())
            .ok_or_else(|| Status::invalid_argument("container config must include an image"))?;
        let sandbox_idx = self.sandbox_index(&req.pod_sandbox_id).ok_or_else(|| {
            Status::not_found(format!(
                "failed to find sandbox id {:?}: not found",
                req.pod_sandbox_id
            ))
        })?;
        let sandbox = &self.sandboxes[sandbox_idx];
        let sandbox_id = sandbox.id.clone();
        if sandbox.state != api::PodSandboxState::SandboxReady {
            // containerd 1.6 looks up the sandbox's task, which is gone once the
            // sandbox stopped: a NotFound from the task service.
            return Err(Status::not_found(format!(
                "failed to get sandbox container task: no running task found: task {sandbox_id} not found: not found"
            )));
        }
        // containerd names the container from the *request's* sandbox config, and
        // composes the log path from it too.
        let sandbox_config = req.sandbox_config.unwrap_or_default();
        let sandbox_meta = sandbox_config.metadata.unwrap_or_default();
        let name = format!(
            "{}_{}_{}_{}_{}",
            metadata.name,
            sandbox_meta.name,
            sandbox_meta.namespace,
            sandbox_meta.uid,
            metadata.attempt
        );
        if let Some(other) = self.containers.iter().find(|c| c.name == name) {
            return Err(Status::unknown(format!(
                "failed to reserve container name {name:?}: name {name:?} is reserved for {:?}",
                other.id
            )));
        }
        let image_idx = self.image_index(&image_spec.image).ok_or_else(|| {
            Status::not_found(format!(
                "failed to resolve image {:?}: not found",
                image_spec.image
            ))
        })?;
        let image_ref = self.images[image_idx].id.clone();
        let log_path = if sandbox_config.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            std::path::Path::new(&sandbox_config.log_directory)
                .join(&config.log_path)
                .to_string_lossy()
                .into_owned()
        };
        let id = self.random_id();
        self.containers.push(FakeContainer {
            id: id.clone(),
            sandbox_id: sandbox_id.clone(),
            name,
            metadata,
            image: image_spec,
            image_ref,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            log_path,
            state: api::ContainerState::ContainerCreated,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            stop_timeouts: Vec::new(),
            config,
        });
        self.emit(
            &id,
            &sandbox_id,
            api::ContainerEventType::ContainerCreatedEvent,
        );
        Ok(id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<(), Status> {
        let idx = self
            .container_index(id)
            .ok_or_else(|| not_found("container", id))?;
        let (cid, sandbox_id, state, name) = {
            let c = &self.containers[idx];
            (
                c.id.clone(),
                c.sandbox_id.clone(),
                c.state,
                c.metadata.name.clone(),
            )
        };
        let sandbox_idx = self.sandbox_index(&sandbox_id).ok_or_else(|| {
            Status::not_found(format!("sandbox {sandbox_id:?} not found: not found"))
        })?;
        if self.sandboxes[sandbox_idx].state != api::PodSandboxState::SandboxReady {
            return Err(Status::unknown(format!(
                "sandbox container {sandbox_id:?} is not running"
            )));
        }
        if state != api::ContainerState::ContainerCreated {
            return Err(Status::unknown(format!(
                "failed to set starting state for container {cid:?}: container is in {} state",
                state_name(state)
            )));
        }
        let c = &mut self.containers[idx];
        c.state = api::ContainerState::ContainerRunning;
        c.started_at = now_ns().max(c.created_at);
        self.emit(
            &cid,
            &sandbox_id,
            api::ContainerEventType::ContainerStartedEvent,
        );
        if let Some(&code) = self.on_start_exit.get(&name) {
            self.exit(idx, code, None, String::new());
        }
        Ok(())
    }

    /// `ExecSync`: the container must be running (containerd: "container is
    /// in CONTAINER_EXITED state"); the next scripted answer for its name
    /// (exit 0 with no output when none is scripted).
    pub fn exec_sync(&mut self, req: &api::ExecSyncRequest) -> Result<ExecResult, Status> {
        let idx = self
            .container_index(&req.container_id)
            .ok_or_else(|| not_found("container", &req.container_id))?;
        let c = &self.containers[idx];
        if c.state != api::ContainerState::ContainerRunning {
            return Err(Status::unknown(format!(
                "failed to exec in container: container is in {} state",
                state_name(c.state)
            )));
        }
        let (container_id, container_name) = (c.id.clone(), c.metadata.name.clone());
        let by_program = req
            .cmd
            .first()
            .map(|program| format!("{container_name}\0{program}"))
            .filter(|key| self.exec_scripts.contains_key(key));
        let key = by_program.unwrap_or_else(|| container_name.clone());
        let result = match self.exec_scripts.get_mut(&key) {
            Some(queue) if queue.len() > 1 => queue.pop_front().unwrap_or_default(),
            Some(queue) => queue.front().cloned().unwrap_or_default(),
            None => ExecResult::default(),
        };
        self.execs.push(FakeExec {
            container_id,
            container_name,
            cmd: req.cmd.clone(),
            timeout: req.timeout,
        });
        Ok(result)
    }

    pub fn stop_container(&mut self, id: &str, timeout: i64) -> Result<(), Status> {
        let idx = self
            .container_index(id)
            .ok_or_else(|| not_found("container", id))?;
        let c = &mut self.containers[idx];
        c.stop_timeouts.push(timeout);
        if c.state == api::ContainerState::ContainerRunning {
            let code = self
                .on_stop_exit
                .get(&c.metadata.name)
                .copied()
                .unwrap_or(KILLED_EXIT_CODE);
            self.exit(idx, code, None, String::new());
        }
        Ok(())
    }

    pub fn remove_container(&mut self, id: &str) -> Result<(), Status> {
        let Some(idx) = self.container_index(id) else {
            return Ok(());
        };
        // containerd force-stops a running container before removing it.
        self.kill(idx);
        let c = self.containers.remove(idx);
        // Emitted after removal: the deleted container is no longer in the statuses.
        self.emit(
            &c.id,
            &c.sandbox_id,
            api::ContainerEventType::ContainerDeletedEvent,
        );
        Ok(())
    }

    pub fn list_containers(&self, filter: Option<api::ContainerFilter>) -> Vec<api::Container> {
        let filter = filter.unwrap_or_default();
        let want_id = self
            .container_index(&filter.id)
            .map(|i| self.containers[i].id.clone())
            .unwrap_or(filter.id);
        let want_sandbox = self
            .sandbox_index(&filter.pod_sandbox_id)
            .map(|i| self.sandboxes[i].id.clone())
            .unwrap_or(filter.pod_sandbox_id);
        self.containers
            .iter()
            .filter(|c| want_id.is_empty() || c.id == want_id)
            .filter(|c| want_sandbox.is_empty() || c.sandbox_id == want_sandbox)
            .filter(|c| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|st| st.state == c.state as i32)
            })
            .filter(|c| labels_match(&c.labels, &filter.label_selector))
            .map(|c| api::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: Some(c.metadata.clone()),
                image: Some(c.image.clone()),
                image_ref: c.image_ref.clone(),
                state: c.state as i32,
                created_at: c.created_at,
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
                image_id: c.image_ref.clone(),
            })
            .collect()
    }

    /// ListContainerStats over the containers `filter` selects (as
    /// ListContainers): the scripted stats of each, with its attributes filled
    /// in; `None` when stats are not enabled.
    pub fn list_container_stats(
        &self,
        filter: Option<api::ContainerStatsFilter>,
    ) -> Option<Vec<api::ContainerStats>> {
        let scripted = self.container_stats.as_ref()?;
        let filter = filter.unwrap_or_default();
        let listed = self.list_containers(Some(api::ContainerFilter {
            id: filter.id,
            pod_sandbox_id: filter.pod_sandbox_id,
            label_selector: filter.label_selector,
            state: None,
        }));
        Some(
            listed
                .into_iter()
                .map(|c| {
                    let mut stats = scripted.get(&c.id).cloned().unwrap_or_default();
                    stats.attributes = Some(api::ContainerAttributes {
                        id: c.id,
                        metadata: c.metadata,
                        labels: c.labels,
                        annotations: c.annotations,
                    });
                    stats
                })
                .collect(),
        )
    }

    /// ContainerStatus as containerd builds it: the image becomes the image's first
    /// repo tag and `image_ref` its first repo digest, when the image is still there.
    fn container_status_of(&self, c: &FakeContainer) -> api::ContainerStatus {
        let mut image = c.image.clone();
        let mut image_ref = c.image_ref.clone();
        if let Some(img) = self.images.iter().find(|i| i.id == c.image_ref) {
            if let Some(tag) = img.repo_tags.first() {
                image.image = tag.clone();
            }
            if let Some(digest) = img.repo_digests.first() {
                image_ref = digest.clone();
            }
        }
        api::ContainerStatus {
            id: c.id.clone(),
            metadata: Some(c.metadata.clone()),
            state: c.state as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: Some(image),
            image_ref,
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.log_path.clone(),
            resources: None,
            image_id: c.image_ref.clone(),
            user: None,
        }
    }

    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus, Status> {
        let idx = self
            .container_index(id)
            .ok_or_else(|| not_found("container", id))?;
        Ok(self.container_status_of(&self.containers[idx]))
    }

    pub fn runtime_status(&self) -> api::RuntimeStatus {
        let cond = |kind: &str, ready: bool| api::RuntimeCondition {
            r#type: kind.to_string(),
            status: ready,
            reason: if ready { "" } else { "FakeNotReady" }.to_string(),
            message: if ready {
                String::new()
            } else {
                format!("{kind} is false (scripted)")
            },
        };
        api::RuntimeStatus {
            conditions: vec![
                cond("RuntimeReady", self.runtime_ready.unwrap_or(true)),
                cond("NetworkReady", self.network_ready.unwrap_or(true)),
            ],
        }
    }

    // ----- ImageService -----

    fn image_to_cri(img: &FakeImage) -> api::Image {
        api::Image {
            id: img.id.clone(),
            repo_tags: img.repo_tags.clone(),
            repo_digests: img.repo_digests.clone(),
            size: img.size,
            uid: None,
            username: String::new(),
            spec: Some(api::ImageSpec {
                image: img.id.clone(),
                ..Default::default()
            }),
            pinned: false,
        }
    }

    /// containerd 1.6 ignores the ListImages filter: every image is returned.
    pub fn list_images(&self) -> Vec<api::Image> {
        self.images.iter().map(Self::image_to_cri).collect()
    }

    pub fn image_status(&self, reference: &str) -> Option<api::Image> {
        self.image_index(reference)
            .map(|i| Self::image_to_cri(&self.images[i]))
    }

    /// Add the image a reference names (if it is not there yet) and return its ID.
    pub fn add_image(&mut self, normalized: &str) -> String {
        if let Some(img) = self.images.iter().find(|i| i.has_reference(normalized)) {
            return img.id.clone();
        }
        let img = FakeImage::for_reference(normalized);
        let id = img.id.clone();
        self.images.push(img);
        id
    }

    pub fn pull_image(&mut self, reference: &str) -> Result<String, Status> {
        let normalized = image::normalize(reference).ok_or_else(|| {
            Status::unknown(format!(
                "failed to parse image reference {reference:?}: invalid reference format"
            ))
        })?;
        if !self.pullable.contains(&normalized) {
            return Err(Status::not_found(format!(
                "failed to pull and unpack image {normalized:?}: failed to resolve reference {normalized:?}: {normalized}: not found"
            )));
        }
        Ok(self.add_image(&normalized))
    }

    pub fn remove_image(&mut self, reference: &str) {
        if let Some(i) = self.image_index(reference) {
            self.images.remove(i);
        }
    }
}
